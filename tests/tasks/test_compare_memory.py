"""A compare run that runs out of memory says so in its own settings (``--set KEY=VALUE``), and
which of them a rerun into the same --output takes."""
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
        "quantize=nf4 (the base in 4 bits)")
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
                                 "try into a new --output, --set eval_batch_size=4\n")
