"""WPO (prefopt.wpo): the weights against full logits, the weighted losses by hand (a mixture with
an NLL term too, which TRL 1.16 cannot weigh), every fused path (per-token chunked and Triton,
one-pass with the closed-form gradient and with autograd) against the formula on full logits, and
the refusals. Parity with TRL's DPOTrainer(use_weighting=True) is in tests/test_losses.py
(TestTRLParity); training in tests/train/test_dpo.py."""
import pytest
import torch
import torch.nn.functional as F

from prefopt.kernels import fused_preference_loss
from prefopt.ld_dpo import ld_weights
from prefopt.losses import PreferenceLogps, pair_gradient, preference_loss
from prefopt.wpo import pair_weights, sequence_weights
from tests._pair_case import pair_case


def _weights_by_formula(h, w, y):
    """exp(mean over scored tokens of log p(y) − log Σ p²), from full logits in fp64."""
    logp = torch.log_softmax((h @ w.T).double(), -1)
    lsq = torch.logsumexp(2 * logp, -1)
    mask = y != -100
    aligned = (logp.gather(-1, y.clamp(min=0)[..., None])[..., 0] - lsq) * mask
    return torch.exp(aligned.sum(-1) / mask.sum(-1).clamp(min=1))


@pytest.mark.parametrize("budget", [None, 3 * 70])  # 3 tokens' logits a block: many blocks, the last short
def test_weights_equal_the_formula_on_full_logits(budget):
    h, w, y, _ = pair_case()
    y[5] = -100  # a sequence with no scored token weighs 1
    want = _weights_by_formula(h, w, y)
    got = sequence_weights(h, w, y, budget=budget)
    assert got.dtype == torch.float32 and got.shape == (6,)
    assert torch.allclose(got.double(), want, rtol=1e-6) and got[5] == 1
    assert torch.allclose(pair_weights(h, w, y, budget=budget).double(), want[:3] * want[3:], rtol=1e-6)
    assert not torch.allclose(want, torch.ones(6, dtype=want.dtype))  # the check can tell weights apart
    # a token the model is sure of weighs ~1 (p ≈ Σ p²); one it finds unlikely, much less
    sure = torch.zeros(2, 1, 16, dtype=torch.float64)
    sure[..., 0] = 40.0
    peaked = torch.zeros(70, 16, dtype=torch.float64)
    peaked[7, 0] = 1.0
    picks = sequence_weights(sure, peaked, torch.tensor([[7], [8]]))
    assert picks[0].item() == pytest.approx(1.0, abs=1e-6) and picks[1].item() < 1e-15


def test_under_autocast_the_head_runs_in_its_dtype():
    """As the loss's log-prob paths do (and F.linear would): the answers' tokens and the head in
    autocast's dtype, the sums in fp32."""
    h, w, y, _ = pair_case(torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = sequence_weights(h, w, y)
    assert got.dtype == torch.float32
    assert torch.equal(got, sequence_weights(h.bfloat16(), w.bfloat16(), y))
    assert not torch.equal(got, sequence_weights(h, w, y))


def test_the_weights_take_no_gradient_and_check_their_inputs():
    h, w, y, _ = pair_case()
    hh = h.clone().requires_grad_()
    assert not sequence_weights(hh, w, y).requires_grad
    with pytest.raises(ValueError, match="labels must be \\(2B, T\\)"):
        pair_weights(h[:5], w, y[:5])
    with pytest.raises(ValueError, match="labels must be \\(R, T\\)"):
        sequence_weights(h[0], w, y[0])
    y[1, 4] = 70
    with pytest.raises(ValueError, match="not a token of the lm_head's vocabulary"):
        sequence_weights(h, w, y)


def _lp(seed=1, B=4):
    g = torch.Generator().manual_seed(seed)
    c, r = torch.randn(B, generator=g) - 20, torch.randn(B, generator=g) - 22
    return PreferenceLogps(chosen=c.double().requires_grad_(), rejected=r.double().requires_grad_(),
                           ref_chosen=(c + torch.randn(B, generator=g)).double(),
                           ref_rejected=(r + torch.randn(B, generator=g)).double(),
                           chosen_tokens=torch.tensor([5, 7, 2, 9]), rejected_tokens=torch.tensor([6, 3, 8, 4]),
                           pair_weights=torch.tensor([0.3, 1.2, 0.05, 0.7], dtype=torch.float64))


def test_weighted_losses_by_hand_the_nll_term_too():
    """Each example's loss times its pair's weight, as TRL weighs each term's per-pair losses; a
    mixture's NLL term too (TRL 1.16 fails there: it scales the expanded NLL in place)."""
    lp = _lp()
    lp.chosen_nll = -lp.chosen.sum() / lp.chosen_tokens.sum()
    beta, wts = 0.1, lp.pair_weights
    z = beta * ((lp.chosen - lp.ref_chosen) - (lp.rejected - lp.ref_rejected))
    out = preference_loss("sigmoid+0.5*sft", lp, beta=beta)
    assert torch.allclose(out.losses, wts * (-F.logsigmoid(z) + 0.5 * lp.chosen_nll))
    plain = preference_loss("sigmoid", PreferenceLogps(**{**lp.__dict__, "pair_weights": None}), beta=beta)
    assert torch.equal(out.chosen_rewards, plain.chosen_rewards)  # rewards unweighted
    js = preference_loss("sigmoid", lp, beta=beta, f_divergence="js_divergence")
    js_plain = preference_loss("sigmoid", PreferenceLogps(**{**lp.__dict__, "pair_weights": None}), beta=beta,
                               f_divergence="js_divergence")
    assert torch.allclose(js.losses, wts * js_plain.losses)
    with pytest.raises(ValueError, match="pair_weights has shape \\(3,\\) where chosen has \\(4,\\)"):
        preference_loss("sigmoid", PreferenceLogps(**{**lp.__dict__, "pair_weights": wts[:3]}))


@pytest.mark.parametrize("loss,kw", [("sigmoid", {}), ("ipo", {}), ("apo_zero", {}),
                                     ("sigmoid", {"f_divergence": "forward_kl"})])
def test_closed_form_gradients_take_the_weights(loss, kw):
    lp = _lp()
    preference_loss(loss, lp, beta=0.1, **kw).losses.sum().backward()
    dc, dr, dnll = pair_gradient(loss, lp, beta=0.1, **kw)
    assert dnll == 0
    assert torch.allclose(dc, lp.chosen.grad) and torch.allclose(dr, lp.rejected.grad)


def test_a_closed_form_cannot_weigh_the_nll_term():
    lp = _lp()
    lp.chosen_nll = torch.tensor(2.0, dtype=torch.float64)
    with pytest.raises(ValueError, match="'rpo' reads chosen_nll; with pair_weights take its gradient by autograd"):
        pair_gradient("rpo", lp, beta=0.1)


def _full_logits_loss(h, w, y, ref, beta, nll_weight=0.0, alpha=None):
    """WPO-weighted DPO (plus a weighted NLL term) from full logits, by the formula."""
    logp = torch.log_softmax((h @ w.T).double(), -1).gather(-1, y.clamp(min=0)[..., None])[..., 0] * (y != -100)
    sums = (logp * (1 if alpha is None else ld_weights(y, alpha).double())).sum(-1)
    B = y.shape[0] // 2
    z = beta * ((sums[:B] - ref[0]) - (sums[B:] - ref[1]))
    nll = -logp[:B].sum() / (y[:B] != -100).sum()
    with torch.no_grad():
        wt = _weights_by_formula(h, w, y)
    return ((wt[:B] * wt[B:]) * (-F.logsigmoid(z) + nll_weight * nll)).sum()


@pytest.mark.parametrize("impl,one_pass,budget,loss,alpha", [
    ("chunked", False, None, "sigmoid", None), ("chunked", True, None, "sigmoid", None),
    ("chunked", True, 4 * 70, "sigmoid", None),  # every pair longer than a stage
    ("chunked", True, None, "sigmoid+0.7*sft", None),  # one pass, gradients by autograd (an NLL term)
    ("chunked", False, None, "sigmoid+0.7*sft", None), ("chunked", True, None, "sigmoid", 0.4),
    ("triton", False, None, "sigmoid", None)])
def test_every_path_equals_full_logits(impl, one_pass, budget, loss, alpha):
    """fp32 inputs (the Triton interpreter's), against the formula on full logits in fp64."""
    h, w, y, ref = pair_case(torch.float32)
    nll_weight = 0.7 if "sft" in loss else 0.0
    want_h, want_w = h.double().requires_grad_(), w.double().requires_grad_()
    want = _full_logits_loss(want_h, want_w, y, (ref[0].double(), ref[1].double()), 0.5, nll_weight, alpha)
    want.backward()
    hh, ww = h.clone().requires_grad_(), w.clone().requires_grad_()
    out, lp = fused_preference_loss(hh, ww, y, *ref, loss, beta=0.5, reduction="sum", impl=impl, one_pass=one_pass,
                                    budget=budget, wpo=True,
                                    token_weights=None if alpha is None else ld_weights(y, alpha))
    out.losses.backward()
    assert out.losses.item() == pytest.approx(want.item(), rel=1e-5)
    assert torch.allclose(hh.grad.double(), want_h.grad, atol=1e-5)
    assert torch.allclose(ww.grad.double(), want_w.grad, atol=1e-5)
    assert lp.pair_weights.shape == (3,)
    plain, _ = fused_preference_loss(h, w, y, *ref, loss, beta=0.5, reduction="sum", impl=impl)
    assert abs(plain.losses.item() - out.losses.item()) > 1e-3  # the weights change the loss


def test_wpo_is_for_pair_losses():
    h, w, y, ref = pair_case()
    with pytest.raises(ValueError, match="wpo weighs pairs one by one; 'aot' is not a pair loss"):
        fused_preference_loss(h, w, y, *ref, "aot", wpo=True)
    with pytest.raises(ValueError, match="'kto' is not a pair loss"):
        fused_preference_loss(h, w, y, *ref, "kto", wpo=True, desirable=torch.tensor([True, False, True]))


def test_the_config_checks_wpo(tmp_path):
    from prefopt.train.dpo import DPOConfig

    data = tmp_path / "d.jsonl"
    data.write_text("{}\n")
    base = dict(model="m", data=str(data), output_dir=str(tmp_path / "o"))
    assert DPOConfig(**base, wpo=True, ld_alpha=0.5, f_divergence="js_divergence").wpo
    for loss, why in (("kto", "wpo is for pair losses, not kto"), ("apo_zero_unpaired", "not apo_zero_unpaired"),
                      ("aot", "'aot' is not a per-pair loss"), ("aot_unpaired", "'aot_unpaired' is not a per-pair")):
        with pytest.raises(ValueError, match=why):
            DPOConfig(**base, wpo=True, loss=loss, label_smoothing=0.0)
