"""benchmarks/bench_generate.py runs end to end on a tiny model (its figures mean nothing here)."""
import json
import sys

from tests._tiny import build_hf_model
from tests.benchmarks import load_script


def _bench(tmp_path):
    """The benchmark as a module, and a tiny model at ``tmp_path / "tiny"``."""
    mod = load_script("bench_generate")
    build_hf_model(tmp_path / "tiny", arch="llama", initializer_range=0.5)
    return mod


def test_bench_generate_runs_each_worker_on_the_same_prompts(tmp_path, monkeypatch, capsys):
    mod = _bench(tmp_path)
    out = tmp_path / "gen.json"
    monkeypatch.setattr(sys, "argv", ["bench_generate.py", "--model", str(tmp_path / "tiny"), "--prompts", "5",
                                      "--batch-size", "2", "--max-new-tokens", "6", "--repeats", "1",
                                      "--json", str(out)])
    mod.main()
    runs = json.loads(out.read_text())
    assert list(runs) == ["transformers", "before", "compact", "default"]
    rows = runs["transformers"]["rows"]
    assert len(rows) == 5 and all(1 <= len(r) <= 6 for r in rows)
    assert runs["before"]["rows"] == runs["compact"]["rows"] == runs["default"]["rows"] == rows  # greedy: same tokens
    assert all(r["seconds"] > 0 and r["peak_rss"] > 0 and r["new_tokens"] == sum(map(len, rows))
               for r in runs.values())
    table = capsys.readouterr().out
    assert table.count("| 5/5 rows |") == 4 and "vs transformers generate: time" in table


def test_bench_generate_times_a_conversation_with_and_without_its_cache(tmp_path, monkeypatch, capsys):
    mod = _bench(tmp_path)
    out = tmp_path / "chat.json"
    monkeypatch.setattr(sys, "argv", ["bench_generate.py", "--model", str(tmp_path / "tiny"), "--chat", "3",
                                      "--max-new-tokens", "4", "--json", str(out)])
    mod.main()
    runs = json.loads(out.read_text())
    assert runs["with"]["answers"] == runs["without"]["answers"] and len(runs["with"]["seconds"]) == 3
    lengths = runs["with"]["prompt_tokens"]
    assert lengths == runs["without"]["prompt_tokens"] and lengths[0] < lengths[1] < lengths[2]
    table = capsys.readouterr().out
    assert "same answers with and without: True" in table and table.count("x |") == 4
