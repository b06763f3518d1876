"""examples/run_triage.py (what ``make demo`` runs) end to end on a tiny random model."""
import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests._failure import failure
from tests._formats import medqa_rows as _medqa_rows
from tests._formats import meqsum_rows as _meqsum_rows
from tests._formats import write_jsonl as _write_jsonl
from tests._tiny import build_hf_model

ROOT = Path(__file__).resolve().parents[1]
TINY = ["max_train=8", "test=4", "sft_steps=2", "dpo_steps=2", "batch_size=2", "max_length=256", "eval_batch_size=8"]


def _example(name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "examples" / name), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


def _run(*args: str) -> subprocess.CompletedProcess:
    return _example("run_triage.py", *args)


@pytest.mark.slow
def test_run_triage_compares_three_stages_with_the_loss_and_settings_asked_for(tmp_path):
    model = tmp_path / "tiny"
    build_hf_model(model, max_position_embeddings=4096)
    out = tmp_path / "run"
    done = _run("--model", str(model), "--output", str(out), "--loss", "rpo", "--device", "cpu",
                "--eval-dtype", "bfloat16", *[x for kv in TINY for x in ("--set", kv)])
    assert done.returncode == 0, failure(done, 2000)
    for stage in ("base", "sft", "dpo"):
        assert f"{stage:>4}: macro-F1 " in done.stdout
    assert f"Report: {out.resolve() / 'report.md'}" in done.stdout and (out / "report.md").is_file()
    config = json.loads((out / "compare_config.json").read_text())
    assert config["loss"] == "rpo" and config["overrides"]["sft_steps"] == 2
    steps = (out / "dpo" / "train" / "metrics.jsonl").read_text().splitlines()
    assert len(steps) == 2
    assert "; run on cpu in bfloat16." in (out / "report.md").read_text()
    # the study's sigmoid loss from the same SFT model: only DPO trains
    done = _run("--model", str(model), "--output", str(tmp_path / "sigmoid"), "--from", str(out), "--device", "cpu",
                "--eval-dtype", "bfloat16", *[x for kv in TINY for x in ("--set", kv)])
    assert done.returncode == 0, failure(done, 2000)
    assert f"starting from {out}: copied split.json, base, sft," in done.stdout and "sft: reusing" in done.stdout
    assert json.loads((tmp_path / "sigmoid" / "compare_config.json").read_text())["loss"] == "sigmoid"


def test_run_triage_says_the_rpo_command_that_starts_from_its_sft_model(monkeypatch):
    """After a DPO that made SFT significantly worse, run_triage.py prints the command that trains
    RPO alone on the same SFT model: this run's settings, which --from requires to be the same."""
    import importlib.util
    import shlex

    spec = importlib.util.spec_from_file_location("run_triage", ROOT / "examples" / "run_triage.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "executable", str(ROOT / ".venv" / "bin" / "python"))
    demo = example.parser().parse_args(["--preset", "quick", "--output", "runs/triage-demo"])  # make demo
    assert example.rpo_next(demo) == (".venv/bin/python examples/run_triage.py --preset quick --seed 0 --loss rpo "
                                      "--from runs/triage-demo --output runs/triage-demo-rpo")
    argv = ["--task", "ktas", "--data", "my data.csv", "--preset", "full", "--seed", "2", "--strategy",
            "wrong_label_hardest", "--model", "m", "--set", "val=32", "--set", "beta=0.2", "--output", "runs/k/",
            "--device", "cpu", "--task-option", "levels=ktas", "--task-option", "disposition=true"]
    a = example.parser().parse_args(argv)
    cmd = shlex.split(example.rpo_next(a))
    assert cmd[:2] == [".venv/bin/python", "examples/run_triage.py"]
    b = example.parser().parse_args(cmd[2:])
    assert (b.loss, b.start_from, b.output) == ("rpo", "runs/k", "runs/k-rpo")
    same = ("model", "task", "data", "preset", "strategy", "seed", "set", "task_option")
    assert {k: getattr(b, k) for k in same} == {k: getattr(a, k) for k in same}


def test_run_triage_reports_bad_input_without_a_traceback(tmp_path):
    done = _run("--data", str(tmp_path / "missing.jsonl"), "--output", str(tmp_path / "run"))
    assert done.returncode == 1 and done.stderr.startswith("run_triage: error:") and "missing.jsonl" in done.stderr
    assert "Traceback" not in done.stderr
    done = _run("--set", "sft_steps", "--output", str(tmp_path / "run"))
    assert done.returncode == 1 and "expected key=value, got 'sft_steps'" in done.stderr
    done = _run("--device", "gpu", "--output", str(tmp_path / "run"))
    assert done.returncode == 1 and "run_triage: error: unknown device 'gpu'" in done.stderr
    own = tmp_path / "export.csv"  # a team's own messages, as Excel saves a CSV on Western-European Windows
    own.write_bytes("Nachricht;Dringlichkeit;Team\r\nFièvre depuis hier;urgent;nurse\r\n".encode("cp1252"))
    done = _run("--data", str(own), "--output", str(tmp_path / "run"))
    assert done.returncode == 1 and "--task-option encoding=cp1252" in done.stderr
    done = _run("--data", str(own), "--task-option", "encoding=cp1252", "--output", str(tmp_path / "run"))
    assert done.returncode == 1 and "(here likely: --task-option message_column=Nachricht" in done.stderr
    assert not (tmp_path / "run").exists()


def _tiny_model_and_data(tmp_path: Path, folder: str, file: str, rows: list[dict]) -> Path:
    """A tiny model at ``tmp_path/tiny`` and ``rows`` in ``tmp_path/folder/file``; the model's path."""
    build_hf_model(tmp_path / "tiny", max_position_embeddings=1024)
    _write_jsonl(tmp_path / folder / file, rows)
    return tmp_path / "tiny"


@pytest.mark.slow
def test_dpo_medqa_trains_on_pairs_from_disjoint_questions(tmp_path):
    model = _tiny_model_and_data(tmp_path, "medqa", "medqa_usmle_4options.jsonl", _medqa_rows(14))
    out = tmp_path / "run"
    done = _example("dpo_medqa.py", "--data-dir", str(tmp_path / "medqa"), "--output", str(out), "--model", str(model),
                    "--n-train", "10", "--n-eval", "4", "--max-steps", "2", "--batch-size", "2", "--max-length", "256")
    assert done.returncode == 0, failure(done, 2000)
    assert "held-out MedQA pairs (4): rewards/accuracies" in done.stdout
    assert "reference forwards during training: 0" in done.stdout
    train = [json.loads(x) for x in (out / "data" / "train.jsonl").read_text().splitlines()]
    heldout = [json.loads(x) for x in (out / "data" / "heldout.jsonl").read_text().splitlines()]
    assert (len(train), len(heldout)) == (10, 4) and not {p["id"] for p in train} & {p["id"] for p in heldout}
    assert all(p["chosen"] != p["rejected"] and p["chosen"][:2] in ("A)", "B)", "C)", "D)") for p in train)
    assert (out / "final" / "adapter_model.safetensors").is_file()
    assert len((out / "metrics.jsonl").read_text().splitlines()) >= 2


@pytest.mark.slow
def test_sft_meqsum_trains_and_reports_the_eval_loss(tmp_path):
    model = _tiny_model_and_data(tmp_path, "meqsum", "meqsum.jsonl", _meqsum_rows(12))
    out = tmp_path / "run"
    done = _example("sft_meqsum.py", "--data-dir", str(tmp_path / "meqsum"), "--output", str(out),
                    "--model", str(model), "--n-eval", "3", "--max-steps", "2", "--batch-size", "2")
    assert done.returncode == 0, failure(done, 2000)
    assert "MeQSum eval loss (per response token, 3 held-out questions): before " in done.stdout
    evals = [json.loads(x) for x in (out / "data" / "eval.jsonl").read_text().splitlines()]
    assert len(evals) == 3 and evals[0]["completion"].startswith("Is drug ")
    assert (out / "final" / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize("name, folder, file, rows, where", [
    ("dpo_medqa.py", "medqa", "medqa_usmle_4options.jsonl",
     [*map(json.dumps, _medqa_rows(2)), json.dumps({**_medqa_rows(1)[0], "answer_idx": "E"})],
     "medqa_usmle_4options.jsonl:3: field 'answer_idx'"),
    ("dpo_medqa.py", "medqa", "medqa_usmle_4options.jsonl", [json.dumps(_medqa_rows(1)[0]), '{"question": "x",'],
     "medqa_usmle_4options.jsonl:2"),
    ("sft_meqsum.py", "meqsum", "meqsum.jsonl", [*map(json.dumps, _meqsum_rows(2)), json.dumps({"CHQ": "q?"})],
     "meqsum.jsonl:3: field 'Summary': missing field"),
])
def test_the_real_data_examples_report_bad_rows_without_a_traceback(tmp_path, name, folder, file, rows, where):
    _write_jsonl(tmp_path / folder / file, rows)
    done = _example(name, "--data-dir", str(tmp_path / folder), "--output", str(tmp_path / "run"), "--model", "none")
    assert done.returncode == 1 and done.stderr.startswith(f"{name[:-3]}: error: "), failure(done, 2000)
    assert where in done.stderr and "Traceback" not in done.stderr
    done = _example(name, "--data-dir", str(tmp_path / "nowhere"), "--output", str(tmp_path / "run"))
    assert done.returncode == 1 and "not found at" in done.stderr and "pass --data-dir" in done.stderr


@pytest.mark.slow
def test_dpo_best_by_task_reruns_a_compare_runs_dpo_keeping_the_best_validation_step(tmp_path):
    """examples/dpo_best_by_task.py on a tiny compare run: validation records' pairs are left out,
    every evaluation scores greedy answers to them, and the test table compares each stage with SFT."""
    model = tmp_path / "tiny"
    build_hf_model(model, max_position_embeddings=4096)
    run = tmp_path / "run"
    settings = [x for kv in TINY + ["max_train=12", "dpo_steps=3"] for x in ("--set", kv)]
    assert _run("--model", str(model), "--output", str(run), "--device", "cpu", *settings).returncode == 0
    out = tmp_path / "best"
    done = _example("dpo_best_by_task.py", "--run", str(run), "--output", str(out), "--val", "4", "--eval-every", "1")
    assert done.returncode == 0, failure(done)
    summary = json.loads((out / "summary.json").read_text())
    pairs = sum(1 for _ in (run / "data" / "pairs.jsonl").open())
    assert summary["val"] == 4 and summary["pairs"] < pairs  # the held-out records' pairs are not trained on
    steps = [json.loads(line) for line in (out / "dpo" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in steps if "eval_val_macro_f1" in r] == [0, 1, 2, 3]
    assert summary["best"]["metric"] == "eval_val_macro_f1" and (out / "dpo" / "best" / "best.json").is_file()
    assert [r["stage"] for r in summary["test"]] == ["SFT", "SFT+DPO (compare run)", "SFT+DPO, best validation step",
                                                     "SFT+DPO, this run's last step"]
    assert "SFT+DPO, best validation step: macro_f1" in done.stdout


@pytest.mark.slow
def test_notes_windows_trains_cut_and_windowed_adapters_and_scores_held_out_notes(tmp_path):
    """examples/notes_windows.py on a tiny model: two runs of the same steps, one cut and one in
    windows, and held-out notes scored past their first window too."""
    build_hf_model(tmp_path / "tiny", max_position_embeddings=1024)
    for name, n in (("train", 6), ("valid", 3)):
        with open(tmp_path / f"{name}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["encounter_id", "note"])
            for i in range(n):
                w.writerow([f"D{i}", f"Note {i}. " + "Fever and cough, seen in clinic, antibiotics started. " * (i + 2)])
    out = tmp_path / "run"
    done = _example("notes_windows.py", "--train", str(tmp_path / "train.csv"), "--eval", str(tmp_path / "valid.csv"),
                    "--model", str(tmp_path / "tiny"), "--max-length", "24", "--max-steps", "3", "--batch-size", "2",
                    "--lr", "5e-3", "--output", str(out))
    assert done.returncode == 0, failure(done)
    result = json.loads((out / "nll.json").read_text())
    assert result["notes"] == 3 and result["tokens"]["tail"] > result["tokens"]["first"] > 0
    train_cfg = {name: json.loads((out / name / "train_config.json").read_text()) for name in ("cut", "windows")}
    assert [train_cfg[n]["text_windows"] for n in ("cut", "windows")] == [False, True]
    assert all(c["max_steps"] == 3 and c["columns"] == {"text": "note"} for c in train_cfg.values())
    nll = result["nll_per_token"]
    assert set(nll) == {"base", "cut", "windows"} and len({nll[n]["tail"] for n in nll}) == 3  # each model its own
    for part in ("first", "tail"):
        cmp = result["windows_vs_cut"][part]
        assert cmp["delta"] == pytest.approx(nll["windows"][part] - nll["cut"][part])
        assert cmp["ci"][0] <= cmp["ci"][1] and 0 <= cmp["p_value"] <= 1
    assert "windows - cut, past it: " in done.stdout
    done = _example("notes_windows.py", "--train", str(tmp_path / "none.csv"), "--output", str(out))
    assert done.returncode == 1 and "none.csv: no such file (pass --train and --eval)" in done.stderr


def test_run_triage_estimates_each_training_step_and_writes_nothing(tmp_path):
    """compare's out-of-memory advice says to add --estimate-memory to the command: the demo's too."""
    model = tmp_path / "tiny"
    build_hf_model(model, max_position_embeddings=4096)
    out = tmp_path / "run"
    done = _run("--model", str(model), "--output", str(out), "--preset", "full", "--set", "dpo_batch_size=1",
                "--estimate-memory", "cpu")
    assert done.returncode == 0, failure(done, 2000)
    said = done.stdout.splitlines()
    assert said[0].startswith("SFT stage: memory estimate for one training step on a CPU, float32 weights, a "
                              "micro-batch of 8 sequences of 1024 tokens")  # the full preset's
    assert any(line.startswith("DPO stage: ") and "2 sequences of 1024 tokens" in line for line in said)
    assert not out.exists()
