"""The lm_head backward shared by the chunked and Triton paths, with no ``(N, V)`` buffer.

Given the per-token logsumexp saved by the forward, the upstream gradient ``g`` and a
``dlogits(h, w, y, lse, g)`` function that recomputes one block of logits and returns
``g · (onehot(y) − softmax)`` rounded to the input dtype, the two gradient GEMMs
(``grad_h = dlogits · W``, ``grad_W = dlogitsᵀ · h``) run on the library GEMM, one block at a
time. The block is either a chunk of tokens against the whole vocabulary or a slab of the
vocabulary against all tokens, and the order is picked so that at most one gradient needs a
running fp32 sum across blocks, and the smaller one at that:

- weight frozen (the LoRA case): token chunks; each chunk's ``grad_h`` is one GEMM, written once.
- hidden frozen: vocabulary slabs; each slab's ``grad_W`` is one GEMM, written once.
- both: the order whose running sum is smaller (``grad_h``, N×D, when N < V; else ``grad_W``).

Every GEMM accumulates in fp32 (half inputs on CUDA use cuBLAS's fp32 output where a running
sum needs it), so nothing is summed in bf16 across blocks.
"""
from __future__ import annotations

import warnings

import torch

CHUNK_ELEMENTS = 1 << 24  # logits per block (64 MiB in fp32, 32 MiB in bf16)


def acc_dtype(x: torch.Tensor) -> torch.dtype:
    """fp32 accumulation, or fp64 for fp64 inputs (gradcheck)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


_OUT_DTYPE = {"ok": True}  # whether this torch's CUDA mm/addmm take out_dtype (torch >= 2.8)


def _half_on_cuda(a: torch.Tensor, dtype: torch.dtype) -> bool:
    return a.dtype != dtype and a.is_cuda and _OUT_DTYPE["ok"]


def _no_out_dtype(err: Exception) -> None:
    _OUT_DTYPE["ok"] = False
    warnings.warn(f"torch.mm(out_dtype=...) is not available on CUDA here ({type(err).__name__}); half-precision "
                  "products are rounded to half before their fp32 sum", stacklevel=3)


def mm_acc(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``a @ b`` in ``dtype``: fp32 straight out of cuBLAS for half inputs on CUDA, so the
    product is not rounded to half first; elsewhere the plain product, then cast."""
    if _half_on_cuda(a, dtype):
        try:
            return torch.mm(a, b, out_dtype=dtype)
        except (TypeError, RuntimeError, NotImplementedError) as err:
            _no_out_dtype(err)
    return (a @ b).to(dtype)


def _add_mm(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """``acc += a @ b`` with ``acc`` in fp32 (or fp64) and ``a``, ``b`` possibly half."""
    if a.dtype == acc.dtype:
        acc.addmm_(a, b)
        return
    if _half_on_cuda(a, acc.dtype):
        try:
            torch.addmm(acc, a, b, out_dtype=acc.dtype, out=acc)
            return
        except (TypeError, RuntimeError, NotImplementedError) as err:
            _no_out_dtype(err)
    if a.is_cuda:
        acc.add_(a @ b)  # each block's product rounded once; the running sum stays fp32
    else:
        acc.addmm_(a.to(acc.dtype), b.to(acc.dtype))


def block_rows(total: int, other: int, budget: int, multiple: int = 1) -> int:
    """Rows per block so that ``rows × other`` stays within ``budget`` elements, rounded down to
    a multiple of ``multiple`` (a kernel's tile, so no block ends in a mostly empty tile)."""
    rows = max(multiple, budget // max(other, 1) // multiple * multiple)
    return min(total, rows)


def lm_head_backward(hidden, weight, labels, lse, grad_out, need_h: bool, need_w: bool, dlogits,
                     budget: int | None = None, tiles: tuple[int, int] = (1, 1)):
    """``(grad_hidden or None, grad_weight or None)`` for ``logp = log_softmax(h Wᵀ)[y]``.

    ``tiles``: (tokens, vocabulary entries) per kernel tile; blocks are whole multiples of them.
    """
    budget = budget or CHUNK_ELEMENTS
    N, V = hidden.shape[0], weight.shape[0]
    acc = acc_dtype(hidden)
    g = grad_out.to(lse.dtype).contiguous()
    grad_h = grad_w = None
    if need_w and (not need_h or N < V):  # vocabulary slabs: grad_W exact per slab, grad_h summed
        sum_h = torch.zeros(hidden.shape, dtype=acc, device=hidden.device) if need_h else None
        grad_w = torch.empty_like(weight)
        step = block_rows(V, N, budget, tiles[1])
        for c in range(0, V, step):
            w = weight[c:c + step]
            d = dlogits(hidden, w, labels - c, lse, g)  # (N, slab)
            torch.mm(d.T, hidden, out=grad_w[c:c + step])
            if need_h:
                _add_mm(sum_h, d, w)
            del d  # before the next block's: one alive at a time
        grad_h = sum_h.to(hidden.dtype) if need_h else None
    elif need_h or need_w:  # token chunks: grad_h exact per chunk, grad_W summed
        grad_h = torch.empty_like(hidden) if need_h else None
        sum_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
        step = block_rows(N, V, budget, tiles[0])
        for r in range(0, N, step):
            h = hidden[r:r + step]
            d = dlogits(h, weight, labels[r:r + step], lse[r:r + step], g[r:r + step])  # (chunk, V)
            if need_h:
                torch.mm(d, weight, out=grad_h[r:r + step])
            if need_w:
                _add_mm(sum_w, d.T, h)
            del d
        grad_w = sum_w.to(weight.dtype) if need_w else None
    return grad_h, grad_w
