"""benchmarks/bench_label_scoring.py runs end to end on a tiny model (its times mean nothing here):
the four layouts give every answer the same log-prob."""
import json

from tests._tiny import build_hf_model
from tests.benchmarks import run_main


def test_bench_label_scoring_scores_the_same_answers_each_way(tmp_path, monkeypatch, capsys):
    build_hf_model(tmp_path / "tiny", arch="llama", initializer_range=0.5)
    out = tmp_path / "scores.json"
    run_main("bench_label_scoring", monkeypatch, "--model", tmp_path / "tiny", "--records", 3, "--batch-size", 2,
             "--repeats", 1, "--json", out)
    runs = json.loads(out.read_text())
    assert list(runs) == ["alone", "flat", "tree-rows", "tree"]
    tree = runs["tree"]["logprobs"]
    assert len(tree) == 3 and all(len(r) == 12 for r in tree)  # the portal's 12 answers a record
    assert len({round(v, 3) for v in tree[0]}) > 1
    for kind in ("alone", "flat", "tree-rows"):
        assert max(abs(x - y) for a, b in zip(runs[kind]["logprobs"], tree) for x, y in zip(a, b)) < 1e-3
    assert all(r["seconds"] > 0 and r["peak_rss"] > 0 for r in runs.values())
    table = capsys.readouterr().out
    assert [line.split(":")[0] for line in table.splitlines() if line.endswith("|")][2:] == [
        "| alone", "| flat", "| tree-rows", "| tree"]
    assert "| tree: prompt once, answers as a prefix tree, the batch's shared start once (default) | " in table
    assert "| 1.00x |" in table


def test_bench_label_scoring_says_how_far_bfloat16_moves_the_scores(tmp_path, monkeypatch, capsys):
    build_hf_model(tmp_path / "tiny", arch="llama", initializer_range=0.5)
    out = tmp_path / "scores.json"
    run_main("bench_label_scoring", monkeypatch, "--model", tmp_path / "tiny", "--records", 3, "--batch-size", 2,
             "--repeats", 1, "--kinds", "tree-bf16,tree", "--json", out)
    runs = json.loads(out.read_text())
    a, b = runs["tree-bf16"]["logprobs"], runs["tree"]["logprobs"]
    diffs = [abs(x - y) for ra, rb in zip(a, b) for x, y in zip(ra, rb)]
    assert max(diffs) > 0  # rounded weights (a random tiny model's large logits move far)
    line = capsys.readouterr().out.splitlines()[-1]
    assert line.startswith(f"tree-bf16 against tree: |Δ log-prob| {sum(diffs) / len(diffs):.2g} on average, "
                           f"{max(diffs):.2g} at most; the same likeliest answer for ")
    assert " of 3 records; an answer's probability among its record's moved by " in line
    assert line.endswith(" at most") and 0 < float(line.split()[-3]) <= 1
