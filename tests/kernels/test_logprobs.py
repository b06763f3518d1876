"""Chunked log-probs against the naive full-logits reference: values and gradients."""
import pytest
import torch

from prefopt.kernels import sequence_logprobs
from prefopt.kernels.chunked import chunked_logprobs


def _case(dtype, N=37, D=64, V=1000, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(N, D, generator=g).to(dtype).requires_grad_()
    w = (torch.randn(V, D, generator=g) * 0.3).to(dtype).requires_grad_()
    y = torch.randint(0, V, (N,), generator=g)
    y[::4] = -100
    return h, w, y, torch.randn(N, generator=g)


def _run(impl, h, w, y, g):
    h.grad = w.grad = None
    lp = sequence_logprobs(h, w, y, impl=impl)
    (lp * g).sum().backward()
    return lp.detach(), *(None if t.grad is None else t.grad.clone() for t in (h, w))


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_chunked_matches_naive_values_and_gradients(dtype, tol, monkeypatch):
    monkeypatch.setattr("prefopt.kernels._backward.CHUNK_ELEMENTS", 7 * 1000)  # 7-token chunks: uneven tail
    h, w, y, g = _case(dtype)
    ref = _run("naive", h, w, y, g)
    got = _run("chunked", h, w, y, g)
    assert torch.equal(got[0][y == -100], torch.zeros(int((y == -100).sum())))
    for a, b in zip(ref, got):
        scale = a.float().abs().max().clamp(min=1)
        assert ((a.float() - b.float()).abs().max() / scale) < tol


@pytest.mark.parametrize("N,V", [(37, 1000), (60, 25)])  # N < V: vocabulary slabs; N >= V: token chunks
@pytest.mark.parametrize("need", ["both", "hidden", "weight"])
@pytest.mark.parametrize("sum_rows", [None, 4])  # the fp32 running sum: whole, or groups of 4 rows
def test_every_backward_order_matches_naive(N, V, need, sum_rows, monkeypatch):
    """Each way ``lm_head_backward`` can walk the blocks (token chunks or vocabulary slabs, with
    an fp32 running sum of one gradient or none, whole or in groups) gives the naive gradients;
    the small budgets force several uneven blocks and groups either way."""
    if sum_rows:
        monkeypatch.setattr("prefopt.kernels._backward.SUM_ELEMENTS", sum_rows * 64)
    h, w, y, g = _case(torch.float32, N=N, V=V)
    h.requires_grad_(need != "weight")
    w.requires_grad_(need != "hidden")
    ref = _run("naive", h, w, y, g)
    h.grad = w.grad = None
    lp = chunked_logprobs(h[y != -100], w, y[y != -100], budget=7 * max(N, V) // 3)
    (lp * g[y != -100]).sum().backward()
    assert torch.allclose(lp.detach(), ref[0][y != -100], atol=1e-5)
    for want, got, needed in ((ref[1], h.grad, need != "weight"), (ref[2], w.grad, need != "hidden")):
        assert (got is not None) == needed
        if needed:
            assert (want - got).abs().max() < 1e-5


def test_frozen_weight_and_batched_shapes():
    h, w, y, g = _case(torch.float32)
    w.requires_grad_(False)
    lp = sequence_logprobs(h.reshape(1, 37, 64), w, y.reshape(1, 37))
    assert lp.shape == (1, 37)
    (lp.reshape(-1) * g).sum().backward()
    assert h.grad is not None and w.grad is None
    ref = torch.log_softmax(h.detach() @ w.T, -1).gather(-1, y.clamp(min=0)[:, None]).squeeze(-1)
    assert torch.allclose(lp.reshape(-1)[y != -100], ref[y != -100], atol=1e-5)


def test_all_ignored_gives_zeros_and_bad_impl_is_refused(monkeypatch):
    h, w, y, _ = _case(torch.float32)
    assert torch.equal(sequence_logprobs(h, w, torch.full_like(y, -100)), torch.zeros(37))
    with pytest.raises(ValueError, match=r"unknown log-prob implementation 'magic'; choose from"):
        sequence_logprobs(h, w, y, impl="magic")
    monkeypatch.setenv("PREFOPT_LOGPROBS", "magic")  # the variable named where the name came from it
    with pytest.raises(ValueError, match=r"'magic' \(from \$PREFOPT_LOGPROBS\); choose from"):
        sequence_logprobs(h, w, y)


@pytest.mark.parametrize("entry", ["naive", "chunked", "triton", "fused", "onepass", "nll_sum", "onepass_nll"])
def test_a_label_outside_the_vocabulary_is_refused_by_name(entry):
    """A scored label outside ``[0, V)`` (a tokenizer with tokens the head lacks; a wrong
    ignore_index) is refused before any work, naming its position and value, by every entry
    point and implementation: the Triton kernels would otherwise return a wrong log-prob
    silently. ``ignore_index`` itself, whatever its value, passes."""
    from prefopt.kernels import fused_preference_loss, nll_sum

    if entry == "triton":
        from tests.kernels._interpreter import interpreter_problem

        if interpreter_problem():
            pytest.skip(interpreter_problem())
    g = torch.Generator().manual_seed(0)
    h = torch.randn(4, 6, 8, generator=g, requires_grad=True)
    w = torch.randn(20, 8, generator=g, requires_grad=True)
    y = torch.randint(0, 20, (4, 6), generator=g)
    y[:, :2] = -1  # prompts, under a non-default ignore_index
    ref = torch.zeros(2)
    run = {"fused": lambda y: fused_preference_loss(h, w, y, ref, ref, ignore_index=-1, one_pass=False),
           "onepass": lambda y: fused_preference_loss(h, w, y, ref, ref, ignore_index=-1, reduction="sum",
                                                      one_pass=True),
           "nll_sum": lambda y: nll_sum(h, w, y, ignore_index=-1, one_pass=False),
           "onepass_nll": lambda y: nll_sum(h, w, y, ignore_index=-1, one_pass=True),
           }.get(entry, lambda y: sequence_logprobs(h, w, y, ignore_index=-1, impl=entry))
    run(y)  # every label in range, -1 ignored
    for bad in (20, -100):  # one past the head; the default ignore_index, not this call's
        y2 = y.clone()
        y2[2, 4] = bad
        with pytest.raises(ValueError, match=rf"labels\[2, 4\] = {bad}: not a token of the lm_head's vocabulary "
                                             r"\[0, 20\) nor ignore_index \(-1\)"):
            run(y2)


@pytest.mark.parametrize("impl", ["naive", "chunked", "triton", "raw triton"])
def test_inputs_the_kernels_would_misread_are_refused(impl):
    """A width that differs from the head's, labels shaped unlike ``hidden`` (not aligned), float
    labels and a weight that is not (V, D) are refused with the shapes named. Before, the Triton
    path returned log-probs for the first three (a width read with the wrong stride, the
    positions the labels happen to cover, labels cast), and the others did for misaligned labels."""
    if "triton" in impl:
        from tests.kernels._interpreter import interpreter_problem

        if interpreter_problem():
            pytest.skip(interpreter_problem())
    h, w, y = torch.randn(5, 16), torch.randn(20, 16), torch.tensor([1, 2, 3, 3, 4])

    def run(h, w, y):
        if impl == "raw triton":
            from prefopt.kernels.triton_logprobs import triton_logprobs

            return triton_logprobs(h, w, y)
        return sequence_logprobs(h, w, y, impl=impl)
    for args, err, match in [
        ((h, torch.randn(20, 12), y), ValueError, r"hidden \(5, 16\) must end in the lm_head's width D = 12"),
        ((h, w, y[:4]), ValueError, r"labels \(4,\) must be shaped like hidden without its last dimension, \(5,\)"),
        ((h, w, y.float()), TypeError, "labels must be integer token ids, got torch.float32"),
        ((h, w[None], y), ValueError, r"weight must be the \(V, D\) lm_head weight, got shape \(1, 20, 16\)"),
    ]:
        with pytest.raises(err, match=match):
            run(*args)
    assert run(h, w, y).shape == (5,)
    if impl != "raw triton":  # (R, T, D) with (R, T - 1) labels: the shift forgotten on one side
        with pytest.raises(ValueError, match=r"labels \(2, 4\) must be shaped like hidden"):
            run(torch.randn(2, 5, 16), w, torch.randint(0, 20, (2, 4)))
    if impl == "naive":  # the fused loss says so too, before it reads the batch size from the labels
        from prefopt.kernels import fused_preference_loss

        with pytest.raises(ValueError, match=r"labels \(2, 5\) must be shaped like hidden without its last dimension, "
                                             r"\(4, 5\)"):
            fused_preference_loss(torch.randn(4, 5, 16), w, torch.randint(0, 20, (2, 5)), torch.zeros(2), torch.zeros(2))


def test_chunked_gradcheck_float64():
    g = torch.Generator().manual_seed(1)
    h = torch.randn(5, 4, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(11, 4, dtype=torch.float64, generator=g, requires_grad=True)
    y = torch.randint(0, 11, (5,), generator=g)
    assert torch.autograd.gradcheck(lambda a, b: chunked_logprobs(a, b, y, budget=22), (h, w))


@pytest.mark.parametrize("impl", ["chunked", "naive"])
def test_autocast_runs_the_head_in_the_autocast_dtype(impl):
    """fp32 hidden states and weight under bf16 autocast (CUDA training with fp32 parameters):
    the head runs in bf16, as ``F.linear`` would, and the gradients come back in fp32."""
    h, w, y, g = _case(torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lp = sequence_logprobs(h, w, y, impl=impl)
    (lp * g).sum().backward()
    assert lp.dtype == torch.float32 and h.grad.dtype == w.grad.dtype == torch.float32
    ref = _run(impl, h.detach().bfloat16().requires_grad_(), w.detach().bfloat16().requires_grad_(), y, g)
    assert torch.equal(lp.detach(), ref[0])
    assert torch.equal(h.grad, ref[1].float()) and torch.equal(w.grad, ref[2].float())


def test_backward_blocks_are_whole_tiles():
    """Blocks are whole multiples of the kernel's tile (a 130-token chunk would leave a second
    128-token tile holding 2 tokens) and never smaller than one tile or larger than the total."""
    from prefopt.kernels._backward import block_rows

    assert block_rows(16384, 128256, 1 << 24, 128) == 128  # 2^24 // 128256 = 130 tokens -> 128
    assert block_rows(100, 1000, 50_000, 16) == 48
    assert block_rows(100, 10**6, 1000, 16) == 16  # the budget fits less than one tile
    assert block_rows(10, 1000, 10**6, 16) == 10
    assert block_rows(37, 1000, 7000) == 7  # the chunked path on CPU: any size


def _count_gemms(monkeypatch):
    """Count the chunked path's logits-sized products (``mm_acc`` calls), forward and backward."""
    import prefopt.kernels.chunked as chunked

    calls = []
    real = chunked.mm_acc

    def counted(a, b, dtype):
        calls.append(tuple(a.shape))
        return real(a, b, dtype)
    monkeypatch.setattr(chunked, "mm_acc", counted)
    return calls


@pytest.mark.parametrize("frozen", [False, True])
def test_chunked_blocks_are_whole_gemm_tiles_where_the_device_has_them(frozen, monkeypatch):
    """On CUDA the chunked path's token blocks (forward, the frozen head's gradient in the
    forward) and the backward's vocabulary slabs are whole multiples of cuBLAS's 128-row tile
    (``_backward.GEMM_ROWS``; 130 tokens at V=128256 left a 2-token tile). Here the CPU is given
    a tile of 8: for the 27 scored tokens, 11-token budget blocks become 8 and the backward's
    20-row vocabulary slabs 16, and the values and gradients stay the naive path's."""
    monkeypatch.setattr("prefopt.kernels._backward.CHUNK_ELEMENTS", 11 * 50)
    monkeypatch.setattr("prefopt.kernels._backward.GEMM_ROWS", {"cpu": 8})
    h, w, y, g = _case(torch.float32, V=50)
    w.requires_grad_(not frozen)
    M, D = int((y != -100).sum()), h.shape[1]
    want = _run("naive", h, w, y, g)
    import prefopt.kernels.chunked as chunked

    products, mm_acc = [], chunked.mm_acc  # the shape of each product: (rows, columns)
    monkeypatch.setattr(chunked, "mm_acc", lambda a, b, dtype: products.append((a.shape[0], b.shape[1])) or
                        mm_acc(a, b, dtype))
    got = _run("chunked", h, w, y, g)
    assert M == 27
    assert [r for r, c in products if c == 50] == [8, 8, 8, 3]  # the forward's logits blocks
    if frozen:  # each block's hidden-state gradient in the forward, (block, V) · W
        assert [r for r, c in products if c == D] == [8, 8, 8, 3]
    else:  # the backward: each vocabulary slab's logits for all the tokens, h · slabᵀ
        assert [c for r, c in products if r == M] == [16, 16, 16, 2]
    for a, b in zip(want, got):
        assert (a is None) == (b is None) and (a is None or torch.allclose(a, b, atol=1e-5))


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_frozen_head_forms_the_hidden_gradient_in_the_forward(dtype, tol, monkeypatch):
    """Frozen weight under autograd (LoRA): two GEMMs per chunk, both in the forward, none in
    the backward; values and gradient match the naive path and the recomputing backward."""
    monkeypatch.setattr("prefopt.kernels._backward.CHUNK_ELEMENTS", 7 * 1000)  # 7-token chunks: uneven tail
    h, w, y, g = _case(dtype)
    w.requires_grad_(False)
    ref = _run("naive", h, w, y, g)
    calls = _count_gemms(monkeypatch)
    lp = sequence_logprobs(h, w, y, impl="chunked")
    chunks = -(-int((y != -100).sum()) // 7)
    assert len(calls) == 2 * chunks  # logits, then (onehot - softmax) . W, chunk by chunk
    h.grad = None
    (lp * g).sum().backward()
    assert len(calls) == 2 * chunks and h.grad.dtype == dtype and w.grad is None
    scale = ref[1].float().abs().max()
    assert torch.allclose(lp.detach(), ref[0], atol=tol)
    assert ((h.grad.float() - ref[1].float()).abs().max() / scale) < tol
    grad_early = h.grad.clone()
    h.grad = None
    keep = y != -100
    (chunked_logprobs(h[keep], w, y[keep], budget=7000, grad_in_forward=False) * g[keep]).sum().backward()
    assert len(calls) == 2 * chunks + chunks + chunks  # recompute in the backward: one more pass
    assert ((h.grad.float() - grad_early.float()).abs().max() / scale) < tol


def test_the_frozen_heads_buffer_is_in_the_input_dtype():
    """The hidden-state gradient formed in the forward is kept in the input dtype (bf16: half
    of fp32's (N, D), 128 MiB instead of 256 at D=4096, N=16384), rounded once from each
    chunk's fp32 GEMM; the backward scales it in fp32 and rounds once more. Against an fp64
    reference that is as close as bf16 allows."""
    h, w, y, g = _case(torch.float64)
    keep = y != -100
    h, y, g, w = h[keep].detach().requires_grad_(), y[keep], g[keep], w.detach()
    (want,) = torch.autograd.grad((torch.log_softmax(h @ w.T, -1).gather(-1, y[:, None]) * g[:, None]).sum(), h)
    hb = h.detach().bfloat16().requires_grad_()
    lp = chunked_logprobs(hb, w.bfloat16(), y, budget=7000)
    (buffer,) = lp.grad_fn.saved_tensors
    assert buffer.dtype == torch.bfloat16 and buffer.shape == hb.shape
    (got,) = torch.autograd.grad((lp * g.float()).sum(), hb)
    assert got.dtype == torch.bfloat16 and (got.double() - want).abs().max() / want.abs().max() < 1e-2


def test_grad_in_forward_only_where_autograd_wants_the_hidden_gradient_alone(monkeypatch):
    h, w, y, g = _case(torch.float32)
    keep = y != -100
    h, y, g = h[keep].detach().requires_grad_(), y[keep], g[keep]
    calls = _count_gemms(monkeypatch)
    with torch.no_grad():  # evaluation, reference passes: the forward pass alone
        chunked_logprobs(h, w.detach(), y)
    chunked_logprobs(h.detach(), w.detach(), y)
    chunked_logprobs(h, w, y)  # both gradients: the backward recomputes (as before)
    assert len(calls) == 3
    with pytest.raises(ValueError, match="frozen weight"):
        chunked_logprobs(h, w, y, grad_in_forward=True)
    with pytest.raises(ValueError, match="grad mode"), torch.no_grad():
        chunked_logprobs(h, w.detach(), y, grad_in_forward=True)


def test_running_sum_in_groups_is_bounded_and_as_precise_in_bf16(monkeypatch):
    """Past ``SUM_ELEMENTS`` the summed gradient is built group by group (its fp32 buffer never
    holds more rows than that), and the other gradient, summed over the groups in fp32 and
    rounded once per group, stays as close to an fp32 reference as the ungrouped result."""
    import prefopt.kernels._backward as bw

    h, w, y, g = _case(torch.bfloat16, N=48, V=1000, seed=3)
    keep = y != -100
    h, y, g = h[keep].detach().requires_grad_(), y[keep], g[keep]
    exact = _run("naive", h.detach().float().requires_grad_(), w.detach().float().requires_grad_(), y, g)
    whole = _run("chunked", h, w, y, g)
    rows = []
    real = bw.torch.zeros

    def zeros(shape, **kw):  # (torch.zeros is patched for every caller: keep the 2-D sums)
        if len(shape) == 2:
            rows.append(shape[0])
        return real(shape, **kw)
    monkeypatch.setattr(bw.torch, "zeros", zeros)
    monkeypatch.setattr(bw, "SUM_ELEMENTS", 10 * 64)  # groups of 10 tokens (the last one 6)
    grouped = _run("chunked", h, w, y, g)
    assert rows == [10, 10, 10, 6]
    for e, a, b in zip(exact[1:], whole[1:], grouped[1:]):
        err_whole, err_grouped = ((e - t.float()).abs().max() / e.abs().max() for t in (a, b))
        assert err_grouped <= 1.5 * err_whole + 1e-3 and err_grouped < 1e-2


def test_adding_a_group_sums_in_fp32_and_rounds_once():
    from prefopt.kernels._backward import _set_or_add

    g = torch.Generator().manual_seed(0)
    out, a, b = (torch.randn(*s, generator=g).bfloat16() for s in ((30, 20), (30, 300), (300, 20)))
    want = (out.float() + a.float() @ b.float()).bfloat16()
    _set_or_add(out, a, b, first=False)
    assert torch.equal(out, want)
    _set_or_add(out, a, b, first=True)
    assert torch.equal(out, (a @ b))


@pytest.mark.parametrize("entry", ["sequence_logprobs", "nll_sum one pass", "preference one pass"])
def test_the_scored_tokens_are_gathered_without_copying_the_hidden_view(entry):
    """The trainers pass ``hidden[:, :-1]`` (not contiguous). Only the scored rows may be read:
    no tensor as large as the view is made in the forward (``reshape`` used to copy it whole)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from prefopt.kernels import fused_preference_loss, nll_sum

    class Largest(TorchDispatchMode):
        largest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor):
                    self.largest = max(self.largest, t.numel())
            return out

    g = torch.Generator().manual_seed(0)
    full = torch.randn(4, 201, 64, generator=g, requires_grad=True)
    w = torch.randn(50, 64, generator=g, requires_grad=True)
    hidden = full[:, :-1]
    y = torch.full((4, 200), -100)
    y[:, -3:] = 7  # three scored tokens a row
    with Largest() as mode:
        if entry == "sequence_logprobs":
            sequence_logprobs(hidden, w.detach(), y)
        elif entry == "nll_sum one pass":
            nll_sum(hidden, w, y, one_pass=True)
        else:
            fused_preference_loss(hidden, w, y, torch.zeros(2), torch.zeros(2), reduction="sum", one_pass=True)
    assert not hidden.is_contiguous() and mode.largest < hidden.numel() // 10
