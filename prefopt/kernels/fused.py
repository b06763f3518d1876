"""The fused entry points: hidden states in, a loss out, no logits in memory.

For the stacked ``[chosen; rejected]`` layout (rows ``0..B-1`` chosen, ``B..2B-1`` the
matching rejected), per-token log-probs come from ``sequence_logprobs`` (the Triton kernel on
CUDA, the chunked path on CPU) and are summed per sequence; the loss is then looked up in
``prefopt.losses``. Reference log-probs are plain tensors, so they can come from the on-disk
reference cache: no reference model and no reference logits are needed.

With ``reduction="sum"`` and a trainable head, the chunked path instead forms both lm_head
gradients in the forward, a stage of whole pairs at a time (``onepass.py``): three GEMM passes
instead of four. ``nll_sum`` (SFT's loss) does the same for the summed token NLL.
"""
from __future__ import annotations

from dataclasses import replace

import torch

from ..losses import (
    PAIR_GRADS,
    PAIRWISE,
    LossOutput,
    PreferenceLogps,
    check_loss,
    known_loss,
    pair_gradient,
    preference_loss,
    reads_nll,
)
from ..wpo import pair_weights as wpo_pair_weights
from ._tokens import check_shapes


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
    reduction: str = "none",
    one_pass: bool | None = None,
    budget: int | None = None,
    desirable: torch.Tensor | None = None,
    token_weights: torch.Tensor | None = None,
    wpo: bool = False,
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
        impl: the log-prob implementation (see ``sequence_logprobs``).
        reduction: ``"none"``: per-example losses; ``"sum"``: their sum, a scalar.
        one_pass: with ``reduction="sum"``, form the lm_head gradients in the forward
            (``onepass.py``; a pairwise loss under autograd). ``None`` (default, or
            ``$PREFOPT_ONEPASS`` = 0/1): where the head is trainable and the log-probs would
            take the chunked path (a CPU), and on CUDA with its row kernels, the head trainable
            or frozen, unless ``impl`` or ``$PREFOPT_LOGPROBS`` forces an implementation
            (``onepass.wanted``); a trainable head saves one of four GEMM passes.
        budget: logits per block on the one-pass path, in elements (default
            ``CHUNK_ELEMENTS``, 2^24; on CUDA ``onepass.SLAB_ELEMENTS``, 12 Mi, and a block is
            at least 256 tokens, its logits taken in vocabulary slabs within the budget). Pairs
            are taken a stage at a time: one block, or on CUDA ``onepass.GRAD_ELEMENTS`` (96 Mi)
            of q; a pair whose tokens do not fit in a stage takes two walks.
        desirable: ``(B,)`` booleans for ``loss="kto"``: row i is example i's completion and
            row B + i another example's completion under i's prompt (the KL estimate's sample).
        token_weights: ``(2B, T)``, optional: each sequence's log-prob is ``Σ w_t log p_t``
            (LD-DPO's, ``prefopt.ld_dpo.ld_weights``); token counts and ``chosen_nll`` stay
            unweighted. The one-pass path takes them unless the loss reads ``chosen_nll``
            (``losses.reads_nll``: then the per-token path).
        wpo: weigh each pair's loss by WPO's weight (``prefopt.wpo.pair_weights``: one more
            no-grad forward pass of the answers' tokens through the head, before the loss).
            Pair losses only (not ``kto``, not the batch-sorted ``aot``).

    Returns:
        ``(LossOutput, PreferenceLogps)``: the losses (per example, or their sum) and rewards,
        and the policy's sequence log-probs and token counts (for metrics; detached when the
        gradients were formed in the forward).

    Example::

        out, lp = fused_preference_loss(hidden[:, :-1], model.output_weight, labels[:, 1:],
                                        ref_c, ref_r, loss="sigmoid", beta=0.1)
        out.losses.mean().backward()
    """
    from . import sequence_logprobs

    if hidden.dim() != 3 or hidden.shape[0] % 2:
        raise ValueError(f"hidden must be (2B, T, D) with chosen rows then rejected rows, got {tuple(hidden.shape)}")
    known_loss(loss)  # a mixture ("sigmoid+0.5*sft") is registered on first use, its flags with it
    if reduction not in ("none", "sum"):
        raise ValueError(f"reduction must be 'none' or 'sum', got {reduction!r}")
    check_shapes(hidden, weight, labels)  # before B is read from the labels
    counts = (labels != ignore_index).sum(-1)
    B = counts.shape[0] // 2
    for arg, ref in (("ref_chosen_logps", ref_chosen_logps), ("ref_rejected_logps", ref_rejected_logps),
                     ("desirable", desirable)):
        if ref is not None and tuple(ref.shape) != (B,):
            what = "label" if arg == "desirable" else "reference log-prob sum"
            raise ValueError(f"{arg} must be ({B},), one {what} per pair of the {2 * B} rows, "
                             f"got shape {tuple(ref.shape)}")
    chosen_tokens = counts[:B].sum().clamp(min=1)
    if token_weights is not None and token_weights.shape != labels.shape:
        raise ValueError(f"token_weights must be shaped like labels {tuple(labels.shape)}, "
                         f"got {tuple(token_weights.shape)}")

    pw = None
    if wpo:
        if loss not in PAIRWISE or desirable is not None:
            raise ValueError(f"wpo weighs pairs one by one; {loss!r} is not a pair loss (prefopt.losses.PAIRWISE: "
                             "not kto, not the batch-sorted aot)")
        pw = wpo_pair_weights(hidden, weight, labels, ignore_index, budget)

    def logps(sums: torch.Tensor, pairs: slice = slice(None), nll_scale: float = 1.0,
              chosen_plain: torch.Tensor | None = None, nll: bool = True) -> PreferenceLogps:
        """``chosen_plain``: the chosen sums unweighted, where ``sums`` are weighted (for chosen_nll);
        ``nll=False``: no chosen_nll (a built-in loss that does not read it: four operations fewer
        a stage on the one-pass path, each a launch on a GPU)."""
        ref = (ref_chosen_logps, ref_rejected_logps)
        plain = sums[:B] if chosen_plain is None else chosen_plain
        return PreferenceLogps(chosen=sums[:B][pairs], rejected=sums[B:][pairs],
                               ref_chosen=None if ref[0] is None else ref[0][pairs],
                               ref_rejected=None if ref[1] is None else ref[1][pairs],
                               chosen_tokens=counts[:B][pairs], rejected_tokens=counts[B:][pairs],
                               chosen_nll=-plain[pairs].sum() / chosen_tokens * nll_scale if nll else None,
                               desirable=None if desirable is None else desirable[pairs],
                               pair_weights=None if pw is None else pw[pairs])

    weighted_nll = token_weights is not None and reads_nll(loss)
    if reduction == "sum" and not weighted_nll and _one_pass(one_pass, loss, hidden, weight, impl):
        from .onepass import onepass_loss

        def pair_loss(sums, pairs, scale):
            return preference_loss(loss, logps(sums, pairs, scale), **hparams).losses.sum()

        def pair_grad(sums, pairs, scale):  # the same sum's gradient, in closed form (built-in losses only)
            lp = logps(sums, pairs, scale, nll=reads_nll(loss))
            dc, dr, dnll = pair_gradient(loss, lp, **hparams)
            if dnll:  # chosen_nll = -Σ chosen / chosen_tokens × scale (an integer count: divide in sums' dtype)
                dc = dc - dnll * scale / chosen_tokens.to(sums.dtype)
            g = torch.zeros_like(sums)
            g[:B][pairs], g[B:][pairs] = dc, dr
            return g
        check_loss(loss, logps(torch.zeros(2 * B, device=hidden.device)))  # its errors before any work
        closed = loss in PAIR_GRADS and not (wpo and reads_nll(loss))  # weighted NLL terms: autograd
        total, sums = onepass_loss(hidden, weight, labels, ignore_index, pair_loss, budget,
                                   pair_grad if closed else None, token_weights=token_weights)
        lp = logps(sums)
        out = preference_loss(loss, lp, **hparams)
        return replace(out, losses=total), lp
    if one_pass and weighted_nll:
        raise ValueError(f"one_pass with token_weights needs a loss that does not read chosen_nll; {loss!r} does")
    per_token = sequence_logprobs(hidden, weight, labels, ignore_index=ignore_index, impl=impl)
    if token_weights is None:
        lp = logps(per_token.sum(-1))
    else:
        lp = logps((per_token * token_weights.to(per_token.dtype)).sum(-1), chosen_plain=per_token[:B].sum(-1))
    out = preference_loss(loss, lp, **hparams)
    if reduction == "sum":
        out = replace(out, losses=out.losses.sum())
    return out, lp


def _one_pass(asked: bool | None, loss: str, hidden: torch.Tensor, weight: torch.Tensor, impl: str | None) -> bool:
    """Whether ``fused_preference_loss(reduction="sum")`` forms the gradients in the forward."""
    from .onepass import wanted

    if loss not in PAIRWISE:
        if asked:
            raise ValueError(f"one_pass needs a pairwise loss (prefopt.losses.PAIRWISE); {loss!r} is not")
        return False
    return wanted(asked, hidden, weight, impl)


def nll_sum(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, *, ignore_index: int = -100,
            impl: str | None = None, one_pass: bool | None = None) -> torch.Tensor:
    """``−Σ log p(label)`` over the tokens not equal to ``ignore_index``: SFT's summed loss.

    ``hidden`` ``(..., D)`` aligned with ``labels`` ``(...)``, as for ``sequence_logprobs``.
    ``one_pass`` as in ``fused_preference_loss``: by default the lm_head gradients are formed
    in the forward where the head is trainable and the log-probs would take the chunked path,
    and on CUDA (``onepass.wanted``).
    """
    from . import sequence_logprobs
    from .onepass import onepass_nll, wanted

    if wanted(one_pass, hidden, weight, impl):
        return onepass_nll(hidden, weight, labels, ignore_index)
    return -sequence_logprobs(hidden, weight, labels, ignore_index=ignore_index, impl=impl).sum()
