"""TRL's other preference losses, as TRL 1.16's ``DPOTrainer`` defines them (``loss_type=...``).

Registered in :data:`prefopt.losses.LOSSES` when ``prefopt.losses`` is imported. With
``c``, ``r`` the chosen and rejected log-ratios (policy − reference, summed over the response's
tokens) and ``z = β(c − r)``:

- ``bco_pair``: ``−log σ(βc) − log σ(−βr)`` (BCO, paired);
- ``nca_pair``: ``−log σ(βc) − ½ log σ(−βc) − ½ log σ(−βr)`` (NCA, Chen et al. 2024);
- ``exo_pair``: ``KL([σ(z), σ(−z)] ‖ [1−ε, ε])``, ε = ``label_smoothing`` > 0 (EXO, Ji et al. 2024);
- ``sppo_hard``: ``(c − 1/(2β))² + (r + 1/(2β))²`` (SPPO with hard win probabilities);
- ``apo_zero``: ``1 − σ(βc) + σ(βr)``; ``apo_down``: ``σ(βc) + 1 − σ(z)`` (APO, D'Oosterlinck et al. 2024);
- ``discopop``: ``−log σ(z)(1 − m) + e^(−z) m``, m = σ(z/τ), τ = ``discopop_tau`` (DiscoPOP, Lu et al. 2024);
- ``sigmoid_norm``: ``−log σ(β(c/n_c − r/n_r))``, DPO on per-token log-ratios;
- ``aot``, ``aot_unpaired``: DPO's logistic loss on the batch's margins sorted against the
  reference's, or its chosen log-ratios sorted against its rejected ones (AOT, Melnyk et al. 2024);
- ``sft``: the chosen answers' mean token NLL alone (no reference).

TRL also sums several loss types with weights (``loss_type=["sigmoid", "bco_pair", "sft"]``,
``loss_weights=[0.8, 0.2, 1.0]``: MPO). Here that is one name, ``"0.8*sigmoid+0.2*bco_pair+sft"``
(:func:`register_mixture`, on first use by :func:`prefopt.losses.known_loss`); ``sigmoid+sft``
is RPO with ``rpo_alpha`` 1.

Each pairwise one has its gradient in closed form (``PAIR_GRADS``), checked against autograd;
rewards are ``β·c`` and ``β·r``, as for DPO. The AOT losses sort within the batch, so a pair's
loss depends on the others (the per-token path; under torchrun each process sorts its own).
"""
from __future__ import annotations

import math
from dataclasses import replace

import torch
import torch.nn.functional as F

from .losses import LossOutput, PreferenceLogps, _d_smoothed_logsigmoid, _need, _ratios, _rewards, register_loss


def _dsig(x: torch.Tensor) -> torch.Tensor:
    """σ'(x) = σ(x)·σ(−x)."""
    return torch.sigmoid(x) * torch.sigmoid(-x)


def _bco_grad(lp: PreferenceLogps, *, beta: float = 0.1, **_):
    c, r = _ratios(lp)
    return -beta * torch.sigmoid(-beta * c), beta * torch.sigmoid(beta * r), 0.0


@register_loss("bco_pair", pairwise=True, pair_grad=_bco_grad)
def bco_pair_loss(lp: PreferenceLogps, *, beta: float = 0.1, **_) -> LossOutput:
    """BCO on pairs (TRL's ``bco_pair``): each answer classified on its own reward,
    ``−log σ(βc) − log σ(−βr)``."""
    c, r = _ratios(lp)
    return _rewards(beta, c, r, -F.logsigmoid(beta * c) - F.logsigmoid(-beta * r))


def _nca_grad(lp: PreferenceLogps, *, beta: float = 0.1, **_):
    c, r = _ratios(lp)
    return beta * (0.5 * torch.sigmoid(beta * c) - torch.sigmoid(-beta * c)), 0.5 * beta * torch.sigmoid(beta * r), 0.0


@register_loss("nca_pair", pairwise=True, pair_grad=_nca_grad)
def nca_pair_loss(lp: PreferenceLogps, *, beta: float = 0.1, **_) -> LossOutput:
    """NCA (Chen et al. 2024, noise contrastive alignment), paired: ``−log σ(βc) − ½ log σ(−βc)
    − ½ log σ(−βr)``; it pushes the chosen answer's likelihood up, not only the margin."""
    c, r = _ratios(lp)
    return _rewards(beta, c, r, -F.logsigmoid(beta * c) - 0.5 * F.logsigmoid(-beta * c) - 0.5 * F.logsigmoid(-beta * r))


def _exo_epsilon(label_smoothing: float) -> float:
    if not 0 < label_smoothing < 1:
        raise ValueError(f"exo_pair needs label_smoothing > 0 (the EXO paper recommends 1e-3), got {label_smoothing}")
    return label_smoothing


def _exo_grad(lp: PreferenceLogps, *, beta: float = 0.1, label_smoothing: float = 0.0, **_):
    eps = _exo_epsilon(label_smoothing)
    c, r = _ratios(lp)
    z = beta * (c - r)
    dz = beta * _dsig(z) * (z - math.log((1 - eps) / eps))  # d/dq of the KL is its logit minus the target's
    return dz, -dz, 0.0


@register_loss("exo_pair", pairwise=True, pair_grad=_exo_grad)
def exo_pair_loss(lp: PreferenceLogps, *, beta: float = 0.1, label_smoothing: float = 0.0, **_) -> LossOutput:
    """EXO (Ji et al. 2024, Eq. 16, K = 2): the reverse KL from the pair's softmax over
    ``βc, βr`` to the label ``[1 − ε, ε]`` (ε = ``label_smoothing``, which must be > 0)."""
    eps = _exo_epsilon(label_smoothing)
    c, r = _ratios(lp)
    z = beta * (c - r)
    losses = (torch.sigmoid(z) * (F.logsigmoid(z) - math.log1p(-eps))
              + torch.sigmoid(-z) * (F.logsigmoid(-z) - math.log(eps)))
    return _rewards(beta, c, r, losses)


def _sppo_grad(lp: PreferenceLogps, *, beta: float = 0.1, **_):
    c, r = _ratios(lp)
    return 2 * (c - 0.5 / beta), 2 * (r + 0.5 / beta), 0.0


@register_loss("sppo_hard", pairwise=True, pair_grad=_sppo_grad)
def sppo_hard_loss(lp: PreferenceLogps, *, beta: float = 0.1, **_) -> LossOutput:
    """SPPO (Wu et al. 2024, Eq. 4.7) with hard win probabilities (1 for the chosen, 0 for the
    rejected): ``(c − 1/(2β))² + (r + 1/(2β))²``."""
    c, r = _ratios(lp)
    return _rewards(beta, c, r, (c - 0.5 / beta) ** 2 + (r + 0.5 / beta) ** 2)


def _apo_zero_grad(lp: PreferenceLogps, *, beta: float = 0.1, **_):
    c, r = _ratios(lp)
    return -beta * _dsig(beta * c), beta * _dsig(beta * r), 0.0


@register_loss("apo_zero", pairwise=True, pair_grad=_apo_zero_grad)
def apo_zero_loss(lp: PreferenceLogps, *, beta: float = 0.1, **_) -> LossOutput:
    """APO-zero (D'Oosterlinck et al. 2024, Eq. 7): ``1 − σ(βc) + σ(βr)``, for chosen answers
    better than the model's own: their likelihood up, the rejected ones' down."""
    c, r = _ratios(lp)
    return _rewards(beta, c, r, 1 - torch.sigmoid(beta * c) + torch.sigmoid(beta * r))


def _apo_down_grad(lp: PreferenceLogps, *, beta: float = 0.1, **_):
    c, r = _ratios(lp)
    dz = _dsig(beta * (c - r))
    return beta * (_dsig(beta * c) - dz), beta * dz, 0.0


@register_loss("apo_down", pairwise=True, pair_grad=_apo_down_grad)
def apo_down_loss(lp: PreferenceLogps, *, beta: float = 0.1, **_) -> LossOutput:
    """APO-down (Eq. 8): ``σ(βc) + 1 − σ(β(c − r))``, for chosen answers worse than the model's
    own: both likelihoods down, the rejected one's more."""
    c, r = _ratios(lp)
    return _rewards(beta, c, r, torch.sigmoid(beta * c) + 1 - torch.sigmoid(beta * (c - r)))


def _discopop_grad(lp: PreferenceLogps, *, beta: float = 0.1, discopop_tau: float = 0.05, **_):
    c, r = _ratios(lp)
    z = beta * (c - r)
    m = torch.sigmoid(z / discopop_tau)
    dm = m * (1 - m) / discopop_tau
    e = torch.exp(-z)
    dz = beta * (-torch.sigmoid(-z) * (1 - m) + F.logsigmoid(z) * dm - e * m + e * dm)
    return dz, -dz, 0.0


@register_loss("discopop", pairwise=True, pair_grad=_discopop_grad)
def discopop_loss(lp: PreferenceLogps, *, beta: float = 0.1, discopop_tau: float = 0.05, **_) -> LossOutput:
    """DiscoPOP (Lu et al. 2024, Eq. 5; log-ratio-modulated): DPO's logistic loss blended with
    an exponential one by ``m = σ(z / τ)``: ``−log σ(z)(1 − m) + e^(−z) m``, z = β(c − r)."""
    c, r = _ratios(lp)
    z = beta * (c - r)
    m = torch.sigmoid(z / discopop_tau)
    return _rewards(beta, c, r, -F.logsigmoid(z) * (1 - m) + torch.exp(-z) * m)


def _per_token(lp: PreferenceLogps, loss: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    c, r = _ratios(lp)
    return (c, r, _need(lp, "chosen_tokens", loss).clamp(min=1).to(c.dtype),
            _need(lp, "rejected_tokens", loss).clamp(min=1).to(c.dtype))


def _sigmoid_norm_grad(lp: PreferenceLogps, *, beta: float = 0.1, label_smoothing: float = 0.0, **_):
    c, r, nc, nr = _per_token(lp, "sigmoid_norm")
    dz = beta * _d_smoothed_logsigmoid(beta * (c / nc - r / nr), label_smoothing)
    return dz / nc, -dz / nr, 0.0


@register_loss("sigmoid_norm", pairwise=True, pair_grad=_sigmoid_norm_grad)
def sigmoid_norm_loss(lp: PreferenceLogps, *, beta: float = 0.1, label_smoothing: float = 0.0, **_) -> LossOutput:
    """DPO on log-ratios averaged over each answer's tokens (TRL's ``sigmoid_norm``):
    ``−log σ(β(c/n_c − r/n_r))``, so a long answer's margin counts as a short one's. TRL has no
    smoothing on it; ``label_smoothing`` > 0 gives cDPO's form, as for ``sigmoid``."""
    c, r, nc, nr = _per_token(lp, "sigmoid_norm")
    z = beta * (c / nc - r / nr)
    return _rewards(beta, c, r, -(1 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z))


def _aot(beta: float, label_smoothing: float, delta: torch.Tensor) -> torch.Tensor:
    z = beta * delta
    return -(1 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)


@register_loss("aot")
def aot_loss(lp: PreferenceLogps, *, beta: float = 0.1, label_smoothing: float = 0.0, **_) -> LossOutput:
    """AOT (Melnyk et al. 2024), paired: DPO's logistic loss on the batch's policy margins
    ``log π(c) − log π(r)``, sorted, against the reference's, sorted (a distributional
    dominance of the margins, not pair by pair). ``losses[i]`` is the i-th smallest's, not pair i's."""
    c, r = _ratios(lp)
    policy = torch.sort(lp.chosen - lp.rejected).values
    ref = torch.sort(lp.ref_chosen - lp.ref_rejected).values
    return _rewards(beta, c, r, _aot(beta, label_smoothing, policy - ref))


@register_loss("aot_unpaired")
def aot_unpaired_loss(lp: PreferenceLogps, *, beta: float = 0.1, label_smoothing: float = 0.0, **_) -> LossOutput:
    """AOT, unpaired: the batch's chosen log-ratios, sorted, against its rejected ones, sorted."""
    c, r = _ratios(lp)
    return _rewards(beta, c, r, _aot(beta, label_smoothing, torch.sort(c).values - torch.sort(r).values))


def _sft_grad(lp: PreferenceLogps, **_):
    _need(lp, "chosen_nll", "sft")
    return torch.zeros_like(lp.chosen), torch.zeros_like(lp.rejected), float(lp.chosen.shape[0])


@register_loss("sft", reference_free=True, pairwise=True, pair_grad=_sft_grad)
def sft_loss(lp: PreferenceLogps, *, beta: float = 0.1, **_) -> LossOutput:
    """The chosen answers' mean token NLL over the batch (TRL's ``sft`` loss type), each pair's
    loss; rewards are β × mean token log-probs, as for the reference-free losses."""
    nll = _need(lp, "chosen_nll", "sft")
    c = lp.chosen / _need(lp, "chosen_tokens", "sft").clamp(min=1)
    r = lp.rejected / _need(lp, "rejected_tokens", "sft").clamp(min=1)
    return _rewards(beta, c, r, nll * torch.ones_like(lp.chosen))


def parse_mixture(spec: str) -> list[tuple[float, str]]:
    """``"0.8*sigmoid+0.2*bco_pair+sft"`` as ``[(0.8, "sigmoid"), (0.2, "bco_pair"), (1.0, "sft")]``;
    a term without a weight weighs 1. Every name must be registered, once, and not ``kto``."""
    from .losses import LOSSES, UNPAIRED, base_losses

    terms: list[tuple[float, str]] = []
    for part in spec.split("+"):
        w, star, name = part.strip().rpartition("*")
        name = name.strip()
        try:
            weight = float(w) if star else 1.0
        except ValueError:
            raise ValueError(f"loss {spec!r}: {part.strip()!r} is not WEIGHT*NAME (e.g. 0.2*bco_pair)") from None
        if name not in LOSSES:
            raise ValueError(f"loss {spec!r}: unknown loss {name!r}; registered: {base_losses()}")
        if name in UNPAIRED:
            raise ValueError(f"loss {spec!r}: {name} trains on unpaired examples and cannot be mixed with pair losses")
        if not weight > 0 or not math.isfinite(weight):
            raise ValueError(f"loss {spec!r}: the weight of {name!r} must be a positive number, got {w.strip()!r}")
        if name in (n for _, n in terms):
            raise ValueError(f"loss {spec!r}: {name!r} appears twice")
        terms.append((weight, name))
    if len(terms) < 2 and spec.strip() not in LOSSES:
        raise ValueError(f"loss {spec!r}: a mixture needs two loss names or more joined by '+'")
    return terms


def register_mixture(spec: str) -> str:
    """Register ``spec`` (:func:`parse_mixture`) as a loss: the weighted sum of its terms' losses,
    with the rewards of its first term that uses a reference (else of its first). Pairwise, with
    a closed-form gradient, where every term is; reference-free where every term is."""
    from .losses import LOSSES, PAIR_GRADS, PAIRWISE, REFERENCE_FREE

    terms = parse_mixture(spec)
    names = [n for _, n in terms]
    lead = next((n for n in names if n not in REFERENCE_FREE), names[0])
    fns = {n: LOSSES[n] for n in names}  # as registered now (a name registered again later does not change it)

    def mixture(lp: PreferenceLogps, **hparams) -> LossOutput:
        outs = {n: fns[n](lp, **hparams) for n in names}
        return replace(outs[lead], losses=sum(w * outs[n].losses for w, n in terms))

    grads = [(w, PAIR_GRADS[n]) for w, n in terms] if all(n in PAIR_GRADS for n in names) else None

    def mixture_grad(lp: PreferenceLogps, **hparams):
        parts = [(w, g(lp, **hparams)) for w, g in grads]
        return tuple(sum(w * p[i] for w, p in parts) for i in range(3))

    register_loss(spec, reference_free=all(n in REFERENCE_FREE for n in names),
                  pairwise=all(n in PAIRWISE for n in names), pair_grad=mixture_grad if grads else None)(mixture)
    return spec


__all__ = ["aot_loss", "aot_unpaired_loss", "apo_down_loss", "apo_zero_loss", "bco_pair_loss", "discopop_loss",
           "exo_pair_loss", "nca_pair_loss", "parse_mixture", "register_mixture", "sft_loss", "sigmoid_norm_loss",
           "sppo_hard_loss"]
