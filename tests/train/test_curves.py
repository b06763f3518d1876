"""Training curves: the panels a run's metrics.jsonl holds, drawn at the end of every run and by
``prefopt curves``; a missing matplotlib never fails a finished run."""
import json

import pytest

from prefopt.cli import main
from prefopt.train.curves import curves, moving_average
from tests.train._fixtures import write_task


def test_the_panels_are_what_the_run_logged():
    dpo = [{"step": 0, "eval_loss": 0.69, "eval_rewards/accuracies": 0.5, "eval_macro_f1": 0.40},
           {"step": 1, "loss": 0.70, "rewards/accuracies": 0.25, "rewards/margins": -0.1, "logps/chosen": -3.0,
            "logps/rejected": -2.5, "lr": 1e-5},
           {"step": 2, "loss": 0.60, "rewards/accuracies": 0.75, "rewards/margins": 0.2, "logps/chosen": -2.8,
            "logps/rejected": -3.1, "lr": 1e-5},
           {"step": 2, "eval_loss": 0.65, "eval_rewards/accuracies": 0.625, "eval_macro_f1": 0.45}]
    dpo[1].update({"rewards/chosen": 0.1, "rewards/rejected": -0.1, "nll": 1.5, "grad_norm": 2.0, "tokens": 90})
    dpo[-1].update({"eval_rewards/chosen": 0.2, "eval_nll": 1.4})
    got = dict(curves(dpo))
    assert list(got) == ["loss", "pair accuracy (chosen above rejected)", "reward margin (chosen − rejected)",
                         "reward (β × log-ratio to the reference)", "log-prob of the response",
                         "held-out macro_f1", "nll"]  # a loss's own term (RPO's NLL) with its eval values
    assert got["reward (β × log-ratio to the reference)"] == {"rewards/chosen": [(1, 0.1)],
                                                              "rewards/rejected": [(1, -0.1)],
                                                              "eval_rewards/chosen": [(2, 0.2)]}
    assert got["nll"] == {"nll": [(1, 1.5)], "eval_nll": [(2, 1.4)]}  # grad_norm, tokens: pace, not drawn
    assert got["loss"] == {"loss": [(1, 0.70), (2, 0.60)], "eval_loss": [(0, 0.69), (2, 0.65)]}
    assert got["pair accuracy (chosen above rejected)"]["eval_rewards/accuracies"] == [(0, 0.5), (2, 0.625)]
    assert got["log-prob of the response"] == {"logps/chosen": [(1, -3.0), (2, -2.8)],
                                               "logps/rejected": [(1, -2.5), (2, -3.1)]}
    assert got["held-out macro_f1"] == {"eval_macro_f1": [(0, 0.40), (2, 0.45)]}
    assert [t for t, _ in curves([{"step": 1, "loss": 2.0, "lr": 1e-4}])] == ["loss"]  # SFT without an eval set
    assert curves([]) == []


def test_moving_average_by_hand():
    assert moving_average([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]
    assert moving_average([1.0, 3.0, 5.0], 1) == [1.0, 3.0, 5.0]
    assert moving_average([2.0, 4.0], 5) == [2.0, 3.0]


def test_a_run_ends_with_its_curves_and_the_command_draws_them_again(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    model_dir, data = write_task(tmp_path, n=16)
    out = tmp_path / "run"
    assert main(["sft", "--model", str(model_dir), "--data", str(data), "--output-dir", str(out), "--max-steps", "3",
                 "--batch-size", "4", "--no-progress", "--eval-fraction", "0.25", "--eval-every", "2"]) == 0
    assert f"prefopt: training curves in {out / 'training_curves.png'}\n" in capsys.readouterr().out
    png = (out / "training_curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert main(["curves", str(out), "--output", str(tmp_path / "again.png")]) == 0
    assert capsys.readouterr().out == f"wrote {tmp_path / 'again.png'}\n"
    assert (tmp_path / "again.png").read_bytes()[:8] == png[:8]
    assert main(["curves", str(out), "--output", str(tmp_path / "again.svg")]) == 0  # the format its name says
    assert b"<svg" in (tmp_path / "again.svg").read_bytes()[:1000] and not list(tmp_path.glob(".again*"))
    capsys.readouterr()
    assert [p.name for p in out.glob(".*png")] == []  # no temporary file left
    assert main(["curves", str(out / "metrics.jsonl"), "--output", str(tmp_path / "named.png")]) == 0  # the log
    assert (tmp_path / "named.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["curves", str(tmp_path)]) == 2
    assert f"{tmp_path}: no metrics.jsonl" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "metrics.jsonl").write_text(json.dumps({"step": 0, "lr": 0.1}) + "\n")
    assert main(["curves", str(tmp_path / "empty")]) == 2
    assert "no step logged yet" in capsys.readouterr().err


def test_without_matplotlib_the_run_still_ends_and_says_how_to_get_them(tmp_path, capsys, monkeypatch):
    import prefopt.train.curves as curves_module
    from prefopt._deps import MissingDependencyError

    def missing(module, purpose=None):
        raise MissingDependencyError(f"{purpose} needs the optional package {module!r}")

    monkeypatch.setattr(curves_module, "require", missing)
    model_dir, data = write_task(tmp_path, n=8)
    out = tmp_path / "run"
    assert main(["sft", "--model", str(model_dir), "--data", str(data), "--output-dir", str(out), "--max-steps", "2",
                 "--batch-size", "4", "--no-progress"]) == 0
    assert ("prefopt: training curves not drawn: install matplotlib (pip install 'prefopt[plots]'), then `prefopt "
            "curves RUN_DIR`\n") in capsys.readouterr().out
    assert (out / "final").is_dir() and not (out / "training_curves.png").exists()
    assert main(["curves", str(out)]) == 2
    assert "drawing training curves needs the optional package 'matplotlib'" in capsys.readouterr().err
