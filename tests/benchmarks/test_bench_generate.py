"""benchmarks/bench_generate.py runs end to end on a tiny model (its figures mean nothing here)."""
import json

import pytest

from tests._tiny import build_hf_model
from tests.benchmarks import run_main


def _bench(tmp_path, monkeypatch, *args) -> None:
    """The benchmark on a tiny model at ``tmp_path / "tiny"``."""
    build_hf_model(tmp_path / "tiny", arch="llama", initializer_range=0.5)
    run_main("bench_generate", monkeypatch, "--model", tmp_path / "tiny", *args)


def test_bench_generate_runs_each_worker_on_the_same_prompts(tmp_path, monkeypatch, capsys):
    out = tmp_path / "gen.json"
    _bench(tmp_path, monkeypatch, "--prompts", 5, "--batch-size", 2, "--max-new-tokens", 6, "--repeats", 1,
           "--json", out)
    runs = json.loads(out.read_text())
    assert list(runs) == ["transformers", "before", "compact", "default"]
    rows = runs["transformers"]["rows"]
    assert len(rows) == 5 and all(1 <= len(r) <= 6 for r in rows)
    assert runs["before"]["rows"] == runs["compact"]["rows"] == runs["default"]["rows"] == rows  # greedy: same tokens
    assert all(r["seconds"] > 0 and r["peak_rss"] > 0 and r["new_tokens"] == sum(map(len, rows))
               for r in runs.values())
    table = capsys.readouterr().out
    assert table.count("| 5/5 rows |") == 4 and "vs transformers generate: time" in table


# the tiny model's 256 positions: the conversation outgrows them (the warning's own test: tests/model/test_generate.py)
@pytest.mark.filterwarnings("ignore:a prompt of .* runs past the model's context")
def test_bench_generate_times_a_conversation_with_and_without_its_cache(tmp_path, monkeypatch, capsys):
    out = tmp_path / "chat.json"
    _bench(tmp_path, monkeypatch, "--chat", 3, "--max-new-tokens", 4, "--json", out)
    runs = json.loads(out.read_text())
    assert runs["with"]["answers"] == runs["without"]["answers"] and len(runs["with"]["seconds"]) == 3
    lengths = runs["with"]["prompt_tokens"]
    assert lengths == runs["without"]["prompt_tokens"] and lengths[0] < lengths[1] < lengths[2]
    table = capsys.readouterr().out
    assert "same answers with and without: True" in table and table.count("x |") == 4
