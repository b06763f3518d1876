"""Chunked log-probs in PyTorch: never more than one block of logits alive.

Forward, per chunk of tokens: logits = h Wᵀ (fp32), store only logsumexp and the target
logit. Backward (``_backward.lm_head_backward``) recomputes the logits block by block, forms
``dlogits = g · (onehot(y) − softmax)`` and runs the two gradient GEMMs with fp32
accumulation. Memory: O(``CHUNK_ELEMENTS``) beyond inputs and gradients.
"""
from __future__ import annotations

import torch

from . import _backward
from ._backward import acc_dtype, block_rows, lm_head_backward, mm_acc


def _dlogits(h, w, y, lse, g):
    """``g · (onehot(y) − softmax(h wᵀ − lse))`` for one block, in ``h``'s dtype; labels outside
    ``[0, len(w))`` (another slab's, or ignored) add no one-hot."""
    d = torch.exp_(mm_acc(h, w.T, lse.dtype).sub_(lse[:, None])).neg_()
    rows = ((y >= 0) & (y < w.shape[0])).nonzero().squeeze(-1)
    d.index_put_((rows, y.index_select(0, rows)), torch.ones((), dtype=d.dtype), accumulate=True)
    return d.mul_(g[:, None]).to(h.dtype)


class _ChunkedLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, budget):
        N = hidden.shape[0]
        acc = acc_dtype(hidden)
        lse = torch.empty(N, dtype=acc, device=hidden.device)
        out = torch.empty(N, dtype=acc, device=hidden.device)
        chunk = block_rows(N, weight.shape[0], budget)
        for s in range(0, N, chunk):
            logits = mm_acc(hidden[s:s + chunk], weight.T, acc)  # (c, V)
            lse[s:s + chunk] = torch.logsumexp(logits, -1)
            out[s:s + chunk] = logits.gather(-1, labels[s:s + chunk, None]).squeeze(-1) - lse[s:s + chunk]
        ctx.save_for_backward(hidden, weight, labels, lse)
        ctx.budget = budget
        return out

    @staticmethod
    def backward(ctx, grad_out):
        hidden, weight, labels, lse = ctx.saved_tensors
        grad_h, grad_w = lm_head_backward(hidden, weight, labels, lse, grad_out, ctx.needs_input_grad[0],
                                          ctx.needs_input_grad[1], _dlogits, ctx.budget)
        return grad_h, grad_w, None, None


def chunked_logprobs(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                     budget: int | None = None) -> torch.Tensor:
    """``hidden`` (N, D), ``weight`` (V, D), ``labels`` (N,) → fp32 log-probs (N,).

    ``budget`` caps the logits alive at once, in elements (default ``CHUNK_ELEMENTS``, 2^24).
    """
    return _ChunkedLogprobs.apply(hidden, weight, labels, budget or _backward.CHUNK_ELEMENTS)
