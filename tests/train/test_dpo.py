"""DPOTrainer: it learns, the reference cache holds, and the three reference modes agree."""
import json
from dataclasses import replace

import pytest
import torch

from prefopt import load_tokenizer
from prefopt.data.preference import load_preferences
from prefopt.lora import lora_layers
from prefopt.train.dpo import DPOConfig, DPOTrainer
from prefopt.train.metrics import read_metrics
from prefopt.train.reference import reference_cache_for
from prefopt.train.run import prepare_model, run_dpo
from tests.train._fixtures import write_pairs, write_task


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    root = tmp_path_factory.mktemp("dpo")
    model_dir, _ = write_task(root, n=8)
    return model_dir, write_pairs(root / "train.jsonl"), write_pairs(root / "heldout.jsonl", n=16, offset=1000)


def _cfg(task, out, **kw):
    model_dir, train, held = task
    base = dict(model=str(model_dir), data=str(train), eval_data=str(held), output_dir=str(out), batch_size=4,
                max_steps=16, lr=5e-3, beta=0.1, lora_r=8, lora_alpha=16, lora_dropout=0.0, progress=False)
    return DPOConfig(**{**base, **kw})


def test_dpo_raises_heldout_reward_accuracy(task, tmp_path):
    summary = run_dpo(_cfg(task, tmp_path / "run", max_steps=32))
    before, after = summary["eval_before"], summary["eval_after"]
    assert before["eval_rewards/accuracies"] == 0.0  # policy == reference: every margin is 0
    assert after["eval_rewards/accuracies"] >= 0.9
    assert after["eval_loss"] < before["eval_loss"] - 0.2
    # no cache: the reference ran at every step (counted after training, in the summary and its file)
    assert summary["reference_forwards"] >= 32
    saved = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert saved["reference_forwards"] == summary["reference_forwards"]
    assert after["eval_rewards/margins"] > 0
    assert (tmp_path / "run" / "final" / "adapter_model.safetensors").exists()


def _trainer(task, tmp_path, cfg, cache=None, ref_model=None):
    tok = load_tokenizer(cfg.model)
    pairs, _ = load_preferences(cfg.data, tok, max_length=cfg.max_length)
    model = prepare_model(cfg)
    if cache == "folder":  # the trainer opens it (under the fingerprint of its layout: share_start's start)
        cache = cfg.ref_cache
    elif cache is not None:
        from prefopt.model import resolve_model_dir

        cache = reference_cache_for(cfg, model, ref_model, resolve_model_dir(cfg.model))
    return DPOTrainer(model, cfg, pairs, pad_id=tok.pad_token_id, ref_cache=cache, ref_model=ref_model), pairs


def test_cache_second_run_makes_no_reference_forward_and_same_loss(task, tmp_path):
    cfg = _cfg(task, tmp_path / "a", ref_cache=str(tmp_path / "cache"), eval_data=None, max_steps=4)
    first, pairs = _trainer(task, tmp_path, cfg, cache=True)
    assert len(first.ref_cache) == len(pairs)
    assert first.before_training()["reference_fill_seconds"] > 0  # train_summary.json's record of the fill
    second, _ = _trainer(task, tmp_path, cfg, cache=True)  # same data, same reference: all cached
    assert second.ref_forwards == 0 and second.before_training() == {}
    losses_cached = [second.train_step(s)["loss"] for s in range(4)]
    assert second.ref_forwards == 0
    live, _ = _trainer(task, tmp_path, _cfg(task, tmp_path / "b", eval_data=None, max_steps=4))
    losses_live = [live.train_step(s)["loss"] for s in range(4)]
    assert live.ref_forwards == 4
    assert max(abs(a - b) for a, b in zip(losses_cached, losses_live)) < 1e-6


def test_ld_dpo_trains_and_its_cache_holds_the_weighted_sums(task, tmp_path):
    """LD-DPO (ld_alpha): the cache is filled with the reference's weighted sums under its own
    fingerprint (a DPO cache in the folder is stale for it), the cached run's losses equal the
    live reference's, and it learns: the held-out loss falls, the adapter moves."""
    cache = str(tmp_path / "cache")
    dpo, pairs = _trainer(task, tmp_path, _cfg(task, tmp_path / "dpo", ref_cache=cache, eval_data=None), cache=True)
    keys = [p.key for p in pairs]
    plain = torch.stack(dpo.ref_cache.get(keys))
    cfg = _cfg(task, tmp_path / "a", ref_cache=cache, eval_data=None, max_steps=16, ld_alpha=0.2)
    cached, pairs = _trainer(task, tmp_path, cfg, cache=True)
    assert "ld_alpha" in cached.ref_cache.stale_reason and len(cached.ref_cache) == len(pairs)  # refilled
    weighted = torch.stack(cached.ref_cache.get(keys))
    # each pair's longer answer has 2 tokens more ("urgent review" / "routine visit"), which count 0.2 times
    assert all(len(p.chosen.input_ids) != len(p.rejected.input_ids) for p in pairs)
    same = torch.isclose(weighted, plain, rtol=0, atol=1e-5)
    assert (same.sum(0) == 1).all()  # the shorter answer's sum is unchanged; the longer one's is higher
    assert (weighted[~same] > plain[~same] + 1).all()
    live, _ = _trainer(task, tmp_path, _cfg(task, tmp_path / "b", eval_data=None, max_steps=16, ld_alpha=0.2))
    for t in (cached, live):
        t.eval_data = pairs[:16]
    before = live.evaluate()["eval_loss"]
    start = {n: p.detach().clone() for n, p in live.model.named_parameters() if "lora_B" in n}
    losses = [(cached.train_step(s)["loss"], live.train_step(s)["loss"]) for s in range(16)]
    assert cached.ref_forwards == 0 and live.ref_forwards == 4 + 16  # its first evaluation's 4 batches too
    assert max(abs(a - b) for a, b in losses) < 1e-5
    assert live.evaluate()["eval_loss"] < before - 0.05
    assert all(not torch.equal(p, start[n]) for n, p in live.model.named_parameters() if "lora_B" in n)


def test_the_reference_cache_outlives_a_trained_dora_adapter(task, tmp_path):
    """The reference is the model with its adapter off: a DoRA adapter's magnitudes, like A and B,
    are not part of its fingerprint (they were: a trained DoRA run's cache went stale)."""
    from prefopt.model import resolve_model_dir

    cfg = _cfg(task, tmp_path / "o", ref_cache=str(tmp_path / "cache"), eval_data=None, lora_dora=True)
    model = prepare_model(cfg)
    cache = reference_cache_for(cfg, model, None, resolve_model_dir(cfg.model))
    cache.add(["k"], torch.tensor([-1.5]), torch.tensor([-2.5]))
    with torch.no_grad():
        for _, m in lora_layers(model):
            m.lora_magnitude.mul_(1.1)
            m.lora_B.weight.add_(0.1)
    again = reference_cache_for(cfg, model, None, resolve_model_dir(cfg.model))
    assert again.stale_reason is None and len(again) == 1
    with torch.no_grad():
        model.model.norm.weight.mul_(1.01)  # a base weight: stale, so the check can fail
    assert "weights" in reference_cache_for(cfg, model, None, resolve_model_dir(cfg.model)).stale_reason


def test_cache_invalidates_exactly_what_changed(task, tmp_path):
    model_dir, train, _ = task
    data = tmp_path / "d.jsonl"
    data.write_text(train.read_text())
    cfg = _cfg(task, tmp_path / "o", data=str(data), ref_cache=str(tmp_path / "cache"), eval_data=None)
    t1, pairs = _trainer(task, tmp_path, cfg, cache=True)
    old = dict(t1.ref_cache.entries)
    # one record changed: only its pair is recomputed, the rest reused
    lines = data.read_text().splitlines()
    rec = json.loads(lines[5])
    rec["chosen"] = "urgent review today"
    lines[5] = json.dumps(rec)
    data.write_text("\n".join(lines) + "\n")
    t2, pairs2 = _trainer(task, tmp_path, cfg, cache=True)
    new_keys = {p.key for p in pairs2} - set(old)
    assert len(new_keys) == 1 and t2.ref_cache.stale_reason is None
    assert len(t2.ref_cache) == len(old) + 1
    # the reference's weights changed: the whole cache is stale and rebuilt
    ref = prepare_model(cfg)
    with torch.no_grad():
        ref.model.norm.weight.mul_(1.01)
    from prefopt.model import resolve_model_dir

    stale = reference_cache_for(cfg, ref, None, resolve_model_dir(cfg.model))
    assert "weights" in stale.stale_reason and len(stale) == 0
    # opening deletes nothing (other ranks open the cache read-only); the first write wipes it
    shards = lambda: sorted(f.name for f in (tmp_path / "cache").glob("shard-*"))  # noqa: E731
    assert len(shards()) > 1
    other_rank = reference_cache_for(cfg, ref, None, resolve_model_dir(cfg.model))
    stale.add([pairs2[0].key], torch.tensor([-1.5]), torch.tensor([-2.5]))
    assert shards() == ["shard-00000.safetensors"]
    assert len(other_rank) == 0
    other_rank.reload()
    assert other_rank.stale_reason is None and len(other_rank) == 1
    assert [t.item() for t in other_rank.get([pairs2[0].key])] == [-1.5, -2.5]
    # an index cut short (a crash, a hand edit) is a stale cache, rebuilt; it was a JSONDecodeError
    index = tmp_path / "cache" / "index.json"
    index.write_text(index.read_text()[:40])
    broken = reference_cache_for(cfg, ref, None, resolve_model_dir(cfg.model))
    assert broken.stale_reason.startswith("index.json: not valid JSON (Unterminated string") and len(broken) == 0
    assert str(index) not in broken.stale_reason  # the log line names the cache's folder once
    broken.add([pairs2[0].key], torch.tensor([-1.0]), torch.tensor([-2.0]))
    assert reference_cache_for(cfg, ref, None, resolve_model_dir(cfg.model)).stale_reason is None
    index.write_text(json.dumps({"fingerprint": json.loads(index.read_text())["fingerprint"]}))  # no "entries"
    broken = reference_cache_for(cfg, ref, None, resolve_model_dir(cfg.model))
    assert broken.stale_reason.startswith('index.json: no "entries" field: edited by hand') and len(broken) == 0


def test_interrupted_fill_resumes(task, tmp_path):
    cfg = _cfg(task, tmp_path / "o", ref_cache=str(tmp_path / "cache"), eval_data=None)
    tok = load_tokenizer(cfg.model)
    pairs, _ = load_preferences(cfg.data, tok)
    model = prepare_model(cfg)
    from prefopt.model import resolve_model_dir

    cache = reference_cache_for(cfg, model, None, resolve_model_dir(cfg.model))
    calls = []

    def flaky(chunk):
        calls.append(len(chunk))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return torch.zeros(len(chunk)), torch.zeros(len(chunk))

    with pytest.raises(KeyboardInterrupt):
        cache.fill(pairs, flaky, batch_size=8, show_progress=False)
    assert len(cache) == 16
    reopened = reference_cache_for(cfg, model, None, resolve_model_dir(cfg.model))
    assert len(reopened) == 16
    longest = []

    def record(chunk):
        longest.append(max(len(p.input_ids) for p in chunk))
        return torch.zeros(len(chunk)), torch.zeros(len(chunk))

    assert reopened.fill(pairs, record, batch_size=8, show_progress=False) == len(pairs) - 16
    assert longest == sorted(longest, reverse=True) and len(set(longest)) > 1  # batched by length


@pytest.mark.parametrize("every, shards", [(0.0, 6), (float("inf"), 1)])
def test_a_fill_writes_its_batches_together_not_the_whole_index_each_batch(tmp_path, every, shards):
    """The index holds every entry, so writing it after each batch grew with the square of the
    pairs (54 s for 20,000 pairs on a CPU): a fill writes what it has computed every
    ``flush_seconds`` (30 s by default) and at its end, one shard each time."""
    from types import SimpleNamespace

    from prefopt.refcache import RefCache

    pairs = [SimpleNamespace(key=f"k{i}", input_ids=[0] * (1 + i % 5)) for i in range(44)]

    def compute(chunk):
        return -torch.tensor([len(p.input_ids) for p in chunk], dtype=torch.float), torch.full((len(chunk),), -9.0)

    cache = RefCache(tmp_path, {"model": "m"})
    assert cache.fill(pairs, compute, batch_size=8, show_progress=False, flush_seconds=every) == 44
    assert len(list(tmp_path.glob("shard-*.safetensors"))) == shards
    index = (tmp_path / "index.json").read_text()
    assert index.count("\n") == 1 and len(json.loads(index)["entries"]) == 44  # one line, as compact as JSON is
    reopened = RefCache(tmp_path, {"model": "m"})
    chosen, rejected = reopened.get([p.key for p in pairs])
    assert chosen.tolist() == [-len(p.input_ids) for p in pairs] and set(rejected.tolist()) == {-9.0}


def test_a_fill_that_does_not_write_computes_every_batch_and_writes_nothing(tmp_path):
    """``write=False``: a torchrun rank other than 0 runs its share of each batch (``compute``)
    while rank 0 writes the cache; it must not write the same files beside it."""
    from types import SimpleNamespace

    from prefopt.refcache import RefCache

    pairs = [SimpleNamespace(key=f"k{i}", input_ids=[0] * (1 + i % 3)) for i in range(20)]
    seen = []

    def compute(chunk):
        seen.extend(p.key for p in chunk)
        return torch.zeros(len(chunk)), torch.zeros(len(chunk))

    cache = RefCache(tmp_path / "cache", {"model": "m"})
    assert cache.fill(pairs, compute, batch_size=8, show_progress=False, flush_seconds=0.0, write=False) == 20
    assert sorted(seen) == sorted(p.key for p in pairs) and len(cache) == 0
    assert not (tmp_path / "cache").exists()


def test_sigterm_while_the_cache_fills_keeps_the_batches_done_and_a_rerun_computes_the_rest(task, tmp_path, capsys,
                                                                                             monkeypatch):
    """Nothing is trained yet, so SIGTERM stops the fill where it lands (the CLI's 143, a
    scheduler's grace period not spent on it); the batches computed are written first."""
    import os
    import signal

    import prefopt.train.dpo as dpo
    from prefopt.cli import main

    model_dir, train, held = task
    calls, real = [], dpo.pair_logp_sums

    def counted(*a, **kw):
        calls.append(1)
        if len(calls) == 3 and kill:
            assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL  # (else the signal ends pytest itself)
            os.kill(os.getpid(), signal.SIGTERM)  # the handler raises where it lands: in this forward
        return real(*a, **kw)

    monkeypatch.setattr(dpo, "pair_logp_sums", counted)
    args = ["dpo", "--model", str(model_dir), "--data", str(train), "--output-dir", str(tmp_path / "run"),
            "--max-steps", "2", "--batch-size", "4", "--ref-cache", str(tmp_path / "cache"), "--no-progress"]
    kill = True
    assert main(args) == 143
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # put back
    err = capsys.readouterr().err
    kept = len(json.loads((tmp_path / "cache" / "index.json").read_text())["entries"])
    assert kept == 32  # two batches of 16 pairs (4 a step, each prompt once)
    assert (f"prefopt: stopped by SIGTERM while computing the reference log-probs: those of 32 of the 64 pairs are "
            f"kept in {tmp_path / 'cache'}; run it again and it computes only the other 32") in err
    assert not (tmp_path / "run" / "train_config.json").exists()  # the same command again is no other run
    calls.clear()
    kill = False
    assert main(args) == 0
    assert len(calls) == 2  # the other 32 pairs, and no forward in training
    assert json.loads((tmp_path / "run" / "train_summary.json").read_text())["reference_forwards"] == 0


@pytest.mark.parametrize("loss", ["sigmoid", "ipo", "simpo", "orpo", "rpo", "bco_pair", "nca_pair", "exo_pair",
                                  "sppo_hard", "apo_zero", "apo_down", "discopop", "sigmoid_norm", "aot",
                                  "aot_unpaired", "sft", "0.8*sigmoid+0.2*bco_pair+sft"])
def test_every_loss_trains_through_the_trainer(task, tmp_path, loss):
    cfg = _cfg(task, tmp_path / loss, loss=loss, max_steps=16, eval_data=None, lr=3e-3,
               beta={"simpo": 2.0, "ipo": 0.5}.get(loss, 0.1), label_smoothing=1e-3 if loss == "exo_pair" else 0.0)
    trainer, pairs = _trainer(task, tmp_path, cfg)
    trainer.eval_data = pairs[:16]
    before = trainer.evaluate()["eval_loss"]
    forwards = trainer.ref_forwards
    for s in range(16):
        trainer.train_step(s)
    after = trainer.evaluate()["eval_loss"]
    assert after < before, (before, after)
    assert forwards == (0 if loss in ("simpo", "orpo", "sft") else 4)  # 16 eval pairs in batches of 4


@pytest.mark.parametrize("divergence", ["reverse_kl", "forward_kl", "js_divergence", "alpha_divergence"])
def test_f_divergences_train_through_the_trainer(task, tmp_path, divergence):
    """f-DPO: the held-out loss falls, the chosen answers' rewards pull ahead, the adapter moves.
    (Reward accuracy is no test of it here: the bounded scores of forward KL, JS and α < 1 stop
    pulling a pair apart once its rejected answer's log-ratio is high, so in 16 steps they learn
    "prefer one answer" (accuracy 0.5) where DPO learns the code that decides it (1.0).)"""
    cfg = _cfg(task, tmp_path / divergence, max_steps=16, eval_data=None, lr=1e-3, beta=0.5, f_divergence=divergence)
    trainer, pairs = _trainer(task, tmp_path, cfg)
    trainer.eval_data = pairs[:16]
    before = trainer.evaluate()
    start = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    for s in range(16):
        trainer.train_step(s)
    after = trainer.evaluate()
    assert after["eval_loss"] < before["eval_loss"] - 0.02, (before, after)
    assert before["eval_rewards/margins"] == 0 and after["eval_rewards/margins"] > 0.2
    assert all(not torch.equal(p, start[n]) for n, p in trainer.model.named_parameters() if "lora_B" in n)


def test_frozen_reference_model_equals_adapter_disabled(task, tmp_path):
    from prefopt import load_model

    cfg = _cfg(task, tmp_path / "o", eval_data=None, max_steps=3)
    a, _ = _trainer(task, tmp_path, cfg)
    b, _ = _trainer(task, tmp_path, _cfg(task, tmp_path / "p", eval_data=None, max_steps=3, ref=cfg.model),
                    ref_model=load_model(cfg.model))
    assert a.ref_mode == "adapter" and b.ref_mode == "model"
    la = [a.train_step(s)["loss"] for s in range(3)]
    lb = [b.train_step(s)["loss"] for s in range(3)]
    assert max(abs(x - y) for x, y in zip(la, lb)) < 1e-6


def test_a_reference_model_fills_the_cache_on_the_trainers_device_then_goes_back(task, tmp_path, monkeypatch):
    """With --ref and --ref-cache the reference model runs the fill on the training device (it
    stayed where it was loaded, the CPU, while the pairs went to the GPU) and leaves it after, its
    memory the policy's. A stand-in: the model "came from" another device, its moves recorded."""
    import prefopt.train.dpo as dpo
    from prefopt import load_model

    ref = load_model(task[0])
    moves, to = [], ref.to
    monkeypatch.setattr(ref, "to", lambda device: moves.append(torch.device(device)) or to("cpu"))
    monkeypatch.setattr(dpo, "_device_of", lambda module: torch.device("meta"))  # its home: not the trainer's
    fills = []
    fill = DPOTrainer.fill_cache
    monkeypatch.setattr(DPOTrainer, "fill_cache", lambda self, pairs: fills.append(list(moves)) or fill(self, pairs))
    cfg = _cfg(task, tmp_path / "o", eval_data=None, max_steps=1, ref=str(task[0]), ref_cache=str(tmp_path / "c"))
    trainer, pairs = _trainer(task, tmp_path, cfg, cache="folder", ref_model=ref)
    assert fills == [[]] and moves == [torch.device("cpu"), torch.device("meta")]  # placed for the fill, then home
    assert trainer.ref_mode == "cache" and len(trainer.ref_cache) == len(pairs) and not ref.training
    assert trainer.train_step(0)["loss"] > 0 and trainer.ref_forwards == 0
    moves.clear()  # a full cache: the reference model stays where it is
    again, _ = _trainer(task, tmp_path, replace(cfg, output_dir=str(tmp_path / "p")), cache="folder", ref_model=ref)
    assert moves == [] and again.ref_mode == "cache" and len(again.ref_cache) == len(pairs)


def test_dpo_config_is_validated(task, tmp_path):
    with pytest.raises(ValueError, match="loss must be one of"):
        _cfg(task, tmp_path, loss="dpo3")
    with pytest.raises(ValueError, match=r"exo_pair needs label_smoothing > 0 \(the EXO paper recommends 1e-3\)"):
        _cfg(task, tmp_path, loss="exo_pair")
    with pytest.raises(ValueError, match=r"loss 'sigmoid\+2\*nope': unknown loss 'nope'"):
        _cfg(task, tmp_path, loss="sigmoid+2*nope")
    with pytest.raises(ValueError, match=r"exo_pair needs label_smoothing > 0"):  # inside a mixture too
        _cfg(task, tmp_path, loss="sigmoid+0.1*exo_pair")
    with pytest.raises(ValueError, match="discopop_tau must be > 0"):
        _cfg(task, tmp_path, loss="discopop", discopop_tau=0.0)
    with pytest.raises(ValueError, match="full fine-tuning needs a reference"):
        _cfg(task, tmp_path, lora=False)
    with pytest.raises(ValueError, match=r"ref_cache: .*train.jsonl is a file; the cache is a folder"):
        _cfg(task, tmp_path, ref_cache=str(task[1]))  # the data file given as the cache: refused before any work
    with pytest.raises(ValueError, match="share_start lays each pair after the shared start with its prompt run "
                                         "once: it needs share_prompt"):
        _cfg(task, tmp_path, share_start=True, share_prompt=False)
    assert _cfg(task, tmp_path, share_start=True).pack is False  # SFT's share_start needs pack, DPO's does not


def test_share_start_says_what_it_shares_or_that_nothing_is_and_packs_each_pair(task, tmp_path):
    trainer, pairs = _trainer(task, tmp_path, _cfg(task, tmp_path / "a", eval_data=None, share_start=True))
    assert trainer.start == 74 and "; the 74 prompt tokens every pair begins with run once" in trainer.plan()
    trainer.start = 0  # as for data whose prompts share under 16 tokens (pairs_start: test_shared_prompt.py)
    assert "no prompt start of 16+ tokens that every pair shares" in trainer.plan()
    assert "pair_mask" in trainer.pair_batch(pairs[:4])  # one packed row a pair


def test_share_start_trains_as_one_packed_row_a_pair_does(task, tmp_path, capsys):
    """share_start: each micro-batch's pairs in one row after the 74 tokens every prompt begins
    with (the chat template's system prompt and "Message "): the same losses step by step as one
    packed row a pair (no dropout), the same tokens logged, held-out pair
    accuracy up, and the same adapter in the end."""
    from prefopt import load_model
    from prefopt.lora import lora_state_dict

    runs = {}
    for share in (False, True):
        out = tmp_path / f"s{share}"
        summary = run_dpo(_cfg(task, out, share_start=share, ref_cache=str(tmp_path / f"c{share}")))
        runs[share] = ([m for m in read_metrics(out) if "loss" in m], summary)  # training steps, not evals
    (plain, _), (shared, summary) = runs[False], runs[True]
    assert "; the 74 prompt tokens every pair begins with run once a micro-batch\n" in capsys.readouterr().out
    assert [m["loss"] for m in shared] == pytest.approx([m["loss"] for m in plain], rel=1e-4)
    assert [m["tokens"] for m in shared] == [m["tokens"] for m in plain]
    assert shared[-1]["loss"] < shared[0]["loss"] - 0.05
    assert summary["eval_after"]["eval_rewards/accuracies"] > summary["eval_before"]["eval_rewards/accuracies"]
    a, b = (lora_state_dict(load_model(task[0], adapter=tmp_path / f"s{share}" / "final")) for share in (True, False))
    assert all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)
    assert any(v.abs().sum() > 0 for k, v in a.items() if "lora_B" in k)


def _sft_adapter(model_dir, out, dora=False):
    """A random (non-zero) SFT adapter saved to ``out`` (DoRA: magnitudes off their start too);
    returns the adapted model."""
    from prefopt import apply_lora, load_model, save_adapter

    sft = apply_lora(load_model(model_dir), r=4, alpha=8, dropout=0.0, dora=dora)
    with torch.no_grad():
        for _, m in lora_layers(sft):
            m.lora_B.weight.normal_(0, 0.05)
            if dora:
                m.lora_magnitude.mul_(torch.rand(m.lora_magnitude.shape) + 0.5)
    save_adapter(sft, out)
    return sft


def test_dpo_after_sft_uses_the_merged_sft_model_as_reference(task, tmp_path):
    from prefopt import disable_adapter, load_model

    model_dir = task[0]
    sft = _sft_adapter(model_dir, tmp_path / "sft")
    cfg = _cfg(task, tmp_path / "o", sft_adapter=str(tmp_path / "sft"), eval_data=None, max_steps=2)
    trainer, _ = _trainer(task, tmp_path, cfg)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        want = sft.eval()(ids)
        base = load_model(model_dir)(ids)
        with disable_adapter(trainer.model.eval()):
            got = trainer.model(ids)
    assert (got - want).abs().max() < 1e-5 and (got - base).abs().max() > 1e-3
    assert all(m.r == cfg.lora_r for _, m in lora_layers(trainer.model))  # a fresh adapter on top


@pytest.mark.parametrize("sft_dora, dpo_dora", [(False, False), (True, False), (False, True), (True, True)])
def test_dpo_after_sft_saves_one_adapter_that_holds_both_on_the_base_model(task, tmp_path, sft_dora, dpo_dora):
    """``final/`` on the base model (prefopt eval/generate/merge, PEFT) is the trained SFT+DPO model;
    one DoRA adapter where either is DoRA (a DoRA SFT adapter was refused before)."""
    from prefopt import load_model
    from prefopt.cli import main
    from prefopt.lora_files import read_adapter_config

    model_dir = task[0]
    sft = _sft_adapter(model_dir, tmp_path / "sft", dora=sft_dora)
    seen = {}
    run_dpo(_cfg(task, tmp_path / "o", sft_adapter=str(tmp_path / "sft"), eval_data=None, max_steps=3,
                 lora_dora=dpo_dora), callbacks=[lambda trainer, step, metrics: seen.update(trainer=trainer)])
    assert read_adapter_config(tmp_path / "o" / "final").dora == (sft_dora or dpo_dora)
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    final = tmp_path / "o" / "final"
    assert main(["merge", "--model", str(model_dir), "--adapter", str(final), "--output", str(tmp_path / "m")]) == 0
    with torch.no_grad():
        want = seen["trainer"].model.eval()(ids)
        got = load_model(model_dir, adapter=final)(ids)
        merged = load_model(tmp_path / "m")(ids)
        only_sft = sft.eval()(ids)
    assert (got - want).abs().max() < 1e-4 and (merged - want).abs().max() < 1e-4
    assert (only_sft - want).abs().max() > 1e-3  # DPO moved the model, so a dropped SFT or DPO part shows


def test_dpo_after_sft_on_a_4bit_base_learns_and_saves_both_updates(task, tmp_path):
    """QLoRA DPO: the projections in 4 bits, the SFT adapter merged beside the codes (rounding it
    in would erase most of it), a fresh adapter on top. The reference (adapter off) is the 4-bit
    SFT model exactly; the held-out pair accuracy rises with the reference from the cache; final/
    stacks SFT and DPO, and on the 4-bit base it is the trained model to 1e-5."""
    from prefopt import disable_adapter, load_model
    from prefopt.quant import QuantLinear

    model_dir = task[0]
    sft = _sft_adapter(model_dir, tmp_path / "sft")
    seen = {}
    summary = run_dpo(_cfg(task, tmp_path / "o", sft_adapter=str(tmp_path / "sft"), quantize="nf4", max_steps=32,
                           ref_cache=str(tmp_path / "cache")),
                      callbacks=[lambda trainer, step, metrics: seen.update(trainer=trainer)])
    assert any(isinstance(m, QuantLinear) for m in seen["trainer"].model.modules())
    assert summary["eval_after"]["eval_rewards/accuracies"] >= 0.9 and summary["reference_forwards"] == 0
    final = tmp_path / "o" / "final"
    assert json.loads((final / "stacked_on.json").read_text())["ranks"] == [4, 8]
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    trained = seen["trainer"].model.eval()
    with torch.no_grad():
        got = load_model(model_dir, adapter=final)(ids)
        assert (got - sft.eval()(ids)).abs().max() > 1e-3  # the DPO part is in it
        as_trained = load_model(model_dir, adapter=final, quantize="nf4", merge=True)(ids)
        assert (as_trained - trained(ids)).abs().max() < 1e-5
        with disable_adapter(trained):
            reference = trained(ids)
        sft_4bit = load_model(model_dir, adapter=tmp_path / "sft", quantize="nf4")(ids)
        assert (reference - sft_4bit).abs().max() < 1e-5  # the SFT update kept whole under DPO
        assert (sft_4bit - load_model(model_dir, quantize="nf4")(ids)).abs().max() > 1e-3
    from prefopt import apply_lora, save_adapter

    save_adapter(apply_lora(load_model(model_dir), r=2, alpha=4, target_modules=["q_proj"], dora=True),
                 tmp_path / "dora_sft")
    with pytest.raises(ValueError, match="rescales whole rows"):
        _cfg(task, tmp_path / "x", sft_adapter=str(tmp_path / "dora_sft"), quantize="nf4")


def test_cli_dpo_with_cache(task, tmp_path, capsys):
    from prefopt.cli import main

    model_dir, train, held = task
    out = tmp_path / "cli"
    assert main(["dpo", "--model", str(model_dir), "--data", str(train), "--eval-data", str(held),
                 "--output-dir", str(out), "--max-steps", "2", "--batch-size", "4", "--loss", "robust",
                 "--label-smoothing", "0.1", "--ref-cache", str(tmp_path / "cache"), "--no-progress"]) == 0
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["reference_forwards"] == 0
    assert json.loads((out / "train_config.json").read_text())["loss"] == "robust"
    assert (out / "final" / "adapter_config.json").exists()
    assert json.loads((tmp_path / "cache" / "index.json").read_text())["entries"]
    printed = capsys.readouterr().out  # the run's outcome on the console, as the summary has it
    first, last = [m for m in read_metrics(out) if "loss" in m]  # 2 steps: a quarter is one step
    assert first["pairs"] == last["pairs"] == 4  # each step's batch: what the diagnosis weighs the accuracy by
    assert (f"pair accuracy {first['rewards/accuracies']:.2f} → {last['rewards/accuracies']:.2f}, "
            f"chosen log-prob {first['logps/chosen']:.2f} → {last['logps/chosen']:.2f}") in printed
    before, after = summary["eval_before"], summary["eval_after"]
    for key, label in (("eval_loss", "eval loss"), ("eval_rewards/accuracies", "eval pair accuracy")):
        assert f"prefopt: {label}: {before[key]:.4f} → {after[key]:.4f}\n" in printed
    assert f"saved to {out / 'final'} (model card: README.md); per-step metrics in {out / 'metrics.jsonl'}" in printed


@pytest.mark.parametrize("cache", [False, True])
def test_run_dpo_lets_a_reference_model_go_once_the_cache_is_filled(task, tmp_path, monkeypatch, cache):
    """With --ref and --ref-cache the reference model is needed for the fill alone: run_dpo lets it
    go before training (an 8B model's 16-32 GB of CPU memory; under --fsdp its share on each GPU),
    and without the cache keeps it for every step's reference forward."""
    import gc
    import weakref

    import prefopt.train.run as run

    made, build = [], run.reference_model
    monkeypatch.setattr(run, "reference_model", lambda config: made.append(weakref.ref(m := build(config))) or m)
    alive = []

    def during_training(trainer, step, metrics):
        gc.collect()
        alive.append(made[0]() is not None)

    summary = run_dpo(_cfg(task, tmp_path / "o", eval_data=None, max_steps=2, lora=False, lr=1e-4, ref=task[0],
                           ref_cache=str(tmp_path / "c") if cache else None), callbacks=[during_training])
    assert alive == [not cache] * 2 and (summary["reference_forwards"] == 0) == cache


def test_a_loss_without_a_reference_loads_no_reference_model(task, tmp_path, monkeypatch, capsys):
    import prefopt.train.run as run

    loaded = []
    monkeypatch.setattr(run, "load_model", lambda *a, **k: loaded.append(a) or pytest.fail("a model was loaded"))
    assert run.reference_model(_cfg(task, tmp_path / "o", loss="simpo", ref=task[0])) is None and not loaded
    assert f"prefopt: note: simpo needs no reference model: --ref {task[0]} is not loaded" in capsys.readouterr().err
    assert run.reference_model(_cfg(task, tmp_path / "p")) is None and not loaded  # no --ref: nothing said
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("share_start", [False, True])
def test_cache_is_filled_under_the_trainers_autocast(task, tmp_path, monkeypatch, share_start):
    """On CUDA the policy runs under bf16 autocast; the cached reference must be computed the same
    way, or the implicit rewards start from rounding noise instead of 0 (here: CPU bf16 autocast).
    With share_start the fill runs 32 pairs in a row after the data's shared start, training 8
    (in another order): a pair's sums do not depend on its batch."""
    from prefopt.train.loop import Trainer

    monkeypatch.setattr(Trainer, "_autocast", lambda self: torch.autocast("cpu", dtype=torch.bfloat16))
    cfg = _cfg(task, tmp_path / "a", ref_cache=str(tmp_path / "cache"), max_steps=1, share_start=share_start)
    trainer, _ = _trainer(task, tmp_path, cfg, cache="folder")
    batch = trainer.collate(trainer.train_data[5:13][::-1])
    assert ("lengths" in batch) == share_start and trainer.start == (74 if share_start else 0)
    with torch.no_grad(), trainer._autocast():
        _, metrics = trainer.loss_sum(trainer.model, batch)
    # policy == reference (LoRA B is 0): every implicit reward is exactly 0
    assert metrics["rewards/chosen"].item() == 0.0 and metrics["rewards/rejected"].item() == 0.0
    assert metrics["logps/chosen"].item() < 0


def test_a_cache_filled_without_autocast_is_stale_for_an_autocast_run(task, tmp_path, monkeypatch):
    import prefopt.train.reference as ref_module
    from prefopt.model import resolve_model_dir

    cfg = _cfg(task, tmp_path / "a", ref_cache=str(tmp_path / "cache"), max_steps=1)
    _trainer(task, tmp_path, cfg, cache=True)  # filled in fp32 (CPU: no autocast)
    monkeypatch.setattr(ref_module, "autocast_on", lambda device, config: True)  # as on CUDA with bf16_autocast
    cache = reference_cache_for(cfg, prepare_model(cfg), None, resolve_model_dir(cfg.model))
    assert cache.stale_reason == "changed: autocast, pairs"


def test_cache_fill_and_training_run_each_prompt_once(task, tmp_path, monkeypatch):
    """The precompute and the training batches pack each pair into one row (the prompt once,
    prefopt.train.shared_prompt), and the cached sums equal the full-sequence reference's;
    ``share_prompt=False`` stacks the two full sequences instead."""
    import prefopt.train.dpo as dpo
    from prefopt.data.preference import pair_collate

    real, calls = dpo.pack_pairs, []
    monkeypatch.setattr(dpo, "pack_pairs", lambda pairs, pad: calls.append(len(pairs)) or real(pairs, pad))
    cfg = _cfg(task, tmp_path / "a", ref_cache=str(tmp_path / "c1"), eval_data=None, max_steps=1)
    trainer, pairs = _trainer(task, tmp_path, cfg, cache=True)
    assert sum(calls) == len(pairs) and trainer.ref_forwards == 0
    batch = trainer.collate(pairs[:8])
    assert batch["input_ids"].shape[0] == 8 and batch["labels"].shape[0] == 16 and trainer.units(batch) == 8
    full = trainer.reference_logps(pair_collate(pairs[:8], trainer.pad_id))
    assert torch.allclose(torch.cat([batch["ref_chosen"], batch["ref_rejected"]]), full, rtol=1e-5, atol=1e-5)

    calls.clear()
    cfg = _cfg(task, tmp_path / "b", ref_cache=str(tmp_path / "c2"), eval_data=None, share_prompt=False)
    trainer, _ = _trainer(task, tmp_path, cfg, cache=True)
    assert calls == [] and trainer.collate(pairs[:8])["input_ids"].shape[0] == 16


def test_packed_pairs_give_the_full_sequence_loss_and_gradients(task, tmp_path):
    """One packed row per pair is the same computation as the two stacked full sequences: same
    loss, metrics and LoRA gradients (fp32), with the reference live from the adapter-off model."""
    from prefopt.data.preference import pair_collate

    trainer, pairs = _trainer(task, tmp_path, _cfg(task, tmp_path / "a", eval_data=None))
    g = torch.Generator().manual_seed(0)
    for _, m in lora_layers(trainer.model):  # a trained-looking adapter, so every LoRA weight gets a gradient
        m.lora_B.weight.data = torch.randn(m.lora_B.weight.shape, generator=g) * 0.05
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    out = []
    for batch in (trainer.pair_batch(pairs[:6]), pair_collate(pairs[:6], trainer.pad_id)):
        trainer.model.zero_grad()
        loss, metrics = trainer.loss_sum(trainer.model, batch)
        loss.backward()
        out.append((loss.detach(), {k: float(v) for k, v in metrics.items()}, [p.grad.clone() for p in params]))
    (l1, m1, g1), (l2, m2, g2) = out
    assert "gather" in trainer.pair_batch(pairs[:6]) and abs(m1["rewards/margins"]) > 1e-3
    assert torch.allclose(l1, l2, rtol=1e-5) and all(abs(m1[k] - m2[k]) < 1e-4 for k in m1)
    assert all(a.abs().max() > 0 and torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(g1, g2))


def test_under_autocast_the_pairs_layout_is_part_of_the_cache_fingerprint(task, tmp_path, monkeypatch):
    """bf16 rounds a packed row and two stacked sequences differently: switching share_prompt
    under autocast rebuilds the cache (in fp32 they agree to ~1e-6 and one cache serves both)."""
    import prefopt.train.reference as ref_module
    from prefopt.model import resolve_model_dir

    def cache(share, autocast):
        monkeypatch.setattr(ref_module, "autocast_on", lambda device, config: autocast)
        cfg = _cfg(task, tmp_path / "a", ref_cache=str(tmp_path / "cache"), share_prompt=share)
        return reference_cache_for(cfg, prepare_model(cfg), None, resolve_model_dir(cfg.model))

    cache(True, True).add(["pair-0"], torch.zeros(1), torch.zeros(1))  # written under the packed layout
    assert cache(True, True).stale_reason is None
    assert cache(False, True).stale_reason == "changed: pairs"
    assert cache(False, False).fingerprint == cache(True, False).fingerprint


def test_full_fine_tuning_forms_the_head_gradients_in_one_pass(task, tmp_path, monkeypatch):
    """No LoRA, so the (tied) head trains: the trainer's loss takes the one-pass path, with the
    per-token path's loss, metrics and gradients on every parameter (fp32)."""
    from prefopt import load_model
    from prefopt.kernels import onepass

    cfg = _cfg(task, tmp_path / "o", eval_data=None, lora=False, ref=task[0])
    trainer, pairs = _trainer(task, tmp_path, cfg, ref_model=load_model(task[0]))
    with torch.no_grad():  # a policy that differs from its reference
        for p in trainer.model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    calls = []
    monkeypatch.setattr(onepass, "onepass_loss", lambda *a, _f=onepass.onepass_loss, **k: calls.append(1) or _f(*a, **k))
    out = []
    for flag in ("1", "0"):
        monkeypatch.setenv("PREFOPT_ONEPASS", flag)
        trainer.model.zero_grad()
        loss, metrics = trainer.loss_sum(trainer.model, trainer.pair_batch(pairs[:6]))
        (loss / 4).backward()  # scaled, as the loop scales it: the one-pass backward must pass that on
        out.append((loss.detach(), {k: float(v) for k, v in metrics.items()},
                    [p.grad.clone() for p in trainer.model.parameters()]))
    monkeypatch.delenv("PREFOPT_ONEPASS")
    assert calls == [1] and len(out[0][2]) > 10  # one pass, then per token
    (l1, m1, g1), (l2, m2, g2) = out
    assert torch.allclose(l1, l2, rtol=1e-5) and all(abs(m1[k] - m2[k]) < 1e-4 for k in m1)
    # fp32 sums over many tokens in another order: equal to rounding, relative to each tensor's scale
    assert all(a.abs().max() > 0 and (a - b).abs().max() <= 1e-5 * a.abs().max() for a, b in zip(g1, g2))
    trainer.train_step(0)
    assert calls == [1, 1]  # the default: one pass, the head being trainable on CPU


def test_a_fill_chunk_that_cannot_be_packed_runs_at_most_twice_a_steps_pairs(task, tmp_path, monkeypatch):
    """Packed fill chunks hold 4 × batch_size pairs (one row each). A chunk that falls back to the
    stacked layout (two full rows a pair) is split so that one forward holds at most
    2 × batch_size pairs, and the cached sums are the same as the packed fill's (fp32)."""
    import prefopt.train.dpo as dpo

    cfg = _cfg(task, tmp_path / "a", ref_cache=str(tmp_path / "c1"), eval_data=None, max_steps=1)
    packed, pairs = _trainer(task, tmp_path, cfg, cache=True)
    rows = []
    real = DPOTrainer.reference_logps
    monkeypatch.setattr(DPOTrainer, "reference_logps", lambda self, b: rows.append(b["input_ids"].shape[0]) or real(self, b))
    monkeypatch.setattr(dpo, "pack_pairs", lambda pairs, pad: None)  # as if some pair shared no prompt
    cfg = _cfg(task, tmp_path / "b", ref_cache=str(tmp_path / "c2"), eval_data=None, max_steps=1)
    stacked, _ = _trainer(task, tmp_path, cfg, cache=True)
    assert rows and max(rows) == 2 * (2 * cfg.batch_size) and sum(rows) == 2 * len(pairs)
    keys = [p.key for p in pairs]
    for a, b in zip(packed.ref_cache.get(keys), stacked.ref_cache.get(keys)):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-5)


def test_a_notebook_trains_on_records_in_memory_without_a_data_file(task, tmp_path, capsys, monkeypatch):
    """Records from a DataFrame or a database (``df.to_dict("records")``) go through
    ``load_preferences`` as a list; the config needs no data file. Dicts handed straight to the
    trainer are refused with the function to use, and a bad record is named by its position."""
    from prefopt import SFTTrainer, TrainConfig, apply_lora, load_model

    model_dir, train, _ = task
    rows = [json.loads(x) for x in train.read_text().splitlines()]
    cfg = DPOConfig(model=str(model_dir), output_dir=str(tmp_path / "nb"), batch_size=4, max_steps=32, lr=5e-3,
                    lora_dropout=0.0)
    tok = load_tokenizer(cfg.model)
    model = apply_lora(load_model(cfg.model), r=8, alpha=16, dropout=0.0)
    with pytest.raises(TypeError, match=r"train_data\[0\] is a dict, not a PairExample.*load_preferences\("):
        DPOTrainer(model, cfg, rows, pad_id=tok.pad_token_id)
    with pytest.raises(TypeError, match=r"^DPOTrainer: config is a dict, not a DPOConfig; DPOConfig\(\*\*settings\) "
                                        r"makes one of a dict$"):  # (it failed on a missing attribute)
        DPOTrainer(model, {"beta": 0.1}, [], pad_id=tok.pad_token_id)
    with pytest.raises(TypeError, match=r"^DPOTrainer: config is a TrainConfig, not a DPOConfig$"):
        DPOTrainer(model, TrainConfig(model=cfg.model, output_dir=cfg.output_dir), [], pad_id=tok.pad_token_id)
    with pytest.raises(TypeError, match=r"^SFTTrainer: config is a dict, not a TrainConfig"):
        SFTTrainer(model, {"lr": 1e-4}, [], pad_id=tok.pad_token_id)
    with pytest.raises(ValueError, match=r"\(got 'sigmod' \(did you mean 'sigmoid'\?\)\)"):
        DPOConfig(model=cfg.model, output_dir=cfg.output_dir, loss="sigmod")
    opened = []  # refused before the cache is opened (which hashes every weight)
    monkeypatch.setattr("prefopt.train.dpo.reference_cache_for", lambda *a, **k: opened.append(a))
    with pytest.raises(TypeError, match=r"not a PairExample"):
        DPOTrainer(model, cfg, rows, pad_id=tok.pad_token_id, ref_cache=tmp_path / "cache")
    assert opened == [] and not (tmp_path / "cache").exists()
    monkeypatch.undo()
    with pytest.raises(ValueError, match=r"<records>:3: field 'rejected': missing field"):
        load_preferences(rows[:2] + [{"prompt": "p", "chosen": "c"}], tok)
    pairs, report = load_preferences(rows, tok)
    assert report.summary() == f"<records>: {len(rows)} of {len(rows)} records kept"
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    DPOTrainer(model, cfg, pairs, pad_id=tok.pad_token_id).train()
    losses = [m["loss"] for m in read_metrics(cfg.output_dir) if "loss" in m]
    assert sum(losses[-4:]) < 0.8 * sum(losses[:4]) and any(not torch.equal(p, before[n])
                                                      for n, p in model.named_parameters() if p.requires_grad)
    assert "LoRA r8 on q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj" in capsys.readouterr().out
    with pytest.raises(ValueError, match="no training data: set data"):
        run_dpo(DPOConfig(model=str(model_dir), output_dir=str(tmp_path / "cli")))


class _Frame:
    """What the readers need of a pandas DataFrame (pandas is not a dependency): ``to_dict("records")``."""

    def __init__(self, rows):
        self.rows = rows

    def to_dict(self, orient):
        assert orient == "records"
        return list(self.rows)


def test_run_dpo_takes_records_in_memory_and_gives_the_whole_run(task, tmp_path):
    """``run_dpo(cfg, records=..., eval_records=...)``: a notebook's records (a list of dicts or
    a DataFrame) get what a data file gets: the eval set, best/, the model card and the summary."""
    model_dir, train, held = task
    rows = [json.loads(x) for x in train.read_text().splitlines()]
    evals = [json.loads(x) for x in held.read_text().splitlines()]
    cfg = _cfg(task, tmp_path / "nb", data=None, eval_data=None, best_metric="rewards/accuracies")
    summary = run_dpo(cfg, records=_Frame(rows), eval_records=evals)
    assert summary["eval_after"]["eval_rewards/accuracies"] > summary["eval_before"]["eval_rewards/accuracies"]
    card = (tmp_path / "nb" / "final" / "README.md").read_text()
    assert f"- {len(rows)} training pairs, {len(evals)} for evaluation" in card
    assert "given in memory (`records=`), not read from a file" in card
    assert (tmp_path / "nb" / "best" / "README.md").is_file()
    with pytest.raises(ValueError, match="give data \\(a file\\) or records \\(in memory\\), not both"):
        run_dpo(_cfg(task, tmp_path / "both"), records=rows)
    with pytest.raises(ValueError, match="give eval_records or eval_fraction, not both"):
        run_dpo(_cfg(task, tmp_path / "frac", data=None, eval_data=None, eval_fraction=0.1), records=rows,
                eval_records=evals)
    with pytest.raises(ValueError, match=r"<records>:2: field 'chosen'"):
        run_dpo(_cfg(task, tmp_path / "bad", data=None), records=[rows[0], {"prompt": "p", "rejected": "r"}])
    with pytest.raises(ValueError, match=r"<eval_records>:1: field 'prompt'"):  # not the training records' name
        run_dpo(_cfg(task, tmp_path / "bad", data=None, eval_data=None), records=rows,
                eval_records=_Frame([{"chosen": "c", "rejected": "r"}]))
    assert not (tmp_path / "both").exists() and not (tmp_path / "bad" / "final").exists()


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")  # the test's hook: layer 1's input needs no gradient
def test_adapters_on_the_top_layers_only_train_stack_and_stop_the_backward_there(task, tmp_path):
    """``lora_layers="1"``: SFT and DPO adapt layer 1 only; no gradient reaches layer 0 (its
    backward never runs: that is the memory and time saved); DPO after SFT over the same layer
    saves one adapter with that scope, equal to the trained model; another scope is refused
    before any training."""
    from prefopt import load_model
    from prefopt.train import TrainConfig
    from prefopt.train.run import run_sft
    from tests.train._fixtures import write_task

    model_dir, _, _ = task
    _, sft_data = write_task(tmp_path / "sft_task")
    sft_out, seen = tmp_path / "sft", {}
    run_sft(TrainConfig(model=str(model_dir), data=str(sft_data), output_dir=str(sft_out), batch_size=4, max_steps=6,
                        lr=5e-3, lora_r=4, lora_alpha=8, lora_layers="1", eval_fraction=0.0, progress=False))
    assert json.loads((sft_out / "final" / "adapter_config.json").read_text())["layers_to_transform"] == [1]
    calls = []

    def count(trainer, step, metrics):
        if not seen:
            seen["trainer"] = trainer
            trainer.model.model.layers[0].register_full_backward_hook(lambda *a: calls.append(0))
            trainer.model.model.layers[1].register_full_backward_hook(lambda *a: calls.append(1))

    run_dpo(_cfg(task, tmp_path / "dpo", sft_adapter=str(sft_out / "final"), lora_layers="1", max_steps=6,
                 lora_r=4, lora_alpha=8), callbacks=[count])
    assert calls and set(calls) == {1}  # hooked after the first step: layer 1's backward runs, layer 0's never
    final = tmp_path / "dpo" / "final"
    assert json.loads((final / "adapter_config.json").read_text())["layers_to_transform"] == [1]
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        stacked = load_model(model_dir, adapter=final)
        assert {n.split(".")[2] for n, _ in lora_layers(stacked)} == {"1"}
        assert (stacked(ids) - seen["trainer"].model.eval()(ids)).abs().max() < 1e-5
    with pytest.raises(ValueError, match=r"lora_layers: the adapters cover different transformer layers \(layer 1 "
                                         r"and every layer\).*covers layer 1\)"):
        _cfg(task, tmp_path / "x", sft_adapter=str(sft_out / "final"))
    with pytest.raises(ValueError, match=r"lora_layers: '1-' is not layer numbers"):
        _cfg(task, tmp_path / "x", lora_layers="1-")


def test_wpo_trains_and_logs_its_weights(task, tmp_path):
    """WPO (wpo=True): the held-out reward accuracy rises and the margins open as in DPO, and each
    step logs the mean pair weight it scaled the loss by. Before training every pair's DPO loss is
    log 2 (policy = reference), so the held-out loss is log 2 × the mean weight exactly."""
    import math

    summary = run_dpo(_cfg(task, tmp_path / "run", max_steps=32, wpo=True))
    before, after = summary["eval_before"], summary["eval_after"]
    assert before["eval_loss"] == pytest.approx(math.log(2) * before["eval_wpo/weights"], rel=1e-5)
    assert before["eval_wpo/weights"] < 0.5  # the tiny model finds these answers unlikely: weights well below 1
    assert after["eval_rewards/accuracies"] >= 0.9 and after["eval_rewards/margins"] > 0.2
    assert after["eval_loss"] < before["eval_loss"] - 0.005
    steps = [r for r in read_metrics(tmp_path / "run") if "wpo/weights" in r]
    assert len(steps) == 32 and all(0 < r["wpo/weights"] < 1 for r in steps)
    assert len({round(r["wpo/weights"], 6) for r in steps}) > 16  # each step's own weights
