"""LD-DPO (prefopt.ld_dpo): the per-token weights by hand, the fused paths (per-token chunked and
Triton, one-pass) against full logits, the unweighted NLL, and the refusals. Parity with TRL's
DPOTrainer(ld_alpha=...) is in tests/test_losses.py (TestTRLParity); training and the cache in
tests/train/test_dpo.py."""
import pytest
import torch
import torch.nn.functional as F

from prefopt.kernels import fused_preference_loss
from prefopt.ld_dpo import ld_weights
from tests._pair_case import pair_case


def test_weights_by_hand():
    y = torch.tensor([[-100, 5, 6, 7, -100],  # chosen 0: 3 tokens, its rejected 1 token: shared 1
                      [-100, -100, 1, 2, 3],  # chosen 1: 3 tokens, its rejected 5: shared 3
                      [-100, 8, -100, -100, -100],
                      [9, 9, 9, 9, 9]])
    want = torch.tensor([[0, 1, 0.3, 0.3, 0], [0, 0, 1, 1, 1], [0, 1, 0, 0, 0], [1, 1, 1, 0.3, 0.3]])
    assert torch.allclose(ld_weights(y, 0.3), want)
    assert torch.equal(ld_weights(y, 1.0), (y != -100).float())  # α = 1: DPO's plain sums
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="ld_alpha must be in \\[0, 1\\]"):
            ld_weights(y, bad)
    with pytest.raises(ValueError, match="labels must be \\(2B, T\\)"):
        ld_weights(y[:3], 0.5)


def _full_logits_loss(h, w, y, ref, alpha, beta, rpo_alpha=0.0):
    """DPO (plus RPO's NLL) from full logits, by the formula: weighted sums, unweighted NLL."""
    logp = torch.log_softmax((h @ w.T).double(), -1).gather(-1, y.clamp(min=0)[..., None])[..., 0] * (y != -100)
    sums = (logp * ld_weights(y, alpha).double()).sum(-1)
    B = y.shape[0] // 2
    z = beta * ((sums[:B] - ref[0]) - (sums[B:] - ref[1]))
    nll = -logp[:B].sum() / (y[:B] != -100).sum()
    return (-F.logsigmoid(z) + rpo_alpha * nll).sum()


@pytest.mark.parametrize("impl,one_pass,budget", [("chunked", False, None), ("chunked", True, None),
                                                 ("chunked", True, 4 * 70), ("triton", False, None)])
def test_weighted_sums_and_gradients_equal_full_logits(impl, one_pass, budget):
    """fp32 inputs (the Triton interpreter's), against the formula on full logits in fp64. A budget
    of 4 tokens' logits: every pair is longer than a stage (its sums first, then its gradients)."""
    h, w, y, ref = pair_case(torch.float32)
    want_h, want_w = h.double().requires_grad_(), w.double().requires_grad_()
    want = _full_logits_loss(want_h, want_w, y, (ref[0].double(), ref[1].double()), 0.4, 0.5)
    want.backward()
    hh, ww = h.clone().requires_grad_(), w.clone().requires_grad_()
    out, lp = fused_preference_loss(hh, ww, y, *ref, "sigmoid", beta=0.5, reduction="sum", impl=impl,
                                    one_pass=one_pass, budget=budget, token_weights=ld_weights(y, 0.4))
    out.losses.backward()
    assert out.losses.item() == pytest.approx(want.item(), rel=1e-5)
    assert torch.allclose(hh.grad.double(), want_h.grad, atol=1e-5) and torch.allclose(ww.grad.double(), want_w.grad,
                                                                                        atol=1e-5)
    plain, _ = fused_preference_loss(h, w, y, *ref, "sigmoid", beta=0.5, reduction="sum", impl=impl)
    assert abs(plain.losses.item() - out.losses.item()) > 1e-3  # the weights change the loss


def test_the_nll_stays_unweighted_and_such_a_loss_takes_the_per_token_path(monkeypatch):
    """RPO with LD weights: DPO on the weighted sums plus the chosen answers' plain NLL (TRL's).
    The one-pass kernel sums one weighting, so it is not taken for a loss that reads chosen_nll."""
    from prefopt.kernels import onepass

    h, w, y, ref = pair_case()
    want_h, want_w = h.clone().requires_grad_(), w.clone().requires_grad_()
    want = _full_logits_loss(want_h, want_w, y, ref, 0.4, 0.5, rpo_alpha=0.7)
    want.backward()

    def refuse(*a, **k):
        raise AssertionError("the one-pass kernel ran")
    monkeypatch.setattr(onepass, "onepass_loss", refuse)
    hh, ww = h.clone().requires_grad_(), w.clone().requires_grad_()
    out, _ = fused_preference_loss(hh, ww, y, *ref, "rpo", beta=0.5, rpo_alpha=0.7, reduction="sum", impl="chunked",
                                   token_weights=ld_weights(y, 0.4))
    out.losses.backward()
    assert out.losses.item() == pytest.approx(want.item(), rel=1e-10)
    assert torch.allclose(hh.grad, want_h.grad, atol=1e-10) and torch.allclose(ww.grad, want_w.grad, atol=1e-10)
    with pytest.raises(ValueError, match="one_pass with token_weights needs a loss that does not read chosen_nll; "
                                         "'sigmoid\\+0.5\\*sft' does"):
        fused_preference_loss(hh, ww, y, *ref, "sigmoid+0.5*sft", reduction="sum", one_pass=True,
                              token_weights=ld_weights(y, 0.4))
    with pytest.raises(ValueError, match="token_weights must be shaped like labels \\(6, 11\\), got \\(6, 10\\)"):
        fused_preference_loss(hh, ww, y, *ref, "sigmoid", token_weights=ld_weights(y, 0.4)[:, 1:])


def test_the_config_checks_ld_alpha(tmp_path):
    from prefopt.train.dpo import DPOConfig

    data = tmp_path / "d.jsonl"
    data.write_text("{}\n")
    base = dict(model="m", data=str(data), output_dir=str(tmp_path / "o"))
    assert DPOConfig(**base, ld_alpha=0.5).ld_alpha == 0.5
    for kw, why in (({"ld_alpha": 2.0}, "ld_alpha must be in \\[0, 1\\]"),
                    ({"ld_alpha": 0.5, "loss": "kto"}, "kto has no pairs")):
        with pytest.raises(ValueError, match=why):
            DPOConfig(**base, **kw)
