"""Triton kernel: per-token log-probs from hidden states and the lm_head, no ``(N, V)`` logits.

Forward (one program per block of ``BLOCK_N`` tokens): walk the vocabulary in ``BLOCK_V``
tiles, build each logits tile in SRAM with ``tl.dot`` over ``BLOCK_D`` slices of the hidden
size, keep an online max and sum-exp, and pick out the target logit. Only the per-token
logsumexp and log-prob are written.

Backward (one program per ``(token block, vocab tile)``): recompute the tile, form
``dlogits = g · (onehot(y) − softmax)`` in fp32, and add ``dlogits · W`` into ``grad_hidden``
and ``dlogitsᵀ · h`` into ``grad_weight`` with fp32 atomics, slice by slice of ``D``. The
largest temporary is one ``BLOCK_N × BLOCK_V`` tile; the only full-size buffers are the fp32
gradients themselves (``grad_weight`` only when the weight needs a gradient).

Inputs may be fp32, bf16 or fp16; accumulation is fp32 (fp32 inputs use IEEE dots, not TF32).
On CPU tensors the same kernels run under Triton's interpreter, which is how CI tests them
(``TRITON_INTERPRET=1``); that path is for tests only, it is very slow.
"""
from __future__ import annotations

import functools
import importlib.util
import os

import torch

BLOCKS_GPU = {"BLOCK_N": 64, "BLOCK_V": 128, "BLOCK_D": 64}
BLOCKS_INTERPRET = {"BLOCK_N": 16, "BLOCK_V": 64, "BLOCK_D": 32}


@functools.cache
def _installed() -> bool:
    """triton is Linux-only and optional (imported only when used; callers fall back to chunked)."""
    return importlib.util.find_spec("triton") is not None


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def available(device: torch.device) -> bool:
    """Whether the Triton path can run on ``device`` (CUDA, or CPU under ``TRITON_INTERPRET=1``)."""
    if not _installed():
        return False
    if device.type == "cuda":
        return True
    return device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"


@functools.cache
def _kernels(interpret: bool):
    """JIT-compiled kernels for CUDA, or interpreted ones for CPU tensors."""
    import triton

    from ._triton_kernels import _bwd, _fwd

    if interpret:
        from triton.runtime.interpreter import InterpretedFunction

        return InterpretedFunction(_fwd), InterpretedFunction(_bwd)
    return triton.jit(_fwd), triton.jit(_bwd)


def _launch_args(hidden: torch.Tensor, blocks: dict | None):
    on_cpu = hidden.device.type == "cpu"
    consts = dict(blocks or (BLOCKS_INTERPRET if on_cpu else BLOCKS_GPU))
    consts.update(IEEE=hidden.dtype == torch.float32, UPCAST=on_cpu and hidden.dtype != torch.float32)
    return _kernels(on_cpu), consts


class _TritonLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, blocks):
        (fwd, _), b = _launch_args(hidden, blocks)
        hidden, weight, labels = hidden.contiguous(), weight.contiguous(), labels.contiguous()
        N, D = hidden.shape
        V = weight.shape[0]
        lse = torch.empty(N, dtype=torch.float32, device=hidden.device)
        out = torch.empty(N, dtype=torch.float32, device=hidden.device)
        fwd[(_cdiv(N, b["BLOCK_N"]),)](hidden, weight, labels, lse, out, N, V, D, **b)
        ctx.save_for_backward(hidden, weight, labels, lse)
        ctx.blocks = blocks
        return out

    @staticmethod
    def backward(ctx, grad_out):
        hidden, weight, labels, lse = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if not (need_h or need_w):
            return None, None, None, None
        (_, bwd), b = _launch_args(hidden, ctx.blocks)
        N, D = hidden.shape
        V = weight.shape[0]
        f32 = dict(dtype=torch.float32, device=hidden.device)
        grad_h = torch.zeros(N, D, **f32) if need_h else torch.empty(0, **f32)
        grad_w = torch.zeros(V, D, **f32) if need_w else torch.empty(0, **f32)
        grid = (_cdiv(N, b["BLOCK_N"]), _cdiv(V, b["BLOCK_V"]))
        bwd[grid](hidden, weight, labels, lse, grad_out.float().contiguous(), grad_h, grad_w, N, V, D,
                  NEED_H=need_h, NEED_W=need_w, **b)
        return (grad_h.to(hidden.dtype) if need_h else None, grad_w.to(weight.dtype) if need_w else None,
                None, None)


def triton_logprobs(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                    blocks: dict | None = None) -> torch.Tensor:
    """``hidden`` (N, D), ``weight`` (V, D), ``labels`` (N,) → fp32 log-probs (N,).

    ``blocks`` overrides the tile sizes (``BLOCK_N``, ``BLOCK_V``, ``BLOCK_D``; each ≥ 16).
    """
    if not available(hidden.device):
        why = "triton is not installed (pip install 'prefopt[triton]')" if not _installed() else (
            f"tensors are on {hidden.device.type}; the Triton path needs CUDA, or TRITON_INTERPRET=1 on CPU "
            "(set before triton is first imported)")
        raise RuntimeError(f"the triton log-prob kernel cannot run: {why}. Use impl='chunked'.")
    if hidden.dtype not in (torch.float32, torch.bfloat16, torch.float16) or weight.dtype != hidden.dtype:
        raise TypeError(f"triton log-probs need matching fp32/bf16/fp16 inputs, got {hidden.dtype} and {weight.dtype}")
    return _TritonLogprobs.apply(hidden, weight, labels, blocks)
