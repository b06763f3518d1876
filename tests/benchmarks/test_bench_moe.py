"""``benchmarks/bench_moe.py``: both implementations run in their own processes on one saved model
and agree on its logits; the table and the ratios come out."""
import json

import pytest

from tests.benchmarks import load_script

pytest.importorskip("transformers")


def test_bench_moe_runs_both_on_one_model_and_reports_the_ratios(tmp_path, capsys):
    out = load_script("bench_moe").main(["--experts", "4", "--top-k", "2", "--hidden", "64", "--layers", "1",
                                         "--vocab", "500", "--tokens", "256", "--steps", "1", "--warmup", "0",
                                         "--json", str(tmp_path / "moe.json")])
    assert out["logits_max_abs_diff"] < 1e-4  # the same model, read by each
    assert set(out["runs"]) == {"transformers", "prefopt"} and out["time_ratio"] > 0 and out["memory_ratio"] > 0
    assert json.loads((tmp_path / "moe.json").read_text())["time_ratio"] == out["time_ratio"]
    text = capsys.readouterr().out
    assert "4 experts (top 2)" in text and "| prefopt |" in text and "prefopt / transformers:" in text


def test_bench_moe_with_adapters_on_the_experts_runs_peft_beside_prefopt(tmp_path, capsys):
    pytest.importorskip("peft")
    out = load_script("bench_moe").main(["--experts", "4", "--top-k", "2", "--hidden", "64", "--layers", "1",
                                         "--vocab", "500", "--tokens", "256", "--steps", "1", "--warmup", "0",
                                         "--lora", "4"])
    assert out["logits_max_abs_diff"] < 1e-4  # B starts at zero in both: the base model's logits
    assert "LoRA r4 on the attention and experts (transformers: PEFT)" in capsys.readouterr().out
