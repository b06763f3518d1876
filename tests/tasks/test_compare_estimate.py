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
    # answering the test set: eval_batch_size prompts of max_length tokens, answers of the task's max_new_tokens,
    # on the model as evaluations load it (bfloat16 on CUDA); no validation answers without val
    answers = [line for line in lines if not line.startswith("  ") and "answers (" in line]
    assert answers == ["Test-set answers (each stage): memory estimate on CUDA, bfloat16 weights, 16 prompts of 1024 "
                       "tokens at once and answers of up to 384:"]
    assert lines[-1].startswith("Not counted: before DPO's first step, its reference pass")
    assert not (tmp_path / "run").exists()
    # each setting reaches its stage: a larger SFT batch grows SFT's step alone; checkpointing shrinks both
    sft, dpo, answered = _peaks(lines)
    bigger = _peaks(stages(batch_size=8))
    assert bigger[1:] == [dpo, answered] and float(bigger[0].split()[0]) > float(sft.split()[0])
    checkpointed = stages(gradient_checkpointing=True)
    assert sum("gradient checkpointing on 2 of 2 layers" in line for line in checkpointed) == 2
    with pytest.raises(ValueError, match="gradient_checkpointing: true or false"):
        stages(gradient_checkpointing=2)  # the run's own checks, before any estimate
    # each answering setting reaches it; held-out validation items add DPO's answers during training, beside its
    # float32 training model and AdamW's moments
    answering = stages(eval_batch_size=4, max_new_tokens=32, val=8)
    heads = [line for line in answering if not line.startswith("  ") and "answers (" in line]
    assert heads == ["Test-set answers (each stage): memory estimate on CUDA, bfloat16 weights, 4 prompts of 1024 "
                     "tokens at once and answers of up to 32:",
                     "DPO's validation answers (during its training): memory estimate on CUDA under bf16 autocast, "
                     "float32 weights, 4 prompts of 1024 tokens at once and answers of up to 32:"]
    moments = [line for line in answering if line.startswith("  weights") and "AdamW's two moments" in line]
    assert len(moments) == 1


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
    steps = {task: row.split(", answers ")[0] for task, row in rows.items()}
    assert steps["medqa"] == steps["portal"] and "(4 sequences of 384 tokens)" in steps["medqa"]
    assert steps["aci_bench"].startswith("SFT ") and "(4 sequences of 1024 tokens)" in steps["aci_bench"]
    # answering each task's test set: its prompts as long as its examples may be, its own answer length
    assert lines[1].endswith("and for answering the test set (float32 weights): the peak of tensors at once (add the "
                             "process's own code and what the C allocator keeps (the resident set is often 0.5-1 GiB "
                             "more))")
    assert [row.split(", answers ")[1].split(" (")[1] for row in rows.values()] == \
        ["16 prompts of 384 + 24 tokens)", "16 prompts of 1024 + 384 tokens)", "16 prompts of 384 + 16 tokens)"]
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
    dpo, answers = dpo.split(", answers ")
    assert sft.split()[:2] == ["portal", "SFT"] and sft.endswith("(2 sequences of 384 tokens)")  # --set batch_size=2
    assert dpo.endswith("(4 sequences of 384 tokens)")  # the preset's 2 pairs
    assert answers.endswith("(16 prompts of 384 + 16 tokens)")
    assert not out.exists()


def test_compare_warns_of_answers_that_will_not_fit_in_its_own_words(tiny_model, tmp_path, sft_configs, monkeypatch,
                                                                      capsys):
    """The base stage's evaluation, before any training: the warning names compare's setting."""
    from prefopt.train import memory_estimate

    monkeypatch.setattr(memory_estimate, "free_bytes", lambda device: 4096)
    cfg = CompareConfig(task="portal", model=str(tiny_model), output=str(tmp_path / "run"), device="cpu",
                        overrides={"max_train": 8, "test": 4, "max_new_tokens": 2})
    with pytest.warns(UserWarning) as warned, pytest.raises(StopAtSFT):
        run_compare(cfg)
    notes = [str(w.message) for w in warned if "answering" in str(w.message)]
    assert notes and notes[0].startswith("answering 4 prompts of ")
    assert "Lower --set eval_batch_size=N: fewer prompts answered at once" in notes[0]
