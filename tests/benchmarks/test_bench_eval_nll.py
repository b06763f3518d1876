"""benchmarks/bench_eval_nll.py runs end to end on a tiny model (its times mean nothing here)."""
from tests._tiny import build_hf_model
from tests.benchmarks import run_main


def test_bench_eval_nll_times_both_layouts_and_they_agree(tmp_path, monkeypatch, capsys):
    build_hf_model(tmp_path / "tiny", arch="llama", max_position_embeddings=4096)
    run_main("bench_eval_nll", monkeypatch, "--model", tmp_path / "tiny", "--records", 6, "--batch-size", 3,
             "--repeats", 1, "--max-length", 2048)
    out = capsys.readouterr().out
    rows = [line.split("|")[1:-1] for line in out.splitlines() if line.startswith("| padded") or
            line.startswith("| one row")]
    assert len(rows) == 2 and all(float(r[1]) > 0 for r in rows) and rows[0][2].strip() == "1.00x"
    assert float(out.split("max relative difference of the NLLs: ")[1].split()[0]) < 1e-4
