"""MedQA-style questions as a team writes its own in a spreadsheet: a column per option (A, B,
...) and the answer's letter, read as MedQA's JSONL of the same questions."""
import csv
import json

import pytest

from prefopt.data import DataError
from prefopt.tasks import get_task
from tests import _formats as formats


def _records(task: str, path, labelled=True) -> list:
    """Each record's prompt, target and labels (its id names its line: a table's first is its header)."""
    return [(r.prompt, r.target, r.labels) for r in get_task(task).read(str(path), labelled=labelled)]


def _sheet(path, rows: list[dict], answer="answer_idx") -> None:
    """``rows`` (MedQA's) as a CSV with a column per option letter, A to E (E empty for four options)."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["question", "A", "B", "C", "D", "E", answer])
        for r in rows:
            w.writerow([r["question"], *(r["options"].get(k, "") for k in "ABCDE"), r["answer_idx"]])


def test_a_spreadsheet_of_questions_reads_as_medqas_jsonl(tmp_path):
    rows = formats.medqa_rows(6)
    rows[2]["options"]["E"] = "watchful waiting"  # one question of five options
    jsonl = formats.write_jsonl(tmp_path / "q.jsonl", rows)
    for task in ("medqa", "medqa_open"):
        want = _records(task, jsonl)
        for answer in ("answer_idx", "answer"):  # the letter under MedQA's name or a plain one
            _sheet(tmp_path / "q.csv", rows, answer)
            assert _records(task, tmp_path / "q.csv") == want
        assert _records(task, tmp_path / "q.csv", False) == _records(task, jsonl, False)
    medqa = get_task("medqa").read(str(tmp_path / "q.csv"))
    assert "E) watchful waiting" in medqa[2].prompt and "E)" not in medqa[1].prompt
    assert [r.id for r in medqa] == [f"medqa:{line}" for line in range(2, 8)]
    with open(tmp_path / "cells.csv", "w", newline="") as f:  # MedQA's options object as JSON text in a cell
        w = csv.writer(f)
        w.writerow(["question", "options", "answer_idx"])
        w.writerows([r["question"], json.dumps(r["options"]), r["answer_idx"]] for r in rows)
    assert _records("medqa", tmp_path / "cells.csv") == _records("medqa", jsonl)


def test_a_question_without_options_or_with_an_answer_among_none_is_named(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("question,A,answer_idx\nWhich drug?,aspirin,A\n")  # one option is no choice
    with pytest.raises(DataError, match=r"bad.csv:2: field 'options': expected an object of lettered options "
                                        r"\(MedQA's JSONL: .*\), or a column for each option named A, B, C"):
        get_task("medqa").read(str(bad))
    bad.write_text("question,A,B,answer\nWhich drug?,aspirin,heparin,C\n")
    with pytest.raises(DataError, match=r"bad.csv:2: field 'answer': 'C' is not one of the options \['A', 'B'\]"):
        get_task("medqa").read(str(bad))
    bad.write_text("question,A,B,answer\nWhich drug?,aspirin,heparin,heparin\n")  # the text, not the letter
    with pytest.raises(DataError, match=r"bad.csv:2: field 'answer_idx': missing field \(have: question, A, B, "
                                        r"answer\): the right option's letter \(or a column 'answer' of letters\)"):
        get_task("medqa").read(str(bad))
