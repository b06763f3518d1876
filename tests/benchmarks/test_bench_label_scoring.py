"""benchmarks/bench_label_scoring.py runs end to end on a tiny model (its times mean nothing here):
the three layouts give every answer the same log-prob."""
import json
import sys

from tests._tiny import build_hf_model
from tests.benchmarks import load_script


def test_bench_label_scoring_scores_the_same_answers_each_way(tmp_path, monkeypatch, capsys):
    mod = load_script("bench_label_scoring")
    build_hf_model(tmp_path / "tiny", arch="llama", initializer_range=0.5)
    out = tmp_path / "scores.json"
    monkeypatch.setattr(sys, "argv", ["bench_label_scoring.py", "--model", str(tmp_path / "tiny"), "--records", "3",
                                      "--batch-size", "2", "--repeats", "1", "--json", str(out)])
    mod.main()
    runs = json.loads(out.read_text())
    assert list(runs) == ["alone", "flat", "tree"]
    tree = runs["tree"]["logprobs"]
    assert len(tree) == 3 and all(len(r) == 12 for r in tree)  # the portal's 12 answers a record
    assert len({round(v, 3) for v in tree[0]}) > 1
    for kind in ("alone", "flat"):
        assert max(abs(x - y) for a, b in zip(runs[kind]["logprobs"], tree) for x, y in zip(a, b)) < 1e-3
    assert all(r["seconds"] > 0 and r["peak_rss"] > 0 for r in runs.values())
    table = capsys.readouterr().out
    assert [line.split(":")[0] for line in table.splitlines() if line.endswith("|")][2:] == ["| alone", "| flat",
                                                                                          "| tree"]
    assert "| tree: prompt once, answers as a prefix tree (default) | " in table and "| 1.00x |" in table
