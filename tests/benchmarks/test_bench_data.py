"""benchmarks/bench_data.py runs end to end on a tiny tokenizer (its figures mean nothing here)."""
import json

from tests._tiny import build_hf_model
from tests.benchmarks import run_main


def test_bench_data_times_every_case_and_writes_its_ratios(tmp_path, monkeypatch, capsys):
    build_hf_model(tmp_path / "tiny")
    out = tmp_path / "data.json"
    mod = run_main("bench_data", monkeypatch, "--model", tmp_path / "tiny", "--records", 12, "--reps", 1,
                   "--max-length", 200, "--json", out)
    sft, pairs = mod.records(3)
    assert sft == mod.records(3)[0] and [p["prompt"] for p in pairs] == [r["prompt"] for r in sft]  # seeded
    got = json.loads(out.read_text())
    assert [r["case"] for r in got["rows"]] == ["load sft", "load pairs", "pairs, prompt per response", "check sft",
                                                "two loads sft", "check pairs", "two loads pairs"]
    assert all(r["seconds"] > 0 for r in got["rows"]) and set(got["ratios"]) == {"load pairs", "check sft",
                                                                                 "check pairs"}
    assert "x the line below" in capsys.readouterr().out
    mem = got["memory"]  # lists hold an 8-byte pointer and often a 28-byte int per token; arrays 4 bytes
    assert mem["tokens"] > 12 * 2 * 100 and mem["arrays_bytes_per_token"] < 12 < mem["lists_bytes_per_token"]
    assert mem["collate_arrays_seconds"] > 0 and mem["collate_lists_seconds"] > 0
    assert all(0 < mem[f"two_loads_{k}_peak_mib"] < mem[f"check_{k}_peak_mib"] for k in ("pairs", "sft"))
