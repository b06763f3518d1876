"""Chunked log-probs in PyTorch: never more than one block of logits alive.

Forward, per chunk of tokens: logits = h Wᵀ (fp32), turned into ``exp(logits − row max)`` in
place; store only the logsumexp and the target's log-prob. On CUDA the elementwise work is the
Triton row kernels of ``_rows.py`` instead (one read of the logits for the forward, one more
for each dlogits block), so the path is cuBLAS GEMMs plus memory-bound row passes. Backward
(``_backward.lm_head_backward``) recomputes the logits block by block, forms
``dlogits = g · (onehot(y) − softmax)`` and runs the two gradient GEMMs with fp32
accumulation. Memory: O(``CHUNK_ELEMENTS``) beyond inputs and gradients.

Frozen weight (the LoRA case) under autograd: the hidden-state gradient per unit of upstream
gradient, ``(onehot(y) − softmax) · W``, is formed in the forward while each chunk's logits are
still alive, and the backward only scales it by ``g`` row by row. That is two GEMM-sized passes
instead of three (no recompute), for an ``(N, D)`` buffer in the input dtype (each row an fp32
GEMM's, rounded once) kept until the backward.
"""
from __future__ import annotations

import torch

from . import _backward, _rows
from ._backward import acc_dtype, block_rows, lm_head_backward, mm_acc


def _onehot_minus_softmax_(logits, y, lse):
    """``onehot(y) − exp(logits − lse)``, in place in ``logits``; labels outside ``[0, V)``
    (another slab's, or ignored) add no one-hot."""
    d = torch.exp_(logits.sub_(lse[:, None])).neg_()
    rows = ((y >= 0) & (y < logits.shape[1])).nonzero().squeeze(-1)
    return d.index_put_((rows, y.index_select(0, rows)), torch.ones((), dtype=d.dtype), accumulate=True)


def _exp_rows_(logits, y):
    """Turn a block of logits into ``exp(logits − row max)`` in place (one buffer, no other
    block-sized temporary); return the labels' log-probs, the logsumexp and the row sums."""
    target = logits.gather(-1, y[:, None]).squeeze(-1)
    top = logits.amax(-1)
    norm = logits.sub_(top[:, None]).exp_().sum(-1)
    lse = top + norm.log()
    return target - lse, lse, norm


def _softmax_grad_(e, y, norm, g=None):
    """``g · (onehot(y) − softmax)`` in place in ``e = exp(logits − row max)`` with row sums
    ``norm``; ``g`` per row, or 1."""
    if g is None:
        g = torch.ones_like(norm)
    d = e.mul_((-g / norm)[:, None])
    return d.index_put_((torch.arange(e.shape[0], device=e.device), y), g, accumulate=True)


def _dlogits(h, w, y, lse, g):
    """``g · (onehot(y) − softmax(h wᵀ − lse))`` for one block, in ``h``'s dtype."""
    return _onehot_minus_softmax_(mm_acc(h, w.T, lse.dtype), y, lse).mul_(g[:, None]).to(h.dtype)


def _dlogits_rows(h, w, y, lse, g):
    """The same through the Triton row kernel, from cuBLAS's fp32 logits."""
    return _rows.dlogits(mm_acc(h, w.T, lse.dtype), y, lse, g, dtype=h.dtype)


class _ChunkedLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, budget, grad_in_forward):
        N = hidden.shape[0]
        acc = acc_dtype(hidden)
        lse = torch.empty(N, dtype=acc, device=hidden.device)
        out = torch.empty(N, dtype=acc, device=hidden.device)
        jac = torch.empty_like(hidden) if grad_in_forward else None  # each row rounded once (an fp32 GEMM's)
        chunk = block_rows(N, weight.shape[0], budget, _backward.gemm_rows(hidden.device))
        rowwise = _rows.wanted(hidden.device, acc)
        for s in range(0, N, chunk):
            rows = slice(s, s + chunk)
            e = mm_acc(hidden[rows], weight.T, acc)  # (c, V) logits
            if rowwise:  # the Triton row kernels read them (CUDA)
                lse[rows], out[rows] = _rows.lse(e, labels[rows])
            else:  # PyTorch ops turn them into exp(logits − row max), in place
                out[rows], lse[rows], norm = _exp_rows_(e, labels[rows])
            if jac is not None:  # d logp / d h for this chunk, while its logits are alive
                if rowwise:
                    d = _rows.dlogits(e, labels[rows], lse[rows], torch.ones_like(lse[rows]), dtype=hidden.dtype)
                else:
                    d = _softmax_grad_(e, labels[rows], norm).to(hidden.dtype)
                jac[rows] = mm_acc(d, weight, acc)
                del d
            del e  # before the next chunk's: one block alive at a time
        if jac is not None:
            ctx.save_for_backward(jac)
        else:
            ctx.save_for_backward(hidden, weight, labels, lse)
        ctx.budget, ctx.grad_in_forward = budget, grad_in_forward
        return out

    @staticmethod
    def backward(ctx, grad_out):
        if ctx.grad_in_forward:
            (jac,) = ctx.saved_tensors
            grad_h = torch.empty_like(jac)  # g · jac taken in g's fp32, rounded once
            return torch.mul(jac, grad_out[:, None], out=grad_h), None, None, None, None
        hidden, weight, labels, lse = ctx.saved_tensors
        dlogits = _dlogits_rows if _rows.wanted(hidden.device, lse.dtype) else _dlogits
        tile = _backward.gemm_rows(hidden.device)
        grad_h, grad_w = lm_head_backward(hidden, weight, labels, lse, grad_out, ctx.needs_input_grad[0],
                                          ctx.needs_input_grad[1], dlogits, ctx.budget, tiles=(tile, tile))
        return grad_h, grad_w, None, None, None


def chunked_logprobs(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                     budget: int | None = None, grad_in_forward: bool | None = None) -> torch.Tensor:
    """``hidden`` (N, D), ``weight`` (V, D), ``labels`` (N,) in ``[0, V)`` (unchecked here; the
    entry points check) → fp32 log-probs (N,).

    ``budget`` caps the logits alive at once, in elements (default ``CHUNK_ELEMENTS``, 2^24).
    ``grad_in_forward``: form the hidden-state gradient in the forward (two GEMM passes, not
    three, plus an ``(N, D)`` buffer in the input dtype until the backward). ``None`` (default)
    does so when autograd will want only that gradient: grad mode on, ``hidden`` requiring grad,
    ``weight`` not (a frozen head, as under LoRA). ``False`` always recomputes in the backward.
    """
    wants_h_only = torch.is_grad_enabled() and hidden.requires_grad and not weight.requires_grad
    if grad_in_forward is None:
        grad_in_forward = wants_h_only
    elif grad_in_forward and not wants_h_only:
        raise ValueError("grad_in_forward=True needs grad mode on, hidden requiring grad and a frozen weight")
    return _ChunkedLogprobs.apply(hidden, weight, labels, budget or _backward.CHUNK_ELEMENTS, grad_in_forward)
