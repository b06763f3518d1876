"""benchmarks/bench_checkpointing.py runs end to end on a tiny model (its figures mean nothing here)."""
import json

from tests._tiny import build_hf_model
from tests.benchmarks import run_main


def test_bench_checkpointing_sweeps_the_layers_recomputed_to_the_same_loss(tmp_path, monkeypatch, capsys):
    build_hf_model(tmp_path / "tiny", arch="llama")  # two layers
    out = tmp_path / "ckpt.json"
    run_main("bench_checkpointing", monkeypatch, "--model", tmp_path / "tiny", "--steps", 3, "--warmup", 1,
             "--batch-size", 2, "--max-length", 64, "--layers", 0, 1, "--repeats", 2, "--json", out)
    rows = json.loads(out.read_text())
    assert list(rows) == ["0", "1"]  # none, then one of the two layers (all of them: the trainers' own tests)
    assert all(len(r["each_s_per_step"]) == 2 and r["s_per_step"] > 0 for r in rows.values())
    # recomputing changes no result: the same training, whatever the layers recomputed
    assert rows["0"]["last_loss"] == rows["1"]["last_loss"]
    table = capsys.readouterr().out
    assert "| 0 | " in table and "| 1 | " in table and "ratios against 0 layers" in table
