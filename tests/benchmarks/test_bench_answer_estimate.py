"""benchmarks/bench_answer_estimate.py runs end to end on a tiny model: every row's estimate
beside the real generation's allocations."""
from tests._tiny import build_hf_model
from tests.benchmarks import run_main


def test_bench_answer_estimate_puts_each_estimate_beside_a_real_generation(tmp_path, monkeypatch, capsys):
    build_hf_model(tmp_path / "tiny", hidden_size=128, intermediate_size=352, num_hidden_layers=2,
                   max_position_embeddings=1024)
    run_main("bench_answer_estimate", monkeypatch, "--model", tmp_path / "tiny", "--scale", 0.5)
    rows = [line.split(" | ") for line in capsys.readouterr().out.splitlines()
            if line.startswith(("| evaluation", "| training"))]
    assert [(r[0], r[1:6]) for r in rows] == [
        ("| evaluation", ["8", "192", "0", "8", "no"]), ("| evaluation", ["8", "192", "0", "8", "yes"]),
        ("| evaluation", ["8", "192", "128", "8", "yes"]), ("| evaluation", ["8", "512", "0", "48", "no"]),
        ("| evaluation", ["2", "32", "0", "256", "yes"]), ("| evaluation, QLoRA base", ["8", "192", "0", "8", "no"]),
        ("| training (DPO's validation)", ["8", "192", "0", "8", "yes"])]
    assert all(0.995 < float(r[8]) < 1.005 for r in rows), rows
