"""Preference losses: hand-computed values, the registry, and parity with TRL's DPOTrainer."""
import math
import re

import pytest
import torch

from prefopt.losses import LOSSES, PreferenceLogps, preference_loss, register_loss


def _lp(**kw):
    t = lambda *v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    base = dict(chosen=t(-10.0), rejected=t(-12.0), ref_chosen=t(-11.0), ref_rejected=t(-11.0),
                chosen_tokens=t(4.0), rejected_tokens=t(5.0), chosen_nll=torch.tensor(2.5, dtype=torch.float64))
    base.update(kw)
    return PreferenceLogps(**base)


# policy-minus-reference log-ratios: chosen +1, rejected -1, so Δ = 2 and β·Δ = 0.2 at β = 0.1.
# By hand: -log σ(0.2) = log(1 + e^-0.2) = 0.598139; log(1 + e^0.2) = 0.798139.
HAND = {
    ("sigmoid", ()): 0.5981388693815918,
    ("sigmoid", (("label_smoothing", 0.1),)): 0.9 * 0.5981388693815918 + 0.1 * 0.7981388693815918,  # cDPO
    ("robust", (("label_smoothing", 0.1),)): (0.9 * 0.5981388693815918 - 0.1 * 0.7981388693815918) / 0.8,
    ("hinge", ()): 0.8,  # max(0, 1 - 0.2)
    ("ipo", ()): (1 / 4 - (-1) / 5 - 1 / (2 * 0.1)) ** 2,  # (0.25 + 0.2 - 5)^2 = 20.7025
    ("rpo", (("rpo_alpha", 0.5),)): 0.5981388693815918 + 0.5 * 2.5,
    # SimPO, β=2, γ=0.5: mean logps -10/4 = -2.5 and -12/5 = -2.4; z = 2(-0.1) - 0.5 = -0.7
    ("simpo", (("beta", 2.0), ("gamma", 0.5))): math.log1p(math.exp(0.7)),
    # ORPO, λ=0.1: log odds(-2.5) - log odds(-2.4) = -0.1094495; loss = 2.5 - 0.1 log σ(-0.1094495)
    ("orpo", (("lambda_", 0.1),)): 2.5 + 0.1 * math.log1p(math.exp(0.10944946678036466)),
    # TRL's other losses (prefopt.losses_extra), β = 0.1: βc = 0.1, βr = -0.1, z = 0.2
    ("bco_pair", ()): 2 * math.log1p(math.exp(-0.1)),  # -log σ(0.1) - log σ(0.1)
    ("nca_pair", ()): 1.5 * math.log1p(math.exp(-0.1)) + 0.5 * math.log1p(math.exp(0.1)),
    ("sppo_hard", ()): (1 - 5) ** 2 + (-1 + 5) ** 2,  # 1/(2β) = 5
    ("apo_zero", ()): 1 - 1 / (1 + math.exp(-0.1)) + 1 / (1 + math.exp(0.1)),
    ("apo_down", ()): 1 / (1 + math.exp(-0.1)) + 1 - 1 / (1 + math.exp(-0.2)),
    # KL([q, 1 - q] || [0.9, 0.1]) with q = σ(0.2)
    ("exo_pair", (("label_smoothing", 0.1),)): (1 / (1 + math.exp(-0.2))) * math.log((1 / (1 + math.exp(-0.2))) / 0.9)
    + (1 / (1 + math.exp(0.2))) * math.log((1 / (1 + math.exp(0.2))) / 0.1),
    # m = σ(0.2 / 0.05) = σ(4): -log σ(0.2) (1 - m) + e^-0.2 m
    ("discopop", ()): math.log1p(math.exp(-0.2)) * (1 - 1 / (1 + math.exp(-4))) + math.exp(-0.2) / (1 + math.exp(-4)),
    ("sigmoid_norm", ()): math.log1p(math.exp(-0.1 * (1 / 4 + 1 / 5))),  # per-token ratios +1/4 and -1/5
    # one pair: its policy margin -10 + 12 = 2 against the reference's 0, sorted alone: sigmoid DPO's value
    ("aot", ()): 0.5981388693815918,
    ("aot_unpaired", ()): 0.5981388693815918,  # its chosen ratio +1 against its rejected -1
}


@pytest.mark.parametrize("name,kw", list(HAND))
def test_loss_matches_hand_computation(name, kw):
    kwargs = dict(kw)
    if name not in ("simpo", "orpo"):
        kwargs.setdefault("beta", 0.1)
    out = preference_loss(name, _lp(), **kwargs)
    assert out.losses.item() == pytest.approx(HAND[(name, kw)], abs=1e-9)


def test_rewards_and_reference_free_losses():
    out = preference_loss("sigmoid", _lp(), beta=0.1)
    assert out.chosen_rewards.item() == pytest.approx(0.1) and out.rejected_rewards.item() == pytest.approx(-0.1)
    free = preference_loss("simpo", _lp(ref_chosen=None, ref_rejected=None), beta=2.0)
    assert free.chosen_rewards.item() == pytest.approx(2.0 * -2.5)
    with pytest.raises(ValueError, match="needs reference log-probs"):
        preference_loss("sigmoid", _lp(ref_chosen=None))
    with pytest.raises(ValueError, match="unknown preference loss 'dpo2'"):
        preference_loss("dpo2", _lp())


def test_a_user_can_register_a_loss():
    @register_loss("test_margin")
    def margin(lp, *, beta=0.1, **_):
        from prefopt.losses import LossOutput

        c, r = lp.chosen - lp.ref_chosen, lp.rejected - lp.ref_rejected
        return LossOutput(-(c - r), beta * c, beta * r)

    try:
        assert preference_loss("test_margin", _lp()).losses.item() == pytest.approx(-2.0)
    finally:
        LOSSES.pop("test_margin")


GRAD_KW = {"sigmoid": [{}, {"label_smoothing": 0.2}], "robust": [{"label_smoothing": 0.2}], "hinge": [{}, {"beta": 2.0}],
           "ipo": [{"beta": 0.5}], "rpo": [{"rpo_alpha": 0.7}], "simpo": [{}, {"label_smoothing": 0.1}],
           "orpo": [{"lambda_": 0.3}], "bco_pair": [{}], "nca_pair": [{"beta": 0.5}],
           "exo_pair": [{"label_smoothing": 1e-3}, {"label_smoothing": 0.3, "beta": 0.5}], "sppo_hard": [{}],
           "apo_zero": [{"beta": 0.5}], "apo_down": [{"beta": 0.5}], "discopop": [{}, {"discopop_tau": 2.0}],
           "sigmoid_norm": [{}, {"label_smoothing": 0.2}], "sft": [{}],
           "apo_zero_unpaired": [{"beta": 0.5, "undesirable_weight": 1.5}]}


@pytest.mark.parametrize("name,kw", [(n, kw) for n, kws in GRAD_KW.items() for kw in kws])
def test_closed_form_pair_gradients_equal_autograd(name, kw):
    """``PAIR_GRADS`` (what the one-pass kernel uses instead of an autograd call per chunk): the
    gradient of the summed losses with respect to the chosen and rejected log-probs and to
    ``chosen_nll``, against autograd, over pairs on both sides of the hinge and, for ORPO, mean
    log-probs of 0 and just below (its clamp at 1 - 1e-6 is the edge)."""
    from prefopt.losses import PAIR_GRADS, PAIRWISE

    builtin = {n for n in PAIRWISE if "+" not in n}  # mixtures other tests registered are sums of these
    assert set(GRAD_KW) == builtin == {n for n in PAIR_GRADS if "+" not in n}  # every one has one, tested here
    g = torch.Generator().manual_seed(0)
    t = lambda *size: torch.randn(*size, generator=g, dtype=torch.float64)  # noqa: E731
    chosen, rejected = t(8) * 3 - 12, t(8) * 3 - 12
    chosen[:2] = torch.tensor([0.0, -1e-9], dtype=torch.float64)  # ORPO's clamp, on and just off
    rejected[2] = 0.0
    lp = PreferenceLogps(chosen.requires_grad_(), rejected.requires_grad_(), t(8) - 12, t(8) - 12,
                         torch.arange(8, dtype=torch.float64) % 5, torch.full((8,), 3.0, dtype=torch.float64),
                         torch.tensor(2.5, dtype=torch.float64, requires_grad=True),
                         desirable=torch.arange(8) % 3 != 0)  # for the unpaired APO-zero; the others ignore it
    want = torch.autograd.grad(preference_loss(name, lp, **kw).losses.sum(), (lp.chosen, lp.rejected, lp.chosen_nll),
                               allow_unused=True)
    want = [torch.zeros_like(x) if g is None else g for g, x in zip(want[:2], (chosen, rejected))] + [want[2]]
    dc, dr, dnll = PAIR_GRADS[name](lp, **kw)  # sft's: none through the log-prob sums, all through chosen_nll
    assert torch.allclose(dc, want[0], rtol=1e-10, atol=1e-12) and torch.allclose(dr, want[1], rtol=1e-10, atol=1e-12)
    assert dnll == pytest.approx(0.0 if want[2] is None else want[2].item())
    if name == "hinge":  # both sides of max(0, 1 - βΔ)
        assert (dc == 0).any() and (dc != 0).any()


def test_registering_a_name_again_drops_its_closed_form():
    """A user's own ``sigmoid`` must not get the built-in's gradient formula."""
    from prefopt.losses import PAIR_GRADS, sigmoid_loss

    builtin = PAIR_GRADS["sigmoid"]
    try:
        register_loss("sigmoid", pairwise=True)(lambda lp, **kw: sigmoid_loss(lp, **kw))
        assert "sigmoid" not in PAIR_GRADS
    finally:
        register_loss("sigmoid", pairwise=True, pair_grad=builtin)(sigmoid_loss)
    assert PAIR_GRADS["sigmoid"] is builtin


class TestTRLParity:
    """Same tiny model, same batch: prefopt's loss and gradients against TRL's DPOTrainer (fp32).

    TRL defaults to bf16 autocast even on CPU; the comparison turns it off (bf16=False).
    """

    trl = pytest.importorskip("trl")
    transformers = pytest.importorskip("transformers")
    datasets = pytest.importorskip("datasets")

    @pytest.fixture(scope="class")
    @classmethod
    def setup(cls, tmp_path_factory):
        from tests._tiny import build_hf_model

        root = tmp_path_factory.mktemp("trl")
        build_hf_model(root / "ref", initializer_range=0.1)
        policy = cls.transformers.AutoModelForCausalLM.from_pretrained(root / "ref")
        torch.manual_seed(3)
        with torch.no_grad():  # make the policy differ from the reference
            for p in policy.parameters():
                p.add_(0.02 * torch.randn_like(p))
        policy.save_pretrained(root / "policy")
        (root / "policy" / "tokenizer.json").write_bytes((root / "ref" / "tokenizer.json").read_bytes())
        (root / "policy" / "tokenizer_config.json").write_bytes((root / "ref" / "tokenizer_config.json").read_bytes())
        rows = [{"prompt": [{"role": "user", "content": f"Patient {i}: chest pain for {i + 1} hours. Triage?"}],
                 "chosen": [{"role": "assistant", "content": "Emergency department now." if i % 2 else "Call 911."}],
                 "rejected": [{"role": "assistant", "content": "Wait and see" + " next week" * (i % 3)}]}
                for i in range(4)]
        return root, rows

    @pytest.mark.parametrize("loss,ls,extra", [
        *((loss, ls, {}) for loss, ls in (
            ("sigmoid", 0.0), ("ipo", 0.0), ("hinge", 0.0), ("robust", 0.2), ("bco_pair", 0.0), ("nca_pair", 0.0),
            ("exo_pair", 1e-3), ("sppo_hard", 0.0), ("apo_zero", 0.0), ("apo_down", 0.0), ("discopop", 0.0),
            ("sigmoid_norm", 0.0), ("aot", 0.2), ("aot_unpaired", 0.0), ("0.8*sigmoid+0.2*bco_pair+sft", 0.0),
            ("sigmoid+0.5*sft", 0.0))),
        # f-DPO (prefopt.f_divergence): TRL's f_divergence_type, f_alpha_divergence_coef
        ("sigmoid", 0.0, {"f_divergence": "forward_kl"}), ("sigmoid", 0.0, {"f_divergence": "js_divergence"}),
        ("sigmoid", 0.0, {"f_divergence": "alpha_divergence", "f_alpha": 0.3}),
        ("ipo", 0.0, {"f_divergence": "js_divergence"}), ("robust", 0.2, {"f_divergence": "forward_kl"}),
        ("sigmoid_norm", 0.0, {"f_divergence": "alpha_divergence", "f_alpha": 1.5}),
        ("0.8*sigmoid+0.2*discopop+sft", 0.0, {"f_divergence": "js_divergence"}),
        # LD-DPO (prefopt.ld_dpo): TRL's ld_alpha; with sft, its NLL stays unweighted
        ("sigmoid", 0.0, {"ld_alpha": 0.5}), ("sigmoid", 0.0, {"ld_alpha": 0.0}), ("ipo", 0.0, {"ld_alpha": 0.3}),
        ("sigmoid+0.5*sft", 0.0, {"ld_alpha": 0.5}),
        ("sigmoid", 0.0, {"ld_alpha": 0.5, "f_divergence": "js_divergence"}),
        # WPO (prefopt.wpo): TRL's use_weighting (TRL 1.16 cannot weigh a mixture with sft: it scales the
        # expanded NLL in place; tests/test_wpo.py checks that case by hand)
        ("sigmoid", 0.0, {"wpo": True}), ("ipo", 0.0, {"wpo": True}), ("apo_zero", 0.0, {"wpo": True}),
        ("0.8*sigmoid+0.2*bco_pair", 0.0, {"wpo": True}), ("sigmoid", 0.0, {"wpo": True, "ld_alpha": 0.5}),
        ("sigmoid", 0.0, {"wpo": True, "f_divergence": "forward_kl"})],
        ids=lambda v: ",".join(f"{k}={x}" for k, x in v.items()) if isinstance(v, dict) else None)
    def test_loss_and_gradients_match_trl(self, setup, tmp_path, loss, ls, extra):
        from prefopt import load_model, load_tokenizer
        from prefopt.data.preference import pair_collate, tokenize_pair
        from prefopt.data.records import PreferenceRecord
        from prefopt.train.dpo import DPOConfig, DPOTrainer

        root, rows = setup
        tf, trl = self.transformers, self.trl
        hf = tf.AutoModelForCausalLM.from_pretrained(root / "policy")
        hf_ref = tf.AutoModelForCausalLM.from_pretrained(root / "ref")
        from prefopt.losses_extra import parse_mixture

        terms = parse_mixture(loss) if "+" in loss else [(1.0, loss)]  # MPO: TRL's list of loss types, weighted
        args = trl.DPOConfig(output_dir=str(tmp_path / "trl"), beta=0.1, loss_type=[n for _, n in terms],
                             loss_weights=[w for w, _ in terms], label_smoothing=ls,
                             f_divergence_type=extra.get("f_divergence", "reverse_kl"),
                             f_alpha_divergence_coef=extra.get("f_alpha", 0.5), ld_alpha=extra.get("ld_alpha"),
                             use_weighting=extra.get("wpo", False),
                             per_device_train_batch_size=4, max_length=256, report_to=[], use_cpu=True, bf16=False)
        trainer = trl.DPOTrainer(model=hf, ref_model=hf_ref, args=args, processing_class=tf.AutoTokenizer.from_pretrained(
            root / "policy"), train_dataset=self.datasets.Dataset.from_list(rows))
        batch = next(iter(trainer.get_train_dataloader()))
        want = trainer.compute_loss(trainer.model, batch)
        want.backward()

        tok = load_tokenizer(root / "policy")
        pairs = [tokenize_pair(PreferenceRecord(r["prompt"], r["chosen"][0]["content"], r["rejected"][0]["content"]),
                               tok, max_length=256)[0] for r in rows]
        ours = load_model(root / "policy")
        data = tmp_path / "d.jsonl"
        data.write_text("{}\n")
        cfg = DPOConfig(model=str(root / "policy"), data=str(data), output_dir=str(tmp_path / "o"), loss=loss,
                        beta=0.1, label_smoothing=ls, lora=False, ref=str(root / "ref"), batch_size=4, progress=False,
                        **extra)
        dpo = DPOTrainer(ours.train(), cfg, pairs, pad_id=tok.pad_token_id, ref_model=load_model(root / "ref"))
        # the same token sequences as TRL's batch, in TRL's row order
        ids = batch["input_ids"]
        ours_batch = {"input_ids": ids, "attention_mask": batch["attention_mask"],
                      "labels": ids.masked_fill(batch["completion_mask"] == 0, -100)}

        def rows(b):  # each sequence without padding, with its trained positions
            return sorted((tuple(r[m.bool()].tolist()), tuple((lab[m.bool()] != -100).tolist()))
                          for r, m, lab in zip(b["input_ids"], b["attention_mask"], b["labels"]))
        assert rows(pair_collate(pairs, tok.pad_token_id)) == rows(ours_batch)  # our tokenization = TRL's
        tol = 1e-5 * max(1.0, abs(want.item()))  # fp32: relative where the loss is large (SPPO's squares)
        with torch.no_grad():  # training packs each pair into one row (the prompt once): the same loss
            packed = dpo.collate(pairs)
            assert packed["input_ids"].shape[0] == 4
            assert abs(dpo.loss_sum(ours, packed)[0].item() / 4 - want.item()) < tol
        loss_sum, _ = dpo.loss_sum(ours, ours_batch)  # TRL's own stacked rows
        got = loss_sum / 4
        got.backward()
        assert abs(got.item() - want.item()) < tol, (got.item(), want.item())
        theirs = dict(hf.named_parameters())
        # transformers builds embed_tokens with padding_idx=pad_token_id, so that row never gets a
        # gradient (here the pad token is also <|im_end|>, a real token); prefopt's is the true one.
        pad = hf.config.pad_token_id
        assert torch.count_nonzero(theirs["model.embed_tokens.weight"].grad[pad]) == 0
        keep = torch.arange(hf.config.vocab_size) != pad
        # forward KL and the α-divergence weigh each answer's gradient by e^(-x) or e^((α-1)x), x its
        # log-ratio: x's absolute fp32 error (sums of ~-40 differ in their last bit, ~4e-6, between two
        # summation orders) becomes a relative error of the gradient (reverse KL: 3e-7 here; f-DPO: to 2e-5)
        gtol = 1e-5 if extra.get("f_divergence", "reverse_kl") == "reverse_kl" else 5e-5
        for n, p in ours.named_parameters():
            g_ours, g_trl = p.grad, theirs[n].grad
            if n == "model.embed_tokens.weight":
                g_ours, g_trl = g_ours[keep], g_trl[keep]
            assert (g_ours - g_trl).abs().max().item() < gtol * max(1.0, g_trl.abs().max().item()), n


def test_per_pair_entries_must_all_be_one_per_pair():
    """A (B, 1) reference would broadcast against (B,) log-probs into a (B, B) loss, and a (1,)
    one over the batch, without a word: ``preference_loss`` refuses both, naming the entry, and
    ``fused_preference_loss`` names its own argument (a 0-dim one included)."""
    from prefopt.kernels import fused_preference_loss

    two = _lp(chosen=torch.tensor([-10.0, -9.0]), rejected=torch.tensor([-12.0, -11.0]),
              ref_chosen=torch.tensor([-11.0, -10.0]), ref_rejected=torch.tensor([-11.0, -10.0]),
              chosen_tokens=torch.tensor([4.0, 4.0]), rejected_tokens=torch.tensor([5.0, 5.0]))
    assert preference_loss("sigmoid", two).losses.shape == (2,)
    for field, bad in (("ref_chosen", torch.zeros(2, 1)), ("ref_rejected", torch.zeros(1)),
                       ("rejected", torch.zeros(3)), ("chosen_tokens", torch.ones(2, 1))):
        with pytest.raises(ValueError, match=rf"{field} has shape \({', '.join(map(str, bad.shape))},?\) where chosen "
                                             r"has \(2,\)"):
            preference_loss("sigmoid", PreferenceLogps(**{**two.__dict__, field: bad}))
    with pytest.raises(ValueError, match=r"chosen log-probs must be \(B,\), one per pair, got shape \(2, 1\)"):
        preference_loss("sigmoid", PreferenceLogps(**{**two.__dict__, "chosen": torch.zeros(2, 1)}))
    h, w, y = torch.randn(4, 5, 8, requires_grad=True), torch.randn(20, 8), torch.randint(0, 20, (4, 5))
    for one_pass in (False, True):
        for bad in (torch.zeros(2, 1), torch.tensor(0.0)):
            with pytest.raises(ValueError, match=rf"ref_rejected_logps must be \(2,\), one reference log-prob sum "
                                                 rf"per pair of the 4 rows, got shape \({', '.join(map(str, bad.shape))}"):
                fused_preference_loss(h, w.requires_grad_(), y, torch.zeros(2), bad, reduction="sum", one_pass=one_pass)


def _kto_lp(desirable, **kw):
    t = lambda *v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    # completions' log-ratios +1, -0.5, +2, -1; the mismatched ones' +0.3, +0.1, -0.2, +0.2: z0 = 0.1
    base = dict(chosen=t(-9.0, -10.5, -8.0, -12.0), ref_chosen=t(-10.0, -10.0, -10.0, -11.0),
                rejected=t(-19.7, -19.9, -20.2, -19.8), ref_rejected=t(-20.0, -20.0, -20.0, -20.0),
                desirable=torch.tensor(desirable))
    return PreferenceLogps(**{**base, **kw})


def test_kto_matches_hand_computation_and_trls_formula():
    """KTO (TRL's loss_type="kto"): z0 = max(0, mean mismatched log-ratio) = 0.1; a desirable
    example's loss is w_D (1 - σ(β(r - z0))), an undesirable one's w_U (1 - σ(β(z0 - r)))."""
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    lp = _kto_lp([True, False, True, False])
    out = preference_loss("kto", lp, beta=0.5, desirable_weight=1.0, undesirable_weight=1.5)
    hand = [1 - sig(0.5 * (1 - 0.1)), 1.5 * (1 - sig(0.5 * (0.1 + 0.5))), 1 - sig(0.5 * (2 - 0.1)),
            1.5 * (1 - sig(0.5 * (0.1 + 1)))]
    assert out.losses.tolist() == pytest.approx(hand, abs=1e-12)
    assert out.chosen_rewards.tolist() == pytest.approx([0.5, -0.25, 1.0, -0.5])
    assert out.reference_point.item() == pytest.approx(0.1, abs=1e-12)  # the z0 it used, for the metrics
    assert preference_loss("sigmoid", lp).reference_point is None  # pairwise losses have none
    # TRL's own arrangement: desirable losses, then undesirable, z0 from the KL completions, clamped at 0
    r, kl = lp.chosen - lp.ref_chosen, lp.rejected - lp.ref_rejected
    z0 = kl.mean().clamp(min=0)
    d = lp.desirable
    trl = torch.cat((1.0 * (1 - torch.sigmoid(0.5 * (r[d] - z0))), 1.5 * (1 - torch.sigmoid(0.5 * (z0 - r[~d])))))
    assert out.losses.sum().item() == pytest.approx(trl.sum().item(), abs=1e-12)


def test_apo_zero_unpaired_matches_hand_computation():
    """TRL's KTOTrainer loss_type="apo_zero_unpaired": desirable w_D (1 - σ(βr)), undesirable
    w_U σ(βr), r the completion's log-ratio; the mismatched completions are not read."""
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    lp = _kto_lp([True, False, True, False])
    out = preference_loss("apo_zero_unpaired", lp, beta=0.5, undesirable_weight=1.5)
    hand = [1 - sig(0.5), 1.5 * sig(-0.25), 1 - sig(1.0), 1.5 * sig(-0.5)]
    assert out.losses.tolist() == pytest.approx(hand, abs=1e-12)
    other = _kto_lp([True, False, True, False], rejected=torch.zeros(4, dtype=torch.float64))
    assert preference_loss("apo_zero_unpaired", other, beta=0.5, undesirable_weight=1.5).losses.tolist() == \
        pytest.approx(hand, abs=1e-12)


def test_kto_reference_point_is_clamped_and_carries_no_gradient():
    from prefopt.losses import kto_reference_point

    below = _kto_lp([True, False, True, False], rejected=torch.full((4,), -20.5, dtype=torch.float64))
    assert kto_reference_point(below).item() == 0.0  # a negative KL estimate counts as 0
    lp = _kto_lp([True, False, True, False])
    lp.chosen.requires_grad_(), lp.rejected.requires_grad_()
    loss = preference_loss("kto", lp, beta=0.5).losses.sum()
    dc, dr = torch.autograd.grad(loss, (lp.chosen, lp.rejected), allow_unused=True)
    assert dr is None or not dr.any()  # z0 is a constant to the gradient, as in TRL
    # d/dr of 1 - σ(β(r - z0)) is -β σ'(.): desirable completions are pushed up, undesirable down
    assert (dc[lp.desirable] < 0).all() and (dc[~lp.desirable] > 0).all()


def test_kto_needs_its_labels_one_per_example():
    with pytest.raises(ValueError, match="loss 'kto' needs desirable"):
        preference_loss("kto", PreferenceLogps(**{**_kto_lp([True] * 4).__dict__, "desirable": None}))
    with pytest.raises(ValueError, match=r"desirable has shape \(3,\) where chosen has \(4,\)"):
        preference_loss("kto", _kto_lp([True, False, True]))
    with pytest.raises(ValueError, match="loss 'kto' needs reference log-probs"):
        preference_loss("kto", _kto_lp([True] * 4, ref_rejected=None))


def test_the_aot_losses_sort_within_the_batch():
    """AOT pairs the batch's sorted policy margins with its sorted reference margins (and the
    unpaired form its sorted chosen ratios with its sorted rejected ones), not pair by pair."""
    t = lambda *v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    lp = PreferenceLogps(chosen=t(-10.0, -8.0, -9.0), rejected=t(-9.0, -12.0, -9.5),
                         ref_chosen=t(-10.0, -10.0, -10.0), ref_rejected=t(-10.5, -10.0, -9.0))
    # policy margins -1, 4, 0.5 sorted: -1, 0.5, 4; reference margins 0.5, 0, -1 sorted: -1, 0, 0.5
    want = [math.log1p(math.exp(-0.1 * d)) for d in (0.0, 0.5, 3.5)]
    assert preference_loss("aot", lp, beta=0.1).losses.tolist() == pytest.approx(want, abs=1e-12)
    # chosen ratios 0, 2, 1 sorted: 0, 1, 2; rejected 1.5, -2, -0.5 sorted: -2, -0.5, 1.5
    want = [math.log1p(math.exp(-0.1 * d)) for d in (2.0, 1.5, 0.5)]
    assert preference_loss("aot_unpaired", lp, beta=0.1).losses.tolist() == pytest.approx(want, abs=1e-12)


def test_exo_needs_its_epsilon():
    with pytest.raises(ValueError, match=r"exo_pair needs label_smoothing > 0 \(the EXO paper recommends 1e-3\)"):
        preference_loss("exo_pair", _lp(), beta=0.1)


def test_a_mixture_is_the_weighted_sum_of_its_losses_and_rpo_is_sigmoid_plus_sft():
    from prefopt.losses import PAIR_GRADS, PAIRWISE, REFERENCE_FREE, known_loss

    lp = _lp()
    mixed = preference_loss("sigmoid+0.5*sft", lp, beta=0.1)
    rpo = preference_loss("rpo", lp, beta=0.1, rpo_alpha=0.5)
    assert mixed.losses.item() == pytest.approx(rpo.losses.item(), abs=1e-12)
    assert mixed.chosen_rewards.item() == pytest.approx(rpo.chosen_rewards.item())  # the reference-based term's
    mpo = preference_loss("0.8*sigmoid+0.2*bco_pair+sft", lp, beta=0.1)
    assert mpo.losses.item() == pytest.approx(0.8 * HAND[("sigmoid", ())] + 0.2 * HAND[("bco_pair", ())] + 2.5)
    name = known_loss("0.8*sigmoid+0.2*bco_pair+sft")
    assert name in PAIRWISE and name in PAIR_GRADS and name not in REFERENCE_FREE
    free = known_loss("simpo+0.1*sft")  # every term reference-free: so is the mixture
    assert free in REFERENCE_FREE and preference_loss(free, _lp(ref_chosen=None, ref_rejected=None), beta=2.0)
    assert known_loss("aot+sft") not in PAIRWISE  # a batch-sorted term: the per-token path
    lp = PreferenceLogps(torch.tensor([-10.0, -9.0], dtype=torch.float64, requires_grad=True),
                         torch.tensor([-12.0, -8.0], dtype=torch.float64, requires_grad=True),
                         torch.tensor([-11.0, -9.5], dtype=torch.float64), torch.tensor([-11.0, -8.5], dtype=torch.float64),
                         torch.tensor([4.0, 3.0], dtype=torch.float64), torch.tensor([5.0, 2.0], dtype=torch.float64),
                         torch.tensor(2.5, dtype=torch.float64, requires_grad=True))
    want = torch.autograd.grad(preference_loss(name, lp, beta=0.3).losses.sum(), (lp.chosen, lp.rejected, lp.chosen_nll))
    dc, dr, dnll = PAIR_GRADS[name](lp, beta=0.3)
    assert torch.allclose(dc, want[0]) and torch.allclose(dr, want[1]) and dnll == pytest.approx(want[2].item())


@pytest.mark.parametrize("spec,why", [
    ("sigmoid+", "unknown loss ''"), ("x*sigmoid+sft", "'x*sigmoid' is not WEIGHT*NAME"),
    ("sigmoid+kto", "kto trains on unpaired examples and cannot be mixed"),
    ("sigmoid+apo_zero_unpaired", "apo_zero_unpaired trains on unpaired examples and cannot be mixed"), ("sigmoid+sigmoid", "'sigmoid' appears twice"),
    ("0*sigmoid+sft", "the weight of 'sigmoid' must be a positive number, got '0'"),
    ("sigmoid+dpo9", "unknown loss 'dpo9'; registered: ["),
])
def test_a_bad_mixture_says_what_is_wrong(spec, why):
    import argparse

    from prefopt.losses import loss_arg

    with pytest.raises(ValueError, match=f"loss {re.escape(repr(spec))}: {re.escape(why)}"):
        preference_loss(spec, _lp())
    with pytest.raises(argparse.ArgumentTypeError, match=re.escape(why)):  # a command line's --loss
        loss_arg(spec)
    assert spec not in LOSSES
