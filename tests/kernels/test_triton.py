"""The Triton kernels against the naive full-logits reference, values and gradients.

On CPU they run under Triton's interpreter (``TRITON_INTERPRET=1``) on small, awkward
shapes: N and V not multiples of the tiles, D not a multiple of BLOCK_D, ignored positions.
The ``gpu`` tests repeat the check at real head sizes and are skipped without CUDA.
"""
import importlib
import re
from pathlib import Path

import pytest
import torch

import prefopt.kernels.onepass as onepass
from prefopt.kernels import fused_preference_loss, resolve_impl, sequence_logprobs
from prefopt.losses import PreferenceLogps, preference_loss

pytest.importorskip("triton")
module = importlib.import_module("prefopt.kernels.triton_logprobs")  # the module (the package exports the function)
from prefopt.kernels.triton_logprobs import triton_logprobs  # noqa: E402

from ._interpreter import interpreter_problem, quicken_helper_calls  # noqa: E402

CONSTRAINTS = Path(__file__).resolve().parents[2] / "constraints.txt"
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
# CPU tensors need the interpreter, chosen when triton is first imported (conftest sets
# TRITON_INTERPRET=1 on machines without CUDA); on a GPU machine these tests skip.
# Some Triton releases' interpreters break under newer numpy whatever the kernel (_interpreter.py);
# the pinned versions must not (test below).
_problem = interpreter_problem() if module.available(torch.device("cpu")) else "kernels are compiled, not interpreted"
interp = pytest.mark.skipif(_problem is not None, reason=str(_problem))


def _pinned() -> bool:
    import numpy
    import triton

    pins = dict(re.findall(r"^(triton|numpy)==(\S+)", CONSTRAINTS.read_text(), re.M))
    return (triton.__version__, numpy.__version__) == (pins["triton"], pins["numpy"])


def test_the_pinned_triton_and_numpy_interpret_correctly():
    """With the versions CI installs the interpreted tests must run, not skip."""
    if not _pinned() or torch.cuda.is_available():
        pytest.skip("not the pinned triton and numpy (constraints.txt) on CPU")
    assert _problem is None, _problem


@interp
def test_the_interpreter_patches_the_language_once_a_launch_not_at_every_helper_call(monkeypatch):
    """tests/conftest.py quickens Triton's interpreter (``quicken_helper_calls``): with the pinned
    Triton it applies, and a launch of ``_row_lse`` (64 programs, each calling the jitted
    ``_split_lse``, ``tl.max`` and ``tl.sum``) then ``_row_join`` patches the language modules a
    few times, not at every call, and still computes the logsumexp and the label's log-prob."""
    from triton.runtime import interpreter

    from prefopt.kernels._rows import lse as rows_lse

    if not quicken_helper_calls():
        assert not _pinned(), "the pinned Triton's interpreter must take quicken_helper_calls"
        pytest.skip("this Triton's interpreter lacks the internals quicken_helper_calls needs")
    original, patched = interpreter._patch_lang.original, []
    monkeypatch.setattr(interpreter._patch_lang, "original", lambda fn: patched.append(fn.__name__) or original(fn))
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 334, generator=g), torch.randint(0, 334, (8,), generator=g)
    lse, logp = rows_lse(x, y)
    want = torch.logsumexp(x, 1)
    assert torch.allclose(lse, want, atol=1e-5)
    assert torch.allclose(logp, x.gather(1, y[:, None])[:, 0] - want, atol=1e-5)
    assert "_row_lse" in patched and len(patched) <= 4, patched  # each launch: its kernel, then tl.core once


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
    return lp.detach(), *(None if t.grad is None else t.grad.clone() for t in (h, w))


def _rel_err(a, b):
    return ((a.float() - b.float()).abs().max() / a.float().abs().max().clamp(min=1)).item()


@interp
@pytest.mark.parametrize("D", [64, 48])
def test_fp32_values_and_gradients_match_naive(D):
    h, w, y, g = _case(torch.float32, D=D)
    ref, got = _grads("naive", h, w, y, g), _grads("triton", h, w, y, g)
    assert torch.equal(got[0][y == -100], torch.zeros(int((y == -100).sum())))
    for a, b in zip(ref, got):
        assert (a - b).abs().max() < 1e-5


@interp
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


@interp
def test_frozen_weight_gets_no_gradient_and_hidden_grad_matches():
    h, w, y, g = _case(torch.float32, N=21, V=333)
    w.requires_grad_(False)
    ref, got = _grads("naive", h, w, y, g), _grads("triton", h, w, y, g)
    assert got[2] is None
    assert (ref[1] - got[1]).abs().max() < 1e-5


@interp
def test_custom_tiles_and_rows_equal_to_one_tile():
    h, w, y, g = _case(torch.float32, N=16, D=32, V=64, ignore_every=0)
    lp = triton_logprobs(h, w, y, blocks={"BLOCK_N": 16, "BLOCK_V": 16, "BLOCK_D": 16})
    ref = torch.log_softmax(h.detach() @ w.detach().T, -1).gather(-1, y[:, None]).squeeze(-1)
    assert (lp.detach() - ref).abs().max() < 1e-5


@interp
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
    h, w, y, _ = _case(torch.float32, N=5, V=50)
    with monkeypatch.context() as m:
        m.setattr(module, "_interpreted", lambda: False)  # as in a process that compiled the kernels
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
            sequence_logprobs(h, w, y, impl="triton")
    with pytest.raises(TypeError, match="matching fp32/bf16/fp16"):
        triton_logprobs(h.double(), w.double(), y)


@interp
@pytest.mark.parametrize("order", ["vocab", "rows"])
@pytest.mark.parametrize("splits", [2, 3, 40])
def test_forward_split_over_the_vocabulary_merges_exactly(splits, order):
    """Several programs per token block, each on a slice of the vocabulary (40 asks for more
    splits than there are tiles, and is capped); their partial sums merge into the same values,
    whichever way the grid is laid out (a token block's splits together, or token blocks), and
    the backward's dlogits tiles likewise."""
    h, w, y, g = _case(torch.float32)
    ref = _grads("naive", h, w, y, g)
    h.grad = w.grad = None
    keep = y != -100
    lp = triton_logprobs(h[keep], w, y[keep], blocks={"splits": splits, "order": order}, budget=40 * 64)
    (lp * g[keep]).sum().backward()
    assert (lp.detach() - ref[0][keep]).abs().max() < 1e-5
    assert (h.grad - ref[1]).abs().max() < 1e-5 and (w.grad - ref[2]).abs().max() < 1e-5


@interp
@pytest.mark.parametrize("N,V,sum_rows", [(37, 1000, None), (70, 40, None),  # vocabulary slabs, token chunks
                                          (37, 1000, 16), (140, 130, 64)])  # the same, the running sum in groups
@pytest.mark.parametrize("need", ["both", "hidden", "weight"])
def test_backward_blocks_in_every_order(N, V, sum_rows, need, monkeypatch):
    """A small budget splits the backward into several uneven blocks, by tokens or by vocabulary
    depending on the shape and which gradients are wanted, and a small ``SUM_ELEMENTS`` the
    fp32 running sum into groups of whole tiles; the gradients stay the naive ones."""
    if sum_rows:
        monkeypatch.setattr("prefopt.kernels._backward.SUM_ELEMENTS", sum_rows * 64)
    h, w, y, g = _case(torch.float32, N=N, V=V, ignore_every=0)
    h.requires_grad_(need != "weight")
    w.requires_grad_(need != "hidden")
    ref = _grads("naive", h, w, y, g)
    h.grad = w.grad = None
    (triton_logprobs(h, w, y, budget=5 * max(N, V) // 2) * g).sum().backward()
    for want, got in ((ref[1], h.grad), (ref[2], w.grad)):
        assert (want is None) == (got is None)
        if want is not None:
            assert (want - got).abs().max() < 1e-5


def _row_kernels_counted(monkeypatch, names=("lse", "dlogits")) -> list:
    """Force the Triton row kernels (``_rows.py``, interpreted here) and record each call's name."""
    import prefopt.kernels._rows as rowk

    monkeypatch.setattr(rowk, "ROWWISE", "triton")
    calls = []

    def counted(name):
        real = getattr(rowk, name)
        return lambda *a, **kw: calls.append(name) or real(*a, **kw)
    for name in names:
        monkeypatch.setattr(rowk, name, counted(name))
    return calls


@interp
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("N,V,need", [(37, 1000, "both"), (70, 40, "both"), (37, 1000, "frozen"),
                                      (37, 1000, "frozen, recompute"), (37, 1000, "weight")])
def test_chunked_path_with_the_row_kernels(dtype, tol, N, V, need, monkeypatch):
    """The chunked path as CUDA runs it: cuBLAS logits and the Triton row kernels for the
    logsumexp, the dlogits of each backward block (vocabulary slabs or token chunks) and, with a
    frozen head, the hidden-state gradient formed in the forward (or recomputed, token chunks):
    the naive values and gradients."""
    from prefopt.kernels import chunked_logprobs

    calls = _row_kernels_counted(monkeypatch)
    h, w, y, g = _case(dtype, N=N, V=V, ignore_every=0)
    h.requires_grad_(need != "weight")
    w.requires_grad_(need in ("both", "weight"))
    recompute = False if need == "frozen, recompute" else None
    exact = _grads("naive", *(t.detach().float().requires_grad_(t.requires_grad) for t in (h, w)), y, g)
    h.grad = w.grad = None
    lp = chunked_logprobs(h, w, y, budget=5 * max(N, V) // 2, grad_in_forward=recompute)
    (lp * g).sum().backward()
    assert calls.count("lse") >= 2 and "dlogits" in calls  # several chunks, every block through the kernels
    for want, got in zip(exact, (lp.detach(), h.grad, w.grad)):
        assert (want is None) == (got is None)
        if want is not None:
            assert _rel_err(want, got) < tol
    assert all(t.grad is None or t.grad.dtype == dtype for t in (h, w))


@interp
def test_unknown_block_option_is_refused():
    h, w, y, _ = _case(torch.float32, N=5, V=50)
    with pytest.raises(ValueError, match="unknown Triton block options"):
        triton_logprobs(h, w, y, blocks={"BLOCK_M": 16})
    with pytest.raises(ValueError, match="order must be one of"):
        triton_logprobs(h, w, y, blocks={"order": "columns"})


@interp
def test_too_many_token_blocks_for_the_grid_launch_token_blocks_first(monkeypatch):
    """CUDA grids allow 65535 in their second dimension: past that many token blocks the launch
    falls back to token blocks first (here with the limit lowered to 2), with the same values."""
    monkeypatch.setattr(module, "MAX_GRID_Y", 2)
    assert module._launch(3, 5, {"VOCAB_FIRST": True}) == ((3, 5), {"VOCAB_FIRST": False})
    assert module._launch(2, 5, {"VOCAB_FIRST": True}) == ((5, 2), {"VOCAB_FIRST": True})
    h, w, y, g = _case(torch.float32, ignore_every=0)
    ref = _grads("naive", h, w, y, g)
    got = _grads("triton", h, w, y, g)
    assert all((a - b).abs().max() < 1e-5 for a, b in zip(ref, got))


def test_cuda_splits_walk_about_32_tiles_each_and_fill_the_gpu(monkeypatch):
    """On CUDA each token block's vocabulary is split into walks of about ``SPLIT_TILES`` tiles
    (so the programs resident together share a few token blocks), and there are at least two
    programs per SM; elsewhere one split, and never more splits than tiles."""
    class Props:
        multi_processor_count = 132
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: Props())
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert module._splits(128, 1002, cuda, None) == 32  # Llama 3's head, N=16384
    assert module._splits(32, 384, cuda, None) == 12  # SmolLM2's, N=4096
    assert module._splits(2, 384, cuda, None) == 132  # few tokens: two programs per SM
    assert module._splits(4, 10, cuda, None) == 10 and module._splits(128, 1002, cpu, None) == 1
    assert module._splits(128, 1002, cuda, 3) == 3


def _pairs(dtype, B=3, T=9, D=48, V=1000, device="cpu", seed=0):
    """A stacked [chosen; rejected] batch with prompts, a short answer and an empty one."""
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(2 * B, T, D, generator=g).to(device, dtype).requires_grad_()
    w = (torch.randn(V, D, generator=g) * 0.3).to(device, dtype).requires_grad_()
    y = torch.randint(0, V, (2 * B, T), generator=g)
    y[:, :3] = -100
    y[1, 5:] = -100
    y[2 * B - 2, 3:] = -100
    ref = [(torch.randn(B, generator=g) - 30).to(device) for _ in range(2)]
    return h, w, y.to(device), ref


def _loss_grads(h, w, y, ref, **kw):
    h.grad = w.grad = None
    out, lp = fused_preference_loss(h, w, y, *ref, "rpo", beta=0.1, **kw)
    out.losses.sum().backward()
    return out.losses.sum().detach(), lp.chosen.detach(), h.grad.clone(), w.grad.clone()


@interp
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("rows", [None, 13, 4])  # one chunk; a few pairs per chunk; pairs longer than a block
def test_one_pass_row_kernels_match_the_naive_loss(dtype, tol, rows, monkeypatch):
    """The one-pass loss with its per-chunk elementwise work in the two Triton row kernels (what
    CUDA runs; V=1000 is not a multiple of their block): the naive loss's value and gradients."""
    if rows:
        monkeypatch.setattr("prefopt.kernels._backward.CHUNK_ELEMENTS", rows * 1000)
    calls = _row_kernels_counted(monkeypatch)
    h, w, y, ref = _pairs(dtype)
    exact = _loss_grads(h.detach().float().requires_grad_(), w.detach().float().requires_grad_(), y, ref, impl="naive")
    got = _loss_grads(h, w, y, ref, reduction="sum", one_pass=True)
    assert {"lse", "dlogits"} <= set(calls)
    assert got[2].dtype == got[3].dtype == dtype
    for e, t in zip(exact, got):
        assert _rel_err(e, t) < tol


@interp
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
# one block (8 tokens) a stage: pairs of 12 tokens walked twice (log-probs, then gradients), one of 2 once; stages of
# 16 tokens, each pair walked once into a stage of two blocks (a stage of 8 is one block: the first case again)
@pytest.mark.parametrize("stage", [0, 16])
@pytest.mark.parametrize("fused", [False, True])
def test_one_pass_vocabulary_slabs_match_the_naive_loss(dtype, tol, stage, fused, monkeypatch):
    """Where a block of ``SLAB_ROWS`` tokens' logits would exceed the budget (CUDA at Llama 3's
    head), the one-pass loss takes them in vocabulary slabs: here 8-token blocks in 3 slabs of
    V=1000 (334, 334, 332 columns), each slab's softmax rescaled to the row's once the last slab
    is known (``fused``: the earlier slabs' written by their logsumexp kernel, by each split's
    own); the naive loss's value, log-probs and gradients, and SFT's summed NLL likewise."""
    from prefopt.kernels import _slabs
    from prefopt.kernels.onepass import onepass_nll

    monkeypatch.setattr(_slabs, "FUSED_PARTS", fused)
    monkeypatch.setitem(onepass.SLAB_ROWS, "cpu", 8)
    monkeypatch.setattr("prefopt.kernels._backward.CHUNK_ELEMENTS", 3 * 1000)
    if stage:
        monkeypatch.setattr(onepass, "STAGE_DEVICES", ("cpu",))
        monkeypatch.setattr(onepass, "GRAD_ELEMENTS", stage * 1000)
    assert onepass.blocking(None, 1000, torch.device("cpu"), True) == (8, [(0, 334), (334, 668), (668, 1000)])
    calls = _row_kernels_counted(monkeypatch, ("parts", "join", "dlogits", "rescale"))
    h, w, y, ref = _pairs(dtype)
    exact = _loss_grads(h.detach().float().requires_grad_(), w.detach().float().requires_grad_(), y, ref, impl="naive")
    got = _loss_grads(h, w, y, ref, reduction="sum", one_pass=True)
    # each block: 3 slabs' split parts, one join of them all; with its gradients (not the first walk over a long
    # pair), 3 dlogits (the first two joining their slab's parts themselves), 2 rescaled; fused, the last slab's
    # dlogits alone
    assert calls.count("parts") == 3 * calls.count("join") > 0 and calls.count("rescale") > 0
    assert (1 if fused else 3) * calls.count("rescale") == 2 * calls.count("dlogits")
    walked_twice = calls.count("join") > calls.count("dlogits") // (1 if fused else 3)  # blocks joined without grads
    assert walked_twice == (stage == 0)
    assert got[3].dtype == dtype
    for e, t in zip(exact, got):
        assert _rel_err(e, t) < tol
    h.grad = w.grad = None
    got = onepass_nll(h, w, y, -100)
    got.backward()
    hf, wf = (t.detach().float().requires_grad_() for t in (h, w))
    want = -sequence_logprobs(hf, wf, y, impl="naive").sum()
    want.backward()
    for e, t in ((want.detach(), got.detach()), (hf.grad, h.grad), (wf.grad, w.grad)):
        assert _rel_err(e, t) < tol


@interp
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_scale_kernel_multiplies_in_fp32_and_rounds_once(dtype, monkeypatch):
    """``_rows.scale_`` (the one-pass backward's upstream scalar, on CUDA a Triton pass): the fp32
    product rounded once to the tensor's dtype, its length not a multiple of the block; by 1 the
    same values (the kernel skips its reads and writes then: test_triton_compile.py sees the
    branch); a non-contiguous tensor or a non-fp32 scalar take ``mul_``, and so does a CPU without
    the row kernels, with the same product."""
    from prefopt.kernels import _rows
    from prefopt.kernels import _triton_kernels as k

    class Launches:  # k._scale[grid](...), each grid recorded
        def __init__(self, kernel):
            self.kernel, self.grids = kernel, []

        def __getitem__(self, grid):
            self.grids.append(grid)
            return self.kernel[grid]

    monkeypatch.setattr(_rows, "ROWWISE", "triton")
    monkeypatch.setattr(k, "_scale", Launches(k._scale))
    t = torch.randn(3, 77, generator=torch.Generator().manual_seed(5)).to(dtype)
    s = torch.tensor(1 / 3)  # not a power of two: bf16(1/3) is 0.3340, 0.2% off
    want = (t.float() * s).to(dtype)
    assert _rows.scale_(t, s) is t and torch.equal(t, want)
    assert k._scale.grids == [(-(-231 // _rows.BLOCKS["interpreted"]),)]
    assert torch.equal(_rows.scale_(t, torch.tensor(1.0)), want) and len(k._scale.grids) == 2
    wide = torch.ones(4, 6)[:, :3]
    _rows.scale_(wide, s)
    assert torch.equal(wide, torch.full((4, 3), 1 / 3)) and len(k._scale.grids) == 2
    _rows.scale_(t, s.double())
    assert len(k._scale.grids) == 2
    monkeypatch.setattr(_rows, "ROWWISE", "torch")
    t = want.clone()
    assert torch.equal(_rows.scale_(t, s), (want.float() * s).to(dtype)) and len(k._scale.grids) == 2
    assert torch.equal(_rows.scale_(t, torch.tensor(1.0)), (want.float() * s).to(dtype))


@interp
def test_row_kernels_against_pytorch():
    """``_row_lse`` and ``_row_dlogits`` alone: logsumexp, the label's log-prob and
    ``g · (onehot − softmax)`` of fp32 logits rows, V not a multiple of the block, in bf16 too."""
    from prefopt.kernels._rows import dlogits as _rows_dlogits
    from prefopt.kernels._rows import lse as _rows_lse

    g = torch.Generator().manual_seed(3)
    x = torch.randn(5, 1000, generator=g) * 8
    x[2, 700:] = -1e4  # a row whose tail is all but impossible
    y = torch.randint(0, 1000, (5,), generator=g)
    up = torch.randn(5, generator=g)
    lse, logp = _rows_lse(x, y)
    assert torch.allclose(lse, torch.logsumexp(x, -1), atol=1e-5)
    assert torch.allclose(logp, x.log_softmax(-1).gather(-1, y[:, None]).squeeze(-1), atol=1e-5)
    want = up[:, None] * (torch.nn.functional.one_hot(y, 1000) - x.softmax(-1))
    full, half = torch.full_like(x, float("nan")), torch.full(x.shape, float("nan"), dtype=torch.bfloat16)
    _rows_dlogits(x, y, lse, up, full)
    assert torch.allclose(full, want, atol=1e-6)
    _rows_dlogits(x, y, lse, up, half)
    assert torch.equal(half, full.bfloat16())  # rounded once
    from prefopt.kernels._rows import parts as _rows_parts

    wide = torch.empty(2, 8, 6)  # rows 6 apart where the kernel writes them 5 apart: refused, not garbled
    with pytest.raises(ValueError, match=r"two contiguous \(>= 8, 5\) tensors"):
        _rows_parts(x, y, (wide[0, :, :5], wide[1, :, :5]))
    from prefopt.kernels._rows import _split_width, join, rescale

    parts = torch.full((8, 5), float("-inf")), torch.zeros(8, 5)  # with each split's -exp(x - its lse), in one read
    for dt in (torch.float32, torch.bfloat16):
        into = torch.full((5, 1000), float("nan"), dtype=dt)
        splits = _rows_parts(x, y, parts, out=into)
        width = _split_width(1000)[1]
        own = torch.cat([x[:, c:c + width].logsumexp(-1, keepdim=True).expand(-1, min(width, 1000 - c))
                         for c in range(0, 1000, width)], 1)
        assert splits * width >= 1000 and torch.allclose(parts[0][:splits].T, own[:, ::width], atol=1e-5)
        assert torch.allclose(into.float(), -(x - own).exp(), atol=1e-6 if dt == torch.float32 else 4e-3)
        full, _ = join(*parts, count=splits)
        rescale(into, y, parts[0], full, per_split=True)
        assert torch.allclose(into.float(), want / up[:, None], atol=1e-5 if dt == torch.float32 else 8e-3)
    part, local = _rows_lse(x[:, :300].contiguous(), y)  # a vocabulary slab: labels past it have no logit there
    assert torch.allclose(local, torch.where(y < 300, x[:, :300].log_softmax(-1).gather(-1, y.clamp(max=299)[:, None])
                                             .squeeze(-1), -part), atol=1e-5)


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("N,V,need,sum_rows", [(1000, 49152, "both", None), (1000, 49152, "hidden", None),
                                               (3000, 1000, "both", None), (1000, 49152, "both", 256)])
@pytest.mark.parametrize("impl", ["triton", "chunked"])
def test_gpu_real_head_sizes(dtype, tol, N, V, need, sum_rows, impl, monkeypatch):
    """Compiled kernels at SmolLM2's head (vocabulary slabs with an fp32 grad_h sum, whole or in
    groups of 256 tokens; frozen weight: token chunks) and with N > V (token chunks with an fp32
    grad_W sum): the Triton GEMM kernels, and the chunked path's cuBLAS GEMMs with the row kernels."""
    if sum_rows:
        monkeypatch.setattr("prefopt.kernels._backward.SUM_ELEMENTS", sum_rows * 576)
    h, w, y, g = _case(dtype, N=N, D=576, V=V, device="cuda")
    w.requires_grad_(need == "both")
    exact = _grads("naive", h.detach().float().requires_grad_(), w.detach().float().requires_grad_(need == "both"),
                   y, g)
    got = _grads(impl, h, w, y, g)
    assert resolve_impl(h.device) == "triton"
    assert (got[2] is None) == (need != "both")
    for e, t in zip(exact, got):
        if e is not None:
            assert _rel_err(e, t) < tol


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("B,T", [(16, 96), (3, 400), (2, 700), (1, 1100)])
@pytest.mark.parametrize("frozen", [False, True])
@pytest.mark.parametrize("V,stage,slabs", [(49152, 2048, 1), (128256, 768, 3)])
def test_gpu_one_pass_at_real_vocabularies(V, stage, slabs, frozen, B, T):
    """Compiled row kernels (the CUDA default for the one-pass loss) at SmolLM2's vocabulary and
    Llama 3's (D=576), bf16: 256-token blocks, in 2048-token stages, or in 768-token stages and
    three vocabulary slabs. Pairs of about 186 scored tokens (several a stage, blocks across them),
    about 794 (longer than a block), about 1394 (longer than Llama's stage: two walks) and about
    2190 (longer than either). The fp32 naive loss's value and gradients within bf16 tolerance."""
    from prefopt.kernels._rows import wanted as _rowwise

    rows, cut = onepass.blocking(None, V, torch.device("cuda"), True)
    assert rows == 256 and len(cut) == slabs and onepass.stage_rows(256, V, torch.device("cuda")) == stage
    h, w, y, ref = _pairs(torch.bfloat16, B=B, T=T, D=576, V=V, device="cuda")
    exact = _loss_grads(h.detach().float().requires_grad_(), w.detach().float().requires_grad_(), y, ref, impl="naive")
    w.requires_grad_(not frozen)
    h.grad = w.grad = None
    out, _ = fused_preference_loss(h, w, y, *ref, "rpo", beta=0.1, reduction="sum", one_pass=True)
    out.losses.backward()
    assert _rowwise(h.device) and (w.grad is None) == frozen
    assert _rel_err(exact[0], out.losses.detach()) < 1e-2 and _rel_err(exact[2], h.grad) < 2e-2
    if not frozen:
        assert _rel_err(exact[3], w.grad) < 2e-2


@interp
@pytest.mark.parametrize("dora", [False, True])
def test_an_adapter_on_the_head_through_the_kernel_gets_the_naive_gradients(dora):
    """``LoRALinear.fused_operands`` (an adapter on the lm_head): the hidden states and weight
    widened by its rank (D + r = 43, no multiple of a tile) give the naive path's log-probs and
    gradients to the hidden states, A, B and DoRA's magnitudes."""
    from prefopt.lora import LoRALinear

    torch.manual_seed(0)
    layer = LoRALinear(torch.nn.Linear(40, 300, bias=False), r=3, alpha=6, dropout=0.0, dora=dora).eval()
    with torch.no_grad():
        layer.lora_B.weight.normal_(0, 0.3)
    params = [layer.lora_A.weight, layer.lora_B.weight] + ([layer.lora_magnitude] if dora else [])
    h = torch.randn(2, 19, 40, requires_grad=True)
    y = torch.randint(0, 300, (2, 19))
    y[:, :5] = -100
    got = {}
    for impl in ("naive", "triton"):
        for t in (h, *params):
            t.requires_grad_(True)
            t.grad = None
        lp = sequence_logprobs(*layer.fused_operands(h), y, impl=impl)
        lp.sum().backward()
        got[impl] = [lp.detach()] + [t.grad.clone() for t in (h, *params)]
    for mine, want in zip(got["triton"], got["naive"]):
        assert want.abs().max() > 0 and torch.allclose(mine, want, atol=1e-5, rtol=1e-4)
