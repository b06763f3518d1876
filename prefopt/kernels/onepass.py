"""A loss and its lm_head gradients in one pass over the logits (preference losses and SFT's NLL).

A pairwise preference loss (``prefopt.losses.PAIRWISE``) is a sum of per-pair terms; the
chosen-NLL term of ``rpo`` and ``orpo`` is a batch mean, linear in the log-probs. So once a
chunk of *whole pairs* has its logits, the gradient of the summed loss with respect to each of
its tokens' log-probs is known: the pair's ``d loss / d sequence log-prob``. The forward then
forms ``dlogits = g · (onehot − softmax)`` while the logits are alive and runs both gradient
GEMMs at once. That is three GEMM passes with a trainable head (``h·Wᵀ``, ``dlogits·W``,
``dlogitsᵀ·h``, the bare minimum) against four when the backward recomputes the logits, and
two with a frozen one. The backward only scales the stored gradients by the upstream scalar.

- Pairs are grouped in order into chunks of at most ``CHUNK_ELEMENTS`` logits (on CUDA a
  multiple of 128 tokens, cuBLAS's row tile). A pair longer than that alone takes two walks
  over its own blocks: log-probs first, then the gradients. The scored tokens' hidden states
  are gathered a chunk at a time.
- On CUDA the chunks' dlogits (half precision there) are staged, ``GRAD_ELEMENTS`` at most,
  and the gradient GEMMs run once per stage: ``grad_W``'s sum is read and written once per
  stage rather than once per small chunk.
- The gradients exist from the forward on: ``grad_h`` (M, D) for the M scored tokens and
  ``grad_W`` (V, D). ``grad_W`` is summed over stages in fp32 when the weight is fp32 (under
  autocast the fp32 master weight, so the sum *is* its gradient) or when V × D ≤
  ``SUM_ELEMENTS``; otherwise (a large half weight) in the weight's dtype, each stage's GEMM
  accumulating in fp32 and its result added with one rounding.
- The output is the *sum* of the per-pair losses; per-pair values come back detached. One
  backward only.

SFT's loss, the summed token NLL, is the simplest case: every token's gradient is −1, so any
chunk of tokens will do (``onepass_nll``).
"""
from __future__ import annotations

import os
from collections.abc import Callable

import torch

from . import _backward, _rows
from ._backward import _add_mm, acc_dtype, mm_acc
from .chunked import _exp_rows_, _onehot_minus_softmax_, _softmax_grad_


def plan(pair_tokens: list[int], rows: int) -> list[tuple[int, int, int, int]]:
    """``(first token, end token, first pair, end pair)`` per chunk: consecutive pairs whose
    tokens fit in ``rows`` together; a pair with more tokens than that is a chunk of its own."""
    chunks, start, tok, first = [], 0, 0, 0
    for p, n in enumerate(pair_tokens):
        if tok - start + n > rows and p > first:
            chunks.append((start, tok, first, p))
            start, first = tok, p
        tok += n
    if pair_tokens:
        chunks.append((start, tok, first, len(pair_tokens)))
    return chunks


GEMM_ROWS = 128  # on CUDA, chunks are whole multiples of cuBLAS's row tile where one fits
# On CUDA the dlogits of consecutive chunks are staged, up to this many elements (128 MiB in
# bf16), and the two gradient GEMMs run once per stage: grad_W's (V, D) sum is read and written
# once per stage, not once per chunk. With 128-token chunks at V=128256 that read-modify-write
# (2 GB in bf16) made grad_W's GEMM take 805 µs a chunk, 103 of the 233 ms of a forward +
# backward at N=16384 (an H200: docs/benchmarks.md); a 512-token stage pays it a quarter as
# often, while the fp32 logits stay one 128-token chunk (63 MiB) and the staged dlogits are
# half precision (125 MiB).
GRAD_ELEMENTS = 1 << 26
STAGE_DEVICES = ("cuda",)  # elsewhere a stage is one chunk (a CPU's GEMMs are not bandwidth-bound)


def chunk_rows(budget: int | None, V: int, device: torch.device) -> int:
    """Tokens per chunk: ``budget`` (default ``CHUNK_ELEMENTS``) logits of width ``V``, rounded
    down to a multiple of ``GEMM_ROWS`` on CUDA (130 rows would leave a nearly empty tile)."""
    rows = max(1, (budget or _backward.CHUNK_ELEMENTS) // V)
    return rows // GEMM_ROWS * GEMM_ROWS if device.type == "cuda" and rows >= GEMM_ROWS else rows


def stage_rows(rows: int, V: int, device: torch.device) -> int:
    """Tokens whose dlogits are staged before the gradient GEMMs run: ``GRAD_ELEMENTS`` of width
    ``V`` (whole chunks of ``rows`` on CUDA) where staging pays, else one chunk."""
    if device.type not in STAGE_DEVICES:
        return rows
    return max(rows, GRAD_ELEMENTS // V // rows * rows)


class _OnePass(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, index, slots, chunks, n_seq, pair_grads, total, dtype, rows, rowwise):
        """``hidden`` (..., D), read only at ``index`` (a tuple of index tensors, as from
        ``nonzero(as_tuple=True)``): the M scored tokens, pair by pair (chosen's then
        rejected's), gathered one chunk at a time (no (M, D) copy of them; their gradient is
        the one (M, D) tensor). ``labels`` (M,): their labels; ``slots`` (M,): each token's
        sequence (chosen p at p, rejected p at B + p)."""
        acc = acc_dtype(hidden)
        w = weight.to(dtype)
        need_h, need_w = ctx.needs_input_grad[:2]
        sums = torch.zeros(n_seq, dtype=acc, device=hidden.device)
        M, V = labels.numel(), weight.shape[0]
        grad_h = torch.empty(M, hidden.shape[-1], dtype=hidden.dtype, device=hidden.device) if need_h else None
        exact = weight.dtype == acc or weight.numel() <= _backward.SUM_ELEMENTS
        grad_w = torch.zeros(weight.shape, dtype=acc if exact else weight.dtype, device=weight.device) if need_w else None
        capacity = min(M, stage_rows(rows, V, hidden.device))
        stage = torch.empty(capacity, V, dtype=dtype, device=hidden.device) if capacity > rows else None
        staged = [0, 0]  # the stage holds the dlogits of tokens staged[0] : staged[0] + staged[1]

        def at(a, b):
            return tuple(i[a:b] for i in index)

        def log_probs(a, b):
            """Tokens a:b: their logits block, its row sums of ``exp(logits − row max)`` (the
            PyTorch path turns the block into those, in place; None on the Triton path) and the
            logsumexp. Their log-probs go into ``sums``."""
            x = mm_acc(hidden[at(a, b)].to(dtype), w.T, acc)
            if rowwise:
                lse, logp = _rows.lse(x, labels[a:b])
                norm = None
            else:
                logp, lse, norm = _exp_rows_(x, labels[a:b])
            sums.index_add_(0, slots[a:b], logp)
            return x, norm, lse

        def backprop(a, d):  # both gradient GEMMs for tokens a : a + len(d)
            b = a + d.shape[0]
            if need_h:
                grad_h[a:b] = mm_acc(d, w, acc)
            if need_w:
                h = hidden[at(a, b)].to(dtype)
                if grad_w.dtype == acc:
                    _add_mm(grad_w, d.T, h)
                else:
                    grad_w.addmm_(d.T, h)

        def flush():
            if staged[1]:
                backprop(staged[0], stage[:staged[1]])
            staged[:] = [staged[0] + staged[1], 0]

        def dlogits(a, b, x, norm, lse, g):
            """``g · (onehot − softmax)`` for tokens a:b in the compute dtype, from their logits
            block ``x`` (or its ``exp(logits − row max)`` form when ``norm`` is given): into the
            stage, or (no stage) formed in place where the dtypes allow and back-propagated."""
            if stage is not None and staged[1] + b - a > stage.shape[0]:
                flush()
            out = None if stage is None else stage[staged[1]:staged[1] + b - a]
            if rowwise:
                d = _rows.dlogits(x, labels[a:b], lse, g, out, dtype)
            elif norm is None:
                d = _onehot_minus_softmax_(x, labels[a:b], lse).mul_(g[:, None])
            else:
                d = _softmax_grad_(x, labels[a:b], norm, g)
            if stage is None:
                backprop(a, d.to(dtype))  # no copy when x is already in the compute dtype (fp32)
                return
            if d is not out:
                out.copy_(d)
            staged[1] += b - a

        for s, e, p0, p1 in chunks:
            if e == s:  # no scored tokens: nothing to add
                continue
            if e - s <= rows:
                x, norm, lse = log_probs(s, e)
                dlogits(s, e, x, norm, lse, pair_grads(p0, p1, sums)[slots[s:e]])
                del x
                continue
            lses = [log_probs(a, min(a + rows, e))[2] for a in range(s, e, rows)]  # a pair longer
            g = pair_grads(p0, p1, sums)  # than a block: its log-prob first, then its gradients
            for a, lse in zip(range(s, e, rows), lses):
                b = min(a + rows, e)
                dlogits(a, b, mm_acc(hidden[at(a, b)].to(dtype), w.T, acc), None, lse, g[slots[a:b]])
        flush()
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
                t.mul_(grad_total.to(t.dtype))
        if grad_h is not None:  # the scored tokens' rows into a gradient shaped like hidden
            grad_h = grad_h.new_zeros(ctx.shape).index_put_(ctx.index, grad_h)
        return grad_h, grad_w, *([None] * 10)


def wanted(asked: bool | None, hidden: torch.Tensor, weight: torch.Tensor, impl: str | None) -> bool:
    """Whether to form the lm_head gradients in the forward: ``asked`` (or ``$PREFOPT_ONEPASS``
    = 0/1) where gradients are wanted at all; by default where the head is trainable and the
    log-probs would take the chunked path (measured there: benchmarks/bench_logprobs.py)."""
    from . import resolve_impl

    if asked is None and os.environ.get("PREFOPT_ONEPASS") in ("0", "1"):
        asked = os.environ["PREFOPT_ONEPASS"] == "1"
    if asked is False or not (torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)):
        return False  # no gradients wanted: the per-token forward is all there is to do
    return asked or (weight.requires_grad and resolve_impl(hidden.device, impl) == "chunked")


def _compute_dtype(hidden: torch.Tensor) -> torch.dtype:
    device = hidden.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype


def onepass_nll(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, ignore_index: int,
                budget: int | None = None) -> torch.Tensor:
    """``−Σ log p(label)`` over the scored tokens (SFT's summed loss) with the lm_head gradients
    formed in the forward. ``hidden`` (..., D), ``labels`` (...) aligned with it."""
    index = (labels != ignore_index).nonzero(as_tuple=True)
    y = labels[index]
    rows = chunk_rows(budget, weight.shape[0], hidden.device)
    M = y.numel()
    chunks = [(s, min(s + rows, M), 0, 0) for s in range(0, M, rows)]
    minus_one = torch.full((1,), -1.0, dtype=acc_dtype(hidden), device=hidden.device)
    with torch.autocast(hidden.device.type, enabled=False):
        total, _ = _OnePass.apply(hidden, weight, y, index, torch.zeros_like(y), chunks, 1,
                                  lambda p0, p1, sums: minus_one, lambda sums: -sums[0], _compute_dtype(hidden), rows,
                                  _rows.wanted(hidden.device, acc_dtype(hidden)))
    return total


def onepass_loss(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, ignore_index: int,
                 pair_loss: Callable[[torch.Tensor, slice, float], torch.Tensor],
                 budget: int | None = None,
                 pair_grad: Callable[[torch.Tensor, slice, float], torch.Tensor] | None = None,
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(summed loss, sequence log-prob sums (2B,) detached)`` for the stacked layout.

    ``hidden`` (2B, T, D), ``labels`` (2B, T). ``pair_loss(sums, pairs, scale)`` returns the
    summed loss of the pairs in ``pairs`` (a slice) from ``sums``, the (2B,) sequence
    log-probs; ``scale`` multiplies the batch-mean terms (``chosen_nll``) so that the chunks'
    sums add up to the batch's (B / pairs in the chunk; 1 for the whole batch).
    ``pair_grad(sums, pairs, scale)``, optional, returns that sum's gradient with respect to
    ``sums`` (2B,) in closed form; without it each chunk asks autograd (some 70 small
    operations a chunk, which on a GPU can cost more than the chunk's GEMMs).
    """
    R = hidden.shape[0]
    B = R // 2
    rows = chunk_rows(budget, weight.shape[0], hidden.device)
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
        return _OnePass.apply(hidden, weight, labels[seq, pos], (seq, pos), seq, plan(pair_tokens, rows), R,
                              pair_grads, lambda s: pair_loss(s, slice(0, B), 1.0), _compute_dtype(hidden), rows,
                              _rows.wanted(hidden.device, acc_dtype(hidden)))
