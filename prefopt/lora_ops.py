"""The LoRA layer's forward and backward as one autograd function, lean on memory.

A LoRA layer computes ``y = x Wᵀ + b + s · (dropout(x) Aᵀ) Bᵀ`` with the base ``W``, ``b``
frozen. Built from stock ops, autograd keeps per layer a float dropout mask *and* the dropped
copy of ``x``: two tensors the size of the input, for each of the seven adapted projections of
every block. That is most of a LoRA step's activation memory. :func:`lora_linear` keeps
instead:

- ``x`` itself, which costs nothing extra when another op keeps it anyway or when several
  layers read it (q/k/v read one input, as do gate/up);
- a one-byte keep mask;
- the rank-``r`` activation ``a = dropout(x) Aᵀ``.

The dropped input is rebuilt in the backward pass, only for ``grad A = gₐᵀ · dropout(x)``.

The keep mask is drawn from 16-bit random integers, four from each 64-bit draw, which on CPU
is about 5× cheaper than ``bernoulli_`` (the largest single cost of a checkpointed CPU step,
where every mask is drawn twice). The drop probability is rounded to a multiple of 2⁻¹⁶
(0.05 → 0.050003) and the survivors are scaled by ``1 / (1 − p_rounded)``, so the expected
output stays exactly ``x``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_LEVELS = 1 << 16


def keep_mask(shape: torch.Size | tuple[int, ...], p: float, device=None) -> tuple[torch.Tensor, float]:
    """A bool mask of ``shape``, each entry True (kept) with probability ``1 − p`` rounded
    to a multiple of 2⁻¹⁶, and the scale ``1 / (1 − p_rounded)`` for the kept entries."""
    drop = min(round(p * _LEVELS), _LEVELS - 1)
    n = math.prod(shape)
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_(-(1 << 63), None)
    keep = words.view(torch.int16)[:n] >= drop - (_LEVELS >> 1)  # int16 is uniform on [-2¹⁵, 2¹⁵)
    return keep.view(shape), _LEVELS / (_LEVELS - drop)


def lora_linear(x, weight, bias, lora_a, lora_b, scaling: float, dropout: float) -> torch.Tensor:
    """``x Wᵀ + b + scaling · (dropout(x) Aᵀ) Bᵀ`` with a frozen ``weight``/``bias``.

    ``dropout`` is applied when > 0 (pass 0 in eval mode). Gradients flow to ``x``,
    ``lora_a`` and ``lora_b``; ``weight`` and ``bias`` must not require them. ``weight`` may be a
    quantized layer (``prefopt.quant.QuantLinear``): its weight is dequantized in the forward and
    again in the backward, never kept.
    """
    return _LoRALinear.apply(x, weight, bias, lora_a, lora_b, scaling, dropout)


def _base_weight(source) -> torch.Tensor:
    """A frozen base weight: ``source`` itself, or a quantized layer's weight, dequantized afresh
    (``prefopt.quant.QuantLinear``: only its 4-bit codes are kept between forward and backward)."""
    return source if isinstance(source, torch.Tensor) else source.weight


def _kept(source, weight: torch.Tensor) -> tuple[torch.Tensor | None, object]:
    """What the backward keeps of the base weight: ``(the tensor, None)``, or for a quantized
    layer ``(None, the layer)``, whose weight the backward dequantizes again."""
    return (weight, None) if isinstance(source, torch.Tensor) else (None, source)


def _autocast_inputs(device: str, x, weight, bias, lora_a, lora_b) -> tuple:
    """The inputs cast as autocast would cast them where it is on (then the op computes in that
    dtype with autocast off), else as they are but for the adapter's factors, taken in ``x``'s
    dtype (kept in float32 over a 16-bit base: ``prefopt.lora.adapter_dtype``; their gradients go
    back in that dtype)."""
    if not torch.is_autocast_enabled(device):
        return x, weight, bias, lora_a.to(x.dtype), lora_b.to(x.dtype)
    dt = torch.get_autocast_dtype(device)
    return (*(t.to(dt) for t in (x, weight)), None if bias is None else bias.to(dt), lora_a.to(dt), lora_b.to(dt))


def _dropped(x: torch.Tensor, mask: torch.Tensor | None, keep_scale: float) -> torch.Tensor:
    """``dropout(x)`` for a given keep mask (built in forward, rebuilt in backward)."""
    return x if mask is None else x.mul(mask).mul_(keep_scale)


class _LoRALinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, source, bias, lora_a, lora_b, scaling, dropout):
        device = x.device.type
        x, weight, bias, lora_a, lora_b = _autocast_inputs(device, x, _base_weight(source), bias, lora_a, lora_b)
        with torch.autocast(device, enabled=False):
            mask, keep_scale = keep_mask(x.shape, dropout, x.device) if dropout > 0 else (None, 1.0)
            a = F.linear(_dropped(x, mask, keep_scale), lora_a)  # (..., r)
            y = F.linear(x, weight, bias).add_(F.linear(a, lora_b), alpha=scaling)
        kept, ctx.source = _kept(source, weight)
        ctx.save_for_backward(x, kept, lora_a, lora_b, a, mask)
        ctx.scaling, ctx.keep_scale, ctx.device = scaling, keep_scale, device
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, weight, lora_a, lora_b, a, mask = ctx.saved_tensors
        weight = _base_weight(ctx.source).to(x.dtype) if weight is None else weight
        s, keep_scale = ctx.scaling, ctx.keep_scale
        with torch.autocast(ctx.device, enabled=False):
            g = grad_y.reshape(-1, grad_y.shape[-1]).to(x.dtype)  # (N, out)
            a = a.reshape(-1, a.shape[-1])  # (N, r)
            grad_b = (g.T @ a).mul_(s) if ctx.needs_input_grad[4] else None  # (out, r)
            grad_a_act = (g @ lora_b).mul_(s)  # (N, r)
            grad_A = grad_x = None
            if ctx.needs_input_grad[3]:
                grad_A = grad_a_act.T @ _dropped(x, mask, keep_scale).reshape(-1, x.shape[-1])  # (r, in)
            if ctx.needs_input_grad[0]:
                lora_part = grad_a_act @ lora_a  # (N, in)
                if mask is not None:
                    lora_part.mul_(mask.reshape(lora_part.shape)).mul_(keep_scale)
                grad_x = torch.addmm(lora_part, g, weight).reshape(x.shape)
        return grad_x, None, None, grad_A, grad_b, None, None


def dora_linear(x, weight, bias, lora_a, lora_b, magnitude, norm, scaling: float, dropout: float) -> torch.Tensor:
    """A DoRA layer with a frozen ``weight``/``bias``: each output row of ``W + ΔW`` scaled by
    ``s = magnitude / norm`` (``norm``, the rows' norms of ``W + ΔW``, a constant), as PEFT
    computes it::

        y = x Wᵀ + b + (s − 1) · dropout(x) Wᵀ + s · scaling · (dropout(x) Aᵀ) Bᵀ

    (without dropout ``s · (x Wᵀ + scaling · (x Aᵀ) Bᵀ) + b``). Gradients flow to ``x``, A, B and
    ``magnitude``. Kept for the backward: ``x`` by reference, the byte mask, the rank-``r``
    activation and one output-sized tensor (``v = dropout(x) Wᵀ + scaling · a Bᵀ``, for the
    magnitude's gradient ``Σ g ⊙ v / norm``), where stock ops keep a dropped copy of ``x`` and
    two output-sized tensors.
    """
    return _DoRALinear.apply(x, weight, bias, lora_a, lora_b, magnitude, norm, scaling, dropout)


def _wide(t: torch.Tensor) -> torch.Tensor:
    """``t`` in fp32 at least (fp64 stays fp64): the magnitude's scale and gradient sums."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


class _DoRALinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, source, bias, lora_a, lora_b, magnitude, norm, scaling, dropout):
        device = x.device.type
        x, weight, bias, lora_a, lora_b = _autocast_inputs(device, x, _base_weight(source), bias, lora_a, lora_b)
        with torch.autocast(device, enabled=False):
            scale = (_wide(magnitude) / norm).to(x.dtype)
            mask, keep_scale = keep_mask(x.shape, dropout, x.device) if dropout > 0 else (None, 1.0)
            xd = _dropped(x, mask, keep_scale)
            a = F.linear(xd, lora_a)  # (..., r)
            lora = F.linear(a, lora_b).mul_(scaling)  # ΔW dropout(x)
            v = F.linear(xd, weight).add_(lora)  # dropout(x) Wᵀ + ΔW dropout(x)
            if mask is None:  # s · v + b
                y = v * scale if bias is None else torch.addcmul(bias, v, scale)
            else:  # x Wᵀ + b + (s − 1) · dropout(x) Wᵀ + s · ΔW dropout(x), as x Wᵀ + b + (s − 1) · v + ΔW dropout(x)
                y = F.linear(x, weight, bias).addcmul_(v, scale - 1).add_(lora)
            del lora
        kept, ctx.source = _kept(source, weight)
        ctx.save_for_backward(x, kept, lora_a, lora_b, a, mask, v, scale, norm)
        ctx.scaling, ctx.keep_scale, ctx.device, ctx.m_dtype = scaling, keep_scale, device, magnitude.dtype
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, weight, lora_a, lora_b, a, mask, v, scale, norm = ctx.saved_tensors
        weight = _base_weight(ctx.source).to(x.dtype) if weight is None else weight
        s, keep_scale = ctx.scaling, ctx.keep_scale
        with torch.autocast(ctx.device, enabled=False):
            g = grad_y.reshape(-1, grad_y.shape[-1]).to(x.dtype)  # (N, out)
            a = a.reshape(-1, a.shape[-1])
            gs = g * scale  # what reaches the adapter's output
            grad_m = None
            if ctx.needs_input_grad[5]:
                grad_m = ((_wide(g) * _wide(v.reshape(g.shape))).sum(0) / norm).to(ctx.m_dtype)
            grad_b = (gs.T @ a).mul_(s) if ctx.needs_input_grad[4] else None
            grad_a_act = (gs @ lora_b).mul_(s)  # (N, r)
            grad_A = grad_x = None
            if ctx.needs_input_grad[3]:
                grad_A = grad_a_act.T @ _dropped(x, mask, keep_scale).reshape(-1, x.shape[-1])
            if ctx.needs_input_grad[0]:
                if mask is None:  # y = s · (x Wᵀ + ΔW x) + b
                    grad_x = torch.addmm(grad_a_act @ lora_a, gs, weight)
                else:  # the dropped path: (s − 1) through W, s through ΔW, then the mask
                    dropped = torch.addmm(grad_a_act @ lora_a, g * (scale - 1), weight)
                    dropped.mul_(mask.reshape(dropped.shape)).mul_(keep_scale)
                    grad_x = torch.addmm(dropped, g, weight)
                grad_x = grad_x.reshape(x.shape)
        return grad_x, None, None, grad_A, grad_b, grad_m, None, None, None
