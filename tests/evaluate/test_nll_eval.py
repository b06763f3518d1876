"""``prefopt eval-nll``: NLL per trained token of held-out SFT records, as SFT's eval loss counts it,
with a bootstrap interval over records and a paired test against an earlier evaluation."""
import json

import numpy as np
import pytest
import torch

from prefopt import load_model, load_tokenizer
from prefopt.cli import main
from prefopt.data import load_sft
from prefopt.data.sft import IGNORE, TokenizedExample
from prefopt.evaluate.nll_eval import by_record, example_nll
from prefopt.lora_files import adapter_sha256
from prefopt.model.digest import weights_sha256
from tests.train._fixtures import write_task

NOTE = "Discharge summary. Fever and a stiff neck since noon, lumbar puncture, antibiotics, home in three days. "


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return write_task(tmp_path_factory.mktemp("nll"), n=24)


def test_each_examples_nll_is_its_trained_tokens_log_softmax_summed(task):
    """Batches of 3 in one row each: the chat records after the prompt start they share (run
    once), and examples that share none (one trained from its first token on)."""
    model_dir, data = task
    tok, model = load_tokenizer(model_dir), load_model(model_dir).eval()
    examples, _ = load_sft(data, tok)
    g = torch.Generator().manual_seed(0)
    bare = [TokenizedExample(ids, [IGNORE] * k + ids[k:]) for k, n in ((3, 9), (0, 7), (5, 12), (2, 6))
            for ids in [torch.randint(3, 250, (n,), generator=g).tolist()]]
    for batch in (examples[:5], bare):
        nll, tokens = example_nll(model, batch, batch_size=3)
        for i, ex in enumerate(batch):  # one at a time, no padding, the full log-softmax
            ids, labels = torch.tensor([list(ex.input_ids)]), torch.tensor(list(ex.labels))
            with torch.no_grad():
                logp = torch.log_softmax(model(ids)[0, :-1].float(), -1)
            mask = labels[1:] != IGNORE
            want = -logp[torch.arange(len(labels) - 1), labels[1:].clamp(min=0)][mask].sum()
            assert nll[i] == pytest.approx(float(want), rel=1e-4) and tokens[i] == int(mask.sum()) > 0
    assert by_record(np.array([1.0, 2.0, 4.0]), [0, 0, 1]).tolist() == [3.0, 4.0]


def test_a_model_in_train_mode_is_scored_without_dropout_and_keeps_each_modules_mode(task):
    """Scoring in a notebook right after training: example_nll and pair_logps run in eval mode
    (LoRA dropout off), then put every module back as it was (a mixed state included)."""
    from prefopt import apply_lora
    from prefopt.data import load_preferences
    from prefopt.evaluate.pair_eval import pair_logps
    from tests._tiny import randomize_lora
    from tests.train._fixtures import write_pairs

    model_dir, data = task
    tok = load_tokenizer(model_dir)
    model = apply_lora(load_model(model_dir), r=4, dropout=0.5)
    randomize_lora(model)
    examples = load_sft(data, tok)[0][:4]
    pairs = load_preferences(write_pairs(data.parent / "pairs.jsonl", n=4), tok)[0]
    want = example_nll(model.eval(), examples), pair_logps(model, pairs, 0)
    model.train()
    model.model.layers[1].eval()
    modes = {n: m.training for n, m in model.named_modules()}
    got = example_nll(model, examples), pair_logps(model, pairs, 0)
    for a, b in zip([*want[0], *want[1]], [*got[0], *got[1]]):
        assert np.array_equal(a, b)
    assert {n: m.training for n, m in model.named_modules()} == modes


def test_it_equals_the_sft_runs_eval_loss_and_tests_two_models_paired(task, tmp_path, capsys):
    model_dir, data = task
    lines = data.read_text().splitlines()
    train, held = tmp_path / "train.jsonl", tmp_path / "held.jsonl"
    train.write_text("\n".join(lines[:16]) + "\n")
    held.write_text("\n".join(lines[16:]) + "\n")
    run = tmp_path / "run"
    assert main(["sft", "--model", str(model_dir), "--data", str(train), "--eval-data", str(held), "--output-dir",
                 str(run), "--max-steps", "6", "--batch-size", "4", "--lr", "3e-3", "--lora-r", "4",
                 "--lora-dropout", "0", "--no-progress"]) == 0
    summary = json.loads((run / "train_summary.json").read_text())
    assert main(["eval-nll", "--model", str(model_dir), "--data", str(held), "--output", str(tmp_path / "base"),
                 "--n-resamples", "200"]) == 0
    assert main(["eval-nll", "--model", str(model_dir), "--adapter", str(run / "final"), "--data", str(held),
                 "--output", str(tmp_path / "sft"), "--n-resamples", "200", "--against", str(tmp_path / "base")]) == 0
    base, sft = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("base", "sft"))
    assert base["nll_per_token"] == pytest.approx(summary["eval_before"]["eval_loss"], rel=1e-4)
    assert sft["nll_per_token"] == pytest.approx(summary["eval_after"]["eval_loss"], rel=1e-4)
    assert sft["n_records"] == 8 and sft["ci"][0] <= sft["nll_per_token"] <= sft["ci"][1]
    assert base["model_sha256"] == sft["model_sha256"] == weights_sha256(model_dir) is not None  # the weights scored
    assert base["adapter_sha256"] is None and sft["adapter_sha256"] == adapter_sha256(run / "final") is not None
    paired = json.loads((tmp_path / "sft" / "paired.json").read_text())
    assert paired["delta"] == pytest.approx(sft["nll_per_token"] - base["nll_per_token"]) and paired["delta"] < 0
    rows = [json.loads(x) for x in (tmp_path / "sft" / "records.jsonl").read_text().splitlines()]
    assert [r["line"] for r in rows] == list(range(1, 9))
    assert sum(r["nll"] for r in rows) / sum(r["tokens"] for r in rows) == pytest.approx(sft["nll_per_token"])
    assert "against " in capsys.readouterr().out
    other = tmp_path / "other.jsonl"
    other.write_text("\n".join(lines[15:]) + "\n")
    assert main(["eval-nll", "--model", str(model_dir), "--data", str(other), "--output", str(tmp_path / "x"),
                 "--against", str(tmp_path / "base")]) == 2
    assert "that evaluation scored other records" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_a_long_text_is_one_record_scored_whole_in_windows(task, tmp_path, capsys):
    model_dir, _ = task
    tok = load_tokenizer(model_dir)
    notes = tmp_path / "notes.jsonl"
    notes.write_text(json.dumps({"text": NOTE * 3}) + "\n" + json.dumps({"text": "Short note."}) + "\n")
    assert main(["eval-nll", "--model", str(model_dir), "--data", str(notes), "--output", str(tmp_path / "w"),
                 "--max-length", "16", "--text-windows", "--n-resamples", "100"]) == 0
    rows = [json.loads(x) for x in (tmp_path / "w" / "records.jsonl").read_text().splitlines()]
    n = len(tok.encode(NOTE * 3)) + 1  # with the end-of-text token
    assert [(r["line"], r["tokens"]) for r in rows] == [(1, n - 1), (2, len(tok.encode("Short note.")))]
    metrics = json.loads((tmp_path / "w" / "metrics.json").read_text())
    assert metrics["examples"] > 2 and metrics["n_records"] == 2 and metrics["text_windows"] is True
    long = tmp_path / "long.jsonl"
    long.write_text(json.dumps({"text": NOTE * 12}) + "\n")  # past the tiny model's 256 positions, uncut
    assert main(["eval-nll", "--model", str(model_dir), "--data", str(long), "--output", str(tmp_path / "l"),
                 "--max-length", "4096"]) == 2
    assert "more than the model's context of 256: pass --max-length 256 or less" in capsys.readouterr().err
