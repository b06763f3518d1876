"""``prefopt compare ... --estimate-memory``: what a training step of the SFT and of the DPO stage
holds, from compare's settings and the model's config.json alone, before anything is read or written."""
import json
import subprocess
import sys

import pytest

from prefopt.evaluate.compare import CompareConfig, run_compare
from prefopt.evaluate.compare_train import estimate_stages
from prefopt.train.memory_estimate import estimate_memory
from tests.tasks.conftest import StopAtSFT


def _config_only(tmp_path):
    """A Llama-style model's config.json and nothing else: no weights, no tokenizer."""
    cfg = dict(architectures=["LlamaForCausalLM"], model_type="llama", hidden_size=128, intermediate_size=352,
               num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, vocab_size=2048,
               max_position_embeddings=4096, rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False)
    d = tmp_path / "config-only"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(cfg))
    return d


def _peaks(lines: list[str]) -> list[str]:
    return [line.split()[1] + " " + line.split()[2] for line in lines if line.startswith("  peak ")]


def test_each_stage_is_estimated_with_the_runs_own_settings(tmp_path):
    d = _config_only(tmp_path)

    def stages(**overrides):
        return estimate_stages(CompareConfig(task="aci_bench", model=str(d), output=str(tmp_path / "run"),
                                             overrides=overrides), "cuda")

    lines = stages()
    # the task's own max_length over the preset's, said; the quick preset's 4 examples, and DPO's 2 pairs (4 rows)
    assert lines[0] == ("max_length 1024, not the quick preset's 384: aci_bench examples need it (--set max_length=N "
                        "to choose)")
    assert lines[1].startswith("SFT stage: memory estimate for one training step on CUDA under bf16 autocast, float32 "
                               "weights, a micro-batch of 4 sequences of 1024 tokens:")
    dpo = next(line for line in lines if line.startswith("DPO stage: "))
    assert "a micro-batch of 4 sequences of 1024 tokens:" in dpo
    assert lines[-1].startswith("Not counted: the evaluations' answers")
    assert not (tmp_path / "run").exists()
    # each setting reaches its stage: a larger SFT batch grows SFT's step alone; checkpointing shrinks both
    sft, dpo = _peaks(lines)
    bigger = _peaks(stages(batch_size=8))
    assert bigger[1] == dpo and float(bigger[0].split()[0]) > float(sft.split()[0])
    checkpointed = stages(gradient_checkpointing=True)
    assert sum("gradient checkpointing on 2 of 2 layers" in line for line in checkpointed) == 2
    with pytest.raises(ValueError, match="gradient_checkpointing: true or false"):
        stages(gradient_checkpointing=2)  # the run's own checks, before any estimate


def test_the_sft_estimate_is_of_the_config_a_real_run_trains_with(tiny_model, tmp_path, sft_configs):
    settings = {"max_train": 8, "test": 4, "sft_steps": 2, "batch_size": 2, "max_length": 256, "eval_batch_size": 8,
                "gradient_checkpointing": True, "gradient_checkpointing_layers": 1, "lora_r": 4}
    cfg = CompareConfig(task="portal", model=str(tiny_model), output=str(tmp_path / "run"), overrides=settings,
                        device="cpu")
    estimated = estimate_stages(cfg)
    with pytest.raises(StopAtSFT):
        run_compare(cfg)
    (trained,) = sft_configs
    assert estimated[:len(estimate_memory(trained).lines())] == \
        [f"SFT stage: {estimate_memory(trained).lines()[0]}", *estimate_memory(trained).lines()[1:]]
    assert "gradient checkpointing on 1 of" in estimated[0] and "2 sequences of 256 tokens" in estimated[0]


def test_the_cli_prints_both_stages_and_writes_nothing(tmp_path):
    d, out = _config_only(tmp_path), tmp_path / "run"
    base = [sys.executable, "-m", "prefopt.cli", "compare", "--task", "portal", "--model", str(d), "--output", str(out)]
    r = subprocess.run([*base, "--set", "dpo_batch_size=1", "--estimate-memory", "cpu"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "SFT stage: memory estimate for one training step on a CPU" in r.stdout
    assert "DPO stage: memory estimate for one training step on a CPU, float32 weights, a micro-batch of 2 sequences " \
           "of 384 tokens:" in r.stdout
    assert not out.exists()
    r = subprocess.run([*base, "--set", "lora_targets=q_proj,lm_head", "--estimate-memory"], capture_output=True,
                       text=True)  # an adapted head (its one-pass loss) is estimated too
    assert r.returncode == 0 and "SFT stage: memory estimate" in r.stdout and "DPO stage:" in r.stdout, r.stderr
    from tests._tiny import build_hf_model

    build_hf_model(tmp_path / "moe", arch="qwen3_moe", tokenizer=False)
    r = subprocess.run([*base[:6], "--model", str(tmp_path / "moe"), *base[8:], "--estimate-memory"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "mixture of experts" in r.stderr, r.stderr


def test_study_estimates_each_tasks_stages_once_for_each_set_of_settings(tmp_path, monkeypatch):
    from prefopt.evaluate.study import estimate_study
    from prefopt.train import memory_estimate

    d, calls = _config_only(tmp_path), []

    def counted(config, device=None, **kw):
        calls.append((type(config).__name__, config.max_length))
        return estimate_memory(config, device, **kw)

    monkeypatch.setattr(memory_estimate, "estimate_memory", counted)
    lines = estimate_study(str(d), tmp_path / "study", tasks="medqa,aci_bench,portal", on="cpu")
    rows = {line.split()[0]: line.split(None, 1)[1] for line in lines if line.startswith("  ")}
    assert list(rows) == ["medqa", "aci_bench", "portal"]  # the study's order; no data needed for any
    assert "max_length 1024, not the quick preset's 384: aci_bench examples need it" in lines[0]
    assert lines[1].startswith("memory estimate for one training step of each task's stages on a CPU, float32 weights")
    assert rows["medqa"] == rows["portal"] and "(4 sequences of 384 tokens)" in rows["medqa"]
    assert rows["aci_bench"].startswith("SFT ") and "(4 sequences of 1024 tokens)" in rows["aci_bench"]
    assert sorted(calls) == [("DPOConfig", 384), ("DPOConfig", 1024), ("TrainConfig", 384), ("TrainConfig", 1024)]
    assert not (tmp_path / "study").exists()


def test_the_study_cli_prints_the_estimate_and_writes_nothing(tmp_path, capsys):
    from prefopt.cli import main

    d, out = _config_only(tmp_path), tmp_path / "study"
    assert main(["study", "--model", str(d), "--output", str(out), "--tasks", "portal", "--set", "batch_size=2",
                 "--estimate-memory", "cpu"]) == 0
    said = capsys.readouterr().out.splitlines()
    assert said[0].startswith("memory estimate for one training step of each task's stages on a CPU")
    sft, dpo = said[1].split(", DPO ")
    assert sft.split()[:2] == ["portal", "SFT"] and sft.endswith("(2 sequences of 384 tokens)")  # --set batch_size=2
    assert dpo.endswith("(4 sequences of 384 tokens)")  # the preset's 2 pairs
    assert not out.exists()
