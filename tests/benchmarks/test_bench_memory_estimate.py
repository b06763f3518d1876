"""benchmarks/bench_memory_estimate.py runs end to end on a tiny model: every setting's estimate
beside the real step's allocations."""
from tests._tiny import build_hf_model
from tests.benchmarks import run_main


def test_bench_memory_estimate_puts_each_estimate_beside_a_real_step(tmp_path, monkeypatch, capsys):
    build_hf_model(tmp_path / "tiny", hidden_size=128, intermediate_size=352, num_hidden_layers=3)
    run_main("bench_memory_estimate", monkeypatch, "--model", tmp_path / "tiny", "--batch-size", 2,
             "--max-length", 48)
    rows = [line.split(" | ") for line in capsys.readouterr().out.splitlines() if line.startswith("| SFT")
            or line.startswith("| DPO")]
    assert [(r[0], r[1]) for r in rows] == [(f"| {k}", s) for k in ("SFT", "DPO")
                                           for s in ("LoRA", "LoRA, checkpointing", "DoRA", "QLoRA (nf4)",
                                                     "LoRA, --grad-accum 2", "full fine-tuning")]
    assert all(0.995 < float(r[4]) < 1.005 for r in rows), rows
