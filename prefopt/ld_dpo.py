"""LD-DPO (Liu et al. 2024, "Length Desensitization in Direct Preference Optimization"; TRL's ``ld_alpha``).

DPO's sequence log-probs are sums over the answer's tokens, so a longer answer moves its sum
further, and DPO learns to write more. LD-DPO splits each pair's answers at the shorter one's
length: the first ``min(n_chosen, n_rejected)`` tokens of each answer (the part both have)
count fully, the longer answer's remaining tokens (its "verbose" part) count ``alpha`` times::

    log π(y) = Σ_{t ≤ shared} log π(y_t) + α Σ_{t > shared} log π(y_t)

for the policy and for the reference alike. α = 1 is DPO; α = 0 drops the tail. The token counts
the losses divide by (IPO, SimPO, sigmoid_norm) and the chosen answers' NLL (RPO, ``sft``) stay
unweighted, as in TRL.

:func:`ld_weights` gives those per-token weights for a stacked ``[chosen; rejected]`` batch;
``prefopt.kernels.fused_preference_loss(token_weights=...)`` and the trainer's reference sums
apply them.
"""
from __future__ import annotations

import math

import torch


def check_ld_alpha(alpha: float | None) -> None:
    """The error of an ``ld_alpha`` outside [0, 1] (None: LD-DPO off)."""
    if alpha is not None and not (math.isfinite(alpha) and 0.0 <= alpha <= 1.0):
        raise ValueError(f"ld_alpha must be in [0, 1] (1 is DPO, 0 drops the longer answer's tail), got {alpha!r}")


def ld_weights(labels: torch.Tensor, alpha: float, ignore_index: int = -100) -> torch.Tensor:
    """Per-token weights ``(2B, T)`` (float32) for ``labels`` ``(2B, T)``, chosen rows first:
    1 on each answer's first ``min(n_chosen, n_rejected)`` scored tokens, ``alpha`` on the rest
    of the scored tokens, 0 where ``labels == ignore_index``."""
    check_ld_alpha(alpha)
    if labels.dim() != 2 or labels.shape[0] % 2:
        raise ValueError(f"labels must be (2B, T), chosen rows then rejected rows, got {tuple(labels.shape)}")
    scored = labels != ignore_index
    rank = scored.cumsum(-1)  # the k-th scored token of its row has rank k
    n = scored.sum(-1)
    B = n.shape[0] // 2
    shared = torch.minimum(n[:B], n[B:]).repeat(2)[:, None]
    w = torch.where(rank <= shared, 1.0, alpha)
    return w.float() * scored


__all__ = ["check_ld_alpha", "ld_weights"]
