"""benchmarks/bench_predict_reuse.py runs end to end on a tiny model (its times mean nothing here):
the second predict reuses the first's answers, the same answers, and the table says both ways."""
import json

from tests._tiny import build_hf_model
from tests.benchmarks import run_main


def test_bench_predict_reuse_runs_both_ways_and_the_second_answers_nothing(tmp_path, monkeypatch, capsys):
    build_hf_model(tmp_path / "tiny", max_position_embeddings=4096)
    out = tmp_path / "runs.json"
    run_main("bench_predict_reuse", monkeypatch, "--model", tmp_path / "tiny", "--records", 6, "--max-new-tokens", 3,
             "--json", out)
    figures = json.loads(out.read_text())
    assert figures["reused"] and figures["same"]
    runs = figures["runs"]
    assert list(runs) == ["answered", "reused"] and all(r["code"] == 0 and r["seconds"] > 0 for r in runs.values())
    assert len(runs["answered"]["answers"]) == 6
    assert not any("were answered before" in line for line in runs["answered"]["said"])
    said = capsys.readouterr().out
    assert "the second run's answers reused: True, the same answers: True" in said
    assert "| answered (--review-below 0.7) |" in said and "| reused (--review-below 0.9) |" in said
