"""examples/run_triage.py (what ``make demo`` runs) end to end on a tiny random model."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests._tiny import build_hf_model

ROOT = Path(__file__).resolve().parents[1]
TINY = ["max_train=8", "test=4", "sft_steps=2", "dpo_steps=2", "batch_size=2", "max_length=256", "eval_batch_size=8"]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "examples" / "run_triage.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_run_triage_compares_three_stages_with_the_loss_and_settings_asked_for(tmp_path):
    model = tmp_path / "tiny"
    build_hf_model(model, max_position_embeddings=4096)
    out = tmp_path / "run"
    done = _run("--model", str(model), "--output", str(out), "--loss", "rpo", *[x for kv in TINY for x in ("--set", kv)])
    assert done.returncode == 0, done.stderr[-2000:]
    for stage in ("base", "sft", "dpo"):
        assert f"{stage:>4}: macro-F1 " in done.stdout
    assert f"Report: {out.resolve() / 'report.md'}" in done.stdout and (out / "report.md").is_file()
    config = json.loads((out / "compare_config.json").read_text())
    assert config["loss"] == "rpo" and config["overrides"]["sft_steps"] == 2
    steps = (out / "dpo" / "train" / "metrics.jsonl").read_text().splitlines()
    assert len(steps) == 2


def test_run_triage_reports_bad_input_without_a_traceback(tmp_path):
    done = _run("--data", str(tmp_path / "missing.jsonl"), "--output", str(tmp_path / "run"))
    assert done.returncode == 1 and done.stderr.startswith("run_triage: error:") and "missing.jsonl" in done.stderr
    assert "Traceback" not in done.stderr
    done = _run("--set", "sft_steps", "--output", str(tmp_path / "run"))
    assert done.returncode == 1 and "expected key=value, got 'sft_steps'" in done.stderr
