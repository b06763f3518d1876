"""The one-pass preference loss: the lm_head gradients formed in the forward, a chunk of whole
pairs at a time, against the naive full-logits loss (values, rewards and both gradients)."""
import pytest
import torch

import prefopt.kernels.onepass as onepass
from prefopt.kernels import fused_preference_loss
from prefopt.kernels.fused import _one_pass
from prefopt.losses import LOSSES, PAIRWISE, LossOutput, register_loss

KW = {"sigmoid": {}, "robust": {"label_smoothing": 0.1}, "hinge": {}, "ipo": {"beta": 0.5},
      "rpo": {"rpo_alpha": 0.7}, "simpo": {"beta": 2.0}, "orpo": {}, "bco_pair": {}, "nca_pair": {"beta": 0.5},
      "exo_pair": {"label_smoothing": 1e-3}, "sppo_hard": {}, "apo_zero": {"beta": 0.5}, "apo_down": {"beta": 0.5},
      "discopop": {}, "sigmoid_norm": {"beta": 0.5}, "sft": {},
      "apo_zero_unpaired": {"beta": 0.5, "undesirable_weight": 1.5}}
V = 50


def _case(dtype=torch.float64, B=3, T=9, D=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(2 * B, T, D, generator=g).to(dtype).requires_grad_()
    w = (torch.randn(V, D, generator=g) * 0.3).to(dtype).requires_grad_()
    y = torch.randint(0, V, (2 * B, T), generator=g)
    y[:, :3] = -100  # prompts
    y[1, 5:] = -100  # a short chosen answer
    y[2 * B - 2, 4:] = -100
    ref = (torch.randn(B, generator=g) * 3 - 10).double(), (torch.randn(B, generator=g) * 3 - 10).double()
    return h, w, y, ref


def _run(h, w, y, ref, loss, scale=1.0, **kw):
    h.grad = w.grad = None
    if loss in ("simpo", "orpo"):
        ref = (None, None)
    if loss == "apo_zero_unpaired":  # unpaired: each example's label
        kw = {**kw, "desirable": torch.arange(h.shape[0] // 2) % 2 == 0}
    out, lp = fused_preference_loss(h, w, y, *ref, loss, **KW[loss], **kw)
    (out.losses.sum() * scale).backward()
    grads = [None if t.grad is None else t.grad.clone() for t in (h, w)]
    return out, lp, grads


def _staged(monkeypatch, block, stage, rowwise=None):
    """Logits blocks of ``block`` tokens and, where ``stage``, stages of that many on the CPU too
    (as on CUDA); ``rowwise``: force the Triton row kernels (interpreted) or PyTorch's ops."""
    if rowwise == "triton":
        from tests.kernels._interpreter import interpreter_problem

        if interpreter_problem():
            pytest.skip(interpreter_problem())
    if rowwise:
        monkeypatch.setattr("prefopt.kernels._rows.ROWWISE", rowwise)
    monkeypatch.setattr("prefopt.kernels._backward.CHUNK_ELEMENTS", block * V)
    if stage:
        monkeypatch.setattr(onepass, "STAGE_DEVICES", ("cpu",))
        monkeypatch.setattr(onepass, "GRAD_ELEMENTS", stage * V)


@pytest.mark.parametrize("rows", [None, 13, 4])  # one chunk; pairs of 12, 3 and 12 tokens in 3 chunks; two pairs too long
@pytest.mark.parametrize("loss", sorted(KW))
def test_one_pass_equals_the_naive_loss_and_gradients(loss, rows, monkeypatch):
    assert set(KW) == {n for n in PAIRWISE if "+" not in n}  # every built-in loss is tested here (mixtures: sums)
    if rows:
        monkeypatch.setattr("prefopt.kernels._backward.CHUNK_ELEMENTS", rows * V)
    h, w, y, ref = _case()
    want, wlp, wgrad = _run(h, w, y, ref, loss, impl="naive")
    got, glp, ggrad = _run(h, w, y, ref, loss, scale=0.5, reduction="sum", one_pass=True)  # 0.5: the backward scales
    assert got.losses.dim() == 0 and torch.allclose(got.losses, want.losses.sum(), rtol=1e-12, atol=1e-12)
    for a, b in ((wlp.chosen, glp.chosen), (wlp.rejected, glp.rejected), (want.chosen_rewards, got.chosen_rewards),
                 (want.rejected_rewards, got.rejected_rewards)):
        assert torch.allclose(a.detach(), b, rtol=1e-12, atol=1e-12)
    for a, b in zip(wgrad, ggrad):
        assert a.abs().max() > 1e-3 and torch.allclose(a * 0.5, b, rtol=1e-10, atol=1e-12)


def test_chunk_rows_are_whole_gemm_tiles_on_cuda():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")  # only the device type is read
    assert onepass.chunk_rows(None, 128256, cpu) == 130 and onepass.chunk_rows(None, 128256, cuda) == 128
    assert onepass.chunk_rows(1 << 26, 128256, cuda) == 512 and onepass.chunk_rows(1 << 24, 49152, cuda) == 256
    assert onepass.chunk_rows(100 * 1000, 1000, cuda) == 100 and onepass.chunk_rows(10, 1000, cpu) == 1
    # with the row kernels on CUDA a block is at least 256 tokens, in vocabulary slabs of whole tiles within the
    # budget: SLAB_ELEMENTS (12 Mi logits) by default, or the one given
    assert onepass.blocking(None, 128256, cuda, True) == (256, [(0, 42752), (42752, 85504), (85504, 128256)])
    assert onepass.blocking(1 << 24, 128256, cuda, True) == (256, [(0, 64128), (64128, 128256)])
    assert onepass.blocking(1 << 24, 151936, cuda, True) == (256, [(0, 50688), (50688, 101376), (101376, 151936)])
    assert len(onepass.blocking(None, 151936, cuda, True)[1]) == 4
    assert onepass.blocking(None, 49152, cuda, True) == (256, [(0, 49152)])  # SmolLM2's: 256 tokens fit whole
    # and a stage of q (GRAD_ELEMENTS in bf16) with one fp32 slab of logits stays within 256 MB
    for V in (32000, 49152, 128256, 151936):
        rows, slabs = onepass.blocking(None, V, cuda, True)
        stage = onepass.stage_rows(rows, V, cuda)
        assert stage % rows == 0 and stage * V * 2 + rows * (slabs[0][1] - slabs[0][0]) * 4 < 244 << 20
    assert onepass.stage_rows(256, 128256, cuda) == 768
    assert onepass.blocking(None, 128256, cuda, False) == (128, [(0, 128256)])  # PyTorch's ops: no slabs
    assert onepass.blocking(None, 128256, cpu, True) == (130, [(0, 128256)])


def test_chunks_hold_whole_pairs_within_the_budget():
    assert onepass.plan([3, 4, 10, 2, 2], 6) == [(0, 3, 0, 1), (3, 7, 1, 2), (7, 17, 2, 3), (17, 21, 3, 5)]
    assert onepass.plan([0, 2, 0], 6) == [(0, 2, 0, 3)]
    assert onepass.plan([], 6) == []


def _count_products(monkeypatch):
    """Every logits-sized product in ``onepass`` (and ``_slabs``, the row kernels' blocks):
    ``mm_acc`` (logits, grad_h) and the weight gradient's addmm, each tagged forward or backward."""
    from prefopt.kernels import _slabs

    calls = []
    for module, name in ((onepass, "mm_acc"), (_slabs, "mm_acc"), (onepass, "_add_mm")):
        real = getattr(module, name)

        def counted(*a, _real=real, _name=name, **kw):
            calls.append((_name, torch.is_grad_enabled()))
            return _real(*a, **kw)
        monkeypatch.setattr(module, name, counted)
    return calls


@pytest.mark.parametrize("frozen", [False, True])
def test_three_products_per_chunk_all_in_the_forward(frozen, monkeypatch):
    """Both gradients: logits, dlogits·W and dlogitsᵀ·h once per chunk (the bare minimum; the
    recomputing path runs the logits twice); a frozen head: two. None in the backward."""
    monkeypatch.setattr("prefopt.kernels._backward.CHUNK_ELEMENTS", 13 * V)
    h, w, y, ref = _case(torch.float32)
    w.requires_grad_(not frozen)
    calls = _count_products(monkeypatch)
    out, _ = fused_preference_loss(h, w, y, *ref, reduction="sum", one_pass=True)
    chunks = len(onepass.plan(torch.bincount(((y != -100).nonzero()[:, 0]) % 3, minlength=3).tolist(), 13))
    assert chunks == 3 and len(calls) == chunks * (2 if frozen else 3)
    n = len(calls)
    out.losses.backward()
    assert len(calls) == n and (w.grad is None) == frozen and h.grad.abs().max() > 0


@pytest.mark.parametrize("staged", [False, True])
@pytest.mark.parametrize("large", [False, True])
def test_bf16_weight_gradient_in_fp32_or_rounded_per_chunk(large, staged, monkeypatch):
    """bf16 inputs: the weight gradient summed over chunks in fp32 (small head) or in bf16, one
    rounding per chunk (a head larger than SUM_ELEMENTS); both within bf16 tolerance of the
    fp64 gradients. ``staged``: ``onehot − softmax`` kept in a bf16 stage (as on CUDA) and scaled
    by each token's gradient on the D-wide side."""
    _staged(monkeypatch, 4, 16 if staged else 0)
    if large:
        monkeypatch.setattr("prefopt.kernels._backward.SUM_ELEMENTS", 100)
    h, w, y, ref = _case()
    _, _, want = _run(h, w, y, ref, "sigmoid", impl="naive")
    hb, wb = (t.detach().bfloat16().requires_grad_() for t in (h, w))
    got, _, grads = _run(hb, wb, y, ref, "sigmoid", reduction="sum", one_pass=True)
    assert grads[0].dtype == grads[1].dtype == torch.bfloat16
    for a, b in zip(want, grads):
        assert (a - b.double()).abs().max() / a.abs().max() < 2e-2


def test_under_autocast_the_fp32_weight_gets_an_fp32_gradient(monkeypatch):
    """fp32 parameters under bf16 autocast (CUDA training): the head runs in bf16, the weight
    gradient is summed in fp32 straight into the fp32 gradient, close to the per-token path."""
    monkeypatch.setattr("prefopt.kernels._backward.CHUNK_ELEMENTS", 13 * V)
    h, w, y, ref = _case(torch.float32)
    out = []
    for one in (False, True):
        h.grad = w.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss, _ = fused_preference_loss(h, w, y, *ref, reduction="sum", one_pass=one, impl="chunked")
        loss.losses.backward()
        out.append((loss.losses.detach(), h.grad.clone(), w.grad.clone()))
    assert out[1][1].dtype == out[1][2].dtype == torch.float32
    for a, b in zip(*out):
        assert (a - b).abs().max() <= 1e-2 * a.abs().max()


def test_when_the_gradients_are_formed_in_the_forward(monkeypatch):
    h, w, y, _ = _case(torch.float32)
    monkeypatch.delenv("PREFOPT_ONEPASS", raising=False)
    assert _one_pass(None, "sigmoid", h, w, None)  # trainable head on the chunked (CPU) path
    assert not _one_pass(None, "sigmoid", h, w.detach(), None)  # frozen head: two passes either way
    assert not _one_pass(None, "sigmoid", h, w, "naive")
    with torch.no_grad():
        assert not _one_pass(True, "sigmoid", h, w, None)  # no gradients wanted
    monkeypatch.setenv("PREFOPT_ONEPASS", "0")
    assert not _one_pass(None, "sigmoid", h, w, None)
    monkeypatch.setenv("PREFOPT_ONEPASS", "1")
    assert _one_pass(None, "sigmoid", h, w.detach(), "naive")
    monkeypatch.delenv("PREFOPT_ONEPASS")
    monkeypatch.setattr("prefopt.kernels._rows.ROWWISE", "triton")  # as on CUDA, where the row kernels run:
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.Tensor, "device", property(lambda t: cuda))  # (only the type is read)
    monkeypatch.delenv("PREFOPT_LOGPROBS", raising=False)
    assert _one_pass(None, "sigmoid", h, w.detach(), None) and _one_pass(None, "sigmoid", h, w, "auto")  # any head
    assert not _one_pass(None, "sigmoid", h, w.detach(), "triton")  # a forced implementation is kept
    monkeypatch.setenv("PREFOPT_LOGPROBS", "triton")
    assert not _one_pass(None, "sigmoid", h, w.detach(), None)
    monkeypatch.undo()
    monkeypatch.setenv("PREFOPT_ONEPASS", "true")  # not silently the default
    with pytest.raises(ValueError, match=r"\$PREFOPT_ONEPASS must be 0 or 1 \(or unset\), got 'true'"):
        _one_pass(None, "sigmoid", h, w, None)
    monkeypatch.delenv("PREFOPT_ONEPASS")

    @register_loss("test_batch_coupled")
    def coupled(lp, **_):  # each example's loss depends on the whole batch: not pairwise
        z = lp.chosen - lp.rejected
        return LossOutput(-(z - z.mean()), z.detach(), z.detach())
    try:
        assert not _one_pass(None, "test_batch_coupled", h, w, None)
        with pytest.raises(ValueError, match="needs a pairwise loss"):
            _one_pass(True, "test_batch_coupled", h, w, None)
    finally:
        LOSSES.pop("test_batch_coupled")


def test_a_second_backward_is_refused():
    h, w, y, ref = _case(torch.float32)
    out, _ = fused_preference_loss(h, w, y, *ref, reduction="sum", one_pass=True)
    out.losses.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="single backward"):
        out.losses.backward()


@pytest.mark.parametrize("frozen", [False, True])
@pytest.mark.parametrize("rows", [None, 7])
def test_nll_sum_in_one_pass_equals_the_naive_nll(frozen, rows, monkeypatch):
    """SFT's summed NLL: every token's gradient is −1, so chunks of any tokens; values and
    gradients equal the naive path, three products per chunk (two with a frozen head)."""
    from prefopt.kernels import nll_sum

    if rows:
        monkeypatch.setattr("prefopt.kernels._backward.CHUNK_ELEMENTS", rows * V)
    h, w, y, _ = _case()
    w.requires_grad_(not frozen)
    want = nll_sum(h, w, y, impl="naive")
    want.backward()
    wgrad = [None if t.grad is None else t.grad.clone() for t in (h, w)]
    h.grad = w.grad = None
    calls = _count_products(monkeypatch)
    got = nll_sum(h, w, y, one_pass=True)
    n = int((y != -100).sum())
    assert len(calls) == -(-n // (rows or n)) * (2 if frozen else 3)
    (got * 3).backward()
    assert torch.allclose(got, want, rtol=1e-12) and len(calls) == -(-n // (rows or n)) * (2 if frozen else 3)
    for a, b in zip(wgrad, (h.grad, w.grad)):
        assert (a is None) == (b is None) and (a is None or torch.allclose(a * 3, b, rtol=1e-10, atol=1e-12))


def test_a_batch_with_no_scored_tokens(monkeypatch):
    """All labels ignored: the loss is the naive one (log-prob sums 0), and the backward gives
    zero gradients, on both one-pass entry points."""
    from prefopt.kernels import nll_sum

    h, w, y, ref = _case()
    y[:] = -100
    want, _, _ = _run(h, w, y, ref, "sigmoid", impl="naive")
    got, lp, grads = _run(h, w, y, ref, "sigmoid", reduction="sum", one_pass=True)
    assert torch.allclose(got.losses, want.losses.sum()) and torch.equal(lp.chosen, torch.zeros(3, dtype=lp.chosen.dtype))
    assert all(g is not None and not g.any() for g in grads)
    h.grad = w.grad = None
    loss = nll_sum(h, w, y, one_pass=True)
    loss.backward()
    assert loss.item() == 0 and not h.grad.any() and not w.grad.any()


@pytest.mark.parametrize("dtype,large,writes", [(torch.float32, False, True), (torch.bfloat16, True, True),
                                                 (torch.bfloat16, False, False)])
def test_the_first_stage_writes_the_weight_gradient_kept_in_the_compute_dtype(dtype, large, writes, monkeypatch):
    """Where the weight gradient is kept in the compute dtype (fp32; bf16 past ``SUM_ELEMENTS``,
    as at Llama 3's head) it starts empty and the first stage's product is written into it: no
    zero fill and no read of it (1 GB each there). A small bf16 head's fp32 sum of bf16 products
    starts from zeros and adds. Gradients within the dtype's tolerance of the fp64 naive ones."""
    _staged(monkeypatch, 4, 8)
    if large:
        monkeypatch.setattr("prefopt.kernels._backward.SUM_ELEMENTS", 100)
    h, w, y, ref = _case()
    _, _, want = _run(h, w, y, ref, "sigmoid", impl="naive")
    flags, add_mm = [], onepass._add_mm
    monkeypatch.setattr(onepass, "_add_mm", lambda acc, a, b, write=False: flags.append(write) or add_mm(acc, a, b, write))
    hd, wd = (t.detach().to(dtype).requires_grad_() for t in (h, w))
    _, _, got = _run(hd, wd, y, ref, "sigmoid", reduction="sum", one_pass=True)
    assert len(flags) > 2 and flags == [writes] + [False] * (len(flags) - 1)
    for a, b in zip(want, got):
        assert (a - b.double()).abs().max() / a.abs().max() < (1e-5 if dtype == torch.float32 else 2e-2)


@pytest.mark.parametrize("rowwise", ["torch", "triton"])
def test_staged_gradient_gemms_run_once_per_stage(rowwise, monkeypatch):
    """Where dlogits are staged (CUDA; here CPU too), chunks of 4 tokens share a stage of 8: the
    gradient GEMMs run once per stage, not per chunk, with the naive loss's values and gradients."""
    _staged(monkeypatch, 4, 8, rowwise)
    assert onepass.stage_rows(4, V, torch.device("cpu")) == 8
    h, w, y, ref = _case(torch.float32)
    _, _, want = _run(h, w, y, ref, "sigmoid", impl="naive")
    calls = _count_products(monkeypatch)
    stages = []  # tokens in each weight-gradient GEMM
    add_mm = onepass._add_mm
    monkeypatch.setattr(onepass, "_add_mm", lambda acc, a, b, **kw: stages.append(a.shape[1]) or add_mm(acc, a, b, **kw))
    _, _, got = _run(h, w, y, ref, "sigmoid", reduction="sum", one_pass=True)
    chunks = sum(1 for c in calls if c[0] == "mm_acc") - len(stages)  # mm_acc: each chunk's logits, each stage's grad_h
    assert sum(stages) == int((y != -100).sum()) and max(stages) <= 8 and len(stages) < chunks
    assert any(n > 4 for n in stages)  # a stage holding more than one chunk's tokens
    for a, b in zip(want, got):
        assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("rowwise", ["torch", "triton"])
def test_pairs_longer_than_a_block_are_computed_once_within_a_stage(rowwise, monkeypatch):
    """Logits blocks of 4 tokens, stages of 16: the pairs (12, 3 and 12 scored tokens) make two
    stages (pairs 0 and 1, then pair 2), walked 4 tokens at a time across pair boundaries. Each
    token's logits are computed once (a pair longer than a block used to take two walks, 51
    token-rows for these 27 tokens), the loss gradient is taken once per stage (not per pair)
    and the gradient GEMMs run once per stage; values and gradients equal the naive loss's."""
    from prefopt.losses import PAIR_GRADS

    _staged(monkeypatch, 4, 16, rowwise)
    h, w, y, ref = _case(torch.float32)
    assert onepass.plan([12, 3, 12], 16) == [(0, 15, 0, 2), (15, 27, 2, 3)]
    _, _, want = _run(h, w, y, ref, "sigmoid", impl="naive")
    logits, products, grads = [], [], []
    mm_acc, add_mm, pair_grad = onepass.mm_acc, onepass._add_mm, PAIR_GRADS["sigmoid"]

    def counted_mm(a, b, dtype):
        (logits if b.shape == w.T.shape else products).append(a.shape[0])
        return mm_acc(a, b, dtype)
    monkeypatch.setattr(onepass, "mm_acc", counted_mm)
    monkeypatch.setattr("prefopt.kernels._slabs.mm_acc", counted_mm)  # the row kernels' blocks
    monkeypatch.setattr(onepass, "_add_mm", lambda acc, a, b, **kw: products.append(a.shape[1]) or add_mm(acc, a, b, **kw))
    monkeypatch.setitem(PAIR_GRADS, "sigmoid", lambda lp, **kw: grads.append(lp.chosen.numel()) or pair_grad(lp, **kw))
    _, _, got = _run(h, w, y, ref, "sigmoid", reduction="sum", one_pass=True)
    assert logits == [4, 4, 4, 3, 4, 4, 4] and grads == [2, 1]
    assert products == [15, 15, 12, 12]  # grad_h then grad_W, per stage
    for a, b in zip(want, got):
        assert torch.allclose(a, b, atol=1e-5)


def test_no_copy_of_all_scored_hidden_states(monkeypatch):
    """The scored tokens are read from ``hidden`` one stage at a time (here, with no staging on
    CPU, a block), whatever the view (the trainers pass ``hidden[:, :-1]``): the only (M, D)
    tensor of all M scored tokens made in the forward is their gradient (it used to gather a copy
    of their hidden states too); every other D-wide tensor but the weight's is at most a stage."""
    from torch.utils._python_dispatch import TorchDispatchMode

    monkeypatch.setattr("prefopt.kernels._backward.CHUNK_ELEMENTS", 13 * V)
    h, w, y, ref = _case(torch.float32, T=10)
    view = h[:, :-1]
    labels = y[:, 1:]
    D, rows = h.shape[-1], 13

    class Shapes(TorchDispatchMode):
        seen = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor) and t.dim() == 2 and t.shape == (t.shape[0], D) != w.shape:
                    self.seen.append(t.shape[0])
            return out
    with Shapes():
        out, _ = fused_preference_loss(view, w, labels, *ref, reduction="sum", one_pass=True)
    M = int((labels != -100).sum())
    assert M > rows and sorted(Shapes.seen)[-2:] == [rows, M], (M, Shapes.seen)
    out.losses.backward()
    got = h.grad.clone()
    h.grad = None
    want, _ = fused_preference_loss(view, w, labels, *ref, impl="naive")
    want.losses.sum().backward()
    assert torch.allclose(got, h.grad, atol=1e-6) and got[:, -1].abs().max() == 0


@pytest.mark.parametrize("staged", [False, True])
def test_one_logits_block_alive_at_a_time(staged, monkeypatch):
    """Where there is no stage (CPU), an fp32 block's ``onehot − softmax`` is formed in place in
    its logits and back-propagated from there: one (rows, V) block alive at a time (a separate
    one-block stage had two, +39 MiB in bench_logprobs.py's CPU onepass row). With a stage (CUDA;
    4-token blocks, 16-token stages here), the stage and one block: a block is freed before the
    next one's GEMM (a first version of the stages kept it, +63 MiB at Llama's head)."""
    import weakref

    from torch.utils._python_dispatch import TorchDispatchMode

    _staged(monkeypatch, 4 if staged else 13, 16 if staged else 0)
    h, w, y, ref = _case(torch.float32)
    weight = w.untyped_storage().data_ptr()  # Wᵀ is (D, V): not a block

    class Blocks(TorchDispatchMode):
        alive, most = [], 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor) and t.dim() == 2 and t.shape[1] == V and t.shape[0] > 1:
                    self.alive.append(weakref.ref(t))
            live = {r().untyped_storage().data_ptr() for r in self.alive if r() is not None} - {weight}
            self.most = max(self.most, len(live))
            return out
    with Blocks() as mode:
        out, _ = fused_preference_loss(h, w, y, *ref, reduction="sum", one_pass=True)
    rows = 4 if staged else 13
    assert onepass.stage_rows(rows, V, h.device) == (16 if staged else 13) and mode.alive
    assert mode.most == (2 if staged else 1)
    out.losses.backward()
    assert h.grad.abs().max() > 0 and w.grad.abs().max() > 0


def test_closed_form_pair_gradients_replace_autograd_and_a_users_loss_falls_back(monkeypatch):
    """Built-in losses give each chunk's pair gradients in closed form (no autograd call per
    chunk); a user's pairwise loss without one still gets them from autograd. Both equal the
    naive loss's gradients."""
    monkeypatch.setattr("prefopt.kernels._backward.CHUNK_ELEMENTS", 4 * V)
    calls = []
    real = torch.autograd.grad
    monkeypatch.setattr(torch.autograd, "grad", lambda *a, **k: calls.append(1) or real(*a, **k))
    h, w, y, ref = _case()
    for name in ("sigmoid", "users_sigmoid"):
        if name == "users_sigmoid":
            register_loss(name, pairwise=True)(lambda lp, **kw: LOSSES["sigmoid"](lp, **kw))
        try:
            _, _, want = _run_named(h, w, y, ref, name, impl="naive")
            calls.clear()
            _, _, got = _run_named(h, w, y, ref, name, reduction="sum", one_pass=True)
            assert (len(calls) == 0) == (name == "sigmoid") and (name == "sigmoid" or len(calls) >= 3)
            assert all(torch.allclose(a, b, rtol=1e-10, atol=1e-12) for a, b in zip(want, got))
        finally:
            if name == "users_sigmoid":
                for registry in (LOSSES, PAIRWISE):
                    registry.discard(name) if isinstance(registry, set) else registry.pop(name)


def _run_named(h, w, y, ref, loss, **kw):
    h.grad = w.grad = None
    out, _ = fused_preference_loss(h, w, y, *ref, loss, beta=0.1, **kw)
    out.losses.sum().backward()
    return out, None, [h.grad.clone(), w.grad.clone()]
