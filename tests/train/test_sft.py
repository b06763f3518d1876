"""SFT really trains: the loss falls, LoRA weights move, frozen weights do not."""
import json

import pytest
import torch
from safetensors.torch import load_file

from prefopt import apply_lora, load_model, load_tokenizer
from prefopt.cli import main
from prefopt.lora import lora_layers, lora_state_dict
from prefopt.train import SFTTrainer, TrainConfig
from prefopt.train.metrics import read_metrics
from prefopt.train.run import prepare_model, run_sft
from tests.train._fixtures import COLORS, write_task


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return write_task(tmp_path_factory.mktemp("sft"))


def _cfg(task, out, **kw):
    model_dir, data = task
    base = dict(model=str(model_dir), data=str(data), output_dir=str(out), batch_size=4, max_steps=24, lr=3e-3,
                lora_r=8, lora_alpha=16, lora_dropout=0.0, eval_fraction=0.25, warmup_steps=2, progress=False)
    return TrainConfig(**{**base, **kw})


def test_lora_sft_trains(task, tmp_path):
    from prefopt.train.sft import load_train_eval

    cfg = _cfg(task, tmp_path / "out")
    tok = load_tokenizer(cfg.model)
    train, evals, _ = load_train_eval(cfg, tok)
    model = prepare_model(cfg)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    summary = SFTTrainer(model, cfg, train, evals, pad_id=tok.pad_token_id).train()
    after = dict(model.named_parameters())
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    trainable = {n for n, p in after.items() if p.requires_grad}
    assert changed == {n for n in trainable if ".lora_B." in n or ".lora_A." in n} and changed
    assert summary["eval_after"]["eval_loss"] < 0.5 * summary["eval_before"]["eval_loss"]
    losses = [m["loss"] for m in read_metrics(cfg.output_dir) if "loss" in m]
    assert len(losses) == 24 and sum(losses[-4:]) / 4 < 0.5 * sum(losses[:4]) / 4
    assert all(m["peak_mem_mb"] > 0 for m in read_metrics(cfg.output_dir) if "loss" in m)
    assert summary["train_seconds"] > 0 and summary["device"] == "cpu" and summary["peak_mem_mb"] > 0
    assert "reference_fill_seconds" not in summary
    assert json.loads((tmp_path / "out" / "train_summary.json").read_text()) == summary


def test_a_merged_adapter_is_refused_for_training_and_trains_once_unmerged(task, tmp_path):
    """merge_lora leaves the adapter's layers in place but out of the forward: training it would
    once fail deep in the backward ("element 0 of tensors does not require grad")."""
    from prefopt import merge_lora, unmerge_lora
    from prefopt.train.sft import load_train_eval

    cfg = _cfg(task, tmp_path / "out", max_steps=2, eval_fraction=0.0)
    tok = load_tokenizer(cfg.model)
    train, _, _ = load_train_eval(cfg, tok)
    model = merge_lora(prepare_model(cfg))
    with pytest.raises(ValueError, match=r"LoRA adapter is merged into its weights \(14 layers, e.g. model.layers.0."
                                         r"self_attn.q_proj; merge_lora\).*unmerge_lora\(model\) first"):
        SFTTrainer(model, cfg, train, pad_id=tok.pad_token_id)
    before = {n: p.detach().clone() for n, p in lora_state_dict(unmerge_lora(model)).items()}
    SFTTrainer(model, cfg, train, pad_id=tok.pad_token_id).train()
    assert any(not torch.equal(p, before[n]) for n, p in lora_state_dict(model).items())


def test_training_leaves_each_module_in_the_mode_it_had(task, tmp_path):
    """A loaded model is in eval mode; train() used to leave it in train mode (where no evaluation
    came last), so the user's own forward after training ran the adapter's dropout: two forwards
    of one input differed."""
    from prefopt.train.sft import load_train_eval

    cfg = _cfg(task, tmp_path / "out", max_steps=3, eval_fraction=0.0, lora_dropout=0.5)
    tok = load_tokenizer(cfg.model)
    train, _, _ = load_train_eval(cfg, tok)
    model = prepare_model(cfg)
    model.model.layers[0].train()  # a mixed state, as a user may leave it: each module's mode comes back
    modes = {n: m.training for n, m in model.named_modules()}
    assert not model.training and any(modes.values())
    SFTTrainer(model, cfg, train, pad_id=tok.pad_token_id).train()
    assert {n: m.training for n, m in model.named_modules()} == modes
    model.model.layers[0].eval()
    ids = torch.tensor([train[0].input_ids])
    with torch.no_grad():
        assert torch.equal(model(ids), model(ids))


def test_full_fine_tuning_in_bf16_is_warned_of_and_an_adapter_over_bf16_is_not(task, tmp_path, capsys):
    """AdamW updates bfloat16 weights in bfloat16: a step under a weight's last bit is lost. The
    run says so before its first step; a LoRA run over a bf16 base trains float32 factors."""
    run_sft(_cfg(task, tmp_path / "full", max_steps=1, eval_fraction=0.0, lora=False, dtype="bfloat16"))
    out = capsys.readouterr().out
    n = sum(p.numel() for p in load_model(task[0]).parameters())
    assert f"prefopt: note: {n:,} trainable parameters are bfloat16, and AdamW updates them in it" in out
    run_sft(_cfg(task, tmp_path / "lora", max_steps=1, eval_fraction=0.0, dtype="bfloat16"))
    assert "note:" not in capsys.readouterr().out


@pytest.mark.parametrize("pack", [False, True])
def test_pinned_reference_run(task, tmp_path, pack):
    """A fixed seed and 6 steps give a fixed loss curve; a silent change to the loop fails here.
    Packed rows draw their dropout masks in another shape, hence their own curve."""
    from prefopt.train.sft import load_train_eval

    cfg = _cfg(task, tmp_path / "pin", max_steps=6, eval_fraction=0.0, lora_dropout=0.1, pack=pack)
    tok = load_tokenizer(cfg.model)
    train, _, _ = load_train_eval(cfg, tok)
    SFTTrainer(prepare_model(cfg), cfg, train, pad_id=tok.pad_token_id).train()
    losses = [round(m["loss"], 3) for m in read_metrics(cfg.output_dir)]
    assert losses == pytest.approx(PINNED[pack], abs=5e-3), losses


# measured 2026-11-24 (torch 2.13.0 CPU): seed 0, 6 steps, batch 4, lr 3e-3, LoRA r 8, dropout 0.1;
# re-pinned when LoRA dropout masks moved from bernoulli_ to 16-bit integer draws (prefopt.lora_ops);
# packed batches (the default since 2026-12-02) measured then
PINNED = {False: [7.194, 6.855, 6.421, 5.769, 5.499, 5.395], True: [7.194, 6.857, 6.415, 5.760, 5.490, 5.392]}


def test_cli_sft_writes_a_peft_adapter_and_merge_works(task, tmp_path, capsys):
    model_dir, data = task
    out = tmp_path / "cli"
    assert main(["sft", "--model", str(model_dir), "--data", str(data), "--output-dir", str(out),
                 "--max-steps", "3", "--batch-size", "4", "--lora-r", "4", "--no-progress", "--eval-fraction", "0.2"]) == 0
    assert json.loads((out / "final" / "adapter_config.json").read_text())["r"] == 4
    summary = json.loads((out / "train_summary.json").read_text())
    loss = f"{summary['eval_before']['eval_loss']:.4f} → {summary['eval_after']['eval_loss']:.4f}"
    printed = capsys.readouterr().out
    assert f"prefopt: eval loss: {loss}\n" in printed
    steps = [m for m in read_metrics(out) if "loss" in m]  # 3 steps: the first and the last one
    assert (f"prefopt: training loss {steps[0]['loss']:.4f} → {steps[-1]['loss']:.4f} (mean of the first and "
            "last 1 of 3 logged steps)\n") in printed
    trainable = sum(v.numel() for v in load_file(out / "final" / "adapter_model.safetensors").values())
    assert (f"prefopt: 38 training, 10 eval examples; 3 steps of 4 (0.33 epochs); {trainable:,} trainable "
            f"parameters (LoRA r4 on q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj); cpu, float32"
            in printed)
    assert all(k.startswith("base_model.model.") for k in load_file(out / "final" / "adapter_model.safetensors"))
    assert main(["merge", "--model", str(model_dir), "--adapter", str(out / "final"),
                 "--output", str(tmp_path / "merged")]) == 0
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        want = load_model(model_dir, adapter=out / "final")(ids)
        assert (load_model(tmp_path / "merged")(ids) - want).abs().max() < 1e-4


def test_cli_sft_trains_an_rslora_adapter_that_peft_reads_as_such(task, tmp_path, capsys):
    """``--lora-rslora``: the update scaled by alpha / sqrt(r); the adapter says use_rslora and
    reloads to the model that trained; the plan and the card name it."""
    model_dir, data = task
    out = tmp_path / "rs"
    assert main(["sft", "--model", str(model_dir), "--data", str(data), "--output-dir", str(out), "--max-steps", "3",
                 "--batch-size", "4", "--lora-r", "4", "--lora-alpha", "8", "--lora-rslora", "--lr", "1e-2",
                 "--no-progress"]) == 0
    config = json.loads((out / "final" / "adapter_config.json").read_text())
    assert config["use_rslora"] is True and (config["r"], config["lora_alpha"]) == (4, 8)
    assert "trainable parameters (rsLoRA r4 on q_proj, " in capsys.readouterr().out
    assert "LoRA adapter (r 4, alpha 8, rsLoRA)" in (out / "final" / "README.md").read_text()
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        loaded = load_model(model_dir, adapter=out / "final")
        assert {m.scaling for _, m in lora_layers(loaded)} == {4.0}  # 8 / sqrt(4), not 8 / 4
        as_plain = load_model(model_dir)
        apply_lora(as_plain, r=4, alpha=16, target_modules=config["target_modules"])  # alpha / r = 4 too
        as_plain.load_state_dict(lora_state_dict(loaded), strict=False)
        assert (loaded(ids) - as_plain(ids)).abs().max() < 1e-5
        assert (loaded(ids) - load_model(model_dir)(ids)).abs().max() > 1e-4  # it trained


def test_sft_trains_a_dora_adapter_that_peft_reads(task, tmp_path):
    """``--lora-dora``: the loss falls, A, B and each row's magnitude move (the base does not), and
    the adapter (use_dora) gives the trained model's logits in prefopt and in PEFT."""
    model_dir, data = task
    out = tmp_path / "dora"
    seen = {}
    cfg = _cfg(task, out, lora_dora=True, lora_r=4, lora_alpha=8, max_steps=12, eval_fraction=0.0)
    run_sft(cfg, callbacks=[lambda trainer, step, metrics: seen.update(trainer=trainer)])
    config = json.loads((out / "final" / "adapter_config.json").read_text())
    assert config["use_dora"] is True and config["r"] == 4
    assert "DoRA adapter (r 4, alpha 8)" in (out / "final" / "README.md").read_text()
    losses = [m["loss"] for m in read_metrics(out) if "loss" in m]
    assert losses[-1] < losses[0] - 0.3
    trained = seen["trainer"].model.eval()
    start = load_model(model_dir)
    for name, layer in lora_layers(trained):
        base_norms = start.get_submodule(name).weight.float().norm(dim=1)
        assert torch.equal(layer.weight, start.get_submodule(name).weight)  # the base is frozen
        assert (layer.lora_magnitude - base_norms).abs().max() > 1e-4, name  # magnitudes trained (they start at ‖W‖)
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        want = trained(ids)
        assert (load_model(model_dir, adapter=out / "final")(ids) - want).abs().max() < 1e-4
        assert (start(ids) - want).abs().max() > 1e-3
    peft = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with torch.no_grad():
        assert (peft.PeftModel.from_pretrained(hf, out / "final").eval()(ids).logits - want).abs().max() < 1e-4


def test_cli_sft_dora_flag_names_it_in_the_plan(task, tmp_path, capsys):
    model_dir, data = task
    assert main(["sft", "--model", str(model_dir), "--data", str(data), "--output-dir", str(tmp_path / "d"),
                 "--max-steps", "1", "--batch-size", "4", "--lora-r", "4", "--lora-dora", "--no-progress"]) == 0
    assert "trainable parameters (DoRA r4 on q_proj, " in capsys.readouterr().out
    assert json.loads((tmp_path / "d" / "final" / "adapter_config.json").read_text())["use_dora"] is True


def test_cli_sft_on_a_4bit_base_trains_an_adapter_for_the_full_precision_base(task, tmp_path, capsys):
    """``--quantize nf4`` (QLoRA): the adapted layers' base weights in 4 bits while the adapter
    trains; the loss falls, the plan and card say so, and the adapter loads on the base model."""
    from prefopt.quant import QuantLinear

    model_dir, data = task
    out = tmp_path / "q"
    seen = {}
    run_sft(_cfg(task, out, quantize="nf4", eval_fraction=0.0),
            callbacks=[lambda trainer, step, metrics: seen.update(trainer=trainer)])
    trained = seen["trainer"].model
    assert sum(isinstance(m, QuantLinear) for m in trained.modules()) == 7 * trained.config.num_hidden_layers
    losses = [m["loss"] for m in read_metrics(out) if "loss" in m]
    assert losses[-1] < losses[0] - 0.3
    card = (out / "final" / "README.md").read_text()
    assert "on its nf4 (4-bit) base" in card
    assert f"prefopt generate --model {model_dir} --adapter THIS_FOLDER --quantize nf4 --prompt" in card
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        full = load_model(model_dir, adapter=out / "final")(ids)
        assert (full - load_model(model_dir)(ids)).abs().max() > 1e-3  # it trained, and loads on the full base
        want = trained.eval()(ids)
        assert torch.nn.functional.cosine_similarity(full.flatten(), want.flatten(), 0) > 0.95
        # loaded as it trained: the same 4-bit base, the adapter on top unmerged (merge is moot)
        as_trained = load_model(model_dir, adapter=out / "final", quantize="nf4", merge=True)
        assert (as_trained(ids) - want).abs().max() < 1e-5
    assert sum(isinstance(m, QuantLinear) for m in as_trained.modules()) == 7 * trained.config.num_hidden_layers
    assert main(["generate", "--model", str(model_dir), "--adapter", str(out / "final"), "--quantize", "nf4",
                 "--prompt", "hello", "--max-new-tokens", "3", "--greedy", "--no-chat"]) == 0
    assert main(["sft", "--model", str(model_dir), "--data", str(data), "--output-dir", str(tmp_path / "c"),
                 "--max-steps", "1", "--batch-size", "4", "--quantize", "nf4", "--no-progress"]) == 0
    assert "down_proj, the base in 4 bits); cpu" in capsys.readouterr().out
    for bad, message in ((dict(quantize="int3"), "quantize must be one of nf4"),
                         (dict(quantize="nf4", lora=False), "it needs LoRA")):
        with pytest.raises(ValueError, match=message):
            _cfg(task, tmp_path / "x", **bad)


def test_sft_on_a_double_quantized_base_trains_and_loads_as_it_trained(task, tmp_path):
    """``--quantize nf4-dq``: the scales in 8 bits too; the loss falls, the model is a little
    smaller than nf4's, and the adapter loaded on the nf4-dq base gives the trained logits."""
    from prefopt.quant import QuantLinear

    model_dir, _ = task
    out, seen = tmp_path / "dq", {}
    run_sft(_cfg(task, out, quantize="nf4-dq", eval_fraction=0.0, max_steps=12),
            callbacks=[lambda trainer, step, metrics: seen.update(trainer=trainer)])
    trained = seen["trainer"].model
    layers = [m for m in trained.modules() if isinstance(m, QuantLinear)]
    assert len(layers) == 7 * trained.config.num_hidden_layers and all(m.double for m in layers)
    losses = [m["loss"] for m in read_metrics(out) if "loss" in m]
    assert losses[-1] < losses[0] - 0.3
    assert "on its nf4-dq (4-bit) base" in (out / "final" / "README.md").read_text()

    def size(model):
        return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))

    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        as_trained = load_model(model_dir, adapter=out / "final", quantize="nf4-dq")
        assert (as_trained(ids) - trained.eval()(ids)).abs().max() < 1e-5
        single = load_model(model_dir, adapter=out / "final", quantize="nf4")
        assert 0 < (single(ids) - as_trained(ids)).abs().max() < 0.1  # the scales' rounding, small
    assert size(as_trained) < size(single)


def test_a_4bit_run_with_gradient_checkpointing_is_the_same_run(task, tmp_path):
    """QLoRA's usual memory setting: recomputing each layer (dequantizing again, the same dropout
    masks) leaves every step's loss as it was."""
    losses = {}
    for ck in (False, True):
        run_sft(_cfg(task, tmp_path / str(ck), quantize="nf4", gradient_checkpointing=ck, lora_dropout=0.1,
                     max_steps=6, eval_fraction=0.0))
        losses[ck] = [m["loss"] for m in read_metrics(tmp_path / str(ck)) if "loss" in m]
    assert len(losses[True]) == 6 and losses[True] == pytest.approx(losses[False], abs=1e-6)


@pytest.mark.parametrize("settings, said", [
    ({}, "cpu, float32 "),
    ({"gradient_checkpointing": True}, "cpu, float32; gradient checkpointing on all 2 layers "),
    ({"gradient_checkpointing": True, "gradient_checkpointing_layers": 1},
     "cpu, float32; gradient checkpointing on 1 of 2 layers "),
    ({"gradient_checkpointing": True, "gradient_checkpointing_layers": 5},
     "cpu, float32; gradient checkpointing on all 2 layers "),
    ({"gradient_checkpointing": True, "lora_layers": "1"},
     "cpu, float32; gradient checkpointing on 1 layer the backward reaches "),
])
def test_the_plan_says_how_many_layers_recompute(task, tmp_path, settings, said):
    """The line before step 1 (``Trainer.plan``) ends with the checkpointing the run does, counted
    within the layers the backward goes through (above the lowest adapted one)."""
    from prefopt.train.sft import load_train_eval

    cfg = _cfg(task, tmp_path / "out", **settings)
    tok = load_tokenizer(cfg.model)
    train, _, _ = load_train_eval(cfg, tok)
    assert (SFTTrainer(prepare_model(cfg), cfg, train, pad_id=tok.pad_token_id).plan() + " ").endswith(said)


def test_cli_sft_refuses_bad_config_before_work(task, tmp_path, capsys):
    model_dir, data = task
    assert main(["sft", "--model", str(model_dir), "--data", str(data), "--output-dir", str(tmp_path / "x"),
                 "--batch-size", "0"]) == 2
    assert "batch_size must be >= 1" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_an_eval_fraction_that_leaves_nothing_to_train_on_says_so(task, tmp_path, capsys):
    """It said "0 training examples are fewer than one global batch", naming neither the split nor the fix."""
    model_dir, _ = task
    one = tmp_path / "one.jsonl"
    one.write_text('{"prompt": "Chest pain for 2 hours.", "completion": "urgent"}\n')
    assert main(["sft", "--model", str(model_dir), "--data", str(one), "--output-dir", str(tmp_path / "x"),
                 "--batch-size", "1", "--eval-fraction", "0.5"]) == 2
    assert ("eval_fraction 0.5 of 1 example holds out 1 for eval and leaves none to train on; lower it or pass "
            "eval_data") in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_examples_longer_than_the_model_context_are_refused(task, tmp_path, capsys):
    """The tiny model's context is 256 positions: a 300-token example would run on positions it
    was never trained on. Refused with the fix named, by the trainer (notebook) and the CLI."""
    model_dir, _ = task
    long = tmp_path / "long.jsonl"
    long.write_text("".join(json.dumps({"prompt": "word " * (400 if i == 3 else 5), "completion": "ok"}) + "\n"
                            for i in range(8)))
    cfg = _cfg(task, tmp_path / "out", data=str(long), eval_fraction=0.0, max_length=1024, batch_size=2)
    from prefopt.data import load_sft

    examples, _ = load_sft(long, load_tokenizer(cfg.model), max_length=1024)
    assert max(len(e.input_ids) for e in examples) > 256
    with pytest.raises(ValueError, match=r"longest example has \d+ tokens, more than the model's context of 256"):
        SFTTrainer(prepare_model(cfg), cfg, examples, pad_id=0)
    args = ["sft", "--model", str(model_dir), "--data", str(long), "--output-dir", str(tmp_path / "cli"),
            "--batch-size", "2", "--max-steps", "1"]
    assert main([*args, "--max-length", "1024"]) == 2
    assert "pass max_length=256 or less (sft, dpo: --max-length; compare: --set max_length=256)" in capsys.readouterr().err
    assert main([*args, "--max-length", "256"]) == 0  # the long prompt is cut to fit


def test_data_order_is_seeded_and_length_grouping_keeps_every_example(task, tmp_path):
    from prefopt.data.sft import TokenizedExample

    data = [TokenizedExample(list(range(n % 17 + 2)), [-100] + list(range(1, n % 17 + 2))) for n in range(40)]
    cfg = _cfg(task, tmp_path / "o", batch_size=2, grad_accum=2, group_by_length=True, eval_fraction=0.0)
    t = SFTTrainer(load_model(cfg.model), cfg, data, pad_id=0)
    order = t._epoch_order(0)
    assert sorted(order) == list(range(40))
    widths = [max(t._lengths[i] for i in order[s:s + 4]) - min(t._lengths[i] for i in order[s:s + 4])
              for s in range(0, 40, 4)]
    assert max(widths) <= 1  # each global batch holds (nearly) equal lengths
    assert t._epoch_order(1) != order and t._epoch_order(0) == order
    batches = t.micro_batches(3)
    assert len(batches) == 2 and all(b["lengths"].shape[0] == 2 for b in batches)  # two examples, packed


def test_full_fine_tuning_forms_the_head_gradients_in_one_pass(task, tmp_path, monkeypatch):
    """No LoRA, so the (tied) head trains: the SFT loss takes the one-pass path by default, with
    the per-token path's loss and gradients on every parameter; training still lowers the loss."""
    from prefopt.kernels import onepass
    from prefopt.train.sft import load_train_eval

    cfg = _cfg(task, tmp_path / "full", lora=False, eval_fraction=0.0, lr=1e-3, max_steps=4)
    tok = load_tokenizer(cfg.model)
    train, _, _ = load_train_eval(cfg, tok)
    trainer = SFTTrainer(prepare_model(cfg), cfg, train, pad_id=tok.pad_token_id)
    calls = []
    monkeypatch.setattr(onepass, "onepass_nll", lambda *a, _f=onepass.onepass_nll: calls.append(1) or _f(*a))
    batch = trainer.collate(train[:4])
    out = []
    for flag in (None, "0"):
        if flag:
            monkeypatch.setenv("PREFOPT_ONEPASS", flag)
        trainer.model.zero_grad()
        loss, _ = trainer.loss_sum(trainer.model, batch)
        (loss / 4).backward()  # scaled, as the loop scales it: the one-pass backward must pass that on
        out.append((loss.detach(), [p.grad.clone() for p in trainer.model.parameters()]))
    monkeypatch.delenv("PREFOPT_ONEPASS")
    assert calls == [1] and len(out[0][1]) > 10  # the default took one pass; "0" the per-token path
    (l1, g1), (l2, g2) = out
    assert torch.allclose(l1, l2, rtol=1e-5)
    # fp32 sums over many tokens in another order: equal to rounding, relative to each tensor's scale
    assert all(a.abs().max() > 0 and (a - b).abs().max() <= 1e-5 * a.abs().max() for a, b in zip(g1, g2))
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    losses = [trainer.train_step(s)["loss"] for s in range(4)]
    assert losses[-1] < losses[0] and calls == [1] * 5
    assert all(not torch.equal(before[n], p) for n, p in trainer.model.named_parameters())


@pytest.mark.parametrize("n_eval,progress,bar", [(80, True, True), (12, True, False), (80, False, False)])
def test_a_long_evaluation_shows_a_progress_bar(tmp_path, capsys, monkeypatch, n_eval, progress, bar):
    """Evaluating a large eval set takes a while (minutes for thousands of pairs on a CPU): it gets
    its own bar, unless it is short or bars are off."""
    import prefopt.train.loop

    monkeypatch.setattr(prefopt.train.loop, "EVAL_BAR_MIN", 64)
    model_dir, data = write_task(tmp_path, n=16 + n_eval)
    cfg = TrainConfig(model=str(model_dir), data=str(data), output_dir=str(tmp_path / "out"), batch_size=8,
                      max_steps=1, lora_r=4, lora_alpha=8, eval_fraction=n_eval / (16 + n_eval), progress=progress)
    from prefopt.train.run import run_sft

    run_sft(cfg)
    err = capsys.readouterr().err
    # the bar's first frame (0/80): later ones depend on tqdm's refresh interval, and leave=False clears it
    assert (f" 0/{n_eval} " in err and "\reval: " in err) == bar


def test_text_records_train_on_every_token(task, tmp_path):
    """``{"text": ...}`` (TRL's language-modelling records; continued training on notes): every
    token is a label, no chat template is applied, an end-of-text token closes each; the run
    learns them (eval loss halves, the adapter changes)."""
    from prefopt.data import load_sft
    from prefopt.train.run import run_sft

    model_dir, _ = task
    data = tmp_path / "notes.jsonl"
    data.write_text("".join(json.dumps({"text": f"Discharge note {i}: triage code {COLORS[i % 4]}."}) + "\n"
                            for i in range(48)))
    tok = load_tokenizer(model_dir)
    [ex], _ = load_sft([{"text": "Discharge note 1: triage code blue."}], tok)
    ids = tok.encode("Discharge note 1: triage code blue.")
    assert list(ex.input_ids) == ids + [tok.eos_token_id] and list(ex.labels) == list(ex.input_ids)
    summary = run_sft(_cfg(task, tmp_path / "out", data=str(data), lr=5e-3))
    assert summary["eval_after"]["eval_loss"] < 0.5 * summary["eval_before"]["eval_loss"]
    with pytest.raises(ValueError, match=r"<records>:1: field 'text': empty text"):
        load_sft([{"text": " "}], tok)
    with pytest.raises(ValueError, match=r"field 'prompt': missing field \(an SFT record needs 'prompt' and "
                                         r"'completion', 'messages', or 'text'\)"):
        load_sft([{"note": "x"}], tok)
    [by_column], _ = load_sft([{"Note": "Discharge note 1: triage code blue."}], tok, columns={"text": "Note"})
    assert list(by_column.input_ids) == list(ex.input_ids)
