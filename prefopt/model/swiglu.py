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
    return _Gated.apply(gate, up, F.silu, _silu)


def geglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """``gelu(gate, approximate="tanh") * up`` with a backward that recomputes the GELU (in fp32)."""
    return _Gated.apply(gate, up, _gelu_tanh_forward, _gelu_tanh)


def _silu(g: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """silu(g) and its derivative's factors, σ(g)·(1 + g·(1 − σ(g))), from fp32 ``g``."""
    sig = torch.sigmoid(g)
    return g * sig, (sig, 1 + g * (1 - sig))


_K = math.sqrt(2 / math.pi)  # GELU's tanh approximation: 0.5 x (1 + tanh(K (x + C x³)))
_C = 0.044715


def _gelu_tanh_forward(gate: torch.Tensor) -> torch.Tensor:
    return F.gelu(gate, approximate="tanh")


def _gelu_tanh(g: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """gelu_tanh(g) and its derivative, (1 + t)/2 + g (1 − t²) K (1 + 3C g²) / 2, from fp32 ``g``."""
    t = torch.tanh(_K * (g + _C * g ** 3))
    return 0.5 * g * (1 + t), (0.5 * (1 + t) + 0.5 * g * (1 - t * t) * _K * (1 + 3 * _C * g * g),)


class _Gated(torch.autograd.Function):
    """``act(gate) * up``, saving only ``gate`` and ``up``; ``act`` runs in the inputs' dtype
    forward, ``recompute`` (fp32: the activation and its derivative's factors) backward."""

    @staticmethod
    def forward(ctx, gate, up, act, recompute):
        ctx.recompute = recompute
        ctx.save_for_backward(gate, up)
        return act(gate) * up

    @staticmethod
    def backward(ctx, grad):
        gate, up = ctx.saved_tensors
        value, slope = ctx.recompute(gate.float())
        grad_gate = grad_up = None
        if ctx.needs_input_grad[0]:
            grad_gate = grad.float() * up.float()
            for factor in slope:
                grad_gate = grad_gate * factor
            grad_gate = grad_gate.to(gate.dtype)
        if ctx.needs_input_grad[1]:
            grad_up = (grad.float() * value).to(up.dtype)
        return grad_gate, grad_up, None, None
