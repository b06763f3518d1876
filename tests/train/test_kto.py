"""KTO on the DPO trainer: unpaired feedback learns, the reference cache holds, the fused and
plain paths agree, and the run says how the labels are balanced."""
import json

import pytest
import torch

from prefopt import load_tokenizer
from prefopt.data.feedback import load_feedback
from prefopt.data.preference import load_preferences, pair_collate
from prefopt.kernels import fused_preference_loss
from prefopt.lora import lora_layers
from prefopt.model import resolve_model_dir
from prefopt.pretrained import load_model
from prefopt.train.dpo import DPOConfig, DPOTrainer, kto_balance_line
from prefopt.train.metrics import read_metrics
from prefopt.train.reference import reference_cache_for
from prefopt.train.run import prepare_model, run_dpo
from prefopt.train.shared_prompt import pair_logp_sums
from tests.train._fixtures import write_task


def write_feedback(path, n: int = 64, offset: int = 0):
    """Unpaired: each message gets one answer, right (desirable) or wrong (undesirable) for its code."""
    with open(path, "w") as f:
        for i in range(offset, offset + n):
            good, bad = ("urgent review", "routine visit") if i % 2 else ("routine visit", "urgent review")
            right = (i // 2) % 3 != 0  # two in three desirable
            f.write(json.dumps({"prompt": f"Message {i}, code {'A' if i % 2 else 'B'}. Triage?",
                                "completion": f"{i}: {good if right else bad}", "label": right}) + "\n")
    return path


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    root = tmp_path_factory.mktemp("kto")
    model_dir, _ = write_task(root, n=8)
    return model_dir, write_feedback(root / "train.jsonl"), write_feedback(root / "heldout.jsonl", n=24, offset=1000)


def _cfg(task, out, **kw):
    model_dir, train, held = task
    base = dict(model=str(model_dir), data=str(train), eval_data=str(held), output_dir=str(out), batch_size=8,
                max_steps=24, lr=5e-3, beta=0.1, loss="kto", lora_r=8, lora_alpha=16, lora_dropout=0.0,
                progress=False)
    return DPOConfig(**{**base, **kw})


def _held_out_log_ratios(task, adapter):
    """The held-out completions' log-ratios (adapter against the base model), desirable and not."""
    model_dir, _, held = task
    tok = load_tokenizer(str(model_dir))
    examples, _ = load_feedback(held, tok)
    batch = pair_collate(examples, tok.pad_token_id)
    with torch.no_grad():
        sums = [pair_logp_sums(load_model(str(model_dir), adapter=a).eval(), batch)[:len(examples)]
                for a in (adapter, None)]
    ratio = sums[0] - sums[1]
    good = torch.tensor([x.desirable for x in examples])
    return ratio[good], ratio[~good]


def test_apo_zero_unpaired_learns_from_the_same_feedback(task, tmp_path):
    """TRL's other unpaired loss: desirable completions' log-ratios up, undesirable ones' down,
    with no reference point; the run is a KTO-style run (unpaired data, its metrics)."""
    summary = run_dpo(_cfg(task, tmp_path / "run", loss="apo_zero_unpaired", beta=0.1, max_steps=48))
    before, after = summary["eval_before"], summary["eval_after"]
    assert before["eval_loss"] == pytest.approx(0.5) and before["eval_kto/accuracies"] == 0.0
    assert after["eval_loss"] < 0.4  # 0.34 when written
    good, bad = _held_out_log_ratios(task, tmp_path / "run" / "final")
    # every completion gained (the answers' format is learnt: ~40 nats), the desirable ones more (2.48 when
    # written; KTO 4.78): with no reference point the undesirable ones' ratios stay above 0 and their loss
    # saturates, so the share on the label's side is the desirable share, 2/3
    assert good.mean() - bad.mean() > 1.5 and after["eval_kto/accuracies"] == pytest.approx(2 / 3)


def test_kto_learns_to_put_each_completion_on_its_labels_side(task, tmp_path, capsys):
    summary = run_dpo(_cfg(task, tmp_path / "run", beta=1.0, max_steps=48))
    before, after = summary["eval_before"], summary["eval_after"]
    assert before["eval_kto/accuracies"] == 0.0  # policy == reference: every log-ratio is 0, as is z0
    assert before["eval_loss"] == pytest.approx(0.5)  # 1 - σ(0) on every example
    assert after["eval_kto/accuracies"] >= 0.7  # 0.79 when written (0.5: no better than a coin)
    assert after["eval_loss"] < 0.35  # 0.26
    good, bad = _held_out_log_ratios(task, tmp_path / "run" / "final")
    # every completion gained (the answers' format is learnt: ~35 nats), the desirable ones more (4.78 when written)
    assert good.mean() - bad.mean() > 2.5
    step = next(m for m in read_metrics(tmp_path / "run") if "loss" in m)
    assert {"kl", "kto/accuracies", "logps/completion"} <= set(step) and "rewards/margins" not in step
    assert "pairs" not in step and step["examples"] == 8  # a KTO step counts its examples (batch_size 8)
    out = capsys.readouterr().out
    assert "KTO on 42 desirable and 22 undesirable examples; weighted desirable:undesirable 1.91, outside" in out
    assert "share on the label's side of the reference point" in out and "eval share on the label's side" in out
    assert (tmp_path / "run" / "final" / "adapter_model.safetensors").exists()


def _trainer(task, cfg, cache=False):
    tok = load_tokenizer(cfg.model)
    examples, _ = load_feedback(cfg.data, tok, max_length=cfg.max_length)
    model = prepare_model(cfg)
    ref_cache = reference_cache_for(cfg, model, None, resolve_model_dir(cfg.model)) if cache else None
    return DPOTrainer(model, cfg, examples, pad_id=tok.pad_token_id, ref_cache=ref_cache), examples


def test_a_cached_reference_gives_the_losses_of_a_live_one_and_the_adapter_moves(task, tmp_path):
    cached, examples = _trainer(task, _cfg(task, tmp_path / "a", ref_cache=str(tmp_path / "cache"),
                                           eval_data=None), cache=True)
    assert len(cached.ref_cache) == len(examples) and cached.ref_forwards == 0
    live, _ = _trainer(task, _cfg(task, tmp_path / "b", eval_data=None))
    a = [cached.train_step(s)["loss"] for s in range(4)]
    b = [live.train_step(s)["loss"] for s in range(4)]
    assert cached.ref_forwards == 0 and live.ref_forwards == 4
    assert max(abs(x - y) for x, y in zip(a, b)) < 1e-6
    assert all(m.lora_B.weight.abs().max() > 0 for _, m in lora_layers(live.model))  # B starts at 0


def test_share_start_gives_kto_the_same_losses(task, tmp_path):
    """KTO's examples sit beside their mismatched completions under the same prompt, so
    share_start lays a batch after the prompt start they all share: the same losses, step by step."""
    plain, _ = _trainer(task, _cfg(task, tmp_path / "a", eval_data=None))
    shared, examples = _trainer(task, _cfg(task, tmp_path / "b", eval_data=None, share_start=True))
    assert shared.start >= 16 and "lengths" in shared.collate(examples[:8])
    a = [plain.train_step(s)["loss"] for s in range(4)]
    b = [shared.train_step(s)["loss"] for s in range(4)]
    assert max(abs(x - y) for x, y in zip(a, b)) < 1e-5 and a[-1] != a[0]


def test_pairs_train_kto_as_two_examples_each_and_dpo_examples_are_refused(task, tmp_path):
    model_dir, _, _ = task
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"Message {i}?", "chosen": "urgent review",
                                         "rejected": "routine visit"}) + "\n" for i in range(8)))
    summary = run_dpo(_cfg(task, tmp_path / "p", data=str(pairs), eval_data=None, max_steps=2))
    assert summary["total_steps"] == 2
    assert "- 16 training examples, 0 for evaluation" in (tmp_path / "p" / "final" / "README.md").read_text()
    cfg = _cfg(task, tmp_path / "q", data=str(pairs), eval_data=None)
    tok = load_tokenizer(cfg.model)
    dpo_pairs, _ = load_preferences(pairs, tok)
    with pytest.raises(TypeError, match=r"load_feedback\(path or list of dicts, tok\) \(a pair counts as two\)"):
        DPOTrainer(prepare_model(cfg), cfg, dpo_pairs, pad_id=tok.pad_token_id)


def test_the_balance_line_gives_the_weights_the_kto_paper_advises():
    class Ex:
        def __init__(self, d):
            self.desirable = d
    data = [Ex(True)] * 30 + [Ex(False)] * 10
    cfg = DPOConfig(model="m", output_dir="o", loss="kto")
    line = kto_balance_line(data, cfg)
    assert line == ("KTO on 30 desirable and 10 undesirable examples; weighted desirable:undesirable 3.00, outside the "
                    "KTO paper's [1, 1.33]: kto_desirable_weight in [0.33, 0.44] or kto_undesirable_weight in "
                    "[2.25, 3.00] would be")
    assert "in the KTO paper's" in kto_balance_line(data, DPOConfig(model="m", output_dir="o", loss="kto", kto_undesirable_weight=2.5))
    assert "with only desirable ones" in kto_balance_line(data[:30], cfg)
    with pytest.raises(ValueError, match="kto_desirable_weight and kto_undesirable_weight must be > 0"):
        DPOConfig(model="m", output_dir="o", loss="kto", kto_undesirable_weight=0)


@pytest.mark.parametrize("impl", ["chunked", "triton"])
def test_fused_kto_equals_the_plain_computation_with_gradients(impl):
    """Values and gradients (hidden and head) of the fused entry point against full logits,
    log_softmax and gather; ignored positions, V not a multiple of the tile."""
    if impl == "triton":
        pytest.importorskip("triton")
    g = torch.Generator().manual_seed(0)
    B, T, D, V = 3, 7, 16, 101
    hidden = torch.randn(2 * B, T, D, generator=g, dtype=torch.float64)
    weight = torch.randn(V, D, generator=g, dtype=torch.float64) * 0.3
    labels = torch.randint(0, V, (2 * B, T), generator=g)
    labels[:, :2] = -100
    labels[1, 5:] = -100
    ref_c, ref_r = torch.randn(B, generator=g, dtype=torch.float64) - 30, torch.randn(B, generator=g,
                                                                                     dtype=torch.float64) - 30
    desirable = torch.tensor([True, False, True])
    kw = dict(beta=0.3, desirable_weight=1.0, undesirable_weight=1.4)

    def run(fused: bool):
        h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        if fused:
            out, _ = fused_preference_loss(h, w, labels, ref_c, ref_r, "kto", impl=impl, reduction="sum",
                                           desirable=desirable, **kw)
            loss = out.losses
        else:
            logp = torch.log_softmax(h @ w.T, -1).gather(-1, labels.clamp(min=0)[..., None])[..., 0]
            sums = (logp * (labels != -100)).sum(-1)
            r, kl = sums[:B] - ref_c, sums[B:] - ref_r
            z0 = kl.detach().mean().clamp(min=0)
            loss = torch.where(desirable, 1 - torch.sigmoid(0.3 * (r - z0)), 1.4 * (1 - torch.sigmoid(0.3 * (z0 - r))))
            loss = loss.sum()
        loss.backward()
        return loss.detach(), h.grad, w.grad

    if impl == "triton":  # the Triton kernel takes fp32 and lower; the interpreter runs it on the CPU
        hidden, weight = hidden.float(), weight.float()
    got, want = run(True), run(False)
    tol = 1e-9 if impl == "chunked" else 1e-4
    for a, b in zip(got, want):
        assert torch.allclose(a, b, atol=tol, rtol=tol)
    assert want[1][B:].abs().max() == 0  # the mismatched completions carry no gradient (z0 is a constant)


class TestTRLParity:
    """Same tiny model, same batch (TRL's, with its mismatched KL completions): prefopt's KTO loss
    and every parameter's gradient against ``trl.KTOTrainer`` (fp32; TRL's bf16 autocast off)."""

    trl = pytest.importorskip("trl")
    transformers = pytest.importorskip("transformers")
    datasets = pytest.importorskip("datasets")

    @pytest.mark.parametrize("loss", ["kto", "apo_zero_unpaired"])
    def test_loss_and_gradients_match_trl(self, tmp_path, loss):
        from prefopt.data.collate import pad_collate
        from prefopt.data.sft import TokenizedExample
        from tests._tiny import build_hf_model

        tf, trl = self.transformers, self.trl
        build_hf_model(tmp_path / "ref", initializer_range=0.1)
        policy = tf.AutoModelForCausalLM.from_pretrained(tmp_path / "ref")
        torch.manual_seed(7)  # a policy whose mismatched completions' mean log-ratio is above 0 (z0 not clamped)
        with torch.no_grad():  # the policy differs from the reference, so z0 and the log-ratios are not 0
            for p in policy.parameters():
                p.add_(0.05 * torch.randn_like(p))
        policy.save_pretrained(tmp_path / "policy")
        for name in ("tokenizer.json", "tokenizer_config.json"):
            (tmp_path / "policy" / name).write_bytes((tmp_path / "ref" / name).read_bytes())
        rows = [{"prompt": [{"role": "user", "content": f"Patient {i}: chest pain for {i + 1} hours. Triage?"}],
                 "completion": [{"role": "assistant", "content": ("Emergency department now." if i % 2 else
                                                                  "Wait and see" + " next week" * (i % 3))}],
                 "label": bool(i % 2)} for i in range(4)]
        hf = tf.AutoModelForCausalLM.from_pretrained(tmp_path / "policy")
        args = trl.KTOConfig(output_dir=str(tmp_path / "trl"), beta=0.3, desirable_weight=1.0, undesirable_weight=1.5,
                             loss_type=loss,
                             per_device_train_batch_size=4, max_length=256, report_to=[], use_cpu=True, bf16=False)
        trainer = trl.KTOTrainer(model=hf, ref_model=tf.AutoModelForCausalLM.from_pretrained(tmp_path / "ref"),
                                 args=args, processing_class=tf.AutoTokenizer.from_pretrained(tmp_path / "policy"),
                                 train_dataset=self.datasets.Dataset.from_list(rows))
        batch = next(iter(trainer.get_train_dataloader()))
        want = trainer.compute_loss(trainer.model, batch)
        want.backward()

        def examples(prefix):  # TRL's rows without padding, trained where its completion mask says
            ids, mask, done = (batch[f"{prefix}{k}"] for k in ("input_ids", "attention_mask", "completion_mask"))
            return [TokenizedExample(r[m.bool()].tolist(), r[m.bool()].masked_fill(c[m.bool()] == 0, -100).tolist())
                    for r, m, c in zip(ids, mask, done)]
        own = examples("")
        kl = examples("KL_") if loss == "kto" else own  # APO-zero makes no KL rows (its loss reads none)
        tok = load_tokenizer(tmp_path / "policy")
        ours_examples, _ = load_feedback([{"prompt": r["prompt"], "completion": r["completion"], "label": r["label"]}
                                          for r in rows], tok, show_progress=False)
        assert sorted(tuple(x.chosen.input_ids) for x in ours_examples) == sorted(tuple(x.input_ids) for x in own)
        ours = load_model(str(tmp_path / "policy"))
        cfg = DPOConfig(model=str(tmp_path / "policy"), output_dir=str(tmp_path / "o"), loss=loss, beta=0.3,
                        kto_undesirable_weight=1.5, lora=False, ref=str(tmp_path / "ref"), batch_size=4,
                        progress=False)
        kto = DPOTrainer(ours.train(), cfg, ours_examples, pad_id=tok.pad_token_id,
                         ref_model=load_model(str(tmp_path / "ref")))
        stacked = pad_collate(own + kl, tok.pad_token_id)  # TRL's completions, then its KL rows
        stacked["desirable"] = torch.as_tensor(batch["label"], dtype=torch.bool)
        got, metrics = kto.loss_sum(ours, stacked)
        (got / 4).backward()
        assert abs(got.item() / 4 - want.item()) < 1e-5, (got.item() / 4, want.item())
        if loss == "kto":
            assert metrics["kl"].item() / 4 > 0  # the reference point was not clamped away: it is tested too
        theirs = dict(hf.named_parameters())
        keep = torch.arange(hf.config.vocab_size) != hf.config.pad_token_id  # TRL's pad row gets no gradient
        for n, p in ours.named_parameters():
            g_ours, g_trl = p.grad, theirs[n].grad
            if n == "model.embed_tokens.weight":
                g_ours, g_trl = g_ours[keep], g_trl[keep]
            assert (g_ours - g_trl).abs().max().item() < 1e-5, n
