"""Row-wise elementwise work over a block of fp32 logits that cuBLAS wrote: two Triton kernels.

``lse``: one read of each row (online max and sum-exp, the label's logit) gives its logsumexp
and the label's log-prob. ``dlogits``: one more read writes ``g · (onehot(y) − softmax)`` in
the compute dtype. About 14 bytes of traffic per logit (cuBLAS's fp32 write 4, reads 4 + 4,
write 2) where the chain of PyTorch ops (subtract, exp, sum, log, gather, scale, one-hot, cast)
takes about 40. Labels outside ``[0, V)`` (another vocabulary slab's) add no one-hot.

Used on CUDA by the one-pass loss (``onepass.py``) and the chunked log-probs (``chunked.py``)
when Triton is installed; elsewhere those use PyTorch ops. Tests force the kernels on CPU
(under ``TRITON_INTERPRET=1``) with ``ROWWISE = "triton"``.
"""
from __future__ import annotations

import torch

ROWWISE: str | None = None  # "triton" or "torch" forces one; None: triton on CUDA
BLOCKS = {"lse": 4096, "dlogits": 2048, "interpreted": 64}


def wanted(device: torch.device, acc: torch.dtype = torch.float32) -> bool:
    """Whether the row kernels do the elementwise work for fp32 (``acc``) logits on ``device``."""
    if acc != torch.float32:  # fp64 (gradcheck) stays in PyTorch
        return False
    if ROWWISE is not None:
        return ROWWISE == "triton"
    from .triton_logprobs import available

    return device.type == "cuda" and available(device)


def lse(x: torch.Tensor, y: torch.Tensor, out: tuple[torch.Tensor, torch.Tensor] | None = None,
        ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logsumexp, log-prob of y)`` per row of the fp32 logits ``x`` (n, V): into ``out`` (two
    contiguous fp32 (n,) tensors) or new ones."""
    from . import _triton_kernels as k

    n, V = x.shape
    out, logp = torch.empty(2, n, dtype=torch.float32, device=x.device) if out is None else out
    k._row_lse[(n,)](x, y, out, logp, V, BLOCK_V=BLOCKS["interpreted" if k.INTERPRETED else "lse"])
    return out, logp


def dlogits(x: torch.Tensor, y: torch.Tensor, lse_rows: torch.Tensor, g: torch.Tensor,
            out: torch.Tensor | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``g · (onehot(y) − exp(x − lse))`` from the fp32 logits ``x`` into ``out`` (contiguous rows
    of the same shape, the compute dtype), or into a new tensor of ``dtype``; returns it. ``g``
    fp32 per row."""
    from . import _triton_kernels as k

    n, V = x.shape
    if out is None:
        out = torch.empty(n, V, dtype=dtype, device=x.device)
    block = BLOCKS["interpreted" if k.INTERPRETED else "dlogits"]
    into = torch.empty(n, V, device=x.device) if k.INTERPRETED and out.dtype != torch.float32 else out  # the
    k._row_dlogits[(n, -(-V // block))](x, y, lse_rows, g.contiguous(), into, V, BLOCK_V=block)  # interpreter: fp32
    if into is not out:
        out.copy_(into)
    return out
