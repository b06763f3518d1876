"""SwiGLU, ``silu(gate) · up``, keeping only its two inputs for the backward pass.

Stock autograd keeps ``gate`` (for silu's derivative), ``silu(gate)`` and ``up`` (for the
product's): three ``(tokens, intermediate)`` tensors per block, the largest activations of a
Llama MLP. Recomputing the sigmoid in the backward pass drops one of them (a third of the
MLP's saved activations) for a few elementwise ops.
"""
from __future__ import annotations

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
