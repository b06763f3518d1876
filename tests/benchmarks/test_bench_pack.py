"""benchmarks/bench_pack.py runs end to end on a tiny model (its figures mean nothing here)."""
import json

from tests._tiny import build_hf_model
from tests.benchmarks import run_main


def test_bench_pack_trains_padded_and_packed_on_the_same_tokens(tmp_path, monkeypatch, capsys):
    build_hf_model(tmp_path / "tiny", arch="llama")
    out = tmp_path / "pack.json"
    run_main("bench_pack", monkeypatch, "--model", tmp_path / "tiny", "--steps", 3, "--warmup", 1, "--batch-size", 4,
             "--max-length", 200, "--json", out)
    runs = json.loads(out.read_text())
    assert list(runs) == ["padded", "packed"]
    padded, packed = runs.values()
    assert padded["tokens_per_step"] == packed["tokens_per_step"] > 0  # real tokens, padding never counted
    assert abs(padded["last_loss"] - packed["last_loss"]) < 0.05 * padded["last_loss"]
    table = capsys.readouterr().out
    assert "| padded |" in table and "| packed |" in table and "packed / padded: throughput" in table
