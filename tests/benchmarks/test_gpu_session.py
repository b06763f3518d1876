"""``benchmarks/gpu_session.sh`` runs its steps in order and reports failures, checked on CPU with a
stand-in Python that records what it is asked to run (the real thing needs a lent GPU, whose
minutes should not go on a shell mistake)."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_session.sh"

STUB = """#!/usr/bin/env bash
echo "$*" >> "$STUB_LOG"
case "$1 $2" in
  "-c import sys, torch; sys.exit(not torch.cuda.is_available())") exit "${STUB_CUDA_RC:-0}" ;;
  "-m pytest") echo "stub pytest"; exit "${STUB_PYTEST_RC:-0}" ;;
esac
if [ "$1" = benchmarks/bench_logprobs.py ]; then
  while [ $# -gt 0 ]; do [ "$1" = --json ] && echo "[]" > "$2"; shift; done
  printf 'stub table\n| onepass | stub row |\n'; exit "${STUB_BENCH_RC:-0}"
fi
exit 0
"""


def _run(tmp_path, *steps, **env):
    if shutil.which("bash") is None:
        pytest.skip("no bash")
    stub = tmp_path / "python"
    stub.write_text(STUB)
    stub.chmod(0o755)
    log, out = tmp_path / "calls.log", tmp_path / "out"
    proc = subprocess.run(["bash", str(SCRIPT), *steps], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PY": str(stub), "OUT": str(out), "STUB_LOG": str(log), **env})
    calls = log.read_text().splitlines() if log.exists() else []
    return proc, calls, out


def test_steps_run_in_order_with_their_arguments_and_timings(tmp_path):
    proc, calls, out = _run(tmp_path, "check", "frozen", "table-smol", "table-llama", "sweep")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    benches = [c for c in calls if c.startswith("benchmarks/bench_logprobs.py")]
    assert any(c.startswith("-m pytest -q -p no:cacheprovider tests/kernels tests/train/test_cuda_training.py "
                            "tests/model/test_generate.py")
               for c in calls)
    assert "--frozen-weight --shapes 4096x128256 --tokens 16384" in benches[0]
    assert "cce-exact" in benches[0] and str(out / "table_frozen.json") in benches[0]
    assert benches[1].endswith("--shapes 576x49152") and benches[2].endswith("--shapes 4096x128256")
    assert len(benches) == 3 + 16 + 2  # eight configurations x two budgets in the sweep, then two frozen budgets
    assert all("--methods triton" in c and "--blocks" in c for c in benches[3:-2])
    assert '--blocks {"order": "rows", "splits": 3}' in benches[3]  # the defaults before 2026-11-30, to compare
    assert all("--frozen-weight" in c for c in benches[-2:])
    took = [line for line in (out / "steps.txt").read_text().splitlines() if " took " in line]
    assert [line.split()[2] for line in took] == ["check", "frozen", "table-smol", "table-llama", "sweep"]


def test_the_onepass_step_times_short_and_long_pairs_trainable_and_frozen(tmp_path):
    """Pairs of 128 scored tokens (one block at V=128256) and of 512 (a whole stage, which took
    two walks before stages), each with a trainable and a frozen head."""
    proc, calls, out = _run(tmp_path, "onepass")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    benches = [c for c in calls if c.startswith("benchmarks/bench_logprobs.py")]
    assert len(benches) == 4 and all("--shapes 4096x128256 --tokens 16384" in c for c in benches)
    assert [("--seq-len 64" in c, "--frozen-weight" in c) for c in benches] == [
        (True, False), (True, True), (False, False), (False, True)]
    assert all("--budget" not in c and ("--seq-len 64" in c) != ("--seq-len 256" in c) for c in benches)
    assert all(c.endswith("--methods onepass triton " + ("chunked" if "--frozen-weight" in c else "liger"))
               for c in benches)
    assert (out / "onepass.txt").read_text().count("stub table") == 4


def test_the_stages_step_times_each_onepass_option_against_the_defaults_in_one_call(tmp_path):
    """The defaults first, then each option alone or paired, as bench_logprobs.py parses it (a row
    kernel block size as JSON, one argument); the table's rows gathered into stages.txt."""
    proc, calls, out = _run(tmp_path, "stages")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    base = "benchmarks/bench_logprobs.py --gpu --methods onepass --shapes 4096x128256 --tokens 16384"
    benches = [c for c in calls if c.startswith("benchmarks/bench_logprobs.py")]
    assert all(c.startswith(base) for c in benches) and benches[0] == base
    assert [c[len(base):].strip() for c in benches[1:]] == [
        "--fused-slabs", "--fused-slabs --budget 8388608", "--budget 8388608", "--slab-rows 384 --budget 14000000",
        "--fused-slabs --slab-rows 384 --budget 14000000", "--row-splits 16", "--row-splits 4",
        '--row-blocks {"lse":8192}', '--row-blocks {"lse":2048}']
    assert (out / "stages.txt").read_text() == "| onepass | stub row |\n" * 10  # each run's onepass row kept


def test_the_goals_step_times_every_method_at_the_goal_shape_and_profiles(tmp_path):
    proc, calls, out = _run(tmp_path, "goals")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    benches = [c for c in calls if c.startswith("benchmarks/bench_logprobs.py")]
    assert len(benches) == 2 and all("--shapes 4096x128256 --tokens 16384" in c for c in benches)
    assert "--methods" not in benches[0] and "--frozen-weight" in benches[1] and "onepass liger" in benches[1]
    assert [c for c in calls if c.startswith("benchmarks/profile_logprobs.py")] == [
        "benchmarks/profile_logprobs.py --methods triton chunked onepass --cpu-ops"]
    verdict = [i for i, c in enumerate(calls) if c.startswith("benchmarks/goals_verdict.py")]
    assert [calls[i] for i in verdict] == [f"benchmarks/goals_verdict.py {out / 'goals.json'} {out / 'goals_frozen.json'}"]
    assert calls.index(next(c for c in calls if "profile_logprobs" in c)) > verdict[0]  # before the slow profile
    assert {"goals.json", "goals_frozen.json", "profile.txt"} <= {f.name for f in out.iterdir()}
    assert (out / "goals.txt").read_text().startswith("stub table")  # the verdict follows the table


@pytest.mark.parametrize("steps", [("check", "goals"), ("check", "frozen", "table-smol"), ("table-llama",), ("sweep",),
                                   ("onepass",)])
def test_each_planned_call_leaves_at_most_eight_files(tmp_path, steps):
    """The device tool brings back at most 8 files from $OUT; the documented three calls fit."""
    proc, _, out = _run(tmp_path, *steps)
    assert proc.returncode == 0 and 0 < len(list(out.iterdir())) <= 8


@pytest.mark.parametrize("env", [{"STUB_PYTEST_RC": "1"}, {"STUB_BENCH_RC": "1"}])
def test_a_failing_step_fails_the_call_but_later_steps_still_run(tmp_path, env):
    proc, calls, _ = _run(tmp_path, "check", "table-smol", **env)
    assert proc.returncode == 1
    assert any(c.startswith("benchmarks/bench_logprobs.py") for c in calls)


def test_refuses_unknown_steps_and_machines_without_cuda(tmp_path):
    proc, calls, _ = _run(tmp_path, "check", "tabel")
    assert proc.returncode == 2 and "unknown step tabel" in proc.stdout and calls == []
    proc, calls, out = _run(tmp_path, "check", STUB_CUDA_RC="1")
    assert proc.returncode == 3 and "no CUDA GPU" in proc.stdout and len(calls) == 1 and not out.exists()
