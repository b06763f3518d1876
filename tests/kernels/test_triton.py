"""The Triton kernels against the naive full-logits reference, values and gradients.

On CPU they run under Triton's interpreter (``TRITON_INTERPRET=1``) on small, awkward
shapes: N and V not multiples of the tiles, D not a multiple of BLOCK_D, ignored positions.
The ``gpu`` tests repeat the check at real head sizes and are skipped without CUDA.
"""
import pytest
import torch

from prefopt.kernels import fused_preference_loss, resolve_impl, sequence_logprobs
from prefopt.losses import PreferenceLogps, preference_loss

pytest.importorskip("triton")
from prefopt.kernels.triton_logprobs import triton_logprobs  # noqa: E402

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture(autouse=True)
def _interpret(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def _case(dtype, N=37, D=64, V=1000, seed=0, device="cpu", ignore_every=4):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(N, D, generator=g).to(device, dtype).requires_grad_()
    w = (torch.randn(V, D, generator=g) * 0.3).to(device, dtype).requires_grad_()
    y = torch.randint(0, V, (N,), generator=g)
    if ignore_every:
        y[::ignore_every] = -100
    return h, w, y.to(device), torch.randn(N, generator=g).to(device)


def _grads(impl, h, w, y, g):
    h.grad = w.grad = None
    lp = sequence_logprobs(h, w, y, impl=impl)
    (lp * g).sum().backward()
    return lp.detach(), h.grad.clone(), None if w.grad is None else w.grad.clone()


def _rel_err(a, b):
    return ((a.float() - b.float()).abs().max() / a.float().abs().max().clamp(min=1)).item()


@pytest.mark.parametrize("D", [64, 48])
def test_fp32_values_and_gradients_match_naive(D):
    h, w, y, g = _case(torch.float32, D=D)
    ref, got = _grads("naive", h, w, y, g), _grads("triton", h, w, y, g)
    assert torch.equal(got[0][y == -100], torch.zeros(int((y == -100).sum())))
    for a, b in zip(ref, got):
        assert (a - b).abs().max() < 1e-5


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_is_as_close_to_fp32_as_the_naive_path(dtype):
    """Same rounded inputs: the kernel's error against an fp32 reference is no worse than
    (about) the plain half-precision path's, since it accumulates in fp32."""
    h, w, y, g = _case(dtype)
    exact = _grads("naive", h.detach().float().requires_grad_(), w.detach().float().requires_grad_(), y, g)
    naive, got = _grads("naive", h, w, y, g), _grads("triton", h, w, y, g)
    assert got[0].dtype == torch.float32 and got[1].dtype == dtype and got[2].dtype == dtype
    for e, n, t in zip(exact, naive, got):
        assert _rel_err(e, t) <= 2 * _rel_err(e, n) + 1e-3
        assert _rel_err(e, t) < 2e-2


def test_frozen_weight_gets_no_gradient_and_hidden_grad_matches():
    h, w, y, g = _case(torch.float32, N=21, V=333)
    w.requires_grad_(False)
    ref, got = _grads("naive", h, w, y, g), _grads("triton", h, w, y, g)
    assert got[2] is None
    assert (ref[1] - got[1]).abs().max() < 1e-5


def test_custom_tiles_and_rows_equal_to_one_tile():
    h, w, y, g = _case(torch.float32, N=16, D=32, V=64, ignore_every=0)
    lp = triton_logprobs(h, w, y, blocks={"BLOCK_N": 16, "BLOCK_V": 16, "BLOCK_D": 16})
    ref = torch.log_softmax(h.detach() @ w.detach().T, -1).gather(-1, y[:, None]).squeeze(-1)
    assert (lp.detach() - ref).abs().max() < 1e-5


@pytest.mark.parametrize("loss,kw", [("sigmoid", {"beta": 0.1}), ("ipo", {"beta": 0.3}),
                                     ("hinge", {"beta": 0.5}), ("simpo", {"beta": 2.0, "gamma": 0.5})])
@pytest.mark.parametrize("impl", ["triton", "chunked"])
def test_fused_preference_loss_matches_the_unfused_composition(loss, kw, impl):
    g = torch.Generator().manual_seed(3)
    B, T, D, V = 3, 9, 32, 300
    h = torch.randn(2 * B, T, D, generator=g, requires_grad=True)
    w = (torch.randn(V, D, generator=g) * 0.3).requires_grad_()
    y = torch.randint(0, V, (2 * B, T), generator=g)
    y[:, :3] = -100  # the prompt
    y[1, 7:] = -100  # padding
    ref_c, ref_r = torch.randn(B, generator=g) - 20, torch.randn(B, generator=g) - 20

    out, lp = fused_preference_loss(h, w, y, ref_c, ref_r, loss, impl=impl, **kw)
    out.losses.sum().backward()
    got = (out.losses.detach(), h.grad.clone(), w.grad.clone())

    h.grad = w.grad = None
    logp = torch.log_softmax(h @ w.T, -1).gather(-1, y.clamp(min=0)[..., None]).squeeze(-1) * (y != -100)
    sums, counts = logp.sum(-1), (y != -100).sum(-1)
    want = preference_loss(loss, PreferenceLogps(sums[:B], sums[B:], ref_c, ref_r, counts[:B], counts[B:]), **kw)
    want.losses.sum().backward()
    assert torch.equal(lp.chosen_tokens, counts[:B])
    for a, b in zip((want.losses.detach(), h.grad, w.grad), got):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-5)
    assert torch.allclose(out.chosen_rewards, want.chosen_rewards, atol=1e-6)


def test_fused_loss_refuses_an_odd_number_of_rows():
    with pytest.raises(ValueError, match="chosen rows then rejected"):
        fused_preference_loss(torch.zeros(3, 4, 16), torch.zeros(10, 16), torch.zeros(3, 4, dtype=torch.long),
                              torch.zeros(1), torch.zeros(1))


def test_dispatch_defaults_to_chunked_on_cpu_and_explains_a_forced_triton(monkeypatch):
    monkeypatch.delenv("PREFOPT_LOGPROBS", raising=False)
    assert resolve_impl(torch.device("cpu")) == "chunked"
    monkeypatch.setenv("PREFOPT_LOGPROBS", "naive")
    assert resolve_impl(torch.device("cpu")) == "naive"
    assert resolve_impl(torch.device("cpu"), "triton") == "triton"
    monkeypatch.delenv("TRITON_INTERPRET")
    h, w, y, _ = _case(torch.float32, N=5, V=50)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        sequence_logprobs(h, w, y, impl="triton")
    with pytest.raises(TypeError, match="matching fp32/bf16/fp16"):
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        triton_logprobs(h.double(), w.double(), y)


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 2e-2)])
def test_gpu_real_head_sizes(dtype, tol):
    h, w, y, g = _case(dtype, N=1000, D=576, V=49152, device="cuda")
    exact = _grads("naive", h.detach().float().requires_grad_(), w.detach().float().requires_grad_(), y, g)
    got = _grads("triton", h, w, y, g)
    assert resolve_impl(h.device) == "triton"
    for e, t in zip(exact, got):
        assert _rel_err(e, t) < tol
