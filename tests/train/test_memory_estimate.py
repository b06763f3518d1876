"""The memory estimate (``prefopt sft/dpo --estimate-memory``) against the allocations of a real
training step: PyTorch's profiler on a CPU (every allocation and release, summed in time order),
``torch.cuda.max_memory_allocated`` on a GPU; and what it reads from a config.json alone."""
import json
import os
import random
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from prefopt.data.feedback import FeedbackExample
from prefopt.data.preference import PairExample
from prefopt.data.sft import TokenizedExample
from prefopt.fileio import size_text
from prefopt.train import DPOConfig, DPOTrainer, SFTTrainer, TrainConfig
from prefopt.train.memory_estimate import allocated_peak, estimate_memory, measured_step
from prefopt.train.run import prepare_model
from tests._failure import failure
from tests._tiny import build_hf_model

ROOT = Path(__file__).resolve().parents[2]
T = 96  # every example exactly max_length tokens, all but the first scored: the case the estimate assumes


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("estimate") / "model"
    build_hf_model(d, hidden_size=128, intermediate_size=352, num_hidden_layers=4)
    return d


def _example(rng: random.Random) -> TokenizedExample:
    """T tokens, the first (a one-token prompt, the same in every example: a pair shares it, and
    is packed as real pairs are) not scored."""
    ids = [1] + [rng.randrange(3, 400) for _ in range(T - 1)]
    return TokenizedExample(ids, [-100] + ids[1:])


def _trainer(kind: str, config, model):
    rng = random.Random(0)
    if kind == "sft":
        return SFTTrainer(model, config, [_example(rng) for _ in range(12)], pad_id=2)
    return DPOTrainer(model, config, [PairExample(_example(rng), _example(rng)) for _ in range(12)], pad_id=2,
                      ref_cache=config.ref_cache)  # (full fine-tuning: the reference from a cache, filled first)


def test_the_measure_leaves_out_the_release_of_a_block_an_earlier_measured_job_left():
    """PyTorch's CPU allocator remembers the size of every block allocated under any profiler, so
    a block that an earlier measured job left alive, freed in a later one, was subtracted from the
    later one's allocations: in a long-lived pytest worker a DPO step once read 0.905 of its usual
    peak. Only the releases of blocks allocated in the window count now."""
    kept = []
    assert allocated_peak(lambda: kept.append(torch.ones(2**20))) == 4 * 2**20  # left alive

    def job():
        kept.clear()  # the earlier job's 4 MiB freed here
        return torch.ones(2**19).sum()

    assert 2 * 2**20 <= allocated_peak(job) < 2 * 2**20 + 256  # its own 2 MiB (and the sum's scalar), not -2 MiB


@pytest.mark.parametrize("kind", ["sft", "dpo"])
@pytest.mark.parametrize("settings", [{}, {"gradient_checkpointing": True}, {"lora_dora": True}, {"quantize": "nf4"},
                                      {"lora": False}, {"lora_targets": ["q_proj", "v_proj", "lm_head"]},
                                      {"grad_accum": 3}],
                         ids=["lora", "checkpointing", "dora", "qlora", "full", "head", "accum"])
def test_the_estimate_is_a_real_steps_peak_on_a_cpu(model_dir, tmp_path, kind, settings):
    """``full`` and ``head``: a trained lm_head, its one-pass loss (the head's gradients formed in
    the forward) followed too. ``accum``: three micro-batches a step, all collated first and held
    on a CPU, the later ones run beside the earlier's gradients. Until 2026-12-05 a 1% tolerance
    hid two misses: those gradients (2.4% of the step here) and the batch's own tensors (DPO's
    packed pairs' masks, 0.4%)."""
    cls = TrainConfig if kind == "sft" else DPOConfig
    if kind == "dpo" and not settings.get("lora", True):
        settings = {**settings, "ref_cache": str(tmp_path / "cache")}
    config = cls(model=str(model_dir), output_dir=str(tmp_path / "run"), batch_size=4, max_length=T, device="cpu",
                 lora_dropout=0.05, **settings)
    est = estimate_memory(config)
    real = measured_step(_trainer(kind, config, prepare_model(config)))  # PyTorch's profiler over step 2
    assert est.sequences == (4 if kind == "sft" else 8) and est.tokens == T
    assert abs(est.peak / real - 1) < 0.003, (est.peak, real)  # (1.0001-1.0003 on 2026-12-05)
    assert est.checkpointed == (4 if settings.get("gradient_checkpointing") else 0)


@pytest.mark.parametrize("variant", [{"loss": "simpo"}, {"wpo": True}, {"ld_alpha": 0.5}, {"share_prompt": False},
                                     {"loss": "kto"}], ids=["simpo", "wpo", "ld", "stacked", "kto"])
def test_the_estimate_follows_each_dpo_loss_path_in_a_real_step(model_dir, tmp_path, variant):
    """A reference-free loss, WPO's weights (one more no-grad pass through the head), LD-DPO's
    per-token weights, the pairs stacked rather than packed, and KTO (each example beside another's
    completion, its KL sample: the estimate's pairs of the same sizes): each the trainer's own path."""
    config = DPOConfig(model=str(model_dir), output_dir=str(tmp_path / "run"), batch_size=4, max_length=T,
                       device="cpu", lora_dropout=0.05, **variant)
    est = estimate_memory(config)
    if config.loss == "kto":
        rng = random.Random(0)
        examples = [FeedbackExample(_example(rng), _example(rng), desirable=i % 2 == 0) for i in range(12)]
        trainer = DPOTrainer(prepare_model(config), config, examples, pad_id=2)
    else:
        trainer = _trainer("dpo", config, prepare_model(config))
    real = measured_step(trainer)
    assert abs(est.peak / real - 1) < 0.003, (est.peak, real)


@pytest.mark.slow
@pytest.mark.parametrize("kind,settings", [("sft", {}), ("sft", {"gradient_checkpointing": True}), ("dpo", {}),
                                           ("sft", {"batch_size": 2, "grad_accum": 2})],
                         ids=["sft", "checkpointing", "dpo", "accumulation"])
def test_under_fsdp_the_estimate_is_one_of_two_real_ranks(model_dir, tmp_path, kind, settings):
    """Two gloo processes on the CPU, each its share: the weights and AdamW's moments to the
    byte, the step's peak within what the real one varies by from run to run. The collectives run
    in gloo's own threads, and when they free a unit's gathered weights (and its unsharded
    gradients, once reduce-scattered) varies: a real peak has been the estimate (to 0.1%) plus up
    to every unit's gathered weights at once, the whole model's, and once a block more (this tiny
    model's 4 blocks are 0.74 MB each, the root's embedding, head and norm 0.41 MB; with two
    micro-batches a step, CI on 2026-12-06 saw a rank 4.55 blocks over, all of them, where the
    bound of every block's weights this test held until then failed; the suite here, beside other
    tests, 5.55). The bound is what FSDP can hold whole at once: every unit's weights and every
    unit's gradients, twice the model's weights."""
    fields = {**dict(model=str(model_dir), output_dir=str(tmp_path / "run"), batch_size=4, max_length=T,
                     device="cpu", lora=False, fsdp=True), **settings}
    if kind == "dpo":
        fields["ref_cache"] = str(tmp_path / "cache")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        str(ROOT / "tests" / "train" / "_estimate_rank.py"), kind, json.dumps(fields), str(tmp_path)],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, failure(r)
    ranks = [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in (0, 1)]
    assert sorted(x["rank"] for x in ranks) == [0, 1]
    est = estimate_memory((TrainConfig if kind == "sft" else DPOConfig)(**fields), processes=2)
    assert est.processes == 2 and all(x["weights"] == est.weights and x["moments"] == est.optimizer for x in ranks)
    whole = estimate_memory((TrainConfig if kind == "sft" else DPOConfig)(**{**fields, "fsdp": False}))
    assert est.weights < 0.6 * whole.weights and est.peak < whole.peak  # a share, not the whole model
    for x in ranks:  # not under the estimate (1% allowed), nor over it by more than FSDP can hold unsharded at once
        assert -0.01 * est.peak < x["peak"] - est.peak <= 2 * whole.weights + 0.01 * est.peak, (est.peak, x["peak"])


def _config_only(tmp_path, **overrides):
    """A Llama-style model's config.json and nothing else: no weights, no tokenizer."""
    cfg = dict(architectures=["LlamaForCausalLM"], model_type="llama", hidden_size=1024, intermediate_size=2816,
               num_hidden_layers=8, num_attention_heads=16, num_key_value_heads=4, vocab_size=32000,
               max_position_embeddings=4096, rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False)
    cfg.update(overrides)
    d = tmp_path / "config-only"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(cfg))
    return d, cfg


def test_a_config_json_alone_gives_the_weights_and_what_each_setting_saves(tmp_path):
    d, c = _config_only(tmp_path)
    D, F, V, L, kv = c["hidden_size"], c["intermediate_size"], c["vocab_size"], c["num_hidden_layers"], 256
    params = 2 * V * D + L * (2 * D * D + 2 * D * kv + 3 * D * F + 2 * D) + D
    lora = L * 16 * (2 * (D + D) + 2 * (D + kv) + 3 * (D + F))  # r16's A and B on the seven projections

    def est(**kw):
        base = dict(model=str(d), output_dir=str(tmp_path / "run"), batch_size=2, max_length=512)
        return estimate_memory(DPOConfig(**{**base, **kw}), "cuda")

    plain = est()
    assert abs(plain.weights - 4 * (params + lora)) < 4096  # fp32 weights, the adapter's included (+ RoPE's buffer)
    assert plain.trained == 4 * lora and plain.optimizer == 2 * plain.trained
    assert plain.sequences == 4 and plain.device == "cuda"
    assert plain.peak > plain.weights + plain.activations + plain.workspace
    assert plain.workspace == 64 * 2**20 or torch.cuda.is_available()  # cuBLAS's two, Hopper's size with no GPU
    assert f"workspace    {size_text(64 * 2**20)} for cuBLAS" in "\n".join(plain.lines()) or torch.cuda.is_available()
    assert estimate_memory(DPOConfig(model=str(d), output_dir="-", batch_size=2, max_length=512), "cpu").workspace == 0
    ckpt = est(gradient_checkpointing=True)
    assert ckpt.activations < plain.activations / 4 and ckpt.peak < plain.peak
    half = est(gradient_checkpointing=True, gradient_checkpointing_layers=4)
    assert ckpt.activations < half.activations < plain.activations and half.checkpointed == 4
    bf16 = est(dtype="bfloat16")
    assert abs(bf16.weights - (2 * params + 4 * lora)) < 4096  # the adapter stays fp32 over a 16-bit base
    nf4 = est(quantize="nf4")
    assert nf4.weights < 4 * 2 * V * D + params  # the projections in about half a byte a weight
    longer = est(max_length=1024)
    # at most twice (no (T, T) attention matrix kept: SDPA's fused path), less by the head's fixed-size blocks
    assert 1.7 < longer.activations / plain.activations <= 2.0
    with_ref = est(ref=str(d))
    assert abs(with_ref.weights - plain.weights - 4 * params) < 4096  # a separate reference model's
    assert with_ref.reference == with_ref.weights - plain.weights and plain.reference == 0
    assert (f"  weights      {size_text(with_ref.weights)}, the reference model's (--ref) "
            f"{size_text(with_ref.reference)} among them") in with_ref.lines()
    L = 2 * 512 - 1  # a packed pair's row: the one-token prompt, then both answers; two pairs
    # the pairs' masks (booleans), token ids, attention mask and positions (int64 a row), labels and gather (a sequence)
    assert plain.batch == 2 * L * L + 3 * 2 * L * 8 + 2 * 4 * 511 * 8
    assert f"  batch        {size_text(plain.batch)} of token ids, labels and masks" in plain.lines()
    accum = est(grad_accum=3)  # a CPU step collates all three micro-batches first; CUDA holds the one copied there
    on_cpu = estimate_memory(DPOConfig(model=str(d), output_dir="-", batch_size=2, max_length=512, grad_accum=3), "cpu")
    assert accum.batch == plain.batch and on_cpu.batch == 3 * plain.batch and on_cpu.accum == 3
    assert "(3 micro-batches, --grad-accum, collated before the step)" in "\n".join(on_cpu.lines())
    assert accum.peak - plain.peak >= accum.trained  # the first micro-batch's gradients held through the second's
    for variant in ({"loss": "kto"}, {"loss": "simpo"}, {"wpo": True}, {"ld_alpha": 0.5}, {"share_prompt": False}):
        other = est(**variant)  # the loss's own path (reference-free, weighted, unpaired taken as pairs, stacked rows)
        assert 0.9 < other.peak / plain.peak < 1.1, (variant, other.peak, plain.peak)


def test_cublas_workspace_follows_its_setting(monkeypatch):
    from prefopt.train.memory_estimate import cublas_workspace

    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:2:16:8")  # KiB × count, pairs summed; one per thread
    assert cublas_workspace("cuda") == 2 * (4096 * 2 + 16 * 8) * 1024
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    assert cublas_workspace("cuda") == 2 * 128 * 1024 and cublas_workspace("cpu") == 0


def test_what_it_does_not_cover_is_refused_by_name(tmp_path):
    d, _ = _config_only(tmp_path)
    moe = tmp_path / "moe"
    build_hf_model(moe, arch="qwen3_moe", tokenizer=False)
    with pytest.raises(ValueError, match="qwen3_moe.*mixture of experts.*covers dense models"):
        estimate_memory(TrainConfig(model=str(moe), output_dir="-"))
    with pytest.raises(ValueError, match="for cpu or cuda, not 'mps'"):
        estimate_memory(TrainConfig(model=str(d), output_dir="-"), "mps")
    gguf = TrainConfig(model=str(tmp_path / "model.gguf"), output_dir="-")
    for given in (gguf, TrainConfig(model=str(tmp_path / "MODEL.GGUF"), output_dir="-")):  # (any case)
        with pytest.raises(ValueError, match="reads an HF folder's config.json; import the GGUF file first"):
            estimate_memory(given)
    from prefopt.model import ModelConfig  # a run that loaded the GGUF file has its config: estimated (fit_note)

    assert estimate_memory(gguf, model_config=ModelConfig.from_hf(d)).peak > 0


def test_the_cli_prints_the_estimate_and_writes_nothing(tmp_path, monkeypatch, capsys):
    from prefopt.cli import main

    d, _ = _config_only(tmp_path)
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "prefopt.cli", "dpo", "--model", str(d), "--output-dir", str(out),
                        "--batch-size", "2", "--max-length", "512", "--gradient-checkpointing",
                        "--estimate-memory", "cuda"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "one training step on CUDA" in r.stdout and "4 sequences of 512 tokens" in r.stdout
    assert "gradient checkpointing on 8 of 8 layers" in r.stdout and "  peak " in r.stdout
    assert not out.exists()
    fsdp = ["sft", "--model", str(d), "--no-lora", "--fsdp", "--estimate-memory"]  # in this process from here
    assert main(fsdp) == 0
    said = capsys.readouterr().out.splitlines()  # each process's share: for 2, and a line for 4 and 8
    assert said[0].endswith("under --fsdp for each of 2 processes (its share of the weights, their gradients and "
                            "AdamW's moments; a block's whole weights while it runs):")
    assert said[-1].startswith("  peak with 4 processes ") and ", with 8 " in said[-1]
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "0")
    assert main(fsdp) == 0
    said = capsys.readouterr().out
    assert "under --fsdp for each of 4 processes" in said and "with 8" not in said
    monkeypatch.setenv("RANK", "1")
    assert main(fsdp) == 0 and capsys.readouterr().out == ""  # under torchrun: said once


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("kind", ["sft", "dpo"])
def test_the_estimate_against_cuda_allocations(model_dir, tmp_path, kind):
    cls = TrainConfig if kind == "sft" else DPOConfig
    config = cls(model=str(model_dir), output_dir=str(tmp_path / "run"), batch_size=4, max_length=T, device="cuda",
                 lora_dropout=0.05)
    est = estimate_memory(config)
    real = measured_step(_trainer(kind, config, prepare_model(config)))  # CUDA's max allocated over step 2
    # the Triton head and CUDA's autocast differ from the CPU stand-ins the estimate runs: within a fifth
    assert abs(est.peak / real - 1) < 0.2, (est.peak, real)


def test_a_run_that_will_not_fit_is_warned_of_before_step_1(model_dir, tmp_path, monkeypatch, capsys):
    from prefopt.train import memory_estimate

    config = TrainConfig(model=str(model_dir), output_dir=str(tmp_path / "tight"), batch_size=4, max_length=T,
                         max_steps=2, progress=False)
    rng = random.Random(0)
    data = [TokenizedExample(ids, [-100] + ids[1:]) for ids in ([rng.randrange(3, 400) for _ in range(n)]
                                                                   for n in (20, 40, 60, 30))]
    SFTTrainer(prepare_model(config), config, data, pad_id=2).train()
    assert "will likely run out of memory" not in capsys.readouterr().err  # this machine has room for it
    monkeypatch.setattr(memory_estimate, "free_bytes", lambda device: 1024)
    config = TrainConfig(**{**config.__dict__, "output_dir": str(tmp_path / "tighter")})
    model = prepare_model(config)
    rng_before = torch.get_rng_state()
    assert memory_estimate.fit_note(config, model, torch.device("cpu"), 60) is not None
    assert torch.equal(torch.get_rng_state(), rng_before)  # the estimate draws no random number of the run's

    def fails(*a, **kw):
        raise RuntimeError("an op fake tensors cannot run")

    with monkeypatch.context() as m:  # an estimate that cannot run gives no warning, and the run goes on
        m.setattr(memory_estimate, "estimate_memory", fails)
        assert memory_estimate.fit_note(config, model, torch.device("cpu"), 60) is None
    summary = SFTTrainer(model, config, data, pad_id=2).train()  # a warning, not a stop
    err = capsys.readouterr().err
    assert "prefopt: warning: a training step of these settings holds about" in err
    assert "(4 sequences of 60 tokens, the longest example's length)" in err  # not max_length (96): the data's longest
    assert "cpu has 1 kB free: the run will likely run out of memory" in err and "--estimate-memory" in err
    assert summary["total_steps"] == 2


@pytest.mark.parametrize("settings", [{}, {"gradient_checkpointing": True}, {"lora_dora": True}, {"quantize": "nf4"},
                                      {"dtype": "bfloat16"}, {"lora_r": 64, "lora_targets": ["all-linear"]},
                                      {"lora": False}, {"lora": False, "dtype": "bfloat16"}],
                         ids=["lora", "checkpointing", "dora", "qlora", "bf16", "r64", "full", "full-bf16"])
@pytest.mark.parametrize("cls", [TrainConfig, DPOConfig], ids=["sft", "dpo"])
def test_the_quick_bound_that_skips_the_estimate_is_above_it(tmp_path, settings, cls):
    from prefopt.model import ModelConfig, Transformer
    from prefopt.quant import quantize_model, quantized_layers
    from prefopt.train.memory_estimate import surely_fits
    from prefopt.train.run import adapt

    d, _ = _config_only(tmp_path)
    if cls is DPOConfig and settings.get("lora") is False:  # full fine-tuning's reference: a cache
        settings = {**settings, "ref_cache": str(tmp_path / "cache")}
    for device, length, longest in (("cpu", 512, 300), ("cuda", 1024, 1024)):
        config = cls(model=str(d), output_dir="-", batch_size=2, max_length=length, **settings)
        est = estimate_memory(config, device, tokens=longest)
        with torch.device("meta"):  # the trainer's model, as it holds its weights (4-bit codes for QLoRA)
            model = Transformer(ModelConfig.from_hf(d))
            if config.quantize:
                quantize_model(model, quantized_layers(config.lora_targets), config.quantize)
            model = adapt(model, config)
        model.gradient_checkpointing = config.checkpointing()  # as the trainer sets it
        assert not surely_fits(config, model, est.peak - est.weights, longest)  # no: it may not fit in that
        # and not needlessly high: ten times the need and 2 GiB spare skip the estimate (its fixed terms: the
        # head's logits blocks, a layer's weights)
        assert surely_fits(config, model, 10 * (est.peak - est.weights) + 2**31, longest)


def test_a_full_fine_tuning_step_that_will_not_fit_is_warned_of_with_lora_offered(model_dir, tmp_path, monkeypatch):
    from prefopt.train import memory_estimate

    monkeypatch.setattr(memory_estimate, "free_bytes", lambda device: 1024)
    config = TrainConfig(model=str(model_dir), output_dir=str(tmp_path / "run"), batch_size=4, max_length=T,
                         lora=False)
    model = prepare_model(config)
    est = estimate_memory(config, "cpu", model_config=model.config, tokens=60)
    note = memory_estimate.fit_note(config, model, torch.device("cpu"), 60)
    assert note.startswith(f"a training step of these settings holds about {size_text(est.peak)} of tensors")
    assert note.endswith(f"Training every weight also holds their gradients and AdamW's two moments "
                         f"({size_text(est.trained + est.optimizer)} here): LoRA (leave out --no-lora) holds them "
                         "for the adapter alone"), note
    assert "LoRA (leave out" not in memory_estimate.fit_note(replace(config, lora=True), prepare_model(
        replace(config, lora=True)), torch.device("cpu"), 60)


def test_the_warning_before_step_1_speaks_the_running_programs_words(model_dir, tmp_path, monkeypatch):
    """Within ``prefopt compare`` a stage's warning names compare's settings (``--set``), not the
    trainer's flags, which compare does not have."""
    from prefopt.evaluate.compare import RERUN
    from prefopt.train import memory_estimate
    from prefopt.train.stop_signal import going_on_by

    monkeypatch.setattr(memory_estimate, "free_bytes", lambda device: 1024)
    config = TrainConfig(model=str(model_dir), output_dir=str(tmp_path / "run"), batch_size=4, max_length=T)
    model = prepare_model(config)
    alone = memory_estimate.fit_note(config, model, torch.device("cpu"), 60)
    assert "Lower --batch-size (raising --grad-accum to match)" in alone
    with going_on_by(RERUN):
        within = memory_estimate.fit_note(config, model, torch.device("cpu"), 60)
    assert "--batch-size" not in within and "--gradient-checkpointing" not in within
    assert within.endswith("a lower --set batch_size=N (SFT) or dpo_batch_size=N (DPO), or a smaller max_length=N; "
                           "into this one: --set gradient_checkpointing=true where it is off (the same results). The "
                           "command with --estimate-memory added says what a step of each stage holds "
                           "(docs/evaluation.md)")
