"""SFT with each micro-batch packed into one row (``TrainConfig.pack``): the model keeps each
example to itself, so the loss and its gradients are the padded batch's, with no padding run."""
from array import array
from types import SimpleNamespace

import pytest
import torch

from prefopt import apply_lora, load_model
from prefopt.data import packed_collate
from prefopt.data.sft import IGNORE
from prefopt.lora import lora_state_dict
from prefopt.train import SFTTrainer, TrainConfig
from prefopt.train.metrics import read_metrics
from tests._tiny import build_hf_model
from tests.train._fixtures import write_task


def _examples(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i, n in enumerate(lengths):
        ids = torch.randint(3, 400, (n,), generator=g).tolist()
        cut = n // 2 if i % 2 == 0 else 0  # the prompt: no loss on it (none: a text record, every token trained)
        out.append(SimpleNamespace(input_ids=array("i", ids), labels=array("i", [IGNORE] * cut + ids[cut:])))
    return out


def _lora_model(path, arch, window):
    """A tiny fp64 model with LoRA (no dropout) whose B factors are not zero, so that every
    adapter has a gradient."""
    build_hf_model(path, arch=arch, tokenizer=False, **({"sliding_window": window} if window else {}))
    model = apply_lora(load_model(path, dtype=torch.float64), r=4, alpha=8, dropout=0.0)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    return model


def _loss_and_grads(trainer, model, examples):
    """``trainer``'s batch of ``examples``, its summed loss and every parameter's gradient."""
    batch = SFTTrainer.collate(trainer, examples)
    model.zero_grad()
    loss, _ = SFTTrainer.loss_sum(trainer, model, batch)
    loss.backward()
    return batch, loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_packed_collate_lays_examples_end_to_end_and_drops_each_first_label():
    ex = _examples([3, 5, 2])
    b = packed_collate(ex)
    assert b["input_ids"].shape == (1, 10) and b["lengths"].tolist() == [3, 5, 2]
    assert b["input_ids"][0].tolist() == [*ex[0].input_ids, *ex[1].input_ids, *ex[2].input_ids]
    assert b["attention_mask"].tolist() == [[1] * 10]
    want = [*ex[0].labels, *ex[1].labels, *ex[2].labels]
    for start in (0, 3, 8):
        want[start] = IGNORE
    assert b["labels"][0].tolist() == want


@pytest.mark.parametrize("arch, window", [("llama", None), ("mistral", 6), ("gemma3", 6)])
def test_packed_rows_give_the_padded_batch_s_loss_and_gradients(tmp_path, arch, window):
    """fp64, a tiny model with LoRA: the summed NLL and every LoRA gradient match the padded batch
    to 1e-10; hidden states at each example's positions match it running alone. With a sliding
    window of 6, examples longer than it get their own window mask (Gemma 3: in its sliding layer
    only)."""
    model = _lora_model(tmp_path, arch, window)
    ex = _examples([7, 13, 4, 9])
    trainer = SimpleNamespace(config=SimpleNamespace(pack=False, share_start=False), pad_id=0)
    grads, losses = [], []
    for pack in (False, True):
        trainer.config.pack = pack
        batch, loss, g = _loss_and_grads(trainer, model, ex)
        losses.append(loss)
        grads.append(g)
        assert SFTTrainer.units(trainer, batch) == sum(sum(t != IGNORE for t in e.labels[1:]) for e in ex)
    assert abs(losses[0] - losses[1]) < 1e-10 and losses[0] > 0
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) == len(lora_state_dict(model))
    assert all(torch.allclose(grads[0][n], grads[1][n], atol=1e-10, rtol=0) for n in grads[0])
    with torch.no_grad():
        packed = packed_collate(ex)
        h = model(packed["input_ids"], packed=packed["lengths"].tolist(), return_hidden=True)[0]
        alone = model(torch.tensor([list(ex[1].input_ids)]), return_hidden=True)[0]
        assert (h[7:20] - alone).abs().max().item() < 1e-10


def test_packed_input_that_is_not_one_row_of_its_lengths_is_refused(tmp_path):
    build_hf_model(tmp_path, tokenizer=False)
    model = load_model(tmp_path)
    with pytest.raises(ValueError, match=r"packed sequences \(5 tokens\) run as one row of exactly them"):
        model(torch.ones(2, 5, dtype=torch.long), packed=[2, 3])
    with pytest.raises(ValueError, match="without padding"):
        model(torch.ones(1, 5, dtype=torch.long), torch.tensor([[1, 1, 1, 1, 0]]), packed=[2, 3])


def test_sft_with_packing_trains_as_the_padded_run(tmp_path, capsys):
    """The same seed and steps, padded, packed, and packed with the shared prompt start once: the
    same losses (to float rounding), the loss falls, the LoRA weights move; the step's token count
    is the examples' real tokens, no padding, the start counted in each; the plan line says how
    long the start is."""
    from prefopt.train.run import run_sft

    model_dir, data = write_task(tmp_path)
    runs = {}
    for pack, share in ((False, False), (True, False), (True, True)):
        cfg = TrainConfig(model=str(model_dir), data=str(data), output_dir=str(tmp_path / f"p{pack}{share}"),
                          batch_size=4, max_steps=8, lr=3e-3, lora_r=8, lora_alpha=16, lora_dropout=0.0,
                          warmup_steps=2, progress=False, pack=pack, share_start=share)
        capsys.readouterr()
        run_sft(cfg)
        said = "prompt tokens every example of a micro-batch begins with run once" in capsys.readouterr().out
        assert said == share
        runs[pack, share] = [m for m in read_metrics(cfg.output_dir) if "loss" in m]
    padded, packed, shared = runs[False, False], runs[True, False], runs[True, True]
    for other in (packed, shared):
        assert [m["loss"] for m in other] == pytest.approx([m["loss"] for m in padded], rel=1e-4)
        assert [m["tokens"] for m in other] == [m["tokens"] for m in padded]  # real tokens: padding never counted
    assert packed[-1]["loss"] < 0.7 * packed[0]["loss"]
    a = lora_state_dict(load_model(model_dir, adapter=tmp_path / "pTrueTrue" / "final"))
    b = lora_state_dict(load_model(model_dir, adapter=tmp_path / "pFalseFalse" / "final"))
    assert all(torch.allclose(a[k], b[k], atol=1e-4) for k in a) and any(v.abs().sum() > 0 for k, v in a.items()
                                                                        if "lora_B" in k)


def test_packed_rows_under_gradient_checkpointing_and_dpo_refusing_pack(tmp_path):
    """Checkpointed layers recompute the packed attention (the same loss and gradients); DPO packs
    its own way (share_prompt) and refuses ``pack``."""
    from prefopt.train import DPOConfig

    build_hf_model(tmp_path, tokenizer=False)
    model = apply_lora(load_model(tmp_path, dtype=torch.float64), r=4, alpha=8, dropout=0.0)
    trainer = SimpleNamespace(config=SimpleNamespace(pack=True, share_start=False), pad_id=0)
    batch = SFTTrainer.collate(trainer, _examples([5, 11, 8]))
    out = []
    for ckpt in (False, True):
        model.gradient_checkpointing = ckpt
        model.train()
        model.zero_grad()
        loss, _ = SFTTrainer.loss_sum(trainer, model, batch)
        loss.backward()
        out.append((loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    assert out[0][0] == pytest.approx(out[1][0], abs=1e-12)
    assert all(torch.allclose(out[0][1][n], out[1][1][n], atol=1e-12) for n in out[0][1])
    data = tmp_path / "pairs.jsonl"
    data.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n')
    with pytest.raises(ValueError, match="pack is SFT's; DPO already runs each pair's prompt once"):
        DPOConfig(model=str(tmp_path), data=str(data), output_dir=str(tmp_path / "o"), pack=True)
    assert DPOConfig(model=str(tmp_path), data=str(data), output_dir=str(tmp_path / "o")).pack is False


def _started(lengths, start=20, seed=1):
    """Examples whose prompts all begin with the same ``start`` tokens (a system prompt and
    instructions), then a prompt of their own and a trained answer."""
    g = torch.Generator().manual_seed(seed)
    head = torch.randint(3, 400, (start,), generator=g).tolist()
    out = []
    for n in lengths:
        own = torch.randint(3, 400, (n,), generator=g).tolist()
        cut = start + n // 2
        ids = head + own
        out.append(SimpleNamespace(input_ids=array("i", ids), labels=array("i", [IGNORE] * cut + ids[cut:])))
    return out


@pytest.mark.parametrize("arch, window", [("llama", None), ("mistral", 8), ("gemma3", 8)])
def test_a_shared_start_run_once_gives_the_same_loss_and_gradients(tmp_path, arch, window):
    """share_start: the 20 tokens every prompt begins with lead the row once, and each example
    sees them and itself: fp64, the summed NLL is the packed batch's to 1e-10 and every LoRA
    gradient to fp32's precision, each example's hidden states those it has alone (a sliding
    window counted across the start), with 20 x 3 fewer tokens run; the units (trained tokens)
    are the same."""
    model = _lora_model(tmp_path, arch, window)
    ex = _started([7, 13, 4, 9])
    trainer = SimpleNamespace(config=SimpleNamespace(pack=True, share_start=False), pad_id=0)
    out = []
    for share in (False, True):
        trainer.config.share_start = share
        out.append(_loss_and_grads(trainer, model, ex))
    (plain, loss0, g0), (shared, loss1, g1) = out
    assert "start" not in plain and int(shared["start"]) == 20
    assert int(shared["tokens"]) == plain["attention_mask"].sum() == sum(len(e.input_ids) for e in ex)
    assert shared["input_ids"].shape[1] == plain["input_ids"].shape[1] - 3 * 20
    assert SFTTrainer.units(trainer, shared) == SFTTrainer.units(trainer, plain) > 0
    assert abs(loss0 - loss1) < 1e-10 and loss0 > 0
    # the log-prob kernel rounds its logits to fp32, so fp64 hidden states that differ in their last
    # bits give gradients that agree to fp32's precision
    assert g0.keys() == g1.keys() and all((g0[n] - g1[n]).norm() <= 1e-6 * g1[n].norm() for n in g0)
    with torch.no_grad():  # each example's hidden states after the shared start: those it has alone
        h = model(shared["input_ids"], packed=shared["lengths"].tolist(), packed_start=20, return_hidden=True)[0]
        alone = model(torch.tensor([list(ex[1].input_ids)]), return_hidden=True)[0]
        assert (h[20 + 7:20 + 7 + 13] - alone[20:]).abs().max().item() < 1e-10


def test_a_start_too_short_to_share_leaves_the_packed_row_as_it_was():
    trainer = SimpleNamespace(config=SimpleNamespace(pack=True, share_start=True), pad_id=0)
    ex = _started([5, 6], start=15)  # under MIN_SHARED (16)
    batch = SFTTrainer.collate(trainer, ex)
    plain = packed_collate(ex)
    assert "start" not in batch and all(torch.equal(batch[k], plain[k]) for k in plain)
    with pytest.raises(ValueError, match="share_start runs the start once in a packed row: it needs pack"):
        TrainConfig(model="m", output_dir="o", data="d", pack=False, share_start=True)
