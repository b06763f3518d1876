"""A compare run that runs out of memory says so in its own settings (``--set KEY=VALUE``), and
which of them a rerun into the same --output takes; one stopped by SIGTERM resumes the stage."""
import json

import pytest
import torch

from prefopt.cli import main
from prefopt.evaluate.compare import CompareConfig, run_compare
from prefopt.train import OutOfMemory
from prefopt.train.sft import SFTTrainer
from tests.tasks.test_compare_smoke import TINY

CUDA_OOM = ("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.19 GiB of which 1.03 GiB "
            "is free. Including non-PyTorch memory, this process has 78.15 GiB memory in use.")
SAID = "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.19 GiB of which 1.03 GiB is free"


def test_training_out_of_memory_names_the_stage_and_the_settings_and_the_rerun_keeps_what_was_done(
        tiny_model, tmp_path, monkeypatch, capsys):
    """The trainer's own advice (--batch-size ... --overwrite) is not compare's: compare has no
    --batch-size, and its rerun keeps finished stages. gradient_checkpointing changes no result,
    so the same --output takes it: the rerun reuses the base evaluation and finishes."""
    original, calls = SFTTrainer.loss_sum, []

    def second_step_fails(self, *a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise torch.OutOfMemoryError(CUDA_OOM)
        return original(self, *a, **k)

    monkeypatch.setattr(SFTTrainer, "loss_sum", second_step_fails)
    out = tmp_path / "run"
    cfg = CompareConfig(task="portal", model=str(tiny_model), output=str(out), overrides=TINY)
    with pytest.raises(OutOfMemory) as caught:
        run_compare(cfg)
    assert str(caught.value) == (
        f"out of memory training the sft stage after 1 of 2 steps ({SAID}). To fit, try --set "
        "gradient_checkpointing=true (the results are the same: a rerun into this --output keeps its finished "
        "stages); or, into a new --output, --set batch_size=1 (fewer examples a step), a smaller max_length (now 256), "
        "train_dtype=bfloat16 (the base in 16 bits; the adapters stay float32), quantize=nf4 (the base in 4 bits). The "
        "command with --estimate-memory added says what a training step of each stage holds under the new settings, "
        "without loading anything")
    monkeypatch.setattr(SFTTrainer, "loss_sum", original)
    capsys.readouterr()
    report = run_compare(CompareConfig(task="portal", model=str(tiny_model), output=str(out),
                                       overrides={**TINY, "gradient_checkpointing": True}))
    assert "base: reusing" in capsys.readouterr().out and set(report["stages"]) >= {"base", "sft", "dpo"}


def test_evaluation_out_of_memory_in_the_cli_is_one_line(tiny_model, tmp_path, monkeypatch, capsys):
    import prefopt.evaluate.compare as compare

    def predict(*a, **k):
        raise torch.OutOfMemoryError(CUDA_OOM)

    monkeypatch.setattr(compare, "predict", predict)
    code = main(["compare", "--task", "portal", "--model", str(tiny_model), "--output", str(tmp_path / "run"),
                 "--set", "max_train=8", "--set", "test=4", "--set", "eval_batch_size=8"])
    err = capsys.readouterr().err
    assert code == 2 and err == (f"prefopt compare: error: out of memory evaluating the base stage ({SAID}). To fit, "
                                 "try --set eval_batch_size=4 (the results are the same, up to rounding in the "
                                 "answers: a rerun into this --output keeps its finished stages)\n")


def test_an_evaluation_out_of_memory_after_training_reruns_with_a_smaller_batch_keeping_the_trained_stages(
        tiny_model, tmp_path, monkeypatch, capsys):
    """The SFT+DPO stage's evaluation comes after both trainings: the smaller batch it needs is
    taken by the same --output (it was refused there, and a new one trained everything again).
    Each stage's metrics.json records its batch, and the report says where they differ."""
    import prefopt.evaluate.compare as compare

    original = compare.predict

    def dpo_does_not_fit(*a, desc="", **k):
        if desc.startswith("dpo:"):
            raise torch.OutOfMemoryError(CUDA_OOM)
        return original(*a, desc=desc, **k)

    monkeypatch.setattr(compare, "predict", dpo_does_not_fit)
    out = tmp_path / "run"
    with pytest.raises(OutOfMemory, match="evaluating the dpo stage .* try --set eval_batch_size=4 "):
        run_compare(CompareConfig(task="portal", model=str(tiny_model), output=str(out), overrides=TINY))
    monkeypatch.undo()
    capsys.readouterr()
    report = run_compare(CompareConfig(task="portal", model=str(tiny_model), output=str(out),
                                       overrides={**TINY, "eval_batch_size": 4}))
    said = capsys.readouterr().out
    for reused in ("base: reusing", "sft: reusing", "dpo: reusing"):
        assert reused in said, reused
    assert set(report["stages"]) >= {"base", "sft", "dpo"}
    batches = {s: json.loads((out / s / "metrics.json").read_text())["eval_batch_size"] for s in ("base", "sft", "dpo")}
    assert batches == {"base": 8, "sft": 8, "dpo": 4}
    assert ", 4 prompts at a time" in (out / "report.md").read_text()


def test_weights_that_do_not_fit_are_said_in_compares_settings_without_batch_advice():
    """The trainer's error where the weights alone did not fit (no step ran): only what holds them
    in less is offered, in compare's settings."""
    from prefopt.evaluate.compare_config import PRESETS, memory_advice
    from prefopt.train import OutOfMemory

    s = {**PRESETS["quick"], "val": 32, "dpo_batch_size": 4}
    e = memory_advice("sft", True, s, OutOfMemory("...", SAID, "before the first step", weights=True))
    assert e.weights and str(e) == (
        f"out of memory moving the sft stage's model to the device, before its first step ({SAID}). To fit, try "
        "into a new --output, --set train_dtype=bfloat16 (the base in 16 bits; the adapters stay float32), "
        "quantize=nf4 (the base in 4 bits); or a smaller model. The command with --estimate-memory added says what a "
        "training step of each stage holds under the new settings, without loading anything")
    e = memory_advice("dpo", True, {**s, "quantize": "nf4"}, OutOfMemory("...", CUDA_OOM, weights=True))
    assert "To fit, try a smaller model. The command" in str(e)


def test_out_of_memory_in_dpo_with_validation_names_both_settings_a_rerun_keeps():
    from prefopt.evaluate.compare_config import PRESETS, memory_advice

    s = {**PRESETS["quick"], "val": 32, "dpo_batch_size": 4}
    e = memory_advice("dpo", True, s, torch.OutOfMemoryError(CUDA_OOM))
    assert str(e) == (
        f"out of memory training the dpo stage ({SAID}). To fit, try --set gradient_checkpointing=true or --set "
        "eval_batch_size=8 for the validation answers (the results are the same, up to rounding in the answers: a "
        "rerun into this --output keeps its finished stages); or, into a new --output, --set dpo_batch_size=2 (fewer "
        "examples a step), a smaller max_length (now 384), train_dtype=bfloat16 (the base in 16 bits; the adapters "
        "stay float32), quantize=nf4 (the base in 4 bits). The command with --estimate-memory added says what a "
        "training step of each stage holds under the new settings, without loading anything")
    # checkpointing some layers: more of them (a rerun keeps the stages); all of them: nothing more to offer there
    e = memory_advice("sft", True, {**s, "gradient_checkpointing": True, "gradient_checkpointing_layers": 6},
                      torch.OutOfMemoryError(CUDA_OOM))
    assert str(e).startswith(f"out of memory training the sft stage ({SAID}). To fit, try --set "
                             "gradient_checkpointing_layers=12 (now 6; null: all layers) (the results are the same: a "
                             "rerun into this --output keeps its finished stages); or, into a new --output, --set "
                             "batch_size=2")
    # the trainer's error says how many layers the backward goes through: no count past them is offered
    from prefopt.train import OutOfMemory

    some = {**s, "gradient_checkpointing": True, "gradient_checkpointing_layers": 6}
    e = memory_advice("sft", True, some, OutOfMemory("...", CUDA_OOM, layers=8))
    assert "--set gradient_checkpointing_layers=8 (now 6; null: all layers)" in str(e)
    e = memory_advice("sft", True, {**some, "gradient_checkpointing_layers": 8}, OutOfMemory("...", CUDA_OOM, layers=8))
    assert "gradient_checkpointing" not in str(e)
    e = memory_advice("sft", True, {**s, "gradient_checkpointing": True}, torch.OutOfMemoryError(CUDA_OOM))
    assert str(e).startswith(f"out of memory training the sft stage ({SAID}). To fit, try into a new --output, --set "
                             "batch_size=2")
    # a base already in 16 bits (or 4) is not offered again
    e = memory_advice("sft", True, {**s, "train_dtype": "bfloat16"}, torch.OutOfMemoryError(CUDA_OOM))
    assert str(e).endswith("a smaller max_length (now 384), quantize=nf4 (the base in 4 bits). The command with "
                           "--estimate-memory added says what a training step of each stage holds under the new "
                           "settings, without loading anything")
    e = memory_advice("sft", True, {**s, "quantize": "nf4"}, torch.OutOfMemoryError(CUDA_OOM))
    assert "a smaller max_length (now 384). The command with --estimate-memory added" in str(e)
    # where the estimate does not cover the run (a trained head, the experts' adapters), nor evaluating: not named
    for other in ({"lora_targets": ["q_proj", "lm_head"]}, {"lora_experts": True}):
        assert "--estimate-memory" not in str(memory_advice("sft", True, {**s, **other}, torch.OutOfMemoryError(CUDA_OOM)))
    assert "--estimate-memory" not in str(memory_advice("sft", False, s, torch.OutOfMemoryError(CUDA_OOM)))


def _sigterm_at_first_step(monkeypatch, cls):
    import os
    import signal

    original, calls = cls.train_step, []

    def step(self, i):
        calls.append(i)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, i)

    monkeypatch.setattr(cls, "train_step", step)


@pytest.fixture(scope="module")
def whole(tiny_model, tmp_path_factory):
    """An uninterrupted compare run (both preempted stages' tests measure against it)."""
    out = tmp_path_factory.mktemp("whole") / "run"
    run_compare(CompareConfig(task="portal", model=str(tiny_model), output=str(out), overrides=TINY))
    return out


@pytest.mark.parametrize("stage", ["sft", "dpo"])
def test_a_preempted_stage_resumes_from_its_checkpoint_and_ends_as_an_uninterrupted_one(
        tiny_model, whole, tmp_path, monkeypatch, capsys, stage):
    """SIGTERM (a GPU server's scheduler) stops the stage after a step with a checkpoint; the rerun
    continues it rather than training the stage again, and ends with the same adapter."""
    from safetensors.torch import load_file

    from prefopt.train.dpo import DPOTrainer
    from prefopt.train.stop_signal import Terminated

    _sigterm_at_first_step(monkeypatch, SFTTrainer if stage == "sft" else DPOTrainer)
    out = tmp_path / "run"
    cfg = CompareConfig(task="portal", model=str(tiny_model), output=str(out), overrides=TINY)
    with pytest.raises(Terminated) as caught:
        run_compare(cfg)
    assert str(caught.value) == ("stopped by SIGTERM at step 1 of 2, after saving a checkpoint: rerun the same command "
                                 "to continue from it")
    monkeypatch.undo()
    ckpt = out / stage / "train" / "checkpoints" / "step-00000001"
    err = capsys.readouterr().err  # compare has no --resume: its own rerun resumes the stage
    assert f"prefopt: stopped by SIGTERM at step 1 of 2; rerun the same command to continue from {ckpt}\n" in err
    assert "--resume" not in err
    run_compare(cfg)
    assert f"{stage}: resuming the interrupted attempt from {ckpt}" in capsys.readouterr().out
    assert json.loads((out / stage / "train" / "train_summary.json").read_text())["resumed_from_step"] == 1
    for s in ("sft", "dpo"):
        a, b = (load_file(d / s / "train" / "final" / "adapter_model.safetensors") for d in (whole, out))
        assert all(torch.equal(a[k], b[k]) for k in a), s


def test_an_interrupted_stage_under_other_trainer_settings_starts_again(tiny_model, tmp_path, monkeypatch, capsys):
    """compare may rerun with another `pack` (the same loss); the trainer's checkpoint then cannot
    resume exactly, so the stage trains from the start, and says why."""
    from prefopt.train.stop_signal import Terminated

    _sigterm_at_first_step(monkeypatch, SFTTrainer)
    out = tmp_path / "run"
    with pytest.raises(Terminated):
        run_compare(CompareConfig(task="portal", model=str(tiny_model), output=str(out), overrides=TINY))
    monkeypatch.undo()
    capsys.readouterr()
    run_compare(CompareConfig(task="portal", model=str(tiny_model), output=str(out), overrides={**TINY, "pack": False}))
    assert (f"sft: training from the start: the interrupted attempt's {out / 'sft' / 'train' / 'checkpoints'}"
            f"/step-00000001 was written under other settings (pack: True -> False; share_start: True -> False)") \
        in capsys.readouterr().out  # (SFT runs without the shared start when it does not pack)


def test_a_stage_that_diverges_says_which_setting_to_lower(tiny_model, tmp_path, monkeypatch, capsys):
    """The trainer's own advice names --lr and --overwrite, flags compare does not have; compare
    says it in its settings. Outside compare the trainer's words are unchanged (going_on_by's
    block ends with the stage). So does the warning of a disk too small: compare's --output."""
    import prefopt.train.run_notes as run_notes
    from prefopt.train import Diverged
    from prefopt.train.stop_signal import going_on

    monkeypatch.setattr(run_notes, "free_space", lambda path: 1000)

    original, calls = SFTTrainer.loss_sum, []

    def nan_in_the_second_step(self, *a, **k):
        calls.append(1)
        loss, metrics = original(self, *a, **k)
        return (loss * float("nan"), metrics) if len(calls) == 2 else (loss, metrics)

    monkeypatch.setattr(SFTTrainer, "loss_sum", nan_in_the_second_step)
    cfg = CompareConfig(task="portal", model=str(tiny_model), output=str(tmp_path / "run"), overrides=TINY)
    with pytest.raises(Diverged) as caught:
        run_compare(cfg)
    assert str(caught.value) == (
        "training the sft stage diverged in step 2 of 2: its gradients are not finite (norm nan, loss nan), so no "
        "optimizer step was taken with them. Try a lower learning rate, into a new --output: --set sft_lr=0.00015 "
        "(now 0.0003)")
    err = capsys.readouterr().err
    assert (f"prefopt: warning: the disk under {tmp_path / 'run' / 'sft' / 'train'} has 1 kB free" in err
            and "Free some space or choose another --output\n" in err and "--output-dir" not in err), err
    assert going_on().resume == "rerun with --resume"
