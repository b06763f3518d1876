"""f-DPO (prefopt.f_divergence): hand-computed scores and losses, the chain rule of the closed-form
gradients against autograd, the fused one-pass path against the per-token one, and the refusals.
Parity with TRL's DPOTrainer is in tests/test_losses.py (TestTRLParity)."""
import math

import pytest
import torch

from prefopt import f_divergence as fdiv
from prefopt.losses import PAIR_GRADS, PreferenceLogps, pair_gradient, preference_loss


def _lp(**kw):
    t = lambda *v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    # log-ratios: chosen +1, rejected -1
    base = dict(chosen=t(-10.0), rejected=t(-12.0), ref_chosen=t(-11.0), ref_rejected=t(-11.0),
                chosen_tokens=t(4.0), rejected_tokens=t(5.0), chosen_nll=torch.tensor(2.5, dtype=torch.float64))
    return PreferenceLogps(**{**base, **kw})


def _softplus(x):  # -log σ(-x)
    return math.log1p(math.exp(x))


# scores of the log-ratios +1 and -1, by hand
FORWARD = (1 - math.exp(-1), 1 - math.exp(1))  # 1 - e^-x
JS = (math.log(2) - _softplus(-1), math.log(2) - _softplus(1))  # log 2 + log σ(x)
ALPHA = (2 * (1 - math.exp(-0.5)), 2 * (1 - math.exp(0.5)))  # α = 0.5: (e^(-x/2) - 1) / -0.5

HAND = {  # β = 0.1
    ("sigmoid", "forward_kl"): _softplus(-0.1 * (FORWARD[0] - FORWARD[1])),
    ("sigmoid", "js_divergence"): _softplus(-0.1),  # log σ(1) - log σ(-1) = 1
    ("sigmoid", "alpha_divergence"): _softplus(-0.1 * (ALPHA[0] - ALPHA[1])),
    ("hinge", "js_divergence"): 0.9,
    ("ipo", "forward_kl"): (FORWARD[0] / 4 - FORWARD[1] / 5 - 5) ** 2,
    ("sigmoid_norm", "alpha_divergence"): _softplus(-0.1 * (ALPHA[0] / 4 - ALPHA[1] / 5)),
    ("rpo", "forward_kl"): _softplus(-0.1 * (FORWARD[0] - FORWARD[1])) + 2.5,
}


@pytest.mark.parametrize("loss,divergence", list(HAND))
def test_losses_take_the_divergences_scores(loss, divergence):
    out = preference_loss(loss, _lp(), beta=0.1, f_divergence=divergence)
    assert out.losses.item() == pytest.approx(HAND[(loss, divergence)], abs=1e-12)
    # the rewards stay β × log-ratio, as TRL logs them
    assert out.chosen_rewards.item() == pytest.approx(0.1) and out.rejected_rewards.item() == pytest.approx(-0.1)


def test_reverse_kl_and_alpha_one_are_dpo():
    dpo = preference_loss("sigmoid", _lp(), beta=0.1).losses
    for kw in ({"f_divergence": "reverse_kl"}, {"f_divergence": "alpha_divergence", "f_alpha": 1.0}):
        assert torch.equal(preference_loss("sigmoid", _lp(), beta=0.1, **kw).losses, dpo)
    # and near α = 1 the α-divergence's score tends to the log-ratio
    x = torch.tensor([-2.0, 0.5, 3.0], dtype=torch.float64)
    assert torch.allclose(fdiv.score(x, "alpha_divergence", 1.0 + 1e-5), x, atol=1e-4)


def test_the_alpha_exponent_is_clamped_as_trl_clamps_it():
    """(α-1)x above 80 (fp32/fp64; 11 in fp16) is clamped: the score stays finite, its gradient 0."""
    x = torch.tensor([100.0, 10.0], requires_grad=True)
    s = fdiv.score(x, "alpha_divergence", 2.0)
    assert s[0].item() == pytest.approx(math.exp(80) - 1, rel=1e-6) and math.isfinite(s[0].item())
    s.sum().backward()
    assert torch.allclose(x.grad, fdiv.score_grad(x.detach(), "alpha_divergence", 2.0))
    assert x.grad[0] == 0 and x.grad[1].item() == pytest.approx(math.exp(10), rel=1e-6)
    h = torch.tensor([20.0], dtype=torch.float16)
    assert fdiv.score(h, "alpha_divergence", 2.0).item() == pytest.approx(math.exp(11) - 1, rel=1e-3)


@pytest.mark.parametrize("divergence", ["forward_kl", "js_divergence", "alpha_divergence"])
def test_score_gradients_equal_autograd(divergence):
    x = torch.linspace(-6, 6, 25, dtype=torch.float64, requires_grad=True)
    for alpha in (0.3, 0.5, 1.7):
        (g,) = torch.autograd.grad(fdiv.score(x, divergence, alpha).sum(), x)
        assert torch.allclose(fdiv.score_grad(x.detach(), divergence, alpha), g, rtol=1e-12, atol=1e-14)


KW = {"sigmoid": {"label_smoothing": 0.2}, "robust": {"label_smoothing": 0.2}, "hinge": {"beta": 2.0},
      "ipo": {"beta": 0.5}, "rpo": {"rpo_alpha": 0.7}, "exo_pair": {"label_smoothing": 0.3, "beta": 0.5},
      "discopop": {"discopop_tau": 2.0}, "sigmoid_norm": {}, "sigmoid+0.5*sft": {}}


@pytest.mark.parametrize("divergence,alpha", [("forward_kl", 0.5), ("js_divergence", 0.5),
                                              ("alpha_divergence", 0.5), ("alpha_divergence", 1.5)])
@pytest.mark.parametrize("loss", list(KW))
def test_closed_form_pair_gradients_go_through_the_scores(loss, divergence, alpha):
    """``pair_gradient`` (the one-pass kernel's closed form) against autograd through the scores."""
    from prefopt.losses import known_loss

    known_loss(loss)
    assert loss in PAIR_GRADS
    g = torch.Generator().manual_seed(1)
    t = lambda *size: torch.randn(*size, generator=g, dtype=torch.float64)  # noqa: E731
    chosen, rejected = (t(8) - 12).requires_grad_(), (t(8) - 12).requires_grad_()
    nll = torch.tensor(2.5, dtype=torch.float64, requires_grad=True)
    lp = PreferenceLogps(chosen, rejected, t(8) - 12, t(8) - 12, torch.arange(1, 9, dtype=torch.float64),
                         torch.full((8,), 3.0, dtype=torch.float64), nll)
    kw = {"beta": 1.0, **KW[loss], "f_divergence": divergence, "f_alpha": alpha}
    want = torch.autograd.grad(preference_loss(loss, lp, **kw).losses.sum(), (chosen, rejected, nll), allow_unused=True)
    dc, dr, dnll = pair_gradient(loss, lp, **kw)
    assert torch.allclose(dc, want[0], rtol=1e-10, atol=1e-12) and torch.allclose(dr, want[1], rtol=1e-10, atol=1e-12)
    assert dnll == pytest.approx(0.0 if want[2] is None else want[2].item())


@pytest.mark.parametrize("divergence", ["forward_kl", "js_divergence", "alpha_divergence"])
def test_the_one_pass_path_equals_the_per_token_one(divergence):
    """``fused_preference_loss(reduction="sum")``: the lm_head gradients formed in the forward
    (closed form through the scores) equal autograd's through the per-token log-probs."""
    from prefopt.kernels import fused_preference_loss

    g = torch.Generator().manual_seed(2)
    h = torch.randn(6, 9, 16, generator=g, dtype=torch.float64)
    w = torch.randn(50, 16, generator=g, dtype=torch.float64) * 0.3
    y = torch.randint(0, 50, (6, 9), generator=g)
    y[:, :3] = -100
    ref_c, ref_r = torch.randn(3, generator=g, dtype=torch.float64) - 25, torch.randn(3, generator=g, dtype=torch.float64) - 25
    grads = []
    for one_pass in (False, True):
        hh, ww = h.clone().requires_grad_(), w.clone().requires_grad_()
        out, _ = fused_preference_loss(hh, ww, y, ref_c, ref_r, "sigmoid", beta=0.5, reduction="sum",
                                       one_pass=one_pass, impl="chunked", f_divergence=divergence, f_alpha=0.5)
        out.losses.backward()
        grads.append((out.losses.detach(), hh.grad, ww.grad))
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)
    dpo, _ = fused_preference_loss(h, w, y, ref_c, ref_r, "sigmoid", beta=0.5, reduction="sum", impl="chunked")
    assert abs(dpo.losses.item() - grads[0][0].item()) > 1e-3  # the divergence changes the loss


@pytest.mark.parametrize("loss,kw,why", [
    ("bco_pair", {}, "not to bco_pair"),
    ("0.8*sigmoid+0.2*bco_pair", {}, "not to bco_pair"),
    ("simpo", {"ref_chosen": None, "ref_rejected": None}, "not to simpo"),
    ("sft", {}, "the loss uses none"),
])
def test_losses_without_an_f_divergence_form_are_refused(loss, kw, why):
    with pytest.raises(ValueError, match=why):
        preference_loss(loss, _lp(**kw), beta=0.1, f_divergence="js_divergence")
    with pytest.raises(ValueError, match="f_divergence must be one of reverse_kl, forward_kl"):
        preference_loss("sigmoid", _lp(), f_divergence="kl")


def test_the_config_checks_the_divergence_before_any_training(tmp_path):
    from prefopt.train.dpo import DPOConfig

    data = tmp_path / "d.jsonl"
    data.write_text("{}\n")
    base = dict(model="m", data=str(data), output_dir=str(tmp_path / "o"))
    assert DPOConfig(**base, f_divergence="js_divergence").loss_kwargs()["f_divergence"] == "js_divergence"
    for kw, why in (({"f_divergence": "kl"}, "f_divergence must be one of"),
                    ({"loss": "nca_pair", "f_divergence": "forward_kl"}, "not to nca_pair"),
                    ({"loss": "kto", "f_divergence": "forward_kl"}, "kto keeps the reverse KL"),
                    ({"f_divergence": "alpha_divergence", "f_alpha": float("nan")}, "f_alpha must be a finite")):
        with pytest.raises(ValueError, match=why):
            DPOConfig(**base, **kw)
