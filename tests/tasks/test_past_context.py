"""Records whose prompts run past the model's context (positions it never trained on) are named
before any answer by every command that answers them, counted in the files they write, flagged
in predict's review column, and said in compare's report; generate's own warning, which names no
record, is not said again."""
import json
import warnings

import pytest

from prefopt.cli import main
from prefopt.evaluate.compare import CompareConfig, run_compare
from prefopt.evaluate.report import past_context_note
from prefopt.evaluate.runner import past_context, past_context_text
from prefopt.model.generate import PastContext
from tests import _formats as formats
from tests._tiny import build_hf_model

CONTEXT = 400  # the portal prompt of a short message: ~225 tokens; of LONG: ~425
LONG = "pain " * 200


@pytest.fixture(scope="module")
def short_context(tmp_path_factory):
    """A tiny random llama trained (so to speak) on 400 positions."""
    path = tmp_path_factory.mktemp("short-context") / "model"
    build_hf_model(path, max_position_embeddings=CONTEXT)
    return path


def _messages(path, texts):
    return formats.write_jsonl(path, [{"message": t, "urgency": ["urgent", "routine"][i % 2], "staff": "nurse"}
                                      for i, t in enumerate(texts)])


def test_the_warning_names_the_first_three_and_counts_the_rest():
    named = [(f"d.jsonl:{i}", n) for i, n in enumerate([10, 95, 90, 100, 120, 91], 1)]
    long = past_context(named, 100, 10)
    assert long == [("d.jsonl:2", 95), ("d.jsonl:4", 100), ("d.jsonl:5", 120), ("d.jsonl:6", 91)]
    assert past_context(named, None, 10) == [] and past_context(named, 200, 10) == []
    assert past_context_text(long, 6, "prompts and their answers", 100, 10, "cut them") == (
        "4 of 6 prompts and their answers run past the model's context of 100 tokens (d.jsonl:2: 95 prompt tokens + "
        "10 to answer; d.jsonl:4: 100 prompt tokens + 10 to answer; d.jsonl:5: 120 prompt tokens + 10 to answer, and "
        "1 more): positions it never trained on, so their answers are not to be trusted; cut them")


def test_predict_flags_them_in_the_review_column_and_counts_them(short_context, tmp_path, capsys):
    """However sure the model is of a label, the answer to a prompt past its context goes to
    review, said first; predict.json and the summary count them; eval's metrics.json too."""
    data = _messages(tmp_path / "new.jsonl", ["A cough.", LONG, "A rash."])
    with warnings.catch_warnings():
        warnings.simplefilter("error", PastContext)  # generate's own is not said
        assert main(["predict", "--task", "portal", "--model", str(short_context), "--data", str(data),
                     "--output", str(tmp_path / "p"), "--max-new-tokens", "2", "--review-below", "0.01"]) == 0
    out, err = capsys.readouterr()
    assert "prefopt predict: warning: 1 of 3 records' prompts and answers run past the model's context of 400 tokens " \
           "(record 'portal:2': " in err
    assert "; 1 past the model's context" in out
    rows = [json.loads(line) for line in (tmp_path / "p" / "predictions.jsonl").read_text().splitlines()]
    assert rows[1]["review"].startswith("past the model's context")
    assert [bool(r["review"]) and "context" in r["review"] for r in rows] == [False, True, False]
    assert json.loads((tmp_path / "p" / "predict.json").read_text())["past_context"] == 1
    assert main(["predict", "--task", "portal", "--model", str(short_context), "--data",
                 str(_messages(tmp_path / "short.jsonl", ["A cough."])), "--output", str(tmp_path / "q"),
                 "--max-new-tokens", "2"]) == 0
    assert "past_context" not in json.loads((tmp_path / "q" / "predict.json").read_text())
    assert "context" not in capsys.readouterr().err
    assert main(["eval", "--task", "portal", "--model", str(short_context), "--data", str(data), "--split", "all",
                 "--output", str(tmp_path / "e"), "--max-new-tokens", "2"]) == 0
    assert json.loads((tmp_path / "e" / "metrics.json").read_text())["past_context"] == 1


def test_compare_names_the_test_items_as_it_starts_and_its_report_counts_them(short_context, tmp_path, capsys):
    data = _messages(tmp_path / "portal.jsonl", [f"Message {i}: {LONG}" for i in range(10)])
    overrides = {"max_train": 6, "test": 3, "sft_steps": 1, "dpo_steps": 1, "batch_size": 2, "max_length": 256,
                 "eval_batch_size": 4, "max_new_tokens": 2}
    run_compare(CompareConfig(task="portal", model=str(short_context), data=str(data), output=str(tmp_path / "run"),
                              n_resamples=50, overrides=overrides))
    log = capsys.readouterr().out
    said = "prefopt compare: warning: 3 of 3 test items' prompts and answers run past the model's context of 400 tokens"
    assert log.count(said) == 1 and log.index(said) < log.index("base: ")
    for stage in ("base", "sft", "dpo"):
        assert json.loads((tmp_path / "run" / stage / "metrics.json").read_text())["past_context"] == 3
    report = (tmp_path / "run" / "report.md").read_text()
    assert "**3 of the 3 test items' prompts and answers run past the model's context**" in report
    assert json.loads((tmp_path / "run" / "report.json").read_text())["stages"]["dpo"]["metrics"]["past_context"] == 3


def test_a_report_of_a_run_that_fit_or_predates_the_count_says_nothing_of_it():
    assert past_context_note({"base": ([], {"accuracy": 1.0}), "sft": ([], {"past_context": 0})}, 5) is None
    assert past_context_note({"base": ([], {"past_context": 2}), "sft": ([], {})}, 5).startswith(
        "**2 of the 5 test items'")


def test_make_pairs_names_the_prompts_by_file_and_line(tmp_path, capsys):
    model = tmp_path / "model"
    build_hf_model(model, max_position_embeddings=128)  # (the short prompt: 89 tokens)
    rows = [{"prompt": "Urgency of a cough?", "completion": "routine"},
            {"prompt": "Urgency? " + "chest pain and fever " * 20, "completion": "urgent"}]
    data = formats.write_jsonl(tmp_path / "sft.jsonl", rows)
    argv = ["make-pairs", "--model", str(model), "--data", str(data), "--output", str(tmp_path / "out"), "--greedy",
            "--max-new-tokens", "4", "--device", "cpu"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", PastContext)
        assert main(argv) == 0
    err = capsys.readouterr().err
    assert ("prefopt make-pairs: warning: 1 of 2 prompts and their answers run past the model's context of 128 "
            f"tokens ({data}:2: ") in err
    assert "--max-prompt-length N keeps each prompt's last N tokens (as training's)" in err
    assert json.loads((tmp_path / "out" / "make_pairs.json").read_text())["past_context"] == 1
    assert main([*argv[:6], str(tmp_path / "cut"), *argv[7:], "--max-prompt-length", "100"]) == 0
    assert "context" not in capsys.readouterr().err
    assert "past_context" not in json.loads((tmp_path / "cut" / "make_pairs.json").read_text())
