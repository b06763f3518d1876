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

The running sum is bounded by ``SUM_ELEMENTS`` (128 MiB in fp32): a larger one is built in
groups (of tokens for ``grad_h``, of the vocabulary for ``grad_W``), each walked through every
block. The other gradient then gets one contribution per group, added in fp32 and rounded once
into its dtype per group; with a single group (N × D ≤ 2^25 for ``grad_h``) it is written once.
So the memory beyond inputs and gradients stays O(``CHUNK_ELEMENTS`` + ``SUM_ELEMENTS``)
whatever N is.

Every GEMM accumulates in fp32 (half inputs on CUDA use cuBLAS's fp32 output where a running
sum needs it), so no block's product is rounded to half before it is summed.
"""
from __future__ import annotations

import warnings

import torch

CHUNK_ELEMENTS = 1 << 24  # logits per block (64 MiB in fp32, 32 MiB in bf16)
SUM_ELEMENTS = 1 << 25  # the fp32 running sum of one gradient, at most (128 MiB)
# Per device type, the library GEMM's row tile: a block of tokens (or of vocabulary rows) that
# feeds it is a whole multiple of this where it can be, so no block's GEMM ends in a nearly empty
# tile (at V=128256 the budget gives 130 rows, 128 of them in one cuBLAS tile and 2 in another).
GEMM_ROWS = {"cuda": 128}


def gemm_rows(device: torch.device) -> int:
    """The multiple that token blocks on ``device`` are rounded to (``GEMM_ROWS``; else 1)."""
    return GEMM_ROWS.get(device.type, 1)


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


def _add_mm(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor, write: bool = False) -> None:
    """``acc += a @ b`` with ``acc`` in fp32 (or fp64) and ``a``, ``b`` possibly half; or in
    ``a``'s dtype. ``write``: ``acc = a @ b`` (``acc`` in ``a``'s dtype), ``acc`` never read."""
    if a.dtype == acc.dtype:
        torch.mm(a, b, out=acc) if write else acc.addmm_(a, b)
        return
    if write:
        raise ValueError(f"_add_mm: write wants acc in a's dtype ({a.dtype}), got {acc.dtype}")
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


def _set_or_add(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor, first: bool) -> None:
    """``out = a @ b`` for the first group, else ``out += a @ b``: the sum taken in fp32 (or
    fp64) and rounded once into ``out``'s dtype."""
    if first:
        torch.mm(a, b, out=out)
        return
    total = out.to(acc_dtype(out))
    _add_mm(total, a, b)
    out.copy_(total)


def lm_head_backward(hidden, weight, labels, lse, grad_out, need_h: bool, need_w: bool, dlogits,
                     budget: int | None = None, tiles: tuple[int, int] = (1, 1), sum_budget: int | None = None):
    """``(grad_hidden or None, grad_weight or None)`` for ``logp = log_softmax(h Wᵀ)[y]``.

    ``budget``: dlogits elements per block (default ``CHUNK_ELEMENTS``). ``sum_budget``: elements
    of the fp32 running sum (default ``SUM_ELEMENTS``); past it, the summed gradient is built
    group by group, and the other one gets one fp32 sum and one rounding per extra group.
    ``tiles``: (tokens, vocabulary entries) per kernel tile; blocks are whole multiples of them.
    """
    budget, sum_budget = budget or CHUNK_ELEMENTS, sum_budget or SUM_ELEMENTS
    (N, D), V = hidden.shape, weight.shape[0]
    acc = acc_dtype(hidden)
    g = grad_out.to(lse.dtype).contiguous()
    grad_h = torch.empty_like(hidden) if need_h else None
    grad_w = torch.empty_like(weight) if need_w else None
    if need_w and (not need_h or N < V):  # groups of tokens, each walked by vocabulary slabs:
        group = block_rows(N, D, sum_budget, tiles[0]) if need_h else N  # grad_h summed in fp32
        for r in range(0, N, group):
            h, rows = hidden[r:r + group], slice(r, r + group)
            sum_h = torch.zeros(h.shape, dtype=acc, device=h.device) if need_h else None
            step = block_rows(V, h.shape[0], budget, tiles[1])
            for c in range(0, V, step):
                w = weight[c:c + step]
                d = dlogits(h, w, labels[rows] - c, lse[rows], g[rows])  # (group, slab)
                _set_or_add(grad_w[c:c + step], d.T, h, first=r == 0)
                if need_h:
                    _add_mm(sum_h, d, w)
                del d  # before the next block's: one alive at a time
            if need_h:
                grad_h[rows] = sum_h
            del sum_h
    elif need_h or need_w:  # groups of the vocabulary, each walked by token chunks:
        group = block_rows(V, D, sum_budget, tiles[1]) if need_w else V  # grad_W summed in fp32
        for c in range(0, V, group):
            w = weight[c:c + group]
            sum_w = torch.zeros(w.shape, dtype=acc, device=w.device) if need_w else None
            step = block_rows(N, w.shape[0], budget, tiles[0])
            for r in range(0, N, step):
                h = hidden[r:r + step]
                d = dlogits(h, w, labels[r:r + step] - c, lse[r:r + step], g[r:r + step])  # (chunk, group)
                if need_h:
                    _set_or_add(grad_h[r:r + step], d, w, first=c == 0)
                if need_w:
                    _add_mm(sum_w, d.T, h)
                del d
            if need_w:
                grad_w[c:c + group] = sum_w
            del sum_w
    return grad_h, grad_w
