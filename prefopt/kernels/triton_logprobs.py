"""Triton kernel: per-token log-probs from hidden states and the lm_head, no ``(N, V)`` logits.

Forward (one program per ``(block of BLOCK_N tokens, vocabulary split)``): walk the split in
``BLOCK_V`` tiles, build each logits tile in SRAM with ``tl.dot`` over ``BLOCK_D`` slices of the
hidden size, keep an online max and sum-exp, and pick out the target logit. The splits (several
per token block when there are too few token blocks to fill the GPU) are merged into the
per-token logsumexp and log-prob, which are all that is stored.

Backward (``_backward.lm_head_backward``): a second kernel recomputes the logits block by block
(a chunk of tokens, or a slab of the vocabulary) and writes ``dlogits = g · (onehot(y) −
softmax)`` in the input dtype, as an unfused backward would; the two gradient GEMMs then run on
cuBLAS with fp32 accumulation. No atomics, and the largest temporary is one block of
``CHUNK_ELEMENTS`` dlogits (32 MiB in bf16) plus, when both gradients are wanted, an fp32 sum of
the smaller one, at most ``SUM_ELEMENTS`` (128 MiB; built in groups past that).

Inputs may be fp32, bf16 or fp16; accumulation is fp32 (fp32 inputs use IEEE dots, not TF32).
On CPU tensors the same kernels run under Triton's interpreter, which is how CI tests them
(``TRITON_INTERPRET=1`` before triton is first imported); that path is for tests only, it is
very slow.
"""
from __future__ import annotations

import functools
import importlib.util
import os
import sys

import torch

from ._backward import lm_head_backward
from ._tokens import check_shapes

# 128x128 tiles with 64-wide steps of D, 8 warps: on sm_90 this compiles to wgmma fed by 16-byte
# asynchronous copies, 3 stages deep, with no register spills; with 4 warps it spills
# (tests/kernels/test_triton_compile.py checks all this without a GPU). On an H200 other tiles
# were no faster (docs/benchmarks.md: the sweep; 4 stages 1.3% faster).
BLOCKS_GPU = {"BLOCK_N": 128, "BLOCK_V": 128, "BLOCK_D": 64, "num_warps": 8}
# fp32 tiles are twice the bytes: 32-wide steps keep 3 stages within an A100's 163 KiB of shared memory
BLOCKS_GPU_FP32 = {**BLOCKS_GPU, "BLOCK_D": 32}
BLOCKS_INTERPRET = {"BLOCK_N": 16, "BLOCK_V": 64, "BLOCK_D": 32}
TILES = ("BLOCK_N", "BLOCK_V", "BLOCK_D")
LAUNCH = ("num_warps", "num_stages")  # compiled kernels only
ORDERS = ("vocab", "rows")  # launch order: vocabulary splits (tiles) of a token block together, or token blocks
# On CUDA each token block's vocabulary is walked in splits of about this many tiles (4096 columns
# at the default tiles): 32 splits at V=128256, so the ~264 programs resident at once cover about
# 8 token blocks, whose hidden states (1 MiB each at D=4096) stay in L2 while every split reads
# them. With 3 splits and token blocks launched first (the order before 2026-11-30) they covered
# all 128 blocks of N=16384 (128 MiB, beyond an H200's 60 MB of L2), so each block's hidden states
# came from DRAM once per vocabulary tile: about 128 GB, some 27 ms at 4.8 TB/s, which fits the
# forward's measured 47 ms against 25 for cuBLAS's GEMM of that size. Not yet timed (the
# gpu_session.sh sweep compares it with {"order": "rows", "splits": 3}).
SPLIT_TILES = 32
_KERNELS = "prefopt.kernels._triton_kernels"


@functools.cache
def _installed() -> bool:
    """triton is Linux-only and optional (imported only when used; callers fall back to chunked)."""
    return importlib.util.find_spec("triton") is not None


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _interpreted() -> bool:
    """Whether the kernels are (or will be, once imported) Triton-interpreted."""
    if _KERNELS in sys.modules:
        return sys.modules[_KERNELS].INTERPRETED
    return os.environ.get("TRITON_INTERPRET") == "1"


def available(device: torch.device) -> bool:
    """Whether the Triton path can run on ``device`` (CUDA, or CPU under ``TRITON_INTERPRET=1``)."""
    if not _installed():
        return False
    return device.type == "cuda" or (device.type == "cpu" and _interpreted())


def _kernels():
    from . import _triton_kernels

    return _triton_kernels


def defaults(dtype: torch.dtype, interpreted: bool = False) -> dict:
    """The default tiles and launch options for ``dtype``."""
    if interpreted:
        return BLOCKS_INTERPRET
    return BLOCKS_GPU_FP32 if dtype == torch.float32 else BLOCKS_GPU


def _config(hidden: torch.Tensor, blocks: dict | None):
    """``(kernels, tile constexprs, launch options, forward splits or None)``."""
    k = _kernels()
    cfg = dict(defaults(hidden.dtype, k.INTERPRETED))
    cfg.update(blocks or {})
    unknown = set(cfg) - set(TILES) - set(LAUNCH) - {"splits", "order"}
    if unknown:
        raise ValueError(f"unknown Triton block options {sorted(unknown)}; known: {[*TILES, *LAUNCH, 'splits', 'order']}")
    order = cfg.get("order", ORDERS[0])
    if order not in ORDERS:
        raise ValueError(f"Triton block option order must be one of {ORDERS}, got {order!r}")
    consts = {t: cfg[t] for t in TILES}
    consts.update(IEEE=hidden.dtype == torch.float32, UPCAST=k.INTERPRETED and hidden.dtype != torch.float32,
                  VOCAB_FIRST=order == "vocab")
    launch = {} if k.INTERPRETED else {o: cfg[o] for o in LAUNCH if o in cfg}
    return k, consts, launch, cfg.get("splits")


def _splits(n_row_blocks: int, n_vtiles: int, device: torch.device, asked: int | None) -> int:
    """Vocabulary splits per token block: on CUDA about ``SPLIT_TILES`` tiles each, and enough
    programs for two per SM; else 1."""
    if asked is None:
        asked = 1
        if device.type == "cuda":
            sms = torch.cuda.get_device_properties(device).multi_processor_count
            asked = max(_cdiv(2 * sms, n_row_blocks), _cdiv(n_vtiles, SPLIT_TILES))
    return max(1, min(asked, n_vtiles))


MAX_GRID_Y = 65535  # CUDA's limit on a grid's second dimension


def _launch(row_blocks: int, per_row: int, consts: dict) -> tuple[tuple[int, int], dict]:
    """The grid for ``row_blocks`` token blocks × ``per_row`` programs each (vocabulary splits or
    tiles) in the asked order, and the constants to launch with: token blocks first where they
    would not fit in the grid's second dimension."""
    if consts["VOCAB_FIRST"] and row_blocks > MAX_GRID_Y:
        consts = {**consts, "VOCAB_FIRST": False}
    return ((per_row, row_blocks) if consts["VOCAB_FIRST"] else (row_blocks, per_row)), consts


class _TritonLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, blocks, budget):
        k, c, launch, asked = _config(hidden, blocks)
        hidden, weight, labels = hidden.contiguous(), weight.contiguous(), labels.contiguous()
        N, D = hidden.shape
        V = weight.shape[0]
        row_blocks, vtiles = _cdiv(N, c["BLOCK_N"]), _cdiv(V, c["BLOCK_V"])
        per_split = _cdiv(vtiles, _splits(row_blocks, vtiles, hidden.device, asked)) * c["BLOCK_V"]
        splits = _cdiv(V, per_split)  # none left empty
        m, s, tgt = torch.empty(3, splits, N, dtype=torch.float32, device=hidden.device)
        grid, c = _launch(row_blocks, splits, c)
        k._fwd[grid](hidden, weight, labels, m, s, tgt, N, V, D, per_split, **c, **launch)
        top = m.amax(0)
        lse = top + torch.log((s * torch.exp(m - top)).sum(0))
        ctx.save_for_backward(hidden, weight, labels, lse)
        ctx.blocks, ctx.budget = blocks, budget
        return tgt.sum(0) - lse

    @staticmethod
    def backward(ctx, grad_out):
        hidden, weight, labels, lse = ctx.saved_tensors
        k, c, launch, _ = _config(hidden, ctx.blocks)
        D = hidden.shape[1]

        def dlogits(h, w, y, lse_rows, g):
            n, v = h.shape[0], w.shape[0]
            out = torch.empty(n, v, dtype=torch.float32 if c["UPCAST"] else h.dtype, device=h.device)
            grid, consts = _launch(_cdiv(n, c["BLOCK_N"]), _cdiv(v, c["BLOCK_V"]), c)
            k._dlogits[grid](h, w, y, lse_rows, g, out, n, v, D, **consts, **launch)
            return out.to(h.dtype)

        grad_h, grad_w = lm_head_backward(hidden, weight, labels, lse, grad_out, ctx.needs_input_grad[0],
                                          ctx.needs_input_grad[1], dlogits, ctx.budget,
                                          tiles=(c["BLOCK_N"], c["BLOCK_V"]))
        return grad_h, grad_w, None, None, None


def triton_logprobs(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                    blocks: dict | None = None, budget: int | None = None) -> torch.Tensor:
    """``hidden`` (N, D), ``weight`` (V, D), ``labels`` (N,) in ``[0, V)`` (unchecked here: one
    outside gets ``−logsumexp``; the entry points check) → fp32 log-probs (N,).

    ``blocks`` overrides the tiles (``BLOCK_N``, ``BLOCK_V``, ``BLOCK_D``; each ≥ 16), the
    forward's vocabulary ``splits``, the launch ``order`` (``"vocab"``: a token block's
    vocabulary splits or tiles together, the default; ``"rows"``: token blocks together) and, on
    CUDA, ``num_warps``/``num_stages``. ``budget`` caps
    the dlogits block of the backward, in elements (default ``_backward.CHUNK_ELEMENTS``).
    """
    check_shapes(hidden, weight, labels)  # a wrong width would be read with the wrong stride, silently
    if hidden.dtype not in (torch.float32, torch.bfloat16, torch.float16) or weight.dtype != hidden.dtype:
        raise TypeError(f"triton log-probs need matching fp32/bf16/fp16 inputs, got {hidden.dtype} and {weight.dtype}")
    if not available(hidden.device):
        why = "triton is not installed (pip install 'prefopt[triton]')" if not _installed() else (
            f"tensors are on {hidden.device.type}; the Triton path needs CUDA, or TRITON_INTERPRET=1 on CPU "
            "(set before triton is first imported)")
        raise RuntimeError(f"the triton log-prob kernel cannot run: {why}. Use impl='chunked'.")
    return _TritonLogprobs.apply(hidden, weight, labels, blocks, budget)
