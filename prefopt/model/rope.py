"""Rotary position embeddings (RoPE), in the rotate-half layout of HF checkpoints."""
from __future__ import annotations

import math

import torch

from .config import ModelConfig


def rope_inv_freq(cfg: ModelConfig, local: bool = False) -> torch.Tensor:
    """Inverse frequencies ``(head_dim // 2,)`` in fp32, with ``rope_scaling`` applied; ``local``:
    Gemma 3's sliding layers' (base ``local_rope_theta``, no scaling)."""
    dim = cfg.head_dim
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
    return inv_freq


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


def rope_cos_sin(inv_freq: torch.Tensor, position_ids: torch.Tensor, dtype: torch.dtype):
    """cos and sin, each ``(B, T, head_dim)``, for ``position_ids`` ``(B, T)``; computed in fp32."""
    freqs = position_ids[..., None].float() * inv_freq.to(position_ids.device)  # (B, T, hd/2)
    emb = torch.cat((freqs, freqs), dim=-1)  # (B, T, hd)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` ``(B, H, T, hd)`` by cos/sin ``(B, T, hd)``."""
    cos, sin = cos[:, None], sin[:, None]  # (B, 1, T, hd)
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin
