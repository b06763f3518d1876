"""Chunked log-probs in PyTorch: never more than ``chunk × V`` logits alive.

Forward, per chunk of tokens: logits = h Wᵀ (fp32), store only logsumexp and the target
logit. Backward recomputes each chunk's logits and forms
``dlogits = g · (onehot(y) − softmax)``, then ``grad_h = dlogits W`` and
``grad_W += dlogitsᵀ h``, accumulated in fp32.
"""
from __future__ import annotations

import torch

CHUNK_ELEMENTS = 1 << 24  # logits per chunk (64 MiB in fp32)


def _acc_dtype(x: torch.Tensor) -> torch.dtype:
    """fp32 accumulation, or fp64 for fp64 inputs (gradcheck)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _chunk_size(n: int, vocab: int) -> int:
    return max(1, min(n, CHUNK_ELEMENTS // max(vocab, 1)))


class _ChunkedLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, chunk):
        N = hidden.shape[0]
        acc = _acc_dtype(hidden)
        lse = torch.empty(N, dtype=acc, device=hidden.device)
        out = torch.empty(N, dtype=acc, device=hidden.device)
        for s in range(0, N, chunk):
            logits = (hidden[s:s + chunk] @ weight.T).to(acc)  # (c, V)
            lse[s:s + chunk] = torch.logsumexp(logits, -1)
            out[s:s + chunk] = logits.gather(-1, labels[s:s + chunk, None]).squeeze(-1) - lse[s:s + chunk]
        ctx.save_for_backward(hidden, weight, labels, lse)
        ctx.chunk = chunk
        return out

    @staticmethod
    def backward(ctx, grad_out):
        hidden, weight, labels, lse = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.empty_like(hidden) if need_h else None
        acc = lse.dtype
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
        for s in range(0, hidden.shape[0], ctx.chunk):
            h = hidden[s:s + ctx.chunk]
            logits = (h @ weight.T).to(acc)
            # dlogits = g * (onehot - softmax), written into the logits buffer
            d = torch.exp_(logits.sub_(lse[s:s + ctx.chunk, None])).neg_()
            d.scatter_add_(-1, labels[s:s + ctx.chunk, None], torch.ones_like(d[:, :1]))
            d.mul_(grad_out[s:s + ctx.chunk, None])
            if need_h:
                grad_h[s:s + ctx.chunk] = (d @ weight.to(acc)).to(hidden.dtype)
            if need_w:
                grad_w.addmm_(d.T, h.to(acc))
        return grad_h, (grad_w.to(weight.dtype) if need_w else None), None, None


def chunked_logprobs(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, chunk: int | None = None):
    """``hidden`` (N, D), ``weight`` (V, D), ``labels`` (N,) → fp32 log-probs (N,)."""
    return _ChunkedLogprobs.apply(hidden, weight, labels, chunk or _chunk_size(hidden.shape[0], weight.shape[0]))
