"""benchmarks/bench_cpu_half.py times each dtype's matmuls and says whether this CPU has native 16-bit
arithmetic, as prefopt's warning (``devices.slow_half``) reads it (its figures mean nothing at these sizes)."""
import json

import torch

from tests.benchmarks import run_main


def test_bench_cpu_half_times_every_dtype_and_reports_what_the_warning_reads(tmp_path, monkeypatch, capsys):
    out = tmp_path / "half.json"
    run_main("bench_cpu_half", monkeypatch, "--sizes", 16, 32, "--reps", 1, "--json", out)
    got = json.loads(out.read_text())
    assert [r["n"] for r in got["rows"]] == [16, 32]
    assert all(r[k] > 0 for r in got["rows"] for k in ("float32", "bfloat16", "float16"))
    assert got["native"]["bfloat16"] == torch.ops.mkldnn._is_mkldnn_bf16_supported()
    said = capsys.readouterr().out
    assert f"CPU capability {torch.backends.cpu.get_cpu_capability()}" in said and "| 32 | " in said
