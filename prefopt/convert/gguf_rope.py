"""Llama 3.1-style RoPE scaling and a GGUF file's ``rope_freqs`` tensor, both ways.

llama.cpp's converter does not keep Llama 3.1's ``rope_scaling`` settings (``factor``,
``low_freq_factor``, ``high_freq_factor``, ``original_max_position_embeddings``); it stores what
they do: one divisor per rotary frequency (1 for high frequencies, ``factor`` for low ones, a
blend between). This finds settings that give back exactly those divisors. Only their effect is
fixed by the file: the blend is linear in 1 / wavelength, so its two coefficients fix the two
frequency factors once the original context is chosen (8192, Llama 3.1's, unless the file says).
The export writes the tensor from the settings (:func:`rope_divisors`).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..model.config import UnsupportedModelError
from ..model.rope import llama3_scale

_LLAMA31 = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
_RTOL = 1e-5  # the divisors are stored in float32


def llama3_scaling(divisors: np.ndarray, theta: float, dim: int, path, original_context: int = 8192) -> dict | None:
    """Llama 3.1 ``rope_scaling`` settings that give ``divisors`` (``(dim // 2,)``, llama.cpp's
    ``rope_freqs``) for RoPE base ``theta`` over ``dim`` rotary dimensions; None where every divisor
    is 1 (no scaling). Raises :class:`UnsupportedModelError`, naming ``path``, where none does."""
    f = np.asarray(divisors, dtype=np.float64).reshape(-1)
    if f.shape != (dim // 2,):
        raise UnsupportedModelError(f"{path}: 'rope_freqs.weight' has {f.size} values; the model rotates "
                                    f"{dim // 2} frequencies")
    if np.allclose(f, 1.0, rtol=0, atol=_RTOL):
        return None
    factor = float(np.float32(f.max()))
    candidates = [{"factor": factor, **_LLAMA31}]  # Llama 3.1, 3.2 and 3.3 use these
    inv_freq = _inv_freq(theta, dim)
    blended = (f > 1 + _RTOL) & (f < factor * (1 - _RTOL))
    if blended.sum() >= 2 and factor > 1:
        # 1/f = (1 - s)/factor + s, s = (C / wavelen - lo) / (hi - lo): s is linear in 1/wavelen
        s = (1 / f[blended] - 1 / factor) / (1 - 1 / factor)
        slope, icept = np.polyfit((inv_freq / (2 * math.pi))[blended], s, 1)
        lo = -icept * original_context / slope
        candidates.append({"factor": factor, "low_freq_factor": float(f"{lo:.6g}"),
                           "high_freq_factor": float(f"{lo + original_context / slope:.6g}"),
                           "original_max_position_embeddings": original_context})
    for c in candidates:
        scaling = {"rope_type": "llama3", **c}
        if np.allclose(rope_divisors(theta, dim, scaling), f, rtol=_RTOL, atol=0):
            return scaling
    raise UnsupportedModelError(
        f"{path}: its 'rope_freqs.weight' is not Llama 3.1-style RoPE scaling that prefopt can express; "
        "import from the original HF checkpoint instead"
    )


def rope_divisors(theta: float, dim: int, scaling: dict) -> np.ndarray:
    """What llama.cpp's ``rope_freqs`` holds for Llama 3.1 ``scaling``: each rotary frequency's
    divisor (1 for high frequencies, ``factor`` for low ones, a blend between), float32."""
    inv_freq = torch.from_numpy(_inv_freq(theta, dim))
    return (inv_freq / llama3_scale(inv_freq, scaling)).numpy().astype(np.float32)


def _inv_freq(theta: float, dim: int) -> np.ndarray:
    return 1.0 / theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
