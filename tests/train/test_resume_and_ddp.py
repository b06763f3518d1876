"""Exact resume after SIGKILL (one process, and FSDP2 on two), and 2-process DDP/FSDP2 (gloo, CPU) against 1
process, for SFT and for DPO with a reference cache."""
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from prefopt.train.metrics import read_metrics
from prefopt.train.state import read_optimizer
from tests._failure import failure
from tests.train._fixtures import write_pairs, write_task

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return write_task(tmp_path_factory.mktemp("resume"), n=48)


def _config(task, out, **kw):
    model_dir, data = task
    cfg = dict(model=str(model_dir), data=str(data), output_dir=str(out), batch_size=4, max_steps=10, lr=3e-3,
               lora_r=8, lora_alpha=16, lora_dropout=0.1, eval_fraction=0.25, progress=False, save_every=3)
    cfg.update(kw)
    path = Path(str(out) + ".json")
    path.write_text(json.dumps(cfg))
    return path


def _run(args, env=ENV, timeout=300, **kw):
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=timeout, **kw)


def _in_this_process(cfg_path):
    """An uninterrupted run, the reference of a test, in the test's own process (a process of its
    own takes seconds to start: torch, torch._dynamo), on one thread as the runs in ``_run``'s
    processes (OMP_NUM_THREADS=1), so that their results are bit for bit the same."""
    from tests.train._run_config import config_and_run

    cfg, run, evaluators = config_and_run(cfg_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run(cfg, evaluators=evaluators)
    finally:
        torch.set_num_threads(threads)


def _losses(out):
    return [(m["step"], m.get("loss"), m.get("eval_loss")) for m in read_metrics(out)]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sft", "dpo", "dora_dpo", "kto", "experts_dpo"])
def test_sigkill_then_resume_gives_the_same_run(task, tmp_path, kind):
    """``dora_dpo``: a DoRA DPO adapter (dropout on) over a DoRA SFT adapter, stacked into one.
    ``kto``: KTO on the pairs read as two examples each, their mismatched completions fixed at load.
    ``experts_dpo``: a tiny Qwen3-MoE, both adapters on its experts' tensors too (no dropout)."""
    script = str(ROOT / "tests" / "train" / "_run_config.py")
    pairs = write_pairs(tmp_path / "pairs.jsonl", n=48)
    dora, experts = kind == "dora_dpo", kind == "experts_dpo"
    model_dir = task[0]
    if experts:
        from tests._tiny import build_hf_model

        model_dir = tmp_path / "moe"
        build_hf_model(model_dir, arch="qwen3_moe", initializer_range=0.1)

    if kind != "sft":  # DPO after SFT: the SFT adapter is merged in again on resume
        from prefopt import apply_lora, load_model, save_adapter

        sft = apply_lora(load_model(model_dir), r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"],
                         dora=dora, target_parameters=("gate_up_proj", "down_proj") if experts else ())
        with torch.no_grad():
            for name, p in sft.named_parameters():
                if ".lora_B." in name:
                    p.normal_(0, 0.05, generator=torch.Generator().manual_seed(0))
        save_adapter(sft, tmp_path / "sft")

    def cfg(name, **kw):  # DPO: LoRA dropout on, the reference from an on-disk cache the resumed run reopens
        if kind != "sft":
            kw.update(kind="dpo", data=str(pairs), lr=5e-3, ref_cache=str(tmp_path / f"{name}.cache"),
                      sft_adapter=str(tmp_path / "sft"), lora_dora=dora, **({"loss": "kto"} if kind == "kto" else {}))
        if experts:
            kw.update(model=str(model_dir), lora_experts=True, lora_dropout=0.0)
        return str(_config(task, tmp_path / name, **kw))

    _in_this_process(cfg("full"))
    killed = _run([script, cfg("cut"), "7"])
    assert killed.returncode == -signal.SIGKILL
    ckpts = sorted(p.name for p in (tmp_path / "cut" / "checkpoints").iterdir())
    assert ckpts == ["latest", "step-00000003", "step-00000006"]  # the step-9 save never happened
    assert not (tmp_path / "cut" / "final").exists()
    with open(tmp_path / "cut" / "metrics.jsonl", "a") as f:  # a line a crash cut short (zeros: a power cut's)
        f.write('{"step": 7, "loss": 0.41' + "\0" * 8)  # once stopped --resume with a JSONDecodeError
    resumed = _run([script, cfg("cut", resume=True)])
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stdout and "step 6" in resumed.stdout
    assert json.loads((tmp_path / "cut" / "train_summary.json").read_text())["resumed_from_step"] == 6
    assert _losses(tmp_path / "cut") == _losses(tmp_path / "full")
    a = load_file(tmp_path / "full" / "final" / "adapter_model.safetensors")
    b = load_file(tmp_path / "cut" / "final" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    if kind != "sft":  # SFT (r 4) and DPO (r 8) updates in one adapter, in the resumed run too
        assert json.loads((tmp_path / "cut" / "final" / "stacked_on.json").read_text())["ranks"] == [4, 8]
        assert any(k.endswith("lora_magnitude_vector") for k in b) == dora
        assert any(".mlp.experts.base_layer.lora_A." in k for k in b) == experts


def _torchrun(nproc, cfg_path, *extra):
    return _run(["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                 str(ROOT / "tests" / "train" / "_run_config.py"), str(cfg_path), *extra])


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["ddp_lora", "ddp_lora_head", "fsdp_full"])
def test_two_processes_match_one_with_the_same_global_batch(task, tmp_path, mode):
    kw = dict(lora_dropout=0.0, save_every=0, max_steps=5, eval_fraction=0.25, eval_every=2, best_metric="eval_loss")
    if mode == "fsdp_full":
        kw.update(lora=False, lr=1e-3)
    if mode == "ddp_lora_head":  # an adapter on the lm_head too, used outside DDP's forward (Transformer.head)
        kw.update(lora_targets=["q_proj", "v_proj", "lm_head"])
    _in_this_process(_config(task, tmp_path / "one", batch_size=4, **kw))
    two = _torchrun(2, _config(task, tmp_path / "two", batch_size=2, fsdp=mode == "fsdp_full", **kw))
    assert two.returncode == 0, failure(two)
    l1, l2 = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert [s for s, *_ in l1] == [s for s, *_ in l2]
    for (_, a, ea), (_, b, eb) in zip(l1, l2):
        for x, y in ((a, b), (ea, eb)):
            assert (x is None) == (y is None) and (x is None or abs(x - y) < 1e-4 * max(1, abs(x))), (l1, l2)
    name = "model.safetensors" if mode == "fsdp_full" else "adapter_model.safetensors"
    for folder in ("final", "best"):  # best/: every rank takes part in saving it (FSDP2 gathers the shards)
        w1, w2 = load_file(tmp_path / "one" / folder / name), load_file(tmp_path / "two" / folder / name)
        assert w1.keys() == w2.keys()
        assert max((w1[k] - w2[k]).abs().max().item() for k in w1) < 1e-4
    b1, b2 = (json.loads((tmp_path / run / "best" / "best.json").read_text()) for run in ("one", "two"))
    assert b1["step"] == b2["step"] and b1["value"] == pytest.approx(b2["value"], rel=1e-4)
    assert not (tmp_path / "two" / "final" / "metrics.jsonl").exists()


@pytest.mark.slow
def test_evaluators_on_two_processes_are_averaged_and_pick_the_same_best(task, tmp_path):
    """Every process calls the evaluators and the values are averaged: rank 0 and 1 log 0.5; the
    lora_B norm, the same on both, is the best_metric (min: step 0) with no eval set at all."""
    kw = dict(lora_dropout=0.0, save_every=0, max_steps=4, eval_fraction=0.0, eval_every=2, evaluators=True,
              best_metric="lora_b_norm", best_mode="min", batch_size=2)
    two = _torchrun(2, _config(task, tmp_path / "two", **kw))
    assert two.returncode == 0, failure(two)
    evals = [m for m in read_metrics(tmp_path / "two") if "eval_rank" in m]
    assert [m["step"] for m in evals] == [0, 2, 4] and all(m["eval_rank"] == 0.5 for m in evals)
    assert evals[0]["eval_lora_b_norm"] == 0 < evals[-1]["eval_lora_b_norm"] and "eval_loss" not in evals[0]
    assert json.loads((tmp_path / "two" / "best" / "best.json").read_text())["step"] == 0


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["ddp_lora", "fsdp_full", "fsdp_full_after_sft", "ddp_lora_share_start"])
def test_dpo_with_a_reference_cache_on_two_processes_matches_one(task, tmp_path, mode):
    """Both ranks compute a share of the cache's fill, rank 0 writes it and the other reads it;
    the run then matches one process. Full fine-tuning under FSDP2 takes the reference from the
    sharded model itself, whose forward every rank must join: the fill hung there while rank 0
    ran it alone and rank 1 waited in a barrier. After SFT, rank 0 alone reads the model and
    merges the SFT adapter into it; rank 1 receives the merged weights. With share_start each
    rank's pairs run in one row after the prompt start they all share (the packed spans through
    DDP)."""
    from prefopt.refcache import RefCache

    model_dir, _ = task
    pairs = write_pairs(tmp_path / "pairs.jsonl", n=24)
    fsdp = mode.startswith("fsdp")
    kw = dict(lora=False, lr=1e-3) if fsdp else dict(lr=5e-3, lora_dropout=0.0)
    if mode == "ddp_lora_share_start":
        kw["share_start"] = True
    if mode == "fsdp_full_after_sft":
        _in_this_process(_config(task, tmp_path / "sft", max_steps=2, save_every=0, eval_fraction=0))
        kw["sft_adapter"] = str(tmp_path / "sft" / "final")

    def config(name, batch_size, **more):
        return _config(task, tmp_path / name, kind="dpo", data=str(pairs), batch_size=batch_size, max_steps=12,
                       save_every=0, eval_fraction=0.25, ref_cache=str(tmp_path / name / "cache"), **kw, **more)

    _in_this_process(config("one", 4))
    two = _torchrun(2, config("two", 2, fsdp=fsdp))
    assert two.returncode == 0, failure(two)
    assert two.stdout.count("records kept") == 1 and two.stdout.count("saved to") == 1  # rank 0 speaks
    l1, l2 = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert [s for s, *_ in l1] == [s for s, *_ in l2] == [0, *range(1, 13), 12]
    for (_, a, ea), (_, b, eb) in zip(l1, l2):
        for x, y in ((a, b), (ea, eb)):
            assert (x is None) == (y is None) and (x is None or abs(x - y) < 1e-4 * max(1, abs(x))), (l1, l2)
    assert l2[-1][2] < l2[0][2] - 1e-3  # it learned: the held-out DPO loss fell
    for run in ("one", "two"):
        summary = json.loads((tmp_path / run / "train_summary.json").read_text())
        assert summary["reference_forwards"] == 0  # training ran on the cache alone
    fingerprint = json.loads((tmp_path / "one" / "cache" / "index.json").read_text())["fingerprint"]
    c1, c2 = (RefCache(tmp_path / run / "cache", fingerprint) for run in ("one", "two"))
    assert len(c1) == len(c2) == 24 and c2.stale_reason is None  # the same reference, every pair cached
    keys = sorted(c1.entries)
    for a, b in zip(c1.get(keys), c2.get(keys)):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-5)
    name = "model.safetensors" if fsdp else "adapter_model.safetensors"
    w1, w2 = (load_file(tmp_path / run / "final" / name) for run in ("one", "two"))
    assert w1.keys() == w2.keys() and max((w1[k] - w2[k]).abs().max().item() for k in w1) < 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("cache", [False, True])
def test_fsdp_shards_a_reference_model_as_the_policy_and_matches_one_process(task, tmp_path, cache):
    """A separate reference model (--ref) under FSDP2 is sharded as the policy is: between its
    forwards each of the 2 ranks holds half of it (the evaluator's mean share; rank 1 built it empty
    and received rank 0's weights), where each held all of it before. Its forward runs every step,
    or once a pair for the cache's fill (``cache``: sharded for it, the cache's values as one
    process's, then let go: a share of 0); either way the run matches one process."""
    model_dir, _ = task
    pairs = write_pairs(tmp_path / "pairs.jsonl", n=16)

    def config(name, batch_size, **more):
        return _config(task, tmp_path / name, kind="dpo", data=str(pairs), ref=str(model_dir), lora=False, lr=1e-3,
                       batch_size=batch_size, max_steps=6, save_every=0, eval_fraction=0.25, eval_every=3,
                       evaluators="reference_share", ref_cache=str(tmp_path / name / "cache") if cache else None,
                       **more)

    _in_this_process(config("one", 4))
    two = _torchrun(2, config("two", 2, fsdp=True))
    assert two.returncode == 0, failure(two)
    l1, l2 = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert [s for s, *_ in l1] == [s for s, *_ in l2] and len(l1) >= 7
    for (_, a, ea), (_, b, eb) in zip(l1, l2):
        for x, y in ((a, b), (ea, eb)):
            assert (x is None) == (y is None) and (x is None or abs(x - y) < 1e-4 * max(1, abs(x))), (l1, l2)
    shares = {run: {m["eval_reference_share"] for m in read_metrics(tmp_path / run) if "eval_reference_share" in m}
              for run in ("one", "two")}
    assert shares == ({"one": {0.0}, "two": {0.0}} if cache else {"one": {1.0}, "two": {0.5}}), shares
    for run in ("one", "two"):
        forwards = json.loads((tmp_path / run / "train_summary.json").read_text())["reference_forwards"]
        assert (forwards == 0) == cache, (run, forwards)
    if cache:  # the sharded reference's fill gave one process's values
        from prefopt.refcache import RefCache

        fingerprint = json.loads((tmp_path / "one" / "cache" / "index.json").read_text())["fingerprint"]
        c1, c2 = (RefCache(tmp_path / run / "cache", fingerprint) for run in ("one", "two"))
        assert len(c1) == len(c2) == 16 and c2.stale_reason is None
        for a, b in zip(c1.get(sorted(c1.entries)), c2.get(sorted(c1.entries))):
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-5)
    w1, w2 = (load_file(tmp_path / run / "final" / "model.safetensors") for run in ("one", "two"))
    assert w1.keys() == w2.keys() and max((w1[k] - w2[k]).abs().max().item() for k in w1) < 1e-4


def test_ranks_that_see_different_reference_caches_stop_with_an_error_not_a_hang(task, tmp_path):
    """The ranks fill the cache in step, so they must agree on what it lacks: here rank 0's folder
    holds every pair and rank 1's none (as on nodes that share no filesystem)."""
    pairs = write_pairs(tmp_path / "pairs.jsonl", n=8)
    kw = dict(kind="dpo", data=str(pairs), batch_size=2, max_steps=1, save_every=0, eval_fraction=0)
    _in_this_process(_config(task, tmp_path / "one", ref_cache=str(tmp_path / "cache-rank0"), **kw))
    two = _torchrun(2, _config(task, tmp_path / "two", ref_cache=str(tmp_path / "cache"), ref_cache_per_rank=True,
                               **kw))
    assert two.returncode != 0
    said = [f"the 2 processes see different reference caches in {tmp_path / f'cache-rank{rank}'} (rank {rank}: "
            f"{missing} pairs not cached): every rank must read the same folder" in two.stderr
            for rank, missing in ((0, 0), (1, 8))]
    assert any(said), failure(two)  # both ranks raise it (torchrun may stop the second before it prints)
    assert not (tmp_path / "cache-rank1").exists() and not (tmp_path / "two" / "train_config.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize("cache", [False, True])
def test_kto_on_two_processes_matches_one(task, tmp_path, cache):
    """KTO's reference point z0 is a batch mean: on two processes it is averaged over the ranks'
    batches (as TRL does), so two processes of 2 examples train as one of 4. Eval is left out:
    there each rank keeps its own batch's z0 (an eval shard may hold one batch more). With a
    reference cache both ranks fill it, each a share of its examples."""
    pairs = write_pairs(tmp_path / "pairs.jsonl", n=24)  # read as 48 examples

    def config(name, batch_size):
        return _config(task, tmp_path / name, kind="dpo", loss="kto", beta=0.5, data=str(pairs),
                       batch_size=batch_size, max_steps=6, lr=5e-3, lora_dropout=0.0, save_every=0, eval_fraction=0,
                       ref_cache=str(tmp_path / name / "cache") if cache else None)

    _in_this_process(config("one", 4))
    two = _torchrun(2, config("two", 2))
    assert two.returncode == 0, failure(two)
    m1, m2 = ([m for m in read_metrics(tmp_path / run) if "loss" in m] for run in ("one", "two"))
    assert len(m1) == len(m2) == 6 and max(m["kl"] for m in m1) > 0  # z0 was not clamped away throughout
    assert {m["examples"] for m in m1 + m2} == {4}  # each step's examples, both processes' together
    for a, b in zip(m1, m2):
        for key in ("loss", "kl", "kto/accuracies"):
            assert abs(a[key] - b[key]) < 1e-4 * max(1, abs(a[key])), (key, m1, m2)
    w1 = load_file(tmp_path / "one" / "final" / "adapter_model.safetensors")
    w2 = load_file(tmp_path / "two" / "final" / "adapter_model.safetensors")
    assert w1.keys() == w2.keys() and max((w1[k] - w2[k]).abs().max().item() for k in w1) < 1e-4
    summary = json.loads((tmp_path / "two" / "train_summary.json").read_text())
    assert (summary["reference_forwards"] == 0) == cache


def test_an_fsdp_rank_other_than_0_reads_no_weights(task, tmp_path, monkeypatch):
    """Under torchrun with --fsdp only rank 0 loads the model; the others build it empty (meta
    parameters, nothing read) and receive their shares from rank 0 as it is sharded (the
    two-process FSDP2 tests above check that they train as one process does)."""
    import prefopt.model.checkpoint as checkpoint
    import prefopt.train.run as run
    from prefopt.train import DPOConfig, TrainConfig
    from prefopt.train.distributed import DistInfo

    model_dir, data = task
    cfg = TrainConfig(model=str(model_dir), data=str(data), output_dir=str(tmp_path / "o"), lora=False, fsdp=True,
                      dtype="bfloat16")
    loaded = run.prepare_model(cfg)  # one process: loaded as ever
    assert not any(p.is_meta for p in loaded.parameters())

    def read(*a, **k):
        raise AssertionError("rank 1 read weights")
    monkeypatch.setattr(checkpoint, "load_weights", read)
    monkeypatch.setattr(run, "init_distributed", lambda device: DistInfo(rank=1, world=2, local_rank=1))
    empty = run.prepare_model(cfg)
    params = dict(empty.named_parameters())
    assert params.keys() == dict(loaded.named_parameters()).keys()
    assert all(p.is_meta and p.requires_grad and p.dtype == torch.bfloat16 for p in params.values())
    for (name, b), (_, ref) in zip(empty.named_buffers(), loaded.named_buffers(), strict=True):  # RoPE's, computed
        assert not b.is_meta and torch.equal(b, ref), name
    ref = run.reference_model(DPOConfig(model=str(model_dir), ref=str(model_dir), data=str(data), lora=False,
                                        fsdp=True, dtype="bfloat16", output_dir=str(tmp_path / "d")))  # --ref: empty
    assert ref.training is False and all(p.is_meta and p.dtype == torch.bfloat16 for p in ref.parameters())
    assert dict(ref.named_parameters()).keys() == params.keys()


@pytest.mark.slow
def test_fsdp_run_killed_then_resumed_matches_an_uninterrupted_one(task, tmp_path):
    """FSDP2 (2 processes, each holding half of every parameter and of its Adam moments): the
    checkpoint gathers full parameters and moments, and resuming reshards them exactly."""
    kw = dict(lora=False, lr=1e-3, fsdp=True, batch_size=2, max_steps=8, save_every=3)
    full = _torchrun(2, _config(task, tmp_path / "full", **kw))
    assert full.returncode == 0, failure(full)
    cut = _torchrun(2, _config(task, tmp_path / "cut", **kw), "7")
    assert cut.returncode != 0
    ckpt = tmp_path / "cut" / "checkpoints" / "step-00000006"
    params = load_file(ckpt / "trainable.safetensors")
    optim = read_optimizer(ckpt)
    moments = Counter(tuple(st["exp_avg"].shape) for st in optim["state"].values())
    assert moments == Counter(tuple(t.shape) for t in params.values())  # whole moments, not one rank's shard
    resumed = _torchrun(2, _config(task, tmp_path / "cut", **kw, resume=True))
    assert resumed.returncode == 0, failure(resumed)
    assert "step 6" in resumed.stdout
    assert _losses(tmp_path / "cut") == _losses(tmp_path / "full")
    a = load_file(tmp_path / "full" / "final" / "model.safetensors")
    b = load_file(tmp_path / "cut" / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
@pytest.mark.parametrize("when", ["after", "in"])
def test_sigterm_to_one_rank_stops_both_after_the_same_step_with_a_checkpoint(task, tmp_path, when):
    """A scheduler may signal one worker before the other: each rank's flag is all-reduced after
    every step, so both stop after step 3 and the checkpoint holds both ranks' RNG states, with
    save_every 0 (without the all-reduce, rank 1 would wait in the save's barrier while rank 0
    trained on). The resume continues from it (exactness under torchrun: the FSDP2 SIGKILL test;
    after SIGTERM: the one-process tests). ``in``: the signal lands inside step 3, which has an
    evaluation after it: the ranks agree before it and stop without it, and the resume does it."""
    kw = dict(batch_size=2, max_steps=5, save_every=0, eval_every=3 if when == "in" else 0)
    cut = _torchrun(2, _config(task, tmp_path / "cut", **kw), f"3:TERM:1:{when}")  # SIGTERM to rank 1 only
    owed = ", before its evaluation" if when == "in" else ""
    assert cut.returncode != 0 and f"prefopt: stopped by SIGTERM at step 3 of 5{owed};" in cut.stderr, failure(cut)
    ckpt = tmp_path / "cut" / "checkpoints" / "step-00000003"
    assert sorted(p.name for p in ckpt.iterdir()) == ["optimizer.json", "optimizer.safetensors", "rng-rank0.safetensors",
                                                     "rng-rank1.safetensors", "trainable.safetensors",
                                                     "trainer_state.json"]
    assert json.loads((ckpt / "trainer_state.json").read_text()).get("eval_owed", False) == (when == "in")
    assert "eval_loss" not in {k for m in read_metrics(tmp_path / "cut") if m["step"] == 3 for k in m}
    resumed = _torchrun(2, _config(task, tmp_path / "cut", **kw, resume=True))
    assert resumed.returncode == 0, failure(resumed)
    assert json.loads((tmp_path / "cut" / "train_summary.json").read_text())["resumed_from_step"] == 3
    evaluated = [m["step"] for m in read_metrics(tmp_path / "cut") if "eval_loss" in m]
    assert evaluated == ([0, 3, 5] if when == "in" else [0, 5])


_WORKER = """
import sys, torch.distributed as dist
from prefopt.train.distributed import run_worker
dist.init_process_group("gloo", init_method="file://" + sys.argv[1], rank=0, world_size=1)
def job():
    print("job ran", end="")  # no newline: lost unless exit_worker flushes the pipe
    if sys.argv[2] == "raise":
        raise RuntimeError("job failed")
    return 5
print(" result", run_worker(job))
"""


@pytest.mark.parametrize("how", ["ok", "raise"])
def test_run_worker_leaves_the_group_then_exits_without_interpreter_teardown(tmp_path, how):
    buffered = {k: v for k, v in ENV.items() if k != "PYTHONUNBUFFERED"}  # stdout to a pipe is block-buffered
    r = _run(["-c", _WORKER, str(tmp_path / "store"), how], env=buffered)
    if how == "ok":  # exits 0 inside run_worker: its return value is never printed
        assert (r.returncode, r.stdout) == (0, "job ran"), r.stderr
    else:  # the exception propagates as usual
        assert r.returncode != 0 and "RuntimeError: job failed" in r.stderr


_FAILING_RANK = """
import torch, torch.distributed as dist
from prefopt.train.distributed import run_worker
def job():
    dist.init_process_group("gloo")
    if dist.get_rank() == 1:
        raise RuntimeError("rank 1 failed")
    dist.all_reduce(torch.ones(1))  # waits for rank 1, which never joins
run_worker(job)
"""


@pytest.mark.slow
def test_a_failing_rank_ends_the_job_instead_of_waiting_in_a_barrier(tmp_path):
    """With a barrier on the way out, rank 1 waited there while rank 0 waited in its all_reduce
    (gloo's timeout is 30 minutes); without it, rank 1 fails and torchrun stops rank 0."""
    script = tmp_path / "failing_rank.py"
    script.write_text(_FAILING_RANK)
    r = _run(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)], timeout=90)
    assert r.returncode != 0 and "rank 1 failed" in r.stderr


def test_run_worker_outside_torchrun_only_runs_the_job():
    from prefopt.train.distributed import run_worker

    assert run_worker(lambda: 7) == 7


def test_collectives_of_cpu_tensors_go_through_the_gpu_under_nccl(monkeypatch):
    """The loop all-reduces its counts and metrics as CPU tensors; NCCL reduces CUDA tensors only
    ("No backend type associated with device type cpu" at the first multi-GPU step): under NCCL
    they go through this rank's GPU, under gloo they stay where they are. (Multi-GPU itself is
    untested here: no GPU.)"""
    import torch
    import torch.distributed as dist

    from prefopt.train.distributed import collective_device

    monkeypatch.setattr(dist, "get_backend", lambda *a: "nccl")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    assert collective_device(torch.tensor([1.0])) == torch.device("cuda", 3)
    monkeypatch.setattr(dist, "get_backend", lambda *a: "gloo")
    assert collective_device(torch.tensor([1.0])) == torch.device("cpu")


def test_prefopt_sft_sent_sigterm_from_outside_saves_and_exits_143(task, tmp_path):
    """The user's case: `kill -TERM` (a scheduler) while `prefopt sft` trains in its own process,
    landing wherever the step is (inside torch's C code the handler runs when it returns)."""
    import time

    model_dir, data = task
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "prefopt.cli", "sft", "--model", str(model_dir), "--data",
                             str(data), "--output-dir", str(out), "--batch-size", "4", "--max-steps", "500",
                             "--lora-r", "4", "--no-progress"], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / "metrics.jsonl").is_file() or len((out / "metrics.jsonl").read_text().splitlines()) < 2:
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 143, err[-2000:]
    step = int(err.split("prefopt: stopped by SIGTERM at step ")[1].split(" ")[0])
    assert 1 <= step < 500 and (out / "checkpoints" / f"step-{step:08d}" / "trainable.safetensors").is_file()
    assert f"rerun with --resume to continue from {out / 'checkpoints' / f'step-{step:08d}'}" in err
