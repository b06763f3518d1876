"""Preference losses: small pure functions over sequence log-probs, looked up by name.

Every loss takes a :class:`PreferenceLogps` (per-example sums of response-token log-probs
for the policy and, where used, the reference, plus response token counts) and keyword
hyper-parameters, and returns a :class:`LossOutput` of per-example losses and the chosen
and rejected rewards. Register your own with :func:`register_loss`. DPO's family (sigmoid/cDPO,
robust, hinge, IPO, RPO, SimPO, ORPO) and KTO are here; TRL's other losses (BCO, NCA, EXO,
SPPO, APO, DiscoPOP, AOT, sigmoid_norm) in :mod:`prefopt.losses_extra`, registered with them.

Every built-in loss but ``kto`` and ``aot``/``aot_unpaired`` is *pairwise*: example i's loss depends only on pair i's
fields and on ``chosen_nll``, the batch mean of the chosen tokens' NLL, which is linear in the
log-probs. ``prefopt.kernels.onepass`` relies on that to form the lm_head gradients stage by
stage in the forward; a loss registered without ``pairwise=True`` (``kto``: its reference point
is a batch mean) takes the per-token path. Each pairwise built-in loss also has its gradient in
closed form (``PAIR_GRADS``), which spares the one-pass kernel an autograd call per stage.

Conventions (TRL's, see docs/dpo.md): logps are sums over response tokens; rewards are
``beta * (policy - reference)`` for the reference-based losses and ``beta * mean token
logp`` for the reference-free ones; IPO and SimPO length-normalise by token counts.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from . import f_divergence as fdiv


@dataclass
class PreferenceLogps:
    """All ``(B,)`` tensors. ``*_tokens`` count response tokens; ``chosen_nll`` is the mean
    per-token negative log-likelihood of the chosen responses over the batch (a scalar)."""

    chosen: torch.Tensor
    rejected: torch.Tensor
    ref_chosen: torch.Tensor | None = None
    ref_rejected: torch.Tensor | None = None
    chosen_tokens: torch.Tensor | None = None
    rejected_tokens: torch.Tensor | None = None
    chosen_nll: torch.Tensor | None = None
    # KTO's unpaired examples: whether each completion (in ``chosen``) is desirable; ``rejected``
    # then holds another example's completion under this prompt (the KL estimate's sample)
    desirable: torch.Tensor | None = None
    # WPO (prefopt.wpo): each pair's loss is multiplied by its weight (detached); None: unweighted
    pair_weights: torch.Tensor | None = None


@dataclass
class LossOutput:
    losses: torch.Tensor  # (B,) per example
    chosen_rewards: torch.Tensor  # (B,), detached
    rejected_rewards: torch.Tensor
    reference_point: torch.Tensor | None = None  # KTO's z0 (detached), as its loss used it; None for the rest


LossFn = Callable[..., LossOutput]
PairGrad = Callable[..., tuple[torch.Tensor, torch.Tensor, float]]
LOSSES: dict[str, LossFn] = {}
# losses on unpaired feedback (prefopt.data.load_feedback), not pairs, and what the runs call them
UNPAIRED = {"kto": "KTO", "apo_zero_unpaired": "APO-zero"}
REFERENCE_FREE: set[str] = set()
PAIRWISE: set[str] = set()
PAIR_GRADS: dict[str, PairGrad] = {}  # closed-form gradients of pairwise losses (each beside its loss)
NLL_TERMS = ("rpo", "orpo", "sft")  # the built-in losses that read chosen_nll: a term keeping the chosen answers likely


def register_loss(name: str, *, reference_free: bool = False, pairwise: bool = False,
                  pair_grad: PairGrad | None = None) -> Callable[[LossFn], LossFn]:
    """Decorator: make ``fn(lp: PreferenceLogps, **hparams) -> LossOutput`` available by name.

    ``pairwise=True`` promises that example i's loss depends only on pair i's entries and on
    ``lp.chosen_nll`` (so the loss of a few pairs can be taken on their own). ``pair_grad``,
    optional, gives the gradient of the summed losses in closed form, ``(d/d chosen,
    d/d rejected, d/d chosen_nll)`` from the same arguments; without one the one-pass kernel
    asks autograd. Registering a name again drops a closed form it had."""
    def add(fn: LossFn) -> LossFn:
        LOSSES[name] = fn
        for names, flag in ((REFERENCE_FREE, reference_free), (PAIRWISE, pairwise)):
            names.discard(name)
            if flag:
                names.add(name)
        PAIR_GRADS.pop(name, None)
        if pair_grad is not None:
            PAIR_GRADS[name] = pair_grad
        return fn
    return add


def known_loss(name: str) -> str:
    """``name``, registered: a weighted sum of registered losses such as ``"0.8*sigmoid+0.2*bco_pair+sft"``
    (TRL's list of loss types with their weights) is registered on first use
    (:func:`prefopt.losses_extra.register_mixture`, which says what is wrong with a bad one)."""
    if name not in LOSSES and "+" in name:
        losses_extra.register_mixture(name)
    return name


def base_losses() -> list[str]:
    """The registered losses but the mixtures registered from them, sorted: what a mixture is made of."""
    return sorted(n for n in LOSSES if "+" not in n)


def loss_terms(name: str) -> list[str]:
    """The loss names in ``name``: itself, or a mixture's terms (``"0.8*sigmoid+sft"``: sigmoid, sft)."""
    return [t.rpartition("*")[2].strip() for t in name.split("+")]


def reads_nll(name: str | None) -> bool:
    """Whether loss ``name`` (a mixture: any of its terms) has a term on the chosen answers' NLL
    (``NLL_TERMS``: it reads ``chosen_nll`` and keeps those answers likely)."""
    return name is not None and any(t in NLL_TERMS for t in loss_terms(name))


def loss_arg(text: str) -> str:
    """A command line's ``--loss``: a registered name or a mixture of them (:func:`known_loss`);
    argparse shows the error of anything else."""
    import argparse

    try:
        known_loss(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if text not in LOSSES:
        raise argparse.ArgumentTypeError(f"unknown loss {text!r}; registered: "
                                         f"{', '.join(base_losses())}, or a weighted sum "
                                         "of them such as 0.8*sigmoid+0.2*bco_pair+sft")
    return text


def check_loss(name: str, lp: PreferenceLogps) -> None:
    """The errors ``preference_loss`` gives before it computes: an unknown name, missing
    references, per-pair entries that are not all ``(B,)`` (a ``(B, 1)`` reference would
    broadcast against ``(B,)`` log-probs into a ``(B, B)`` loss without a word)."""
    known_loss(name)
    if name not in LOSSES:
        raise ValueError(f"unknown preference loss {name!r}; registered: {sorted(LOSSES)}")
    if name not in REFERENCE_FREE and (lp.ref_chosen is None or lp.ref_rejected is None):
        raise ValueError(f"loss {name!r} needs reference log-probs")
    if lp.chosen.dim() != 1:
        raise ValueError(f"chosen log-probs must be (B,), one per pair, got shape {tuple(lp.chosen.shape)}")
    for field in ("rejected", "ref_chosen", "ref_rejected", "chosen_tokens", "rejected_tokens", "desirable",
                  "pair_weights"):
        t = getattr(lp, field)
        if t is not None and t.shape != lp.chosen.shape:
            raise ValueError(f"{field} has shape {tuple(t.shape)} where chosen has {tuple(lp.chosen.shape)}: every "
                             "per-pair entry is one value per pair (the reference log-probs: one sum per pair)")


def preference_loss(name: str, lp: PreferenceLogps, *, f_divergence: str = "reverse_kl", f_alpha: float = 0.5,
                    **hparams) -> LossOutput:
    """Look up loss ``name`` and apply it. ``f_divergence`` other than ``"reverse_kl"`` (f-DPO,
    :mod:`prefopt.f_divergence`; ``f_alpha`` its α-divergence's α) scores each answer's
    log-ratio by that divergence before the loss reads it; the rewards stay β × log-ratio.
    ``lp.pair_weights`` (WPO, :mod:`prefopt.wpo`) multiply each example's loss, NLL term included."""
    check_loss(name, lp)
    if f_divergence == "reverse_kl":
        out = LOSSES[name](lp, **hparams)
    else:
        fdiv.check(loss_terms(name), f_divergence, f_alpha, reference_free=name in REFERENCE_FREE)
        scored = LOSSES[name](fdiv.scored(lp, f_divergence, f_alpha), **hparams)
        c, r = _ratios(lp)
        out = replace(_rewards(hparams.get("beta", 0.1), c, r, scored.losses), reference_point=scored.reference_point)
    if lp.pair_weights is not None:
        out = replace(out, losses=out.losses * lp.pair_weights.to(out.losses.dtype))
    return out


def pair_gradient(name: str, lp: PreferenceLogps, *, f_divergence: str = "reverse_kl", f_alpha: float = 0.5,
                  **hparams) -> tuple[torch.Tensor, torch.Tensor, float]:
    """``PAIR_GRADS[name]``'s closed-form gradient of the summed losses, ``(d/d chosen, d/d
    rejected, d/d chosen_nll)``, through an f-divergence's scores where one is given, and scaled
    by ``lp.pair_weights`` where there are any (for a loss without an NLL term: a pair's weight
    on the batch's NLL is not in the closed form, so such a loss takes autograd)."""
    if f_divergence == "reverse_kl":
        dc, dr, dnll = PAIR_GRADS[name](lp, **hparams)
    else:
        dc, dr, dnll = PAIR_GRADS[name](fdiv.scored(lp, f_divergence, f_alpha), **hparams)
        c, r = _ratios(lp)
        dc, dr = dc * fdiv.score_grad(c, f_divergence, f_alpha), dr * fdiv.score_grad(r, f_divergence, f_alpha)
    if lp.pair_weights is None:
        return dc, dr, dnll
    if dnll:
        raise ValueError(f"pair_gradient: {name!r} reads chosen_nll; with pair_weights take its gradient by autograd")
    w = lp.pair_weights.to(dc.dtype)
    return dc * w, dr * w, dnll


def _ratios(lp: PreferenceLogps) -> tuple[torch.Tensor, torch.Tensor]:
    return lp.chosen - lp.ref_chosen, lp.rejected - lp.ref_rejected


def _rewards(beta: float, chosen: torch.Tensor, rejected: torch.Tensor, losses: torch.Tensor) -> LossOutput:
    return LossOutput(losses, (beta * chosen).detach(), (beta * rejected).detach())


def _need(lp: PreferenceLogps, field: str, loss: str) -> torch.Tensor:
    v = getattr(lp, field)
    if v is None:
        raise ValueError(f"loss {loss!r} needs {field}")
    return v


def _d_smoothed_logsigmoid(z: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """d/dz of ``-(1-ε) log σ(z) - ε log σ(-z)``."""
    if not label_smoothing:  # the usual case, in two operations (the one-pass kernel runs this per stage)
        return -torch.sigmoid(-z)
    return -(1 - label_smoothing) * torch.sigmoid(-z) + label_smoothing * torch.sigmoid(z)


def _sigmoid_grad(lp: PreferenceLogps, *, beta: float = 0.1, label_smoothing: float = 0.0, **_):
    c, r = _ratios(lp)
    dz = beta * _d_smoothed_logsigmoid(beta * (c - r), label_smoothing)
    return dz, -dz, 0.0


@register_loss("sigmoid", pairwise=True, pair_grad=_sigmoid_grad)
def sigmoid_loss(lp: PreferenceLogps, *, beta: float = 0.1, label_smoothing: float = 0.0, **_) -> LossOutput:
    """DPO: ``-log σ(β·Δ)`` with Δ the difference of log-ratios. ``label_smoothing`` ε > 0
    gives conservative DPO (cDPO): ``-(1-ε) log σ(βΔ) - ε log σ(-βΔ)``."""
    c, r = _ratios(lp)
    z = beta * (c - r)
    losses = -(1 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)
    return _rewards(beta, c, r, losses)


def _robust_smoothing(label_smoothing: float) -> None:
    if not 0 <= label_smoothing < 0.5:
        raise ValueError("robust loss needs label_smoothing in [0, 0.5)")


def _robust_grad(lp: PreferenceLogps, *, beta: float = 0.1, label_smoothing: float = 0.0, **_):
    _robust_smoothing(label_smoothing)
    c, r = _ratios(lp)
    z = beta * (c - r)
    dz = beta * (-(1 - label_smoothing) * torch.sigmoid(-z) - label_smoothing * torch.sigmoid(z)) / (1 - 2 * label_smoothing)
    return dz, -dz, 0.0


@register_loss("robust", pairwise=True, pair_grad=_robust_grad)
def robust_loss(lp: PreferenceLogps, *, beta: float = 0.1, label_smoothing: float = 0.0, **_) -> LossOutput:
    """Robust DPO (Chowdhury et al. 2024): unbiased under label-flip rate ε,
    ``(-(1-ε) log σ(βΔ) + ε log σ(-βΔ)) / (1 - 2ε)``."""
    _robust_smoothing(label_smoothing)
    c, r = _ratios(lp)
    z = beta * (c - r)
    losses = (-(1 - label_smoothing) * F.logsigmoid(z) + label_smoothing * F.logsigmoid(-z)) / (1 - 2 * label_smoothing)
    return _rewards(beta, c, r, losses)


def _hinge_grad(lp: PreferenceLogps, *, beta: float = 0.1, **_):
    c, r = _ratios(lp)
    dz = -beta * (beta * (c - r) < 1).to(c.dtype)  # relu's gradient: 1 where its input > 0
    return dz, -dz, 0.0


@register_loss("hinge", pairwise=True, pair_grad=_hinge_grad)
def hinge_loss(lp: PreferenceLogps, *, beta: float = 0.1, **_) -> LossOutput:
    """SLiC-style hinge: ``max(0, 1 - βΔ)``."""
    c, r = _ratios(lp)
    return _rewards(beta, c, r, torch.relu(1 - beta * (c - r)))


def _ipo_grad(lp: PreferenceLogps, *, beta: float = 0.1, **_):
    c, r = _ratios(lp)
    nc = _need(lp, "chosen_tokens", "ipo").clamp(min=1)
    nr = _need(lp, "rejected_tokens", "ipo").clamp(min=1)
    u = 2 * (c / nc - r / nr - 1 / (2 * beta))
    return u / nc, -u / nr, 0.0


@register_loss("ipo", pairwise=True, pair_grad=_ipo_grad)
def ipo_loss(lp: PreferenceLogps, *, beta: float = 0.1, **_) -> LossOutput:
    """IPO (Azar et al. 2023, Eq. 17): ``(Δ̄ - 1/(2β))²`` with log-ratios averaged per token."""
    c, r = _ratios(lp)
    nc = _need(lp, "chosen_tokens", "ipo").clamp(min=1)
    nr = _need(lp, "rejected_tokens", "ipo").clamp(min=1)
    losses = (c / nc - r / nr - 1 / (2 * beta)) ** 2
    return _rewards(beta, c, r, losses)


def _rpo_grad(lp: PreferenceLogps, *, beta: float = 0.1, rpo_alpha: float = 1.0, label_smoothing: float = 0.0,
              **_):
    _need(lp, "chosen_nll", "rpo")
    dc, dr, _ = _sigmoid_grad(lp, beta=beta, label_smoothing=label_smoothing)
    return dc, dr, rpo_alpha * lp.chosen.shape[0]  # every pair's loss adds α × chosen_nll


@register_loss("rpo", pairwise=True, pair_grad=_rpo_grad)
def rpo_loss(lp: PreferenceLogps, *, beta: float = 0.1, rpo_alpha: float = 1.0, label_smoothing: float = 0.0,
             **_) -> LossOutput:
    """RPO (Pang et al. 2024): DPO plus ``rpo_alpha`` × the chosen responses' mean token NLL."""
    out = sigmoid_loss(lp, beta=beta, label_smoothing=label_smoothing)
    nll = _need(lp, "chosen_nll", "rpo")
    return replace(out, losses=out.losses + rpo_alpha * nll)


def _simpo_grad(lp: PreferenceLogps, *, beta: float = 2.0, gamma: float = 0.5, label_smoothing: float = 0.0, **_):
    nc = _need(lp, "chosen_tokens", "simpo").clamp(min=1)
    nr = _need(lp, "rejected_tokens", "simpo").clamp(min=1)
    dz = beta * _d_smoothed_logsigmoid(beta * (lp.chosen / nc - lp.rejected / nr) - gamma, label_smoothing)
    return dz / nc, -dz / nr, 0.0


@register_loss("simpo", reference_free=True, pairwise=True, pair_grad=_simpo_grad)
def simpo_loss(lp: PreferenceLogps, *, beta: float = 2.0, gamma: float = 0.5, label_smoothing: float = 0.0,
               **_) -> LossOutput:
    """SimPO (Meng et al. 2024): ``-log σ(β(c̄ - r̄) - γ)`` on mean token log-probs; no reference."""
    c = lp.chosen / _need(lp, "chosen_tokens", "simpo").clamp(min=1)
    r = lp.rejected / _need(lp, "rejected_tokens", "simpo").clamp(min=1)
    z = beta * (c - r) - gamma
    losses = -(1 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)
    return _rewards(beta, c, r, losses)


def _orpo_grad(lp: PreferenceLogps, *, lambda_: float = 0.1, **_):
    nc = _need(lp, "chosen_tokens", "orpo").clamp(min=1)
    nr = _need(lp, "rejected_tokens", "orpo").clamp(min=1)
    _need(lp, "chosen_nll", "orpo")
    c, r = lp.chosen / nc, lp.rejected / nr
    ec, er = torch.exp(c), torch.exp(r)
    top = 1 - 1e-6  # the loss clamps exp(mean logp) there: no gradient through the clamp above it

    def d_log_odds(p):  # d/dm of m - log1p(-min(exp(m), top)), with p = exp(m)
        return 1 + torch.where(p <= top, p / (1 - p.clamp(max=top)), torch.zeros_like(p))
    log_odds = (c - r) - (torch.log1p(-ec.clamp(max=top)) - torch.log1p(-er.clamp(max=top)))
    dlo = -lambda_ * torch.sigmoid(-log_odds)
    return dlo * d_log_odds(ec) / nc, -dlo * d_log_odds(er) / nr, float(c.shape[0])  # each loss adds chosen_nll


@register_loss("orpo", reference_free=True, pairwise=True, pair_grad=_orpo_grad)
def orpo_loss(lp: PreferenceLogps, *, lambda_: float = 0.1, **_) -> LossOutput:
    """ORPO (Hong et al. 2024): chosen NLL − λ·log σ(log odds(c) − log odds(r)), on mean token
    log-probs, where odds(p) = p / (1 - p). Rewards are λ × mean token log-probs."""
    c = lp.chosen / _need(lp, "chosen_tokens", "orpo").clamp(min=1)
    r = lp.rejected / _need(lp, "rejected_tokens", "orpo").clamp(min=1)
    log_odds = (c - r) - (torch.log1p(-torch.exp(c).clamp(max=1 - 1e-6)) - torch.log1p(-torch.exp(r).clamp(max=1 - 1e-6)))
    losses = _need(lp, "chosen_nll", "orpo") - lambda_ * F.logsigmoid(log_odds)
    return _rewards(lambda_, c, r, losses)


def kto_reference_point(lp: PreferenceLogps, mean: Callable[[torch.Tensor], torch.Tensor] | None = None
                        ) -> torch.Tensor:
    """KTO's reference point z0: the batch's mean log-ratio of its mismatched completions (an
    estimate of KL(policy || reference)), at least 0 and not differentiated, as in TRL. ``mean``
    averages that batch mean over processes (TRL averages it over ranks); None: this batch's."""
    z = (lp.rejected - lp.ref_rejected).detach().mean()
    return (z if mean is None else mean(z)).clamp(min=0)


@register_loss("kto")
def kto_loss(lp: PreferenceLogps, *, beta: float = 0.1, desirable_weight: float = 1.0,
             undesirable_weight: float = 1.0, reference_mean=None, **_) -> LossOutput:
    """KTO (Ethayarajh et al. 2024, Eq. 7; TRL's ``loss_type="kto"``) on unpaired examples.

    Example i is one completion (``chosen``, with ``ref_chosen``) and whether it is desirable;
    ``rejected``/``ref_rejected`` hold another example's completion under i's prompt, from which
    the reference point z0 (:func:`kto_reference_point`; returned as ``reference_point``) is estimated. With r
    the log-ratio, a
    desirable example's loss is ``w_D (1 - σ(β(r - z0)))``, an undesirable one's
    ``w_U (1 - σ(β(z0 - r)))``. Not pairwise: z0 is a mean over the batch (``reference_mean``:
    and over processes, :func:`kto_reference_point`). Rewards: β × the completion's log-ratio
    (chosen) and β × the mismatched one's (rejected)."""
    desirable = _need(lp, "desirable", "kto").bool()
    r, kl = _ratios(lp)
    z0 = kto_reference_point(lp, reference_mean)
    losses = torch.where(desirable, desirable_weight * (1 - torch.sigmoid(beta * (r - z0))),
                         undesirable_weight * (1 - torch.sigmoid(beta * (z0 - r))))
    return replace(_rewards(beta, r, kl, losses), reference_point=z0)


def _apo_unpaired_grad(lp: PreferenceLogps, *, beta: float = 0.1, desirable_weight: float = 1.0,
                       undesirable_weight: float = 1.0, **_):
    desirable = _need(lp, "desirable", "apo_zero_unpaired").bool()
    r, _ = _ratios(lp)
    d = beta * torch.sigmoid(beta * r) * torch.sigmoid(-beta * r)
    return torch.where(desirable, -desirable_weight * d, undesirable_weight * d), torch.zeros_like(lp.rejected), 0.0


@register_loss("apo_zero_unpaired", pairwise=True, pair_grad=_apo_unpaired_grad)
def apo_zero_unpaired_loss(lp: PreferenceLogps, *, beta: float = 0.1, desirable_weight: float = 1.0,
                           undesirable_weight: float = 1.0, **_) -> LossOutput:
    """APO-zero on unpaired feedback (TRL's KTOTrainer ``loss_type="apo_zero_unpaired"``): a
    desirable completion's loss ``w_D (1 - σ(βr))``, an undesirable one's ``w_U σ(βr)``, r its
    log-ratio; no reference point (the mismatched completion is not used). Each example's loss is
    its own (pairwise in prefopt's sense)."""
    desirable = _need(lp, "desirable", "apo_zero_unpaired").bool()
    r, kl = _ratios(lp)
    losses = torch.where(desirable, desirable_weight * (1 - torch.sigmoid(beta * r)),
                         undesirable_weight * torch.sigmoid(beta * r))
    return replace(_rewards(beta, r, kl, losses), reference_point=torch.zeros((), dtype=r.dtype, device=r.device))


from . import losses_extra  # noqa: E402,F401  (registers TRL's other losses: bco_pair, nca_pair, exo_pair ...)

__all__ = ["LOSSES", "NLL_TERMS", "PAIRWISE", "PAIR_GRADS", "REFERENCE_FREE", "UNPAIRED", "LossOutput", "PreferenceLogps", "base_losses", "check_loss",
           "known_loss", "kto_reference_point", "loss_arg", "loss_terms", "pair_gradient", "preference_loss",
           "reads_nll", "register_loss"]
