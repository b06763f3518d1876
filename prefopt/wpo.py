"""WPO (Zhou et al. 2024, "WPO: Enhancing RLHF with Weighted Preference Optimization"; TRL's ``use_weighting``).

Preference pairs are usually written by someone other than the model being trained (clinicians,
another model): off-policy. WPO weighs each pair's loss by how likely the policy itself is to
write its two answers, so that pairs far from what the model would say count less::

    w(y) = exp( mean_t [ log π(y_t) − log Σ_v π(v)² ] )        loss_i × w(chosen_i) · w(rejected_i)

``Σ_v π(v)²`` is the probability that two draws from the model's next-token distribution agree:
dividing by it (Eq. 3 of the paper) makes a token the model would pick greedily weigh about 1,
however peaked the distribution. The weights come from the policy under ``torch.no_grad`` (the
gradient does not flow through them), on each answer's own tokens, unweighted by LD-DPO; the
rewards and metrics other than the loss are unchanged. As in TRL, every term of a mixture
(``sigmoid+sft``: the NLL term too) is weighted.

:func:`sequence_weights` takes one more pass over the answers' tokens through the lm_head (a
forward GEMM, no gradient; O(chunk × V) memory like the chunked path), so it works beside any
log-prob path (chunked, Triton, one-pass). ``prefopt.kernels.fused_preference_loss(wpo=True)``
runs it and puts the pair weights on the loss.
"""
from __future__ import annotations

import torch

from .kernels._backward import CHUNK_ELEMENTS, acc_dtype, block_rows, gemm_rows, mm_acc
from .kernels._tokens import check_inputs, scored
from .kernels.chunked import _exp_rows_


@torch.no_grad()
def sequence_weights(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100,
                     budget: int | None = None) -> torch.Tensor:
    """WPO's weight of each sequence: ``exp`` of the mean over its scored tokens of ``log p(label) −
    log Σ_v p(v)²`` under ``softmax(hidden @ weight.T)``; 1 for a sequence with no scored token.

    ``hidden`` ``(R, T, D)`` aligned with ``labels`` ``(R, T)`` as for ``sequence_logprobs``;
    ``weight`` ``(V, D)``. Returns fp32 ``(R,)``, detached. ``budget``: logits alive at once."""
    if labels.dim() != 2:
        raise ValueError(f"labels must be (R, T), one row per sequence, got {tuple(labels.shape)}")
    check_inputs(hidden, weight, labels, ignore_index)
    index, h, y = scored(hidden, labels, ignore_index)  # the answers' tokens only, before any cast or matmul
    device = hidden.device.type
    if torch.is_autocast_enabled(device):  # the lm_head product in autocast's dtype, as the loss's path takes it
        dt = torch.get_autocast_dtype(device)
        h, weight = h.to(dt), weight.to(dt)
    acc = acc_dtype(h)
    per_token = torch.empty(y.shape[0], dtype=acc, device=h.device)
    chunk = block_rows(max(y.shape[0], 1), weight.shape[0], budget or CHUNK_ELEMENTS, gemm_rows(h.device))
    with torch.autocast(device, enabled=False):
        for s in range(0, y.shape[0], chunk):
            e = mm_acc(h[s:s + chunk], weight.T, acc)  # (c, V) logits, made exp(logits − row max) in place
            logp, _, norm = _exp_rows_(e, y[s:s + chunk])  # norm: Σ exp(logits − max)
            # log Σ p² = log Σ exp(2 (logits − max)) − 2 log norm
            per_token[s:s + chunk] = logp - e.square_().sum(-1).log() + 2 * norm.log()
            del e
    counts = (labels != ignore_index).sum(-1)
    sums = torch.zeros(labels.shape[0], dtype=acc, device=h.device).index_add_(0, index[0], per_token)
    return torch.exp(sums / counts.clamp(min=1)).float()


def pair_weights(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100,
                 budget: int | None = None) -> torch.Tensor:
    """``(B,)`` WPO weights ``w(chosen) · w(rejected)`` of a stacked ``[chosen; rejected]`` batch
    (``labels`` ``(2B, T)``, chosen rows first)."""
    if labels.dim() != 2 or labels.shape[0] % 2:
        raise ValueError(f"labels must be (2B, T), chosen rows then rejected rows, got {tuple(labels.shape)}")
    w = sequence_weights(hidden, weight, labels, ignore_index, budget)
    B = w.shape[0] // 2
    return w[:B] * w[B:]


__all__ = ["pair_weights", "sequence_weights"]
