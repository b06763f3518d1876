"""Running out of memory stops a run with what to change, not PyTorch's traceback."""
import gc
import weakref

import pytest
import torch

from prefopt.cli import main
from prefopt.train import TrainConfig
from prefopt.train.dpo import DPOConfig, DPOTrainer
from prefopt.train.out_of_memory import OutOfMemory, explained, is_out_of_memory
from prefopt.train.run import run_dpo, run_sft
from prefopt.train.sft import SFTTrainer
from tests.train._fixtures import write_pairs, write_task

CUDA_OOM = ("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.19 GiB of which 1.03 GiB "
            "is free. Including non-PyTorch memory, this process has 78.15 GiB memory in use. If reserved but "
            "unallocated memory is large try setting PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True")


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return write_task(tmp_path_factory.mktemp("oom"), n=16)


def _fail_on_call(monkeypatch, cls, name, n, error):
    """``cls.name`` raises ``error`` on its ``n``-th call (counting from 1), a tensor in its frame;
    returns a list that gets a weak reference to that tensor."""
    original, calls, held = getattr(cls, name), [], []

    def patched(self, *a, **k):
        calls.append(1)
        if len(calls) == n:
            activations = torch.ones(1000)
            held.append(weakref.ref(activations))
            raise error
        return original(self, *a, **k)
    monkeypatch.setattr(cls, name, patched)
    return held


def test_a_run_out_of_memory_says_when_and_what_to_change_and_frees_the_failed_step(task, tmp_path, monkeypatch):
    model_dir, data = task
    held = _fail_on_call(monkeypatch, SFTTrainer, "loss_sum", 3, torch.OutOfMemoryError(CUDA_OOM))
    cfg = TrainConfig(model=str(model_dir), data=str(data), output_dir=str(tmp_path / "run"), batch_size=4,
                      max_steps=4, lora_r=4, lora_alpha=8, max_length=64, progress=False)
    with pytest.raises(OutOfMemory) as caught:
        run_sft(cfg)
    assert str(caught.value) == (
        "out of memory on cpu after 2 of 4 steps (CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total "
        "capacity of 79.19 GiB of which 1.03 GiB is free), with micro-batches of 4 examples of up to 64 tokens. To "
        "fit, try --batch-size 2 --grad-accum 2 (the same examples per optimizer step), --gradient-checkpointing, a "
        "shorter --max-length (now 64), --dtype bfloat16 (the frozen base in 16 bits; the adapter stays float32), "
        "--quantize nf4 (the base in 4 bits) (in Python: the config fields of those names). These change the run's settings: start it again with --overwrite (overwrite=True) or into another "
        "--output-dir; the command with --estimate-memory cpu added says what a step of the new settings holds, "
        "without loading anything")
    assert caught.value.layers == 2  # the layers the backward goes through, for compare's advice
    # torch's error keeps no traceback: the failed step's frames and tensors are let go while the error is held
    gc.collect()
    assert len(held) == 1 and held[0]() is None


def test_the_cli_says_it_in_one_line(task, tmp_path, monkeypatch, capsys):
    model_dir, data = task
    cpu = RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
                       "you tried to allocate 100000000000000 bytes. Error code 12 (Cannot allocate memory)")
    _fail_on_call(monkeypatch, SFTTrainer, "loss_sum", 1, cpu)
    code = main(["sft", "--model", str(model_dir), "--data", str(data), "--output-dir", str(tmp_path / "cli"),
                 "--batch-size", "3", "--grad-accum", "2", "--gradient-checkpointing", "--quantize", "nf4",
                 "--max-steps", "2", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith("prefopt sft: error: out of memory on cpu before the first step (DefaultCPUAllocator: "
                          "can't allocate memory: you tried to allocate 100000000000000 bytes. Error code 12 (Cannot "
                          "allocate memory)), with micro-batches of 3 examples of up to 1024 tokens. "
                          "To fit, try --batch-size 1 --grad-accum 6 (the same examples per optimizer step), a "
                          "shorter --max-length (now 1024) (in Python")


def test_filling_the_reference_cache_out_of_memory_is_said_as_such(task, tmp_path, monkeypatch):
    model_dir, _ = task
    _fail_on_call(monkeypatch, DPOTrainer, "reference_logps", 1, torch.OutOfMemoryError(CUDA_OOM))
    out = tmp_path / "dpo"
    cfg = DPOConfig(model=str(model_dir), data=str(write_pairs(tmp_path / "pairs.jsonl", n=8)), output_dir=str(out),
                    batch_size=2, max_steps=2, lora_r=4, lora_alpha=8, progress=False, ref_cache=str(out / "ref"))
    with pytest.raises(OutOfMemory, match=r"^out of memory on cpu while filling the reference cache \(CUDA out of "
                                          r"memory\. .*\), with micro-batches of 2 examples of up to 1024 tokens\. "
                                          r"To fit, try --batch-size 1 --grad-accum 2 \(the same examples per "
                                          r"optimizer step\), a shorter --max-length \(now 1024\), --dtype bfloat16 .*, "
                                          r"--quantize nf4 "):
        run_dpo(cfg)


def _too_large_to_move(monkeypatch, loaded, call=1):
    """The ``call``-th model returned by ``loaded`` (``run.prepare_model`` or ``run.load_model``)
    raises CUDA's out of memory when moved, as weights larger than the GPU do; returns the list
    that gets it."""
    import prefopt.train.run as run

    original, models = getattr(run, loaded), []

    def load(*a, **k):
        model = original(*a, **k)
        models.append(model)
        if len(models) == call:
            model.to = lambda *a, **k: (_ for _ in ()).throw(torch.OutOfMemoryError(CUDA_OOM))
        return model
    monkeypatch.setattr(run, loaded, load)
    return models


def test_weights_that_do_not_fit_on_the_device_are_said_as_such_not_as_a_step(task, tmp_path, monkeypatch, capsys):
    """The first failure of an 8B model in float32 on a 24 GB GPU: no step ran, so a smaller batch
    would not help; the weights' size and the settings that hold them in less are named."""
    from prefopt.fileio import size_text

    model_dir, data = task
    models = _too_large_to_move(monkeypatch, "prepare_model")
    code = main(["sft", "--model", str(model_dir), "--data", str(data), "--output-dir", str(tmp_path / "cli"),
                 "--batch-size", "4", "--max-steps", "2", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    size = size_text(sum(t.numel() * 4 for t in [*models[0].parameters(), *models[0].buffers()]))
    assert {t.dtype for t in models[0].parameters()} == {torch.float32}
    assert err == (
        "prefopt sft: error: out of memory on cpu moving the model's weights there, before the first step (CUDA out "
        "of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.19 GiB of which 1.03 GiB is free): "
        f"they take {size} in float32, and a smaller batch does not change that. To fit, try --dtype bfloat16 (the "
        "frozen base in 16 bits, half of float32's; the adapter stays float32), --quantize nf4 (the base's "
        "projections in 4 bits), a smaller model (in Python: the config fields of those names); the command with "
        "--estimate-memory cpu added says what a step of the new settings holds, without loading anything\n")
    assert not (tmp_path / "cli" / "final").exists()
    cfg = TrainConfig(model=str(model_dir), data=str(data), output_dir=str(tmp_path / "full"), max_steps=2,
                      lora=False, dtype="bfloat16", progress=False)
    _too_large_to_move(monkeypatch, "prepare_model")  # full fine-tuning, weights in 16 bits already
    with pytest.raises(OutOfMemory, match=r"they take .* in bfloat16, .* try LoRA \(leave out --no-lora: .*\), "
                                          r"--fsdp under torchrun on several GPUs \(each holds its share of the "
                                          r"weights\), a smaller model \(in Python"):
        run_sft(cfg)


def test_under_fsdp_the_model_reaches_the_device_only_as_it_is_sharded(task, tmp_path, monkeypatch):
    """Under torchrun with --fsdp no rank moves the whole model to its GPU (8B in float32 is 32 GB,
    more than a 24 GB card, where a quarter of it on each of 4 fits): the trainer leaves it where it
    loaded and FSDP2 moves each block as it shards it. Where even the shards do not fit, the advice
    names each rank's share and more GPUs, not the move of the whole model."""
    import prefopt.train.loop as loop
    from prefopt.fileio import size_text
    from prefopt.train.distributed import DistInfo

    wrapped = []

    def wrap_model(model, info, *, fsdp, device=None):  # FSDP2's fully_shard, as it fails on a card too small
        wrapped.append((model, info.world, fsdp, device))
        raise torch.OutOfMemoryError(CUDA_OOM)
    monkeypatch.setattr(loop, "init_distributed", lambda device: DistInfo(rank=0, world=4, local_rank=0))
    monkeypatch.setattr(loop, "wrap_model", wrap_model)
    models = _too_large_to_move(monkeypatch, "prepare_model")  # the whole model's move would fail
    model_dir, data = task
    cfg = TrainConfig(model=str(model_dir), data=str(data), output_dir=str(tmp_path / "fsdp"), max_steps=2,
                      batch_size=1, lora=False, fsdp=True, progress=False)
    with pytest.raises(OutOfMemory) as e:
        run_sft(cfg)
    assert [w[1:] for w in wrapped] == [(4, True, torch.device("cpu"))] and wrapped[0][0] is models[0]
    total = sum(t.numel() * t.element_size() for t in [*models[0].parameters(), *models[0].buffers()])
    assert str(e.value).startswith("out of memory on cpu moving the model's weights there, before the first step")
    assert (f"they take {size_text(total)} in float32 (about {size_text(total / 4)} on each of the 4 processes' "
            "devices, sharded)") in str(e.value)
    assert "more GPUs under --fsdp (torchrun --nproc-per-node: each holds its share of the weights)" in str(e.value)


def test_a_reference_model_that_does_not_fit_offers_the_reference_cache(task, tmp_path, monkeypatch):
    model_dir, _ = task
    _too_large_to_move(monkeypatch, "load_model", call=2)  # the policy's loads first
    cfg = DPOConfig(model=str(model_dir), ref=str(model_dir), data=str(write_pairs(tmp_path / "pairs.jsonl", n=8)),
                    output_dir=str(tmp_path / "dpo"), batch_size=2, max_steps=2, lora_r=4, lora_alpha=8,
                    progress=False)
    with pytest.raises(OutOfMemory, match=r"^out of memory on cpu moving the reference model's weights there, before "
                                          r"the first step \(CUDA out of memory\..*\): they take .* in float32, .* "
                                          r"To fit, try ref_cache= \(the reference model's log-probs from disk, and "
                                          r"no reference model in memory\), --dtype bfloat16 .*, --quantize nf4 "):
        run_dpo(cfg)


def test_under_fsdp_a_reference_model_is_sharded_as_the_policy_and_one_too_large_is_said_so(task, tmp_path,
                                                                                              monkeypatch):
    """Under torchrun with --fsdp (a stand-in: rank 0 of 4) a --ref model is sharded as the policy
    is, not moved whole to every rank's device; where its shares do not fit either, its size, each
    rank's share and more GPUs are said."""
    import prefopt.train.dpo as dpo
    import prefopt.train.loop as loop
    import prefopt.train.run as run
    from prefopt.fileio import size_text
    from prefopt.train.distributed import DistInfo

    wrapped, loaded, load = [], [], run.load_model

    def wrap_model(model, info, *, fsdp, device=None):  # FSDP2's fully_shard, as it fails on a card too small
        wrapped.append((model, info.world, fsdp, device))
        raise torch.OutOfMemoryError(CUDA_OOM)
    monkeypatch.setattr(run, "load_model", lambda *a, **k: loaded.append(load(*a, **k)) or loaded[-1])
    for module in (loop, run):
        monkeypatch.setattr(module, "init_distributed", lambda device: DistInfo(rank=0, world=4, local_rank=0))
    monkeypatch.setattr(loop, "wrap_model", lambda model, info, *, fsdp, device=None: model)  # (no process group)
    monkeypatch.setattr(dpo, "wrap_model", wrap_model)
    model_dir, _ = task
    cfg = DPOConfig(model=str(model_dir), ref=str(model_dir), data=str(write_pairs(tmp_path / "pairs.jsonl", n=8)),
                    output_dir=str(tmp_path / "dpo"), batch_size=1, max_steps=2, lora=False, fsdp=True,
                    progress=False)
    with pytest.raises(OutOfMemory) as e:
        run_dpo(cfg)
    ref = loaded[-1]
    assert [w[1:] for w in wrapped] == [(4, True, torch.device("cpu"))] and wrapped[0][0] is ref
    assert not ref.training and not any(p.requires_grad for p in ref.parameters())  # frozen before it is sharded
    total = sum(t.numel() * t.element_size() for t in [*ref.parameters(), *ref.buffers()])
    assert str(e.value).startswith("out of memory on cpu moving the reference model's weights there, before the "
                                   "first step (CUDA out of memory.")
    assert (f"they take {size_text(total)} in float32 (about {size_text(total / 4)} on each of the 4 processes' "
            "devices, sharded)") in str(e.value)
    assert ("To fit, try ref_cache= (the reference model's log-probs from disk, and no reference model in memory), "
            "LoRA (") in str(e.value) and "more GPUs under --fsdp (torchrun --nproc-per-node" in str(e.value)


def test_a_base_already_in_16_or_4_bits_is_not_offered_again(tmp_path):
    from types import SimpleNamespace

    from prefopt.train.out_of_memory import training_advice

    data = tmp_path / "d.jsonl"
    data.write_text("")

    def advice(**kw):
        config = TrainConfig(model="m", data=str(data), output_dir=str(tmp_path), batch_size=1, **kw)
        return str(training_advice(SimpleNamespace(config=config, step=0, device="cuda:0", output_dir=tmp_path),
                                   "what"))

    assert "--dtype bfloat16 (the frozen base in 16 bits; the adapter stays float32), --quantize nf4" in advice()
    assert "--dtype" not in advice(dtype="bfloat16") and "--quantize nf4" in advice(dtype="bfloat16")
    assert "--dtype" not in advice(quantize="nf4") and "--quantize" not in advice(quantize="nf4")
    assert "--dtype" not in advice(lora=False)  # full fine-tuning: 16-bit trainable weights lose small updates


def test_other_errors_pass_through_unchanged():
    assert is_out_of_memory(MemoryError()) and not is_out_of_memory(RuntimeError("shape mismatch"))
    trainer = type("T", (), {})()
    for error in (RuntimeError("shape mismatch"), ValueError("bad")):
        def job(error=error):
            raise error
        with pytest.raises(type(error)) as caught:
            explained(trainer, job)
        assert caught.value is error and caught.value.__traceback__ is not None
    assert explained(trainer, lambda: 7) == 7


@pytest.mark.parametrize("had,offered", [
    ({}, "--gradient-checkpointing"),
    ({"gradient_checkpointing": True, "gradient_checkpointing_layers": 1},
     "--gradient-checkpointing-layers 2 (now 1 of the 2 layers the backward goes through; none: all)"),
])
def test_with_a_checkpoint_gradient_checkpointing_is_offered_with_resume_and_ends_where_the_run_would(
        task, tmp_path, monkeypatch, had, offered):
    """Gradient checkpointing recomputes the same activations (dropout's draws too), so a resume may
    turn it on, or on for more layers: the run ends with the weights an uninterrupted run has, bit
    for bit."""
    import re

    from safetensors.torch import load_file

    model_dir, data = task
    cfg = dict(model=str(model_dir), data=str(data), batch_size=4, max_steps=4, lora_r=4, lora_alpha=8, lr=3e-3,
               max_length=64, progress=False, save_every=1)
    run_sft(TrainConfig(**cfg, output_dir=str(tmp_path / "whole")))
    _fail_on_call(monkeypatch, SFTTrainer, "loss_sum", 3, torch.OutOfMemoryError(CUDA_OOM))
    out = tmp_path / "run"
    with pytest.raises(OutOfMemory, match=rf"To fit, try {re.escape(offered)} with --resume \(the same results, "
                                          r"from the last checkpoint\), --batch-size 2 --grad-accum 2 .* The others "
                                          r"change the run's settings"):
        run_sft(TrainConfig(**cfg, **had, output_dir=str(out)))
    monkeypatch.undo()
    summary = run_sft(TrainConfig(**cfg, output_dir=str(out), resume=True, gradient_checkpointing=True))
    assert summary["resumed_from_step"] == 2
    whole, resumed = (load_file(d / "final" / "adapter_model.safetensors") for d in (tmp_path / "whole", out))
    assert whole.keys() == resumed.keys()
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
