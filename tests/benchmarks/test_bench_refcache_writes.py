"""benchmarks/bench_refcache_writes.py runs end to end on a few synthetic pairs."""
import json

import pytest

from tests.benchmarks import run_main


def test_bench_refcache_writes_fills_a_cache_and_reports_what_its_writing_cost(tmp_path, monkeypatch, capsys):
    out = tmp_path / "rows.json"
    run_main("bench_refcache_writes", monkeypatch, "--pairs", 40, 100, "--batch-size", 16, "--compute-ms", 1,
             "--json", out)
    rows = json.loads(out.read_text())
    assert [r["pairs"] for r in rows] == [40, 100]
    # 3 and 7 batches of a 1 ms forward; written once, at the end (the index and one shard)
    assert [r["compute_seconds"] for r in rows] == pytest.approx([0.003, 0.007]) and all(r["files"] == 2 for r in rows)
    assert all(r["seconds"] >= r["compute_seconds"] and r["bytes"] > 0 for r in rows)
    printed = capsys.readouterr().out
    assert "batches of 16, reference forward 1 ms a batch" in printed and printed.count("\n| 40 | ") == 1
