"""benchmarks/bench_length_batches.py runs end to end on a tiny model (its times mean nothing
here): both ways give the same answers and scores, and the table says so."""
import json

from tests._tiny import build_hf_model
from tests.benchmarks import load_script, run_main


def test_bench_length_batches_answers_and_scores_the_same_both_ways(tmp_path, monkeypatch, capsys):
    build_hf_model(tmp_path / "tiny", max_position_embeddings=4096)
    out = tmp_path / "runs.json"
    run_main("bench_length_batches", monkeypatch, "--model", tmp_path / "tiny", "--sets", "outlier", "--new-tokens", 2,
             "--json", out)
    runs = json.loads(out.read_text())
    assert list(runs) == ["outlier/answer", "outlier/score"]
    for name, ways in runs.items():
        before, now = ways["before"], ways["now"]
        assert len(now["out"]) == len(now["prompt_tokens"]) == 16
        if name.endswith("answer"):
            assert before["out"] == now["out"]
        else:
            assert max(abs(x - y) for a, b in zip(before["out"], now["out"]) for x, y in zip(a, b)) < 1e-3
    tokens = runs["outlier/answer"]["now"]["prompt_tokens"]
    assert max(tokens) > 10 * min(tokens)
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| outlier")]
    assert len(rows) == 2 and rows[0].endswith("| 16 of 16 answers |") and "| log-probs within " in rows[1]


def test_the_batches_before_took_batch_size_prompts_in_length_or_records_order(monkeypatch):
    monkeypatch.syspath_prepend(str(__import__("tests.benchmarks", fromlist=["BENCHMARKS"]).BENCHMARKS))
    before = load_script("bench_length_batches").before
    assert before([5, 1, 4, 2, 3], 2) == [[1, 3], [4, 2], [0]]
    assert before([5, 1, 4, 2, 3], 2, order="records") == [[0, 1], [2, 3], [4]]
