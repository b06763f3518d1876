"""A step with NaN gradients stops the run before AdamW spreads them into the weights."""
import pytest
import torch
from safetensors.torch import load_file

from prefopt.cli import main
from prefopt.train import TrainConfig
from prefopt.train.diverged import Diverged
from prefopt.train.run import run_sft
from prefopt.train.sft import SFTTrainer
from tests.train._fixtures import write_task


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return write_task(tmp_path_factory.mktemp("diverged"), n=16)


def _nan_at_call(monkeypatch, n):
    original, calls = SFTTrainer.loss_sum, []

    def loss_sum(self, model, batch):
        calls.append(1)
        loss, metrics = original(self, model, batch)
        return (loss * float("nan"), metrics) if len(calls) == n else (loss, metrics)

    monkeypatch.setattr(SFTTrainer, "loss_sum", loss_sum)


@pytest.mark.parametrize("max_grad_norm", [1.0, None])
def test_nan_gradients_stop_the_run_with_the_weights_of_the_step_before(task, tmp_path, monkeypatch, max_grad_norm):
    """Before, the NaN went into every adapter weight and the run saved them as its result."""
    model_dir, data = task
    cfg = dict(model=str(model_dir), data=str(data), batch_size=4, max_steps=4, lr=3e-3, lora_r=4, lora_alpha=8,
               progress=False, save_every=1, max_grad_norm=max_grad_norm)
    _nan_at_call(monkeypatch, 3)
    out = tmp_path / "run"
    seen = []
    with pytest.raises(Diverged) as caught:
        run_sft(TrainConfig(**cfg, output_dir=str(out)),
                callbacks=[lambda trainer, step, metrics: seen.append(trainer)])
    clip = "" if max_grad_norm else "--max-grad-norm 1.0 (now none), "
    assert str(caught.value) == (
        "training diverged in step 3 of 4: its gradients are not finite (norm nan, loss nan), so no optimizer step "
        f"was taken with them; the model keeps the weights after step 2. Try a lower --lr (now 0.003), {clip}"
        "--warmup-steps (now 0); these change the run's settings: start it again with --overwrite (overwrite=True) "
        "or into another --output-dir")
    trainer = seen[-1]
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    saved = load_file(out / "checkpoints" / "step-00000002" / "trainable.safetensors")
    own = dict(trainer.model.named_parameters())
    assert all(torch.equal(own[k], v) for k, v in saved.items())  # untouched since step 2
    assert not (out / "final").exists()


def test_the_cli_says_it_in_one_line(task, tmp_path, monkeypatch, capsys):
    model_dir, data = task
    _nan_at_call(monkeypatch, 1)
    assert main(["sft", "--model", str(model_dir), "--data", str(data), "--output-dir", str(tmp_path / "cli"),
                 "--max-steps", "2", "--no-progress", "--warmup-steps", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("prefopt sft: error: training diverged in step 1 of 2: its gradients are not finite (norm "
                          "nan, loss nan), so no optimizer step was taken with them. Try a lower --lr (now 0.0002); "
                          "these change") and err.count("\n") == 1
