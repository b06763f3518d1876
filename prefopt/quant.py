"""4-bit NormalFloat (NF4) base weights for LoRA training on little memory (QLoRA, Dettmers et al. 2023).

A frozen linear layer's weight is stored as 4-bit codes, two to a byte, with one fp32 scale
(the block's largest magnitude) per ``block`` consecutive values: 0.5 + 4/``block`` bytes per
weight (0.5625 at the default 64), against 2 in bf16 and 4 in fp32. Each code indexes the 16
NF4 levels, which are quantiles of a standard normal scaled to [-1, 1] (with an exact zero), so
that normally distributed weights use each level about equally often. :class:`QuantLinear`
dequantizes its weight when it computes, one layer at a time, and keeps nothing else;
:func:`quantize_model` swaps a model's linear layers for it. Adapters train on top in
higher precision (``prefopt.lora``); one merged into the 4-bit layer stays beside the codes
as its low-rank factors (:meth:`QuantLinear.add_update`).

``nf4-dq`` also quantizes the scales (QLoRA's double quantization): each scale as an 8-bit
code on a log scale spanning its group of :data:`SCALE_GROUP` scales (an fp32 start and step
per group), so 0.129 bits a weight go to scales instead of 0.5 (4.13 bits a weight in all,
against 4.5), each scale within ``2**(step / 2) - 1`` of its value (a fraction of a percent for
the spread of block maxima in a weight matrix; NF4's own rounding is some percent).

Pure PyTorch: the same code runs on CPU and CUDA. It is not bitsandbytes' kernel, and its
quantized weights are never saved: a run saves its adapter, which loads on the full-precision
base as on the 4-bit one; use it on the 4-bit one (``load_model(..., quantize="nf4")``), since it
learnt that model's corrections too.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

BLOCK = 64
# NF4's tail: the quantiles run from 1 - OFFSET to OFFSET (QLoRA's choice; it keeps ±1 finite)
OFFSET = 0.9677083
QUANT_KINDS = ("nf4", "nf4-dq")  # nf4-dq: the block scales quantized too (double quantization)
SCALE_GROUP = 256  # scales per 8-bit log-scale group in nf4-dq


def nf4_levels() -> torch.Tensor:
    """The 16 NF4 levels, ascending, in fp32: 7 negative and 8 positive normal quantiles, equal
    steps in probability from the middle to ``OFFSET``, each side scaled so its extreme is ±1, and 0."""
    from torch.special import ndtri

    positive = ndtri(torch.linspace(OFFSET, 0.5, 9, dtype=torch.float64)[:-1])
    negative = -ndtri(torch.linspace(OFFSET, 0.5, 8, dtype=torch.float64)[:-1])
    levels = torch.cat([negative, torch.zeros(1, dtype=torch.float64), positive]).sort().values
    return (levels / levels.abs().max()).float()


_LEVELS = nf4_levels()
# each byte's two values (low half first): one gather dequantizes two weights; a copy per device
_PAIRS = {torch.device("cpu"): torch.stack([_LEVELS[torch.arange(256) & 15], _LEVELS[torch.arange(256) >> 4]], 1)}


def _pairs_on(device: torch.device) -> torch.Tensor:
    """The byte → two levels table on ``device``, copied there once (not at every dequantization)."""
    if device not in _PAIRS:
        _PAIRS[device] = _PAIRS[torch.device("cpu")].to(device)
    return _PAIRS[device]


def quantize_nf4(weight: torch.Tensor, block: int = BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """``(codes, scales)``: ``weight``'s values in blocks of ``block`` (an even number; the last
    block padded with zeros), each scaled by its block's largest magnitude and rounded to the
    nearest NF4 level; two 4-bit codes a byte (uint8, the first value in the low half), one fp32
    scale a block."""
    if block < 2 or block % 2:
        raise ValueError(f"block must be an even number >= 2, got {block}")
    w = weight.detach().float().reshape(-1)
    w = F.pad(w, (0, -w.numel() % block)).reshape(-1, block)
    scales = w.abs().amax(dim=1)
    normed = w / scales.clamp_min(torch.finfo(torch.float32).tiny)[:, None]
    levels = _LEVELS.to(w.device)
    midpoints = (levels[1:] + levels[:-1]) / 2
    codes = torch.bucketize(normed, midpoints).to(torch.uint8).reshape(-1, 2)  # the nearest level
    return codes[:, 0] | (codes[:, 1] << 4), scales


def dequantize_nf4(codes: torch.Tensor, scales: torch.Tensor, shape: torch.Size | tuple[int, ...],
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The weight :func:`quantize_nf4` encoded, shaped ``shape``, in ``dtype``."""
    both = _pairs_on(codes.device).index_select(0, codes.int())  # (n/2, 2); int32 indices: half of int64's bytes
    values = both.view(scales.numel(), -1).mul_(scales[:, None]).view(-1)  # in place: one weight-sized buffer
    return values[:torch.Size(shape).numel()].to(dtype).reshape(shape)


def compress_scales(scales: torch.Tensor, group: int = SCALE_GROUP) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(codes, start, step)``: each block scale as a uint8 code, 0 for a zero scale (an all-zero
    block) and ``1 + round((log2(scale) - start) / step)`` otherwise, with one fp32 ``start`` (the
    smallest log2) and ``step`` (the log2 range over 254) per group of ``group`` scales. Log
    steps keep the relative error of every scale alike, small ones too."""
    s = scales.float().reshape(-1)
    s = F.pad(s, (0, -s.numel() % group)).reshape(-1, group)
    nonzero = s > 0
    logs = s.clamp_min(torch.finfo(torch.float32).tiny).log2()
    start = torch.where(nonzero, logs, torch.inf).amin(dim=1)
    end = torch.where(nonzero, logs, -torch.inf).amax(dim=1)
    start = torch.where(nonzero.any(dim=1), start, 0.0)
    step = torch.where(end > start, (end - start) / 254, 1.0)
    codes = 1 + ((logs - start[:, None]) / step[:, None]).round()
    codes = torch.where(nonzero, codes, 0).to(torch.uint8).reshape(-1)
    return codes[:scales.numel()], start, step


def expand_scales(codes: torch.Tensor, start: torch.Tensor, step: torch.Tensor, group: int = SCALE_GROUP
                  ) -> torch.Tensor:
    """The fp32 scales :func:`compress_scales` encoded (with the same ``group``)."""
    n = codes.numel()
    c = F.pad(codes.float(), (0, start.numel() * group - n)).reshape(-1, group)
    scales = torch.exp2(start[:, None] + (c - 1) * step[:, None])
    return torch.where(c > 0, scales, 0.0).reshape(-1)[:n]


class QuantLinear(nn.Module):
    """A frozen ``nn.Linear`` whose weight is kept in NF4 (the bias as it was). ``weight`` is the
    dequantized weight in the layer's compute dtype, made afresh on each access; the layer keeps
    only ``codes`` and ``scales`` (buffers: they move with ``.to(device)``).

    An adapter merged into it (:meth:`add_update`; ``merge_and_unload`` on a 4-bit model: the SFT
    adapter under DPO) stays beside the codes as its low-rank factors, added to each dequantized
    weight: rounding it into the 4-bit levels would erase most of it (an adapter's update is
    mostly smaller than a level's step).

    ``double``: the scales kept as 8-bit codes too (``nf4-dq``; :func:`compress_scales`)."""

    def __init__(self, base: nn.Linear, block: int = BLOCK, double: bool = False):
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.dtype, self.block, self.double = base.weight.dtype, block, double
        codes, scales = quantize_nf4(base.weight, block)
        self.register_buffer("codes", codes)
        self.register_buffer("scales", None if double else scales)  # nf4-dq keeps them as codes:
        for name, t in zip(("scale_codes", "scale_start", "scale_step"),
                           compress_scales(scales) if double else (None, None, None)):
            self.register_buffer(name, t)
        self.register_buffer("update_a", None)  # (r, in) and (out, r), scaling folded into update_b
        self.register_buffer("update_b", None)
        self.bias = None if base.bias is None else nn.Parameter(base.bias.detach(), requires_grad=False)

    @property
    def weight(self) -> torch.Tensor:
        return self.dequantized(self.dtype)

    def block_scales(self) -> torch.Tensor:
        """The fp32 scale of each block (expanded from their codes for ``nf4-dq``)."""
        if self.double:
            return expand_scales(self.scale_codes, self.scale_start, self.scale_step)
        return self.scales

    def dequantized(self, dtype: torch.dtype) -> torch.Tensor:
        """The 4-bit weight in ``dtype``, with any merged update added."""
        w = dequantize_nf4(self.codes, self.block_scales(), (self.out_features, self.in_features), dtype)
        if self.update_a is None:
            return w
        return torch.addmm(w, self.update_b.to(dtype), self.update_a.to(dtype))

    @torch.no_grad()
    def add_update(self, a: torch.Tensor, b: torch.Tensor) -> None:
        """Merge the update ``b @ a`` (``a``: (r, in), ``b``: (out, r), any scaling folded into
        ``b``) into the layer, kept as its factors (several merges stack their ranks)."""
        a, b = (t.detach().to(self.codes.device, self.dtype) for t in (a, b))
        if self.update_a is not None:
            a, b = torch.cat([self.update_a, a], 0), torch.cat([self.update_b, b], 1)
        self.update_a, self.update_b = a, b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dequantized(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        kind = "nf4-dq" if self.double else "nf4"
        return f"in={self.in_features}, out={self.out_features}, {kind}, block={self.block}, dtype={self.dtype}"


def quantize_model(model: nn.Module, target_modules: Iterable[str], kind: str = "nf4", block: int = BLOCK, *,
                   device: str | torch.device | None = None) -> nn.Module:
    """Replace each ``nn.Linear`` named in ``target_modules`` with a :class:`QuantLinear`, in place,
    quantized on ``device`` (default: where each weight is) and kept there, one layer at a time.
    Returns ``model``, with ``model.quantized`` naming the kind. Merge adapters after quantizing,
    not before: one merged before would be rounded into the 4-bit levels (mostly away)."""
    if kind not in QUANT_KINDS:
        raise ValueError(f"unknown quantization {kind!r}; choose from {', '.join(QUANT_KINDS)}")
    targets = set(target_modules)
    found = False
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is nn.Linear and name in targets:
                q = QuantLinear(child.to(device) if device is not None else child, block, double=kind == "nf4-dq")
                q.train(child.training)
                setattr(module, name, q)
                found = True
    if not found:
        raise ValueError(f"no nn.Linear named {sorted(targets)} found in the model to quantize")
    model.quantized = kind
    return model


PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
FUSED = {"q_proj": "qkv_proj", "k_proj": "qkv_proj", "v_proj": "qkv_proj", "gate_proj": "gate_up_proj",
         "up_proj": "gate_up_proj"}  # Phi-3's layers that hold several projections, by the projections' names
MIXTRAL_EXPERTS = ("w1", "w3", "w2")  # Mixtral's experts' gate, up and down projections (Qwen3-MoE's: *_proj)


# unmerging would subtract the adapter from rounded 4-bit codes: the merge is final
STAYS_MERGED = "an adapter merged into a 4-bit layer stays merged (load the model again to drop it)"
KEPT_PRECISE = ("lm_head", "all-linear")  # never quantized (the head), or no layer's name (apply_lora's shorthand)


def quantized_layers(adapted: Iterable[str] = ()) -> tuple[str, ...]:
    """The layers ``--quantize`` keeps in 4 bits: every attention and MLP projection (a mixture of
    experts' experts too; its router stays precise, as bitsandbytes leaves it), and any other
    layer an adapter adapts (QLoRA quantizes the whole base, not only what the adapter touches),
    but the lm_head: the output head stays in full precision, as bitsandbytes and transformers
    leave it, since the logits are read from it (an adapter on it trains as on any full layer)."""
    return tuple(dict.fromkeys([*PROJECTIONS, *FUSED.values(), *MIXTRAL_EXPERTS,
                                *(a for a in adapted if a not in KEPT_PRECISE)]))


def is_quantized(model: nn.Module) -> bool:
    return any(isinstance(m, QuantLinear) for m in model.modules())


__all__ = ["BLOCK", "MIXTRAL_EXPERTS", "PROJECTIONS", "QUANT_KINDS", "SCALE_GROUP", "QuantLinear", "compress_scales", "dequantize_nf4",
           "expand_scales", "is_quantized", "nf4_levels", "quantize_model", "quantize_nf4", "quantized_layers"]
