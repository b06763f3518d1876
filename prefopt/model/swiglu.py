"""The gated MLP activations, keeping only their two inputs for the backward pass: SwiGLU,
``silu(gate) · up`` (Llama, Mistral, Qwen), and GeGLU, ``gelu_tanh(gate) · up`` (Gemma 3).

Stock autograd keeps ``gate`` (for the activation's derivative), ``act(gate)`` and ``up`` (for
the product's): three ``(tokens, intermediate)`` tensors per block, the largest activations of
the MLP. Recomputing the activation in the backward pass drops one of them (a third of the
MLP's saved activations) for a few elementwise ops.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` with a backward that recomputes ``sigmoid(gate)`` (in fp32)."""
    return _SwiGLU.apply(gate, up)


class _SwiGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gate, up):
        ctx.save_for_backward(gate, up)
        return F.silu(gate) * up

    @staticmethod
    def backward(ctx, grad):
        gate, up = ctx.saved_tensors
        g = gate.float()
        sig = torch.sigmoid(g)
        grad_gate = grad_up = None
        if ctx.needs_input_grad[0]:  # d silu(g)/dg = σ(g)·(1 + g·(1 − σ(g)))
            grad_gate = (grad.float() * up.float() * sig * (1 + g * (1 - sig))).to(gate.dtype)
        if ctx.needs_input_grad[1]:
            grad_up = (grad.float() * (g * sig)).to(up.dtype)
        return grad_gate, grad_up


_K = math.sqrt(2 / math.pi)  # GELU's tanh approximation: 0.5 x (1 + tanh(K (x + C x³)))
_C = 0.044715


def geglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """``gelu(gate, approximate="tanh") * up`` with a backward that recomputes the GELU (in fp32)."""
    return _GeGLU.apply(gate, up)


class _GeGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gate, up):
        ctx.save_for_backward(gate, up)
        return F.gelu(gate, approximate="tanh") * up

    @staticmethod
    def backward(ctx, grad):
        gate, up = ctx.saved_tensors
        g = gate.float()
        t = torch.tanh(_K * (g + _C * g ** 3))
        grad_gate = grad_up = None
        if ctx.needs_input_grad[0]:  # d gelu/dg = (1 + t)/2 + g (1 - t²) K (1 + 3C g²) / 2
            d = 0.5 * (1 + t) + 0.5 * g * (1 - t * t) * _K * (1 + 3 * _C * g * g)
            grad_gate = (grad.float() * up.float() * d).to(gate.dtype)
        if ctx.needs_input_grad[1]:
            grad_up = (grad.float() * (0.5 * g * (1 + t))).to(up.dtype)
        return grad_gate, grad_up
