"""f-DPO (Wang et al. 2023): DPO's reverse KL to the reference swapped for another f-divergence.

The losses built on the chosen-minus-rejected reward difference take, in place of each
answer's log-ratio x = log π/π_ref, the score f'(π/π_ref) of the divergence's generator f.
As TRL 1.16 writes them (``f_divergence_type``, ``f_alpha_divergence_coef``):

- ``reverse_kl`` (DPO): x
- ``forward_kl``: 1 − e^(−x)
- ``js_divergence``: log 2 + log σ(x)
- ``alpha_divergence``: (e^((α−1)x) − 1)/(α−1), with (α−1)x clamped at 80 (11 in fp16) so the
  exponential stays finite; α = 1 is the reverse KL.

:func:`scored` rewrites a :class:`~prefopt.losses.PreferenceLogps` so that every loss reads
the scores where it read log-ratios (policy sums: the scores; reference sums: 0);
:func:`score_grad` is d score / dx, the chain rule's factor for the closed-form pair
gradients. The rewards stay β × log-ratio, as TRL logs them.
"""
from __future__ import annotations

import math
from dataclasses import replace

import torch
import torch.nn.functional as F

DIVERGENCES = ("reverse_kl", "forward_kl", "js_divergence", "alpha_divergence")
# TRL's list of the losses with an f-divergence form (rpo is sigmoid + sft here; TRL spells it so)
SUPPORTED = frozenset({"sigmoid", "sigmoid_norm", "hinge", "ipo", "exo_pair", "robust", "discopop", "sft", "rpo"})


def check(loss_names: list[str], divergence: str, alpha: float = 0.5, *, reference_free: bool = False) -> None:
    """The errors of an f-divergence that cannot be used with these losses (a mixture's terms)."""
    if divergence not in DIVERGENCES:
        raise ValueError(f"f_divergence must be one of {', '.join(DIVERGENCES)}, got {divergence!r}")
    if divergence == "reverse_kl":
        return
    if not math.isfinite(alpha):
        raise ValueError(f"f_alpha must be a finite number, got {alpha!r}")
    other = [n for n in loss_names if n not in SUPPORTED]
    if other:
        raise ValueError(f"f_divergence {divergence!r} applies to the losses built on the reward difference "
                         f"({', '.join(sorted(SUPPORTED))}); not to {', '.join(other)}")
    if reference_free:
        raise ValueError(f"f_divergence {divergence!r} scores the policy against a reference; the loss uses none")


def _alpha_exponent(x: torch.Tensor, alpha: float) -> tuple[torch.Tensor, float]:
    """(α-1)x in at least fp32, and TRL's clamp for it (e^t stays finite after the cast back)."""
    wide = x.float() if x.element_size() < 4 else x
    return (alpha - 1.0) * wide, 11.0 if x.dtype == torch.float16 else 80.0


def _is_reverse(divergence: str, alpha: float) -> bool:
    return divergence == "reverse_kl" or (divergence == "alpha_divergence" and abs(alpha - 1.0) < 1e-6)


def score(x: torch.Tensor, divergence: str, alpha: float = 0.5) -> torch.Tensor:
    """f'(e^x) for log-ratios ``x``, as listed in the module's docstring."""
    if _is_reverse(divergence, alpha):
        return x
    if divergence == "forward_kl":
        return 1 - torch.exp(-x)
    if divergence == "js_divergence":
        return math.log(2) + F.logsigmoid(x)
    if divergence == "alpha_divergence":
        t, limit = _alpha_exponent(x, alpha)
        return (torch.exp(t.clamp(max=limit)) - 1.0).to(x.dtype) / (alpha - 1.0)
    raise ValueError(f"f_divergence must be one of {', '.join(DIVERGENCES)}, got {divergence!r}")


def score_grad(x: torch.Tensor, divergence: str, alpha: float = 0.5) -> torch.Tensor:
    """d :func:`score` / dx (0 where the α-divergence's exponent is clamped, as autograd has it)."""
    if _is_reverse(divergence, alpha):
        return torch.ones_like(x)
    if divergence == "forward_kl":
        return torch.exp(-x)
    if divergence == "js_divergence":
        return torch.sigmoid(-x)
    t, limit = _alpha_exponent(x, alpha)
    return torch.where(t <= limit, torch.exp(t.clamp(max=limit)), torch.zeros_like(t)).to(x.dtype)


def scored(lp, divergence: str, alpha: float = 0.5):
    """``lp`` with each policy sum replaced by its log-ratio's score and each reference sum by 0:
    a loss that reads ``chosen - ref_chosen`` reads the score, exactly (no sum added back and taken
    away again in fp32). Unchanged for the reverse KL."""
    if _is_reverse(divergence, alpha):
        return lp
    c, r = score(lp.chosen - lp.ref_chosen, divergence, alpha), score(lp.rejected - lp.ref_rejected, divergence, alpha)
    return replace(lp, chosen=c, rejected=r, ref_chosen=torch.zeros_like(c), ref_rejected=torch.zeros_like(r))


__all__ = ["DIVERGENCES", "SUPPORTED", "check", "score", "score_grad", "scored"]
