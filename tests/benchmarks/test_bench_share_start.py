"""benchmarks/bench_share_start.py runs end to end on a tiny model (its figures mean nothing here)."""
import json

from tests._tiny import build_hf_model
from tests.benchmarks import run_main


def test_bench_share_start_trains_on_the_same_tokens_with_the_start_once(tmp_path, monkeypatch, capsys):
    build_hf_model(tmp_path / "tiny", arch="llama")
    out = tmp_path / "share.json"
    run_main("bench_share_start", monkeypatch, "--model", tmp_path / "tiny", "--steps", 3, "--warmup", 1,
             "--batch-size", 4, "--max-length", 200, "--json", out)
    runs = json.loads(out.read_text())
    assert list(runs) == ["packed", "shared_start"]
    packed, shared = runs.values()
    assert packed["tokens_per_step"] == shared["tokens_per_step"] > 0  # the examples' tokens, run or not
    assert abs(packed["last_loss"] - shared["last_loss"]) < 0.05 * packed["last_loss"]
    table = capsys.readouterr().out
    assert "| packed |" in table and "| shared start |" in table and "shared start / packed: throughput" in table


def _one_turn(tmp_path, monkeypatch, capsys, *args) -> str:
    """The script's output on a tiny model, one timed turn of each layout (``args``: the mode and batch)."""
    build_hf_model(tmp_path / "tiny", arch="llama", max_position_embeddings=4096)
    run_main("bench_share_start", monkeypatch, "--model", tmp_path / "tiny", *args, "--repeats", 1, "--max-length", 2048)
    return capsys.readouterr().out


def test_bench_share_start_alternate_times_the_three_layouts(tmp_path, monkeypatch, capsys):
    out = _one_turn(tmp_path, monkeypatch, capsys, "--alternate", "--batch-size", "3")
    rows = [line.split("|")[1:-1] for line in out.splitlines() if line.startswith(("| portal", "| MeQSum"))]
    assert [r[0].strip() for r in rows] == ["portal", "MeQSum"]
    portal = rows[0]
    assert int(portal[1]) >= 16  # the instructions every portal prompt begins with
    before, after = (int(x) for x in portal[2].split("->"))
    assert after == before - 2 * int(portal[1])  # three examples: the start run once, not three times
    assert all(float(x) > 0 for x in portal[3:6])


def test_bench_share_start_dpo_times_a_micro_batch_and_the_fill(tmp_path, monkeypatch, capsys):
    out = _one_turn(tmp_path, monkeypatch, capsys, "--dpo", "--batch-size", "2")
    start = int(out.split("a shared start of ")[1].split()[0])
    assert start >= 16  # the portal prompts' instructions
    rows = [line.split("|")[1:-1] for line in out.splitlines() if line.startswith(("| training", "| reference"))]
    assert [int(r[1]) for r in rows] == [2, 8]
    for r in rows:  # each pair's copy of the start, less the one run, and the padding, at least
        before, after = (int(x) for x in r[2].split("->"))
        assert after <= before - (int(r[1]) - 1) * start and all(float(x) > 0 for x in r[3:5])
