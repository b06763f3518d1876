"""Rotary position embeddings (RoPE), in the rotate-half layout of HF checkpoints."""
from __future__ import annotations

import math

import torch

from .config import ModelConfig


def rope_inv_freq(cfg: ModelConfig, local: bool = False, long: bool = False) -> torch.Tensor:
    """Inverse frequencies ``(rotary_dim // 2,)`` in fp32, with ``rope_scaling`` applied; ``local``:
    Gemma 3's sliding layers' (base ``local_rope_theta``, no scaling); ``long``: LongRoPE's for a
    sequence past the pretrained context (its ``long_factor``; else its ``short_factor``)."""
    dim = cfg.rotary_dim
    theta = cfg.local_rope_theta if local else cfg.rope_theta
    # built on the CPU even under a meta-device context: it is tiny and never loaded from a file
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.int64, device="cpu").float() / dim))
    if local:
        return inv_freq
    s = cfg.rope_scaling or {}
    if cfg.rope_type == "linear":
        return inv_freq / s["factor"]
    if cfg.rope_type == "llama3":
        return llama3_scale(inv_freq, s)
    if cfg.rope_type == "longrope":
        factors = s["long_factor" if long else "short_factor"]
        if len(factors) != len(inv_freq):
            raise ValueError(f"longrope: {len(factors)} factors for {len(inv_freq)} frequencies (rotary_dim {dim})")
        return inv_freq / torch.tensor(factors, dtype=torch.float32, device="cpu")
    return inv_freq


def longrope_from(cfg: ModelConfig) -> int | None:
    """The sequence length past which LongRoPE takes its long factors (the pretrained context:
    positions up to it keep the short ones, as transformers picks them by the batch's furthest
    position); None where the model does not use LongRoPE."""
    return cfg.rope_scaling["original_max_position_embeddings"] if cfg.rope_type == "longrope" else None


def rope_attention_factor(cfg: ModelConfig) -> float:
    """The factor cos and sin are scaled by: LongRoPE's ``attention_factor``, by default
    ``sqrt(1 + ln(s) / ln(pretrained context))`` for the context's growth ``s`` (its ``factor``,
    else ``max_position_embeddings`` over the pretrained context); 1 for other kinds of RoPE."""
    if cfg.rope_type != "longrope":
        return 1.0
    s = cfg.rope_scaling
    if s.get("attention_factor") is not None:
        return float(s["attention_factor"])
    original = s["original_max_position_embeddings"]
    factor = s.get("factor") or cfg.max_position_embeddings / original
    return 1.0 if factor <= 1 else math.sqrt(1 + math.log(factor) / math.log(original))


def llama3_scale(inv_freq: torch.Tensor, s: dict) -> torch.Tensor:
    """Llama 3.1's ``rope_scaling`` (``s``) applied: high frequencies kept, low ones divided by
    ``factor``, a blend between."""
    factor, lo, hi = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
    old_ctx = s["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_ctx / lo, inv_freq / factor, inv_freq)
    smooth = (old_ctx / wavelen - lo) / (hi - lo)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old_ctx / hi) & (wavelen <= old_ctx / lo)
    return torch.where(medium, blended, scaled)


def rope_cos_sin(inv_freq: torch.Tensor, position_ids: torch.Tensor, dtype: torch.dtype, scale: float = 1.0):
    """cos and sin, each ``(B, T, rotary_dim)``, for ``position_ids`` ``(B, T)``; computed in fp32
    (and scaled by ``scale``, :func:`rope_attention_factor`, before the cast)."""
    freqs = position_ids[..., None].float() * inv_freq.to(position_ids.device)  # (B, T, rd/2)
    emb = torch.cat((freqs, freqs), dim=-1)  # (B, T, rd)
    cos, sin = emb.cos(), emb.sin()
    if scale != 1.0:
        cos, sin = cos * scale, sin * scale
    return cos.to(dtype), sin.to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` ``(B, H, T, hd)`` by cos/sin ``(B, T, rd)``: its first ``rd`` dimensions, the
    rest passed through where ``rd < hd`` (a partial rotary factor)."""
    cos, sin = cos[:, None], sin[:, None]  # (B, 1, T, rd)
    rd = cos.shape[-1]
    if rd < x.shape[-1]:
        return torch.cat((_rotate(x[..., :rd], cos, sin), x[..., rd:]), dim=-1)
    return _rotate(x, cos, sin)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate all of ``x`` ``(..., rd)`` by cos/sin broadcast to it."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin
