"""benchmarks/bench_share_start.py runs end to end on a tiny model (its figures mean nothing here)."""
import json
import sys

from tests._tiny import build_hf_model
from tests.benchmarks import BENCHMARKS, load_script


def test_bench_share_start_trains_on_the_same_tokens_with_the_start_once(tmp_path, monkeypatch, capsys):
    sys.path.insert(0, str(BENCHMARKS))
    mod = load_script("bench_share_start")
    build_hf_model(tmp_path / "tiny", arch="llama")
    out = tmp_path / "share.json"
    monkeypatch.setattr(sys, "argv", ["bench_share_start.py", "--model", str(tmp_path / "tiny"), "--steps", "3",
                                      "--warmup", "1", "--batch-size", "4", "--max-length", "200", "--json", str(out)])
    mod.main()
    runs = json.loads(out.read_text())
    assert list(runs) == ["packed", "shared_start"]
    packed, shared = runs.values()
    assert packed["tokens_per_step"] == shared["tokens_per_step"] > 0  # the examples' tokens, run or not
    assert abs(packed["last_loss"] - shared["last_loss"]) < 0.05 * packed["last_loss"]
    table = capsys.readouterr().out
    assert "| packed |" in table and "| shared start |" in table and "shared start / packed: throughput" in table
