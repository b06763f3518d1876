"""The trainers end to end on a GPU, the way a user runs them there (the CUDA variants need one).

On CUDA the trainers run the Triton log-prob kernel under bf16 autocast, and fill the reference
cache under autocast too; none of that runs in CI. These tests check, on CUDA:

- in fp32, one SFT or DPO step gives the CPU's loss and every trainable gradient (LoRA and full
  fine-tuning, one pass forced on and off; DPO with WPO's weights too), and the default path
  there is the Triton kernel;
- under the defaults (bf16 autocast) SFT and DPO learn, and DPO's implicit rewards start at
  exactly 0 with a cached reference; the same over a bfloat16 base (``dtype``, compare's
  ``train_dtype``: the adapter float32), which no GPU has run yet;
- both with ``share_start`` too (the packed spans after a shared prompt start);
- full fine-tuning DPO with a separate reference model (``--ref``) learns, the reference's
  forward every step or only the cache's fill (no GPU has run this yet).

Each test also runs with ``device="cpu"`` (in CI): that checks the tests themselves, which
would otherwise only ever run on a lent GPU (the comparison is then CPU against CPU).
"""
import threading

import pytest
import torch

from prefopt import kernels, load_tokenizer
from prefopt.data.preference import load_preferences
from prefopt.lora import lora_layers
from prefopt.train import SFTTrainer, TrainConfig
from prefopt.train.dpo import DPOConfig, DPOTrainer
from prefopt.train.run import prepare_model, run_dpo, run_sft
from prefopt.train.sft import load_train_eval
from tests._devices import CPU_AND_CUDA
from tests.train._fixtures import write_pairs, write_task


@pytest.fixture(params=CPU_AND_CUDA)
def device(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    root = tmp_path_factory.mktemp("cuda")
    model_dir, sft = write_task(root)
    return model_dir, sft, write_pairs(root / "pairs.jsonl"), write_pairs(root / "heldout.jsonl", n=16, offset=1000)


def _config(task, kind: str, out, **kw):
    """``kind``: sft, dpo or wpo (DPO with WPO's pair weights); ``+start``: with share_start."""
    model_dir, sft, pairs, _ = task
    kind, _, more = kind.partition("+")
    common = dict(model=str(model_dir), output_dir=str(out), batch_size=4, lora_r=8, lora_alpha=16,
                  lora_dropout=0.0, progress=False, share_start=more == "start")
    if kind == "sft":
        return TrainConfig(**{**common, "data": str(sft), "max_steps": 24, "lr": 3e-3, **kw})
    return DPOConfig(**{**common, "data": str(pairs), "max_steps": 16, "lr": 5e-3, "beta": 0.1,
                        "wpo": kind == "wpo", **kw})


def _trainer(cfg):
    tok = load_tokenizer(cfg.model)
    model = prepare_model(cfg)
    if cfg.lora:  # LoRA B starts at 0, which would leave A without a gradient: a seeded start
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for _, layer in lora_layers(model):
                layer.lora_B.weight.copy_(0.02 * torch.randn(layer.lora_B.weight.shape, generator=g))
    if not isinstance(cfg, DPOConfig):
        train, _, _ = load_train_eval(cfg, tok)
        return SFTTrainer(model, cfg, train, pad_id=tok.pad_token_id)
    pairs, _ = load_preferences(cfg.data, tok, max_length=cfg.max_length)
    return DPOTrainer(model, cfg, pairs, pad_id=tok.pad_token_id, ref_cache=cfg.ref_cache)  # opened for its layout


def _step_grads(trainer) -> tuple[float, dict[str, torch.Tensor]]:
    """The summed loss of the first 4 examples and every trainable parameter's gradient (on the CPU)."""
    batch = {k: v.to(trainer.device) for k, v in trainer.collate(trainer.train_data[:4]).items()}
    trainer.model.train()
    with trainer._autocast():
        loss, _ = trainer.loss_sum(trainer.model, batch)
    loss.backward()
    grads = {n: p.grad.detach().cpu() for n, p in trainer.model.named_parameters() if p.requires_grad}
    return loss.item(), grads


@pytest.mark.parametrize("kind, lora, one_pass", [
    ("sft", True, None), ("sft", False, None), ("sft", False, "1"),
    ("dpo", True, None), ("dpo", False, None), ("dpo", False, "1"), ("wpo", True, None), ("wpo", False, "1"),
    ("sft+start", True, None), ("dpo+start", True, None),  # the shared prompt start once: packed spans
])
def test_an_fp32_step_on_the_device_equals_the_cpu_step(task, tmp_path, monkeypatch, device, kind, lora, one_pass):
    if one_pass is not None:
        monkeypatch.setenv("PREFOPT_ONEPASS", one_pass)
    from prefopt.kernels import onepass

    calls, passes = [], []
    default = kernels.resolve_impl(torch.device(device))
    impl, apply = kernels.IMPLS[default], onepass._OnePass.apply
    monkeypatch.setitem(kernels.IMPLS, default, lambda *a, **k: calls.append(1) or impl(*a, **k))
    monkeypatch.setattr(onepass._OnePass, "apply", lambda *a: passes.append(1) or apply(*a))
    results = {}
    for i, dev in enumerate(("cpu", device)):
        kw = {} if lora else {"lora": False}
        if kind != "sft" and not lora:  # full fine-tuning needs a reference: the cache
            kw["ref_cache"] = str(tmp_path / f"cache{i}")
        cfg = _config(task, kind, tmp_path / f"run{i}", device=dev, bf16_autocast=False, **kw)
        trainer = _trainer(cfg)
        calls.clear()  # count the step's calls only, not the reference cache's fill
        passes.clear()
        results[i] = _step_grads(trainer)
    (cpu_loss, cpu_grads), (loss, grads) = results[0], results[1]
    assert loss == pytest.approx(cpu_loss, rel=1e-5)
    assert grads.keys() == cpu_grads.keys() and grads
    for name, g in grads.items():
        scale = cpu_grads[name].abs().max().item()
        assert scale > 0, name  # every trainable tensor gets a gradient
        assert (g - cpu_grads[name]).abs().max().item() <= 1e-4 * scale, name
    # which path the step's loss took: on CUDA the one-pass loss, the head trainable or frozen (the per-token
    # Triton kernel only for the reference pass of a LoRA DPO step: no gradients); on the CPU the chunked kernel
    # with LoRA, one pass (which does not go through it) for a trainable head or where forced on
    if device == "cuda":
        assert default == "triton" and passes and bool(calls) == (lora and not kind.startswith("sft"))
    else:
        assert default == "chunked" and bool(calls) == lora and bool(passes) == (not lora or one_pass == "1")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])  # bfloat16: the base so, the adapter float32
def test_sft_learns_under_the_device_defaults(task, tmp_path, device, dtype):
    from safetensors.torch import load_file

    from prefopt.train.metrics import read_metrics

    cfg = _config(task, "sft", tmp_path / "sft", device=device, eval_fraction=0.25, warmup_steps=2, dtype=dtype)
    summary = run_sft(cfg)
    assert summary["eval_after"]["eval_loss"] < 0.5 * summary["eval_before"]["eval_loss"]
    losses = [m["loss"] for m in read_metrics(cfg.output_dir) if "loss" in m]
    assert len(losses) == 24 and sum(losses[-4:]) < 0.5 * sum(losses[:4])
    assert all(m["peak_mem_mb"] > 0 for m in read_metrics(cfg.output_dir) if "loss" in m)
    saved = load_file(tmp_path / "sft" / "final" / "adapter_model.safetensors")
    b = [t for k, t in saved.items() if "lora_B" in k]
    assert b and all(t.isfinite().all() and t.abs().max() > 0 for t in b)  # every B left its zero start


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_dpo_with_a_cached_reference_learns_under_the_device_defaults(task, tmp_path, device, dtype):
    _, _, _, heldout = task
    cfg = _config(task, "dpo", tmp_path / "dpo", device=device, eval_data=str(heldout), max_steps=32,
                  ref_cache=str(tmp_path / "cache"), dtype=dtype)
    summary = run_dpo(cfg)
    before, after = summary["eval_before"], summary["eval_after"]
    assert after["eval_rewards/accuracies"] >= 0.9 and after["eval_loss"] < before["eval_loss"] - 0.2
    assert after["eval_rewards/margins"] > 0
    assert summary["reference_forwards"] == 0


@pytest.mark.parametrize("cache", [False, True])
def test_full_fine_tuning_dpo_with_a_reference_model_learns_on_the_device(task, tmp_path, device, cache):
    """``--no-lora --ref MODEL`` (a separate reference model), its forward every step or, with
    ``--ref-cache``, only for the fill: run_dpo loads it on the CPU, the trainer moves it to the
    device for its forwards (for the fill it was once left on the CPU beside the GPU's pairs), and
    once the cache holds every pair run_dpo lets it go."""
    model_dir, _, _, heldout = task
    cfg = _config(task, "dpo", tmp_path / "dpo", device=device, eval_data=str(heldout), max_steps=16, lora=False,
                  lr=1e-3, ref=str(model_dir), ref_cache=str(tmp_path / "cache") if cache else None)
    summary = run_dpo(cfg)
    before, after = summary["eval_before"], summary["eval_after"]
    assert after["eval_loss"] < before["eval_loss"] - 0.05 and after["eval_rewards/margins"] > 0, (before, after)
    assert (summary["reference_forwards"] == 0) == cache


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("kind", ["dpo", "dpo+start"])
def test_cached_reference_rewards_start_at_zero_under_the_device_defaults(task, tmp_path, device, kind, dtype):
    """docs/dpo.md: the cache is filled in the policy's precision and layout, and a pair's row
    does not depend on its batch, so at step 0 (policy == reference) every implicit reward is
    exactly 0, also under bf16 autocast. The fill runs 16 pairs per forward, evaluation 4: on
    CUDA this also checks that cuBLAS rounds a row alike in both (if not, the docs must say so);
    with share_start, 16 pairs in one row after the start against 4."""
    cfg = _config(task, kind, tmp_path / "dpo", device=device, max_steps=1, ref_cache=str(tmp_path / "cache"),
                  dtype=dtype)
    trainer = _trainer(cfg)  # fills the cache for the training pairs
    with torch.no_grad():
        for _, layer in lora_layers(trainer.model):  # policy == reference again
            layer.lora_B.weight.zero_()
    trainer.eval_data = trainer.train_data[:16]
    metrics = trainer.evaluate()
    assert metrics["eval_rewards/chosen"] == 0.0 and metrics["eval_rewards/rejected"] == 0.0


def test_the_logged_peak_memory_is_the_runs_own(task, tmp_path, device):
    """metrics.jsonl's ``peak_mem_mb`` counts from ``train()``'s start: a block held and freed
    before it (an earlier stage of ``prefopt compare``, an evaluation) is not in it, while what is
    held at the start (the weights) is. CPU: the resident set, sampled (peak_memory.py), and the
    process's own peak counter (VmHWM, what /usr/bin/time reports) is left as it was; CUDA:
    max_memory_allocated."""
    from prefopt.train.metrics import read_metrics
    from prefopt.train.peak_memory import resident_bytes
    from tests.train._fixtures import fresh_pages

    def status(field):  # MiB
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) / 1024 for line in f if line.startswith(f"{field}:"))

    dev = torch.device(device)
    trainer = _trainer(_config(task, "sft", tmp_path / "sft", device=device, max_steps=3, eval_fraction=0.0))
    block = torch.ones(2**27, device=dev) if device == "cuda" else fresh_pages(512)
    held = torch.cuda.max_memory_allocated(dev) / 2**20 if device == "cuda" else status("VmHWM")
    del block
    now = torch.cuda.memory_allocated(dev) / 2**20 if device == "cuda" else resident_bytes() / 2**20
    assert held - now > 400  # the block is gone (the freed pages went back)
    trainer.train()
    peaks = [m["peak_mem_mb"] for m in read_metrics(tmp_path / "sft") if "loss" in m]
    assert len(peaks) == 3 and all(0.9 * now <= p < now + 256 for p in peaks), (now, held, peaks)
    assert peaks == sorted(peaks)  # a peak so far: it never falls within the run
    if device == "cpu":
        assert status("VmHWM") > held - 16  # (its reading while the block was held can top it by a few 100 KiB)
        assert "prefopt-peak-memory" not in {t.name for t in threading.enumerate()}  # the sampler is gone
