"""A loss and its lm_head gradients in one pass over the logits (preference losses and SFT's NLL).

A pairwise preference loss (``prefopt.losses.PAIRWISE``) is a sum of per-pair terms; the
chosen-NLL term of ``rpo`` and ``orpo`` is a batch mean, linear in the log-probs. So once a
*stage* of whole pairs has its log-probs, the gradient of the summed loss with respect to each of
its tokens' log-probs is known: the pair's ``g = d loss / d sequence log-prob``. The forward
keeps each token's ``q = onehot − softmax`` (``dlogits = g · q``) and runs both gradient GEMMs
on them, ``grad_h = g ⊙ (q·W)`` and ``grad_W += qᵀ·(g ⊙ h)``: three GEMM passes with a trainable
head (``h·Wᵀ``, ``dlogits·W``, ``dlogitsᵀ·h``, the bare minimum) against four when the backward
recomputes the logits, and two with a frozen one. The backward only scales the stored gradients
by the upstream scalar (``_rows.scale_``).

- Pairs are grouped in order into stages of at most ``stage_rows`` tokens. A stage's logits are
  computed ``rows`` tokens at a time (``CHUNK_ELEMENTS`` logits in fp32, ``SLAB_ELEMENTS`` on
  CUDA; there a multiple of 128 tokens, cuBLAS's row tile, and at least ``SLAB_ROWS``, the
  logits then taken in vocabulary slabs: ``blocking``, ``_slabs.RowBlocks``), across pair
  boundaries: per block the GEMMs and the row passes that give the log-probs and ``q``. The
  loss's gradient (``pair_grads``) and the gradient GEMMs run once per stage. A pair longer
  than a stage alone takes two walks over its own blocks: log-probs first, then ``q`` and the
  gradients.
- On CUDA a stage holds ``GRAD_ELEMENTS`` of ``q`` in half precision (768 tokens at V=128256):
  ``grad_W``'s sum is read and written once per stage, not once per block. Elsewhere a stage is
  one block and ``q`` is formed in place in its fp32 logits. The scored tokens' hidden states
  are gathered a stage at a time.
- The default on CUDA for a trainable or a frozen head, and on a CPU for a trainable one
  (``wanted``).
- The gradients exist from the forward on: ``grad_h`` (M, D) for the M scored tokens and
  ``grad_W`` (V, D). ``grad_W`` is summed over stages in fp32 when the weight is fp32 (under
  autocast the fp32 master weight, so the sum *is* its gradient) or when V × D ≤
  ``SUM_ELEMENTS``; otherwise (a large half weight) in the weight's dtype, each stage's GEMM
  accumulating in fp32 and its result added with one rounding. In the compute dtype the first
  stage's product is written into an empty ``grad_W`` (no zero fill, no read of it).
- The output is the *sum* of the per-pair losses; per-pair values come back detached. One
  backward only.

SFT's loss, the summed token NLL, is the simplest case: every token's gradient is −1, so a
stage is any run of tokens (``onepass_nll``).
"""
from __future__ import annotations

import os
from collections.abc import Callable

import torch

from . import _backward, _rows
from ._backward import _add_mm, acc_dtype, mm_acc
from ._slabs import RowBlocks
from ._tokens import check_inputs
from .chunked import _exp_rows_, _softmax_grad_


def plan(pair_tokens: list[int], rows: int) -> list[tuple[int, int, int, int]]:
    """``(first token, end token, first pair, end pair)`` per stage: consecutive pairs whose
    tokens fit in ``rows`` together; a pair with more tokens than that is a stage of its own."""
    stages, start, tok, first = [], 0, 0, 0
    for p, n in enumerate(pair_tokens):
        if tok - start + n > rows and p > first:
            stages.append((start, tok, first, p))
            start, first = tok, p
        tok += n
    if pair_tokens:
        stages.append((start, tok, first, len(pair_tokens)))
    return stages


# On CUDA a stage holds the onehot − softmax of up to this many logits (192 MiB in bf16), its
# blocks' together, and the two gradient GEMMs run once per stage: grad_W's (V, D) sum is read and
# written once per stage, not once per block. With 128-token blocks at V=128256 that
# read-modify-write (2 GB in bf16) made grad_W's GEMM take 805 µs a block, 103 of the 233 ms of a
# forward + backward at N=16384 (an H200: docs/benchmarks.md); 512-token stages (2^26 logits until
# 2026-12-04) still spent 32.3 ms in grad_W's 32 GEMMs where one GEMM of all tokens takes about 25,
# so a stage is now 768 tokens at Llama 3's head, its logits blocks in smaller slabs
# (``SLAB_ELEMENTS``) to stay within 256 MB together.
GRAD_ELEMENTS = 96 << 20
STAGE_DEVICES = ("cuda",)  # elsewhere a stage is one block (a CPU's GEMMs are not bandwidth-bound)


def chunk_rows(budget: int | None, V: int, device: torch.device) -> int:
    """Tokens per logits block: ``budget`` (default ``CHUNK_ELEMENTS``) logits of width ``V``, rounded
    down to a multiple of ``_backward.gemm_rows`` where one fits (128 on CUDA: 130 rows would leave
    a nearly empty tile)."""
    rows, tile = max(1, (budget or _backward.CHUNK_ELEMENTS) // V), _backward.gemm_rows(device)
    return rows // tile * tile if rows >= tile else rows


# Where the row kernels run (CUDA), a logits block is at least this many tokens, its vocabulary cut
# into slabs to keep it within the budget: a 128-token GEMM (h·Wᵀ) reads the whole (V, D) weight for
# 2 × 128 FLOP a weight, below an H200's ~200 FLOP a byte, so at N=16384 and Llama 3's head the
# 128 blocks' logits took 37.5 ms (profile, 2026-12-04) where one GEMM of all tokens takes about 25.
SLAB_ROWS = {"cuda": 256}
# Where the row kernels run, a logits block's default budget (fp32: 48 MiB) when no budget is given:
# with a stage's ``GRAD_ELEMENTS`` of q (192 MiB) the head's extra memory stays within 256 MB
# (about 236 MiB at Llama 3's head: 256-token blocks in 3 slabs, 768-token stages).
SLAB_ELEMENTS = {"cuda": 12 << 20}


def blocking(budget: int | None, V: int, device: torch.device, rowwise: bool) -> tuple[int, list[tuple[int, int]]]:
    """``(tokens per logits block, the vocabulary slabs (first, end column) its logits are taken
    in)``: ``chunk_rows`` tokens and the whole vocabulary, or, where the row kernels run and that is
    fewer than ``SLAB_ROWS`` tokens, that many tokens and as few slabs as keep a block within the
    budget (whole GEMM tiles wide). The budget defaults to ``SLAB_ELEMENTS`` where the row kernels
    run on a device it names."""
    if rowwise and budget is None:
        budget = SLAB_ELEMENTS.get(device.type)
    rows, least = chunk_rows(budget, V, device), SLAB_ROWS.get(device.type, 0) if rowwise else 0
    if rows >= least:
        return rows, [(0, V)]
    unit = _backward.gemm_rows(device)
    width = -(-V // -(-least * V // (budget or _backward.CHUNK_ELEMENTS)) // unit) * unit
    return least, [(c, min(c + width, V)) for c in range(0, V, width)]


def stage_rows(rows: int, V: int, device: torch.device) -> int:
    """Tokens per stage (whole pairs, whose loss gradient and gradient GEMMs are taken together):
    ``GRAD_ELEMENTS`` of width ``V`` in whole blocks of ``rows`` where staging pays (CUDA), else
    one block."""
    if device.type not in STAGE_DEVICES:
        return rows
    return max(rows, GRAD_ELEMENTS // V // rows * rows)


def _layout(budget: int | None, hidden: torch.Tensor, weight: torch.Tensor) -> tuple[int, list | None, int]:
    """``(rows, slabs, cap)``: tokens per logits block and its vocabulary slabs (``blocking``;
    None where PyTorch's ops, not the row kernels, do the elementwise work), tokens per stage
    (``stage_rows``)."""
    rowwise = _rows.wanted(hidden.device, acc_dtype(hidden))
    rows, slabs = blocking(budget, weight.shape[0], hidden.device, rowwise)
    return rows, slabs if rowwise else None, stage_rows(rows, weight.shape[0], hidden.device)


class _OnePass(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, index, slots, stages, n_seq, pair_grads, total, dtype, rows, cap, slabs,
                tw=None):
        """``hidden`` (..., D), read only at ``index`` (a tuple of index tensors, as from
        ``nonzero(as_tuple=True)``): the M scored tokens, pair by pair (chosen's then
        rejected's), gathered one stage at a time (no (M, D) copy of them; their gradient is
        the one (M, D) tensor). ``labels`` (M,): their labels; ``slots`` (M,): each token's
        sequence (chosen p at p, rejected p at B + p). ``stages``: ``plan(.., cap)``'s;
        logits blocks of ``rows`` tokens. ``slabs``: ``blocking``'s vocabulary slabs where the
        Triton row kernels do the elementwise work, None for PyTorch's ops. ``tw`` (M,), optional:
        each token's weight in its sequence's sum (and so in its gradient)."""
        acc = acc_dtype(hidden)
        w = weight.to(dtype)
        need_h, need_w = ctx.needs_input_grad[:2]
        device = hidden.device
        sums = torch.zeros(n_seq, dtype=acc, device=device)
        M, V = labels.numel(), weight.shape[0]
        logp = torch.empty(M, dtype=acc, device=device)  # each token's, summed into sums a stage at a time
        blocks = RowBlocks(w, labels, slabs, rows, acc, dtype) if slabs else None  # the row kernels' blocks
        grad_h = torch.empty(M, hidden.shape[-1], dtype=hidden.dtype, device=device) if need_h else None
        exact = weight.dtype == acc or weight.numel() <= _backward.SUM_ELEMENTS
        w_dtype = acc if exact else weight.dtype
        unwritten = need_w and w_dtype == dtype  # in the compute dtype: empty, the first stage's product written into it
        make = torch.empty if unwritten else torch.zeros
        grad_w = make(weight.shape, dtype=w_dtype, device=weight.device) if need_w else None
        capacity = min(M, cap)
        stage = torch.empty(capacity, V, dtype=dtype, device=device) if capacity > rows else None

        def gather(a, b):  # the hidden states of tokens a:b, in the compute dtype
            return hidden[tuple(i[a:b] for i in index)].to(dtype)

        def fill(h, a, out):
            """Tokens a : a + len(h) (``h`` their hidden states), ``rows`` at a time: their log-probs,
            and ``onehot − softmax`` into ``out`` (the stage's first rows), or, with no stage (one
            block), formed in place where the dtypes allow. Returns those rows."""
            for i in range(0, h.shape[0], rows):
                j = min(i + rows, h.shape[0])
                into = None if out is None else out[i:j]
                if blocks:
                    q = blocks(h[i:j], a + i, a + j, logp[a + i:a + j], into)
                    continue
                x = mm_acc(h[i:j], w.T, acc)
                logp[a + i:a + j], _, norm = _exp_rows_(x, labels[a + i:a + j])
                q = _softmax_grad_(x, labels[a + i:a + j], norm)
                if into is not None:
                    q = into.copy_(q)
                del x  # before the next block's: one logits block alive at a time
            return q if out is None else out[:h.shape[0]]

        def backprop(a, h, q, g):
            """Both gradients for tokens a : a + len(h) from ``q = onehot − softmax`` and ``g``, their
            ``d loss / d log-prob``: ``dlogits = g·q``, so ``grad_h = g ⊙ (q·W)`` and
            ``grad_W += qᵀ·(g ⊙ h)`` (the scaling on D-wide rows, not on V-wide ones)."""
            q, g = q.to(dtype), g[:, None]
            if need_h:
                grad_h[a:a + h.shape[0]] = mm_acc(q, w, acc).mul_(g)
            if need_w:
                nonlocal unwritten
                # the first stage writes grad_w: no zero fill and no read of it (1 GB each at Llama 3's head in bf16)
                _add_mm(grad_w, q.T, torch.mul(h, g).to(dtype), write=unwritten)
                unwritten = False

        def weighted(x, a, b, local=False):
            """Tokens a:b's entries of ``x`` (``local``: ``x`` is theirs alone) times their weights."""
            x = x if local else x[a:b]
            return x if tw is None else x * tw[a:b]

        for s, e, p0, p1 in stages:
            if e == s:  # no scored tokens: nothing to add
                continue
            if e - s <= cap:
                h = gather(s, e)
                q = fill(h, s, stage)
                sums.index_add_(0, slots[s:e], weighted(logp, s, e))
                backprop(s, h, q, weighted(pair_grads(p0, p1, sums)[slots[s:e]], s, e, local=True))
                del q, h  # (with no stage, q is the logits block)
                continue
            for a in range(s, e, rows):  # a pair longer than a stage: its log-prob first,
                b = min(a + rows, e)
                if blocks:
                    blocks(gather(a, b), a, b, logp[a:b], None, grads=False)
                else:
                    logp[a:b] = _exp_rows_(mm_acc(gather(a, b), w.T, acc), labels[a:b])[0]
            sums.index_add_(0, slots[s:e], weighted(logp, s, e))
            g = weighted(pair_grads(p0, p1, sums)[slots[s:e]], s, e, local=True)
            for a in range(s, e, cap):  # then its gradients, a stage's worth at a time
                h = gather(a, min(a + cap, e))
                backprop(a, h, fill(h, a, stage), g[a - s:a - s + h.shape[0]])
        if unwritten:  # no scored tokens
            grad_w.zero_()
        ctx.grads = [grad_h, None if grad_w is None else grad_w.to(weight.dtype)]
        ctx.index, ctx.shape = index, hidden.shape
        ctx.mark_non_differentiable(sums)
        return total(sums), sums

    @staticmethod
    def backward(ctx, grad_total, _grad_sums):
        if ctx.grads is None:
            raise RuntimeError("the one-pass preference loss supports a single backward (no retain_graph)")
        grad_h, grad_w = ctx.grads
        ctx.grads = None  # handed over, so autograd can keep them as .grad without a copy
        for t in (grad_h, grad_w):
            if t is not None:
                _rows.scale_(t, grad_total)
        if grad_h is not None:  # the scored tokens' rows into a gradient shaped like hidden
            grad_h = grad_h.new_zeros(ctx.shape).index_put_(ctx.index, grad_h)
        return grad_h, grad_w, *([None] * 12)


def wanted(asked: bool | None, hidden: torch.Tensor, weight: torch.Tensor, impl: str | None) -> bool:
    """Whether to form the lm_head gradients in the forward: ``asked`` (or ``$PREFOPT_ONEPASS``
    = 0/1) where gradients are wanted at all; by default where the head is trainable and the
    log-probs would take the chunked path (a CPU), and on CUDA with the row kernels, the head
    trainable or frozen, where no implementation is forced (``impl``, ``$PREFOPT_LOGPROBS``).
    Measured (benchmarks/bench_logprobs.py, docs/benchmarks.md): on an H200 at Llama 3's head and
    16384 tokens the one-pass loss took 96.8 ms against the Triton kernel's 137.6 with a
    trainable head, 65.8 against 124.4 with a frozen one (2026-12-04)."""
    from . import requested_impl, resolve_impl

    env = os.environ.get("PREFOPT_ONEPASS", "")
    if env not in ("", "0", "1"):
        raise ValueError(f"$PREFOPT_ONEPASS must be 0 or 1 (or unset), got {env!r}")
    if asked is None and env:
        asked = env == "1"
    if asked is False or not (torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)):
        return False  # no gradients wanted: the per-token forward is all there is to do
    if asked:
        return True
    if weight.requires_grad and resolve_impl(hidden.device, impl) == "chunked":
        return True
    return (hidden.device.type == "cuda" and requested_impl(impl) == "auto"
            and _rows.wanted(hidden.device, acc_dtype(hidden)))


def _compute_dtype(hidden: torch.Tensor) -> torch.dtype:
    device = hidden.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype


def onepass_nll(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, ignore_index: int,
                budget: int | None = None) -> torch.Tensor:
    """``−Σ log p(label)`` over the scored tokens (SFT's summed loss) with the lm_head gradients
    formed in the forward. ``hidden`` (..., D), ``labels`` (...) aligned with it."""
    check_inputs(hidden, weight, labels, ignore_index)
    index = (labels != ignore_index).nonzero(as_tuple=True)
    y = labels[index]
    rows, slabs, cap = _layout(budget, hidden, weight)
    M = y.numel()
    stages = [(s, min(s + cap, M), 0, 0) for s in range(0, M, cap)]
    minus_one = torch.full((1,), -1.0, dtype=acc_dtype(hidden), device=hidden.device)
    with torch.autocast(hidden.device.type, enabled=False):
        total, _ = _OnePass.apply(hidden, weight, y, index, torch.zeros_like(y), stages, 1,
                                  lambda p0, p1, sums: minus_one, lambda sums: -sums[0], _compute_dtype(hidden), rows,
                                  cap, slabs)
    return total


def onepass_loss(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, ignore_index: int,
                 pair_loss: Callable[[torch.Tensor, slice, float], torch.Tensor],
                 budget: int | None = None,
                 pair_grad: Callable[[torch.Tensor, slice, float], torch.Tensor] | None = None,
                 token_weights: torch.Tensor | None = None,
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(summed loss, sequence log-prob sums (2B,) detached)`` for the stacked layout.

    ``hidden`` (2B, T, D), ``labels`` (2B, T). ``pair_loss(sums, pairs, scale)`` returns the
    summed loss of the pairs in ``pairs`` (a slice) from ``sums``, the (2B,) sequence
    log-probs; ``scale`` multiplies the batch-mean terms (``chosen_nll``) so that the stages'
    sums add up to the batch's (B / pairs in the stage; 1 for the whole batch).
    ``pair_grad(sums, pairs, scale)``, optional, returns that sum's gradient with respect to
    ``sums`` (2B,) in closed form; without it each stage asks autograd (some 20 more small
    operations a stage, which on a GPU cost host time). ``token_weights`` (2B, T), optional:
    each sequence's log-prob is ``Σ w_t log p_t`` (LD-DPO's weights).
    """
    check_inputs(hidden, weight, labels, ignore_index)
    R = hidden.shape[0]
    B = R // 2
    rows, slabs, cap = _layout(budget, hidden, weight)
    seq, pos = (labels != ignore_index).nonzero(as_tuple=True)  # (row, position) of each scored token
    order = torch.sort(seq % B, stable=True).indices  # pair by pair, chosen's tokens first
    seq, pos = seq.index_select(0, order), pos.index_select(0, order)
    pair_tokens = torch.bincount(seq % B, minlength=B).tolist()

    def pair_grads(p0: int, p1: int, sums: torch.Tensor) -> torch.Tensor:
        if pair_grad is not None:
            return pair_grad(sums, slice(p0, p1), B / (p1 - p0))
        x = sums.detach().clone().requires_grad_()
        with torch.enable_grad():
            loss = pair_loss(x, slice(p0, p1), B / (p1 - p0))
            (g,) = torch.autograd.grad(loss, x)
        return g

    with torch.autocast(hidden.device.type, enabled=False):
        return _OnePass.apply(hidden, weight, labels[seq, pos], (seq, pos), seq, plan(pair_tokens, cap), R,
                              pair_grads, lambda s: pair_loss(s, slice(0, B), 1.0), _compute_dtype(hidden), rows,
                              cap, slabs,
                              None if token_weights is None else token_weights[seq, pos].to(acc_dtype(hidden)))
