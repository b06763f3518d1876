"""``text_windows``: a ``{"text"}`` record longer than ``max_length`` becomes windows that together
train each of its tokens once (else it is cut, its start kept); a held-out fraction keeps a text's
windows on one side."""
import json
import math

import pytest
import torch

from prefopt import load_tokenizer
from prefopt.cli import main
from prefopt.data import load_sft
from prefopt.data.sft import text_windows_of
from prefopt.train import DPOConfig, TrainConfig
from prefopt.train.sft import split_eval
from tests.train._fixtures import COLORS, write_task

NOTE = ("Discharge summary. The patient came in with fever and a stiff neck since noon, was seen in the "
        "emergency department, had a lumbar puncture, started antibiotics, improved over three days and "
        "goes home today with follow up in clinic next week.")


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return write_task(tmp_path_factory.mktemp("windows"), n=1)


@pytest.fixture(scope="module")
def tok(task):
    return load_tokenizer(task[0])


def test_windows_make_every_token_but_the_first_a_target_once(tok):
    ids = tok.encode(NOTE) + [tok.eos_token_id]
    for max_length in (2, 3, 8, len(ids) - 1, len(ids), len(ids) + 5):
        windows = text_windows_of(NOTE, tok, max_length)
        assert all(w.n_tokens <= max_length and list(w.labels) == list(w.input_ids) for w in windows)
        targets = [t for w in windows for t in list(w.input_ids)[1:]]  # what a causal model is asked to predict
        assert targets == ids[1:]
        assert len(windows) == max(1, math.ceil((len(ids) - 1) / (max_length - 1)))
        assert all(a.input_ids[-1] == b.input_ids[0] for a, b in zip(windows, windows[1:]))  # one token read again
    [whole] = text_windows_of(NOTE, tok, len(ids))
    [alone], _ = load_sft([{"text": NOTE}], tok, max_length=len(ids))
    assert list(whole.input_ids) == list(alone.input_ids)
    with pytest.raises(ValueError, match="max_length=1: a window needs 2 tokens"):
        text_windows_of(NOTE, tok, 1)


def test_loading_with_windows_counts_records_and_cuts_nothing(tok):
    rows = [{"prompt": "Fever?", "completion": "Seen today."}, {"text": NOTE}, {"text": "Short note."}]
    n = len(tok.encode(NOTE)) + 1
    cut, cut_report = load_sft(rows, tok, max_length=96)
    assert len(cut) == 3 and cut_report.n_truncated == 1 and cut_report.n_tokens_cut == n - 96
    split, report = load_sft(rows, tok, max_length=96, text_windows=True)
    k = math.ceil((n - 1) / 95)
    assert k == 2
    assert len(split) == k + 2 and (report.n_read, report.n_kept, report.n_truncated) == (3, 3, 0)
    assert report.kept_records == [0] + [1] * k + [2] and report.kept_lines == [1] + [2] * k + [3]
    assert report.n_tokens == cut_report.n_tokens  # the text's tokens counted once, not once a window
    assert report.summary() == "<records>: 3 of 3 records kept"
    assert list(split[0].input_ids) == list(cut[0].input_ids)  # other records as ever


def test_a_held_out_fraction_keeps_a_texts_windows_on_one_side():
    examples = [f"r{r}w{w}" for r in range(10) for w in range(r % 3 + 1)]
    records = [r for r in range(10) for _ in range(r % 3 + 1)]
    train, held = split_eval(examples, 0.3, seed=1, records=records)
    assert sorted(train + held) == sorted(examples)
    held_records = {x.split("w")[0] for x in held}
    assert len(held_records) == 3 and not held_records & {x.split("w")[0] for x in train}
    plain = list(range(20))  # one example a record: the split drawn as it always was
    order = torch.randperm(20, generator=torch.Generator().manual_seed(4)).tolist()
    assert split_eval(plain, 0.25, 4) == ([plain[i] for i in order[5:]], [plain[i] for i in order[:5]])
    assert split_eval(plain, 0.25, 4, records=list(range(20))) == split_eval(plain, 0.25, 4)
    with pytest.raises(ValueError, match=r"eval_fraction 0.9 of 2 records holds out 2"):
        split_eval(["a", "b", "c"], 0.9, 0, records=[0, 0, 1])


def test_sft_learns_long_notes_in_windows(task, tmp_path, capsys):
    model_dir, _ = task
    data = tmp_path / "notes.jsonl"
    data.write_text("".join(json.dumps({"text": f"Note {i}. " + " ".join(f"code {COLORS[i % 4]}" for _ in range(8))})
                            + "\n" for i in range(16)))
    out = tmp_path / "run"
    assert main(["sft", "--model", str(model_dir), "--data", str(data), "--output-dir", str(out), "--max-length",
                 "12", "--text-windows", "--eval-fraction", "0.25", "--max-steps", "30", "--batch-size", "4",
                 "--lr", "5e-3", "--lora-r", "8", "--lora-dropout", "0", "--no-progress"]) == 0
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["eval_after"]["eval_loss"] < 0.5 * summary["eval_before"]["eval_loss"]
    tok = load_tokenizer(model_dir)
    per_note = [len(text_windows_of(json.loads(line)["text"], tok, 12)) for line in data.read_text().splitlines()]
    assert min(per_note) > 1
    card = (out / "final" / "README.md").read_text()
    n_train = int(card.split(" training examples, ")[0].rsplit("- ", 1)[1])
    n_eval = int(card.split(" training examples, ")[1].split(" for evaluation")[0])
    _, held = split_eval(list(range(16)), 0.25, 0)  # the records the run held out (seed 0)
    assert (n_train, n_eval) == (sum(per_note) - sum(per_note[r] for r in held), sum(per_note[r] for r in held))
    assert "16 of 16 records kept" in capsys.readouterr().out


def test_check_data_points_long_texts_at_windows_and_dpo_refuses_them(task, tmp_path, capsys):
    model_dir, _ = task
    data = tmp_path / "notes.jsonl"
    data.write_text(json.dumps({"text": NOTE}) + "\n" + json.dumps({"text": "Short note."}) + "\n")
    assert main(["check-data", "--model", str(model_dir), "--data", str(data), "--max-length", "16"]) == 0
    assert "  1 text record loses its end past max_length: --text-windows trains on all of each, in windows" in \
        capsys.readouterr().out.splitlines()
    assert main(["check-data", "--model", str(model_dir), "--data", str(data), "--max-length", "16",
                 "--text-windows"]) == 0
    tok = load_tokenizer(model_dir)
    n, n_note = len(text_windows_of(NOTE, tok, 16)) + 1, len(tok.encode(NOTE)) + 1
    out = capsys.readouterr().out.splitlines()
    assert out[-2:] == [f"  {n} training examples: 1 text record longer than max_length=16 in windows",
                        f"  nothing is cut at max_length=16 (the longest record has {n_note} tokens)"]
    assert out[0].endswith("SFT records; 2 of 2 records kept")  # nothing cut
    assert main(["check-data", "--model", str(model_dir), "--data", str(data), "--kind", "preference",
                 "--text-windows"]) == 2
    assert "text_windows is for SFT's {\"text\"} records" in capsys.readouterr().err
    assert main(["check-data", "--model", str(model_dir), "--task", "ktas", "--text-windows"]) == 2
    assert "--text-windows is for a training file" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"text_windows is for SFT's \{\"text\"\} records"):
        DPOConfig(model="m", output_dir="o", text_windows=True)
    assert TrainConfig(model="m", output_dir="o", text_windows=True).text_windows
