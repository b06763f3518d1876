"""Row-wise elementwise work over a block of fp32 logits that cuBLAS wrote: Triton kernels.

``lse``: one read of each row (online max and sum-exp, the label's logit), split over up to
``SPLITS`` programs a row and joined, gives its logsumexp and the label's log-prob.
``dlogits``: one more read writes ``g · (onehot(y) − softmax)`` in the compute dtype. About 14
bytes of traffic per logit (cuBLAS's fp32 write 4, reads 4 + 4, write 2) where the chain of
PyTorch ops (subtract, exp, sum, log, gather, scale, one-hot, cast) takes about 40. Labels
outside ``[0, V)`` (another vocabulary slab's) add no one-hot. ``rescale`` turns a slab's
softmax by its own logsumexp into the row's, once the other slabs are known (the one-pass
loss's vocabulary slabs); ``parts(.., out=)`` writes a slab's softmax by each split's own
logsumexp in the same read as its logsumexp, for ``rescale(.., per_split=True)``. ``scale_``
multiplies a gradient by a device scalar in fp32.

Used on CUDA by the one-pass loss (``onepass.py``) and the chunked log-probs (``chunked.py``)
when Triton is installed; elsewhere those use PyTorch ops. Tests force the kernels on CPU
(under ``TRITON_INTERPRET=1``) with ``ROWWISE = "triton"``.
"""
from __future__ import annotations

import torch

ROWWISE: str | None = None  # "triton" or "torch" forces one; None: triton on CUDA
BLOCKS = {"lse": 4096, "dlogits": 2048, "join": 128, "scale": 4096, "interpreted": 64}
SPLITS = 8  # programs per row for the logsumexp, at most (a power of two)


def wanted(device: torch.device, acc: torch.dtype = torch.float32) -> bool:
    """Whether the row kernels do the elementwise work for fp32 (``acc``) logits on ``device``."""
    if acc != torch.float32:  # fp64 (gradcheck) stays in PyTorch
        return False
    if ROWWISE is not None:
        return ROWWISE == "triton"
    from .triton_logprobs import available

    return device.type == "cuda" and available(device)


def _splits(V: int, block: int) -> int:
    """Programs per row for ``_row_lse``: a power of two, at least 2 and at most ``SPLITS``, no
    more than the row's tiles of ``block`` rounded up to a power of two (a split may be empty)."""
    tiles = -(-V // block)
    return max(2, min(SPLITS, 1 << (tiles - 1).bit_length()))


def _block(kind: str) -> int:
    """Elements a program takes at a time for ``kind`` (a key of ``BLOCKS``); small when interpreted."""
    from . import _triton_kernels as k

    return BLOCKS["interpreted" if k.INTERPRETED else kind]


def _split_width(V: int) -> tuple[int, int, int]:
    """``(splits, columns per split, block)`` for ``_row_lse`` over rows ``V`` wide."""
    block = _block("lse")
    splits = _splits(V, block)
    return splits, -(-V // splits // block) * block, block


def parts(x: torch.Tensor, y: torch.Tensor, into: tuple[torch.Tensor, torch.Tensor],
          out: torch.Tensor | None = None) -> int:
    """The split parts of each row of the fp32 logits ``x`` (n, V) into ``into``: two fp32
    ``(≥ splits, n)`` tensors, rows contiguous, ``n`` apart: each split's logsumexp and the
    label's logit where the split holds it, else 0 (a label outside ``[0, V)``, a vocabulary
    slab's whose label lies in another, has none). Rows past this row's splits are not written:
    −inf and 0 there, left so by whoever made ``into``, join as empty parts. With ``out`` (n, V),
    rows each contiguous, the compute dtype: also ``−exp(x − the split's logsumexp)`` into it, in
    the same read of ``x`` (``_row_lse_exp``; ``rescale(.., per_split=True)`` finishes it).
    Returns the number of splits written (a power of two)."""
    from . import _triton_kernels as k

    n, V = x.shape
    splits, width, block = _split_width(V)
    if any(t.shape[0] < splits or t.stride() != (n, 1) for t in into):  # the kernel writes split s's row at s·n
        raise ValueError(f"parts: need two contiguous (>= {splits}, {n}) tensors, got {[tuple(t.shape) for t in into]}")
    if out is None:
        k._row_lse[(n, splits)](x, y, into[0], into[1], V, width, BLOCK_V=block)
    else:
        _widened(out, k.INTERPRETED, lambda t: k._row_lse_exp[(n, splits)](
            x, y, into[0], into[1], t, V, width, t.stride(0), BLOCK_V=block))
    return splits


def lse(x: torch.Tensor, y: torch.Tensor, out: tuple[torch.Tensor, torch.Tensor] | None = None,
        scratch: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logsumexp, log-prob of y)`` per row of the fp32 logits ``x`` (n, V): into ``out`` (two
    contiguous fp32 (n,) tensors) or new ones; a label outside ``[0, V)`` gets ``−logsumexp``.
    ``scratch``: two contiguous fp32 (``SPLITS``, n) tensors for the split parts, else new ones."""
    n = x.shape[0]
    out = torch.empty(2, n, dtype=torch.float32, device=x.device) if out is None else out
    if scratch is None:
        scratch = torch.empty(2, SPLITS, n, dtype=torch.float32, device=x.device)
    return join(scratch[0], scratch[1], out, parts(x, y, scratch))


def join(lse_parts: torch.Tensor, tgt_parts: torch.Tensor, out: tuple[torch.Tensor, torch.Tensor] | None = None,
         count: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logsumexp, log-prob of the label)`` per row from parts of the rows' logits (the first
    ``count`` rows of ``(≥ count, n)`` tensors, rows contiguous, default all; a power of two), as
    :func:`parts` writes them."""
    from . import _triton_kernels as k

    n = lse_parts.shape[1]
    out = torch.empty(2, n, dtype=torch.float32, device=lse_parts.device) if out is None else out
    k._row_join[(-(-n // BLOCKS["join"]),)](lse_parts, tgt_parts, out[0], out[1], n, lse_parts.stride(0),
                                             SPLITS=count or lse_parts.shape[0], BLOCK_R=BLOCKS["join"])
    return out[0], out[1]


def _lse_args(lse_rows: torch.Tensor) -> tuple[int, int]:
    """``(PARTS, PART_STRIDE)`` for the kernels' ``_lse_at``: a (n,) logsumexp, or (parts, n) split
    parts (as :func:`parts` writes them) that the kernel joins itself."""
    return (0, 0) if lse_rows.dim() == 1 else (lse_rows.shape[0], lse_rows.stride(0))


def _widened(out: torch.Tensor, interpreted: bool, run) -> torch.Tensor:
    """``run(t)`` on ``out``, or, where the interpreter would see half-precision ``out`` as raw
    16-bit integers, on an fp32 copy written back (rounded once)."""
    if not (interpreted and out.dtype != torch.float32):
        run(out)
        return out
    wide = out.float()
    run(wide)
    return out.copy_(wide)


def dlogits(x: torch.Tensor, y: torch.Tensor, lse_rows: torch.Tensor, g: torch.Tensor,
            out: torch.Tensor | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``g · (onehot(y) − exp(x − lse))`` from the fp32 logits ``x`` into ``out`` (rows of the same
    shape, each contiguous: a column slab of a wider tensor too; the compute dtype), or into a new
    tensor of ``dtype``; returns it. ``g`` fp32 per row; ``lse_rows`` (n,), or the rows' split
    parts ((parts, n), joined in the kernel)."""
    from . import _triton_kernels as k

    n, V = x.shape
    if out is None:
        out = torch.empty(n, V, dtype=dtype, device=x.device)
    block = _block("dlogits")
    g, (count, stride) = g.contiguous(), _lse_args(lse_rows)
    return _widened(out, k.INTERPRETED, lambda t: k._row_dlogits[(n, -(-V // block))](
        x, y, lse_rows, g, t, V, t.stride(0), stride, BLOCK_V=block, PARTS=count))


def rescale(out: torch.Tensor, y: torch.Tensor, part: torch.Tensor, lse_rows: torch.Tensor,
            per_split: bool = False) -> torch.Tensor:
    """A column slab ``out`` (n, w) holding ``−exp(x − part)`` (``dlogits`` by the slab's own
    logsumexp ``part``, (n,) or its split parts (parts, n); no one-hot: labels outside it) made
    ``onehot(y) − exp(x − lse)`` by the rows' full logsumexp, in place; ``y``: labels relative to
    the slab's first column. ``per_split``: ``out`` holds each column's ``−exp(x − its split's
    logsumexp)`` (``parts(.., out=...)``), ``part`` those split parts."""
    from . import _triton_kernels as k

    n, V = out.shape
    block = _block("dlogits")
    count, stride = _lse_args(part)
    width = _split_width(V)[1] if per_split else 0
    return _widened(out, k.INTERPRETED, lambda t: k._row_rescale[(n, -(-V // block))](
        t, y, part, lse_rows, V, t.stride(0), stride, width, BLOCK_V=block, PARTS=count, PER_SPLIT=per_split))


def scale_(t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """``t *= s`` in place, ``s`` a 0-dim tensor on ``t``'s device: where the row kernels run, one
    Triton pass that multiplies in fp32 and rounds once (PyTorch's ``mul_`` by a 0-dim tensor casts
    it to ``t``'s dtype first, and on CUDA takes its slower strided kernel: 1.6 ms for the one-pass
    loss's two bf16 gradients at Llama 3's head on an H200, 0.58 ms this way; 2026-12-04), which
    reads and writes nothing where ``s`` is 1 (``loss.backward()`` on the summed loss itself; no
    host sync to find out: each program reads ``s``); elsewhere ``mul_``, on a CPU by ``s`` as a
    number (multiplied at the op's precision, not rounded to ``t``'s dtype first; reading it costs a
    CPU nothing, and by 1 nothing is done)."""
    if not (wanted(t.device) and t.is_contiguous() and s.dtype == torch.float32):
        if s.device.type != "cpu":
            return t.mul_(s.to(t.dtype))
        try:
            value = s.item()
        except RuntimeError:  # a tensor without a value (the memory estimate's fake ones): in place, as it is
            return t.mul_(s.to(t.dtype))
        return t if value == 1 else t.mul_(value)
    if t.numel() == 0:  # (no scored tokens: nothing to launch)
        return t
    from . import _triton_kernels as k

    block = _block("scale")
    flat = t.view(-1)
    _widened(flat, k.INTERPRETED, lambda u: k._scale[(-(-u.numel() // block),)](u, s, u.numel(), BLOCK=block))
    return t
