"""TrainConfig validation and the LR schedule."""
import json
import math

import pytest

from prefopt.train import TrainConfig, lr_at


def test_schedule_values_by_hand():
    kw = dict(base_lr=1.0, total_steps=10, warmup_steps=2)
    assert [lr_at(s, **kw, schedule="cosine") for s in (0, 1)] == [0.5, 1.0]
    assert lr_at(2, **kw, schedule="cosine") == 1.0
    assert lr_at(6, **kw, schedule="cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(10, **kw, schedule="cosine") == pytest.approx(0.0)
    assert lr_at(6, **kw, schedule="linear") == pytest.approx(0.5)
    assert lr_at(9, **kw, schedule="constant") == 1.0
    assert lr_at(10, **kw, schedule="cosine", min_lr_ratio=0.1) == pytest.approx(0.1)


def test_config_errors_are_all_reported_before_any_work(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("{}\n")
    with pytest.raises(ValueError) as e:
        TrainConfig(model="m", data=str(data), output_dir="o", batch_size=0, schedule="step", lr=-1,
                     eval_data=str(tmp_path / "missing.jsonl"), eval_fraction=0.1)
    msg = str(e.value)
    for part in ("batch_size must be >= 1", "schedule must be one of", "lr must be > 0",
                 f"eval_data: {tmp_path}/missing.jsonl: no such data file", "not both"):
        assert part in msg
    with pytest.raises(ValueError, match="fsdp is for full fine-tuning"):
        TrainConfig(model="m", data=str(data), output_dir="o", fsdp=True)


def test_dpo_config_errors_come_with_the_training_errors_in_one_list(tmp_path):
    """DPO's own checks (beta, label smoothing) used to run only once the training settings
    passed: fixing the three listed errors brought two more."""
    from prefopt.train import DPOConfig

    data = tmp_path / "d.jsonl"
    data.write_text("{}\n")
    with pytest.raises(ValueError) as e:
        DPOConfig(model="m", data=str(data), output_dir="o", lr=0, grad_accum=0, beta=0, label_smoothing=0.7,
                  lora_layers="99-3")
    assert str(e.value).splitlines() == [
        "invalid DPO config:", "  grad_accum must be >= 1 (got 0)", "  lr must be > 0",
        "  lora_layers: '99-3' is not layer numbers such as 16-31 or 0,2,4", "  beta must be > 0",
        "  label_smoothing must be in [0, 0.5)"]


@pytest.mark.parametrize("field,value,error", [
    ("max_grad_norm", -1.0, "max_grad_norm must be > 0, or 0 / none for no clipping"),
    ("weight_decay", -0.01, "weight_decay must be >= 0"),
    ("adam_beta1", 1.0, r"adam_beta1 must be in \[0, 1\)"),
    ("adam_beta2", -0.1, r"adam_beta2 must be in \[0, 1\)"),
    ("adam_eps", 0.0, "adam_eps must be > 0"),
    ("lora_alpha", 0.0, "lora_alpha must be > 0"),
    ("min_lr_ratio", 1.5, r"min_lr_ratio must be in \[0, 1\]"),
])
def test_optimizer_and_adapter_settings_that_would_train_wrongly_are_refused(tmp_path, field, value, error):
    """A negative max_grad_norm turned every gradient around (torch scales by max_norm / norm:
    gradient ascent); alpha 0 made an adapter that neither changes the model nor trains; the
    others failed only at the optimizer, after the model had loaded."""
    data = tmp_path / "d.jsonl"
    data.write_text("{}\n")
    with pytest.raises(ValueError, match=error):
        TrainConfig(model="m", data=str(data), output_dir="o", **{field: value})
    TrainConfig(model="m", data=str(data), output_dir="o", max_grad_norm=0.0)  # 0: no clipping, as before


def test_checkpointing_some_layers_needs_a_count_and_checkpointing_itself(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("{}\n")
    cfg = dict(model="m", data=str(data), output_dir="o")
    with pytest.raises(ValueError, match=r"gradient_checkpointing_layers must be >= 1, or none for all layers \(got 0\)"):
        TrainConfig(**cfg, gradient_checkpointing=True, gradient_checkpointing_layers=0)
    with pytest.raises(ValueError, match=r"gradient_checkpointing_layers 4 needs gradient_checkpointing "
                                         r"\(--gradient-checkpointing\)"):
        TrainConfig(**cfg, gradient_checkpointing_layers=4)
    # what the trainer sets the model's gradient_checkpointing to
    assert TrainConfig(**cfg).checkpointing() is False
    assert TrainConfig(**cfg, gradient_checkpointing=True).checkpointing() is True
    assert TrainConfig(**cfg, gradient_checkpointing=True, gradient_checkpointing_layers=4).checkpointing() == 4


@pytest.mark.parametrize("field", ["rpo_alpha", "orpo_lambda"])
def test_a_negative_likelihood_weight_is_refused(tmp_path, field):
    from prefopt.train import DPOConfig

    data = tmp_path / "d.jsonl"
    data.write_text("{}\n")
    with pytest.raises(ValueError, match=f"{field} must be >= 0"):
        DPOConfig(model="m", data=str(data), output_dir="o", **{field: -1.0})


def test_config_from_json_and_yaml(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("{}\n")
    (tmp_path / "c.json").write_text(json.dumps({"model": "m", "data": str(data), "output_dir": "o", "lora_r": 4}))
    cfg = TrainConfig.from_file(tmp_path / "c.json", lr=1e-3)
    assert cfg.lora_r == 4 and cfg.lr == 1e-3
    pytest.importorskip("yaml")
    (tmp_path / "c.yaml").write_text(f"model: m\ndata: {data}\noutput_dir: o\nschedule: linear\n")
    assert TrainConfig.from_file(tmp_path / "c.yaml").schedule == "linear"
    (tmp_path / "d.yaml").write_text(f"model: m\ndata: {data}\noutput_dir: o\nchat_date: 2026-11-30\n")
    cfg = TrainConfig.from_file(tmp_path / "d.yaml")  # YAML reads an unquoted date as a date
    assert cfg.chat_date == "2026-11-30" and json.loads(json.dumps(cfg.to_dict()))["chat_date"] == "2026-11-30"
    (tmp_path / "v.yaml").write_text(f"model: m\ndata: {data}\noutput_dir: o\nchat_vars: {{enable_thinking: false}}\n")
    assert TrainConfig.from_file(tmp_path / "v.yaml").chat_vars == {"enable_thinking": False}
    (tmp_path / "w.yaml").write_text(f"model: m\ndata: {data}\noutput_dir: o\nchat_vars: [enable_thinking]\n")
    with pytest.raises(ValueError, match="w.yaml:4: chat_vars: expected NAME=VALUE, got 'enable_thinking'"):
        TrainConfig.from_file(tmp_path / "w.yaml")
    (tmp_path / "bad.json").write_text(json.dumps({"model": "m", "data": str(data), "output_dir": "o", "lr_rate": 1}))
    with pytest.raises(ValueError, match="bad.json:1: unknown setting .lr_rate."):
        TrainConfig.from_file(tmp_path / "bad.json")


@pytest.mark.parametrize("command", ["sft", "dpo"])
def test_every_config_flag_has_help_and_a_readable_default(command, capsys):
    """``prefopt sft/dpo --help`` is built from the config fields: each says what it does."""
    from dataclasses import fields

    from prefopt.cli import main
    from prefopt.train import DPOConfig, TrainConfig

    cls = DPOConfig if command == "dpo" else TrainConfig
    assert all(f.metadata.get("help") for f in fields(cls)), [f.name for f in fields(cls) if not f.metadata.get("help")]
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "MISSING" not in text and "(default: None)" not in text
    assert "--lora-r LORA_R LoRA rank (default: 16)" in text
    assert "model folder, alias (smollm2-135m), hub id or .gguf file (required)" in text
    assert "(default: q_proj k_proj v_proj o_proj gate_proj up_proj down_proj)" in text
    if command == "dpo":
        assert "--lr LR peak learning rate (AdamW) (default: 5e-05)" in text and "rpo: weight of the chosen" in text


@pytest.mark.parametrize("source", ["flags", "file"])
def test_none_on_the_command_line_unsets_an_optional_field(source, tmp_path, monkeypatch):
    """``--max-grad-norm none`` switches clipping off (before, only ``null`` in a file could);
    a number still sets it, and a typo is an argparse error, not a silent default."""
    import prefopt.train
    from prefopt.cli import main

    data = tmp_path / "d.jsonl"
    data.write_text("{}\n")
    seen = []
    monkeypatch.setattr(prefopt.train, "run_sft", seen.append)
    base = ["--model", "m", "--data", str(data), "--output-dir", "o"]
    if source == "file":
        (tmp_path / "c.json").write_text(json.dumps({"model": "m", "data": str(data), "output_dir": "o",
                                                     "max_grad_norm": 2.0, "max_steps": 5}))
        base = ["--config", str(tmp_path / "c.json")]
    assert main(["sft", *base, "--max-grad-norm", "None", "--max-steps", "none"]) == 0
    assert seen[-1].max_grad_norm is None and seen[-1].max_steps is None
    main(["sft", *base, "--max-grad-norm", "0.5"])
    assert seen[-1].max_grad_norm == 0.5
    assert seen[-1].max_steps == (5 if source == "file" else None)
    with pytest.raises(SystemExit):
        main(["sft", *base, "--max-grad-norm", "off"])
