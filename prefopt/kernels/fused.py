"""The fused DPO entry point: hidden states in, preference loss out, no logits in memory.

For the stacked ``[chosen; rejected]`` layout (rows ``0..B-1`` chosen, ``B..2B-1`` the
matching rejected), per-token log-probs come from ``sequence_logprobs`` (the Triton kernel on
CUDA, the chunked path on CPU) and are summed per sequence; the loss is then looked up in
``prefopt.losses``. Reference log-probs are plain tensors, so they can come from the on-disk
reference cache: no reference model and no reference logits are needed.
"""
from __future__ import annotations

import torch

from ..losses import LossOutput, PreferenceLogps, preference_loss


def fused_preference_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    ref_chosen_logps: torch.Tensor | None,
    ref_rejected_logps: torch.Tensor | None,
    loss: str = "sigmoid",
    *,
    ignore_index: int = -100,
    impl: str | None = None,
    **hparams,
) -> tuple[LossOutput, PreferenceLogps]:
    """Preference loss straight from final hidden states.

    Args:
        hidden: ``(2B, T, D)`` final hidden states aligned with ``labels`` (position t predicts
            ``labels[:, t]``), chosen rows first.
        weight: ``(V, D)`` lm_head weight (may be frozen).
        labels: ``(2B, T)``, ``ignore_index`` on prompt and padding.
        ref_chosen_logps, ref_rejected_logps: ``(B,)`` reference sequence log-prob sums, or
            ``None`` for the reference-free losses (``simpo``, ``orpo``).
        loss: a name registered in ``prefopt.losses.LOSSES``; ``hparams`` go to it (``beta``...).

    Returns:
        ``(LossOutput, PreferenceLogps)``: per-example losses and rewards, and the policy's
        sequence log-probs and token counts (for metrics).

    Example::

        out, lp = fused_preference_loss(hidden[:, :-1], model.output_weight, labels[:, 1:],
                                        ref_c, ref_r, loss="sigmoid", beta=0.1)
        out.losses.mean().backward()
    """
    from . import sequence_logprobs

    if hidden.dim() != 3 or hidden.shape[0] % 2:
        raise ValueError(f"hidden must be (2B, T, D) with chosen rows then rejected rows, got {tuple(hidden.shape)}")
    per_token = sequence_logprobs(hidden, weight, labels, ignore_index=ignore_index, impl=impl)
    sums = per_token.sum(-1)
    counts = (labels != ignore_index).sum(-1)
    B = sums.shape[0] // 2
    lp = PreferenceLogps(chosen=sums[:B], rejected=sums[B:], ref_chosen=ref_chosen_logps,
                         ref_rejected=ref_rejected_logps, chosen_tokens=counts[:B], rejected_tokens=counts[B:],
                         chosen_nll=-per_token[:B].sum() / counts[:B].sum().clamp(min=1))
    return preference_loss(loss, lp, **hparams), lp
