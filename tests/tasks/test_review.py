"""Which answers go to a person: eval --confidence's table of the records the model would answer
alone at each confidence, and predict --review-below's review column."""
import argparse
import json
import re
import shutil

import pytest

from prefopt.cli import main
from prefopt.evaluate.confidence import SCORING
from prefopt.evaluate.new_records import counts, review_reasons, summary
from prefopt.evaluate.review import (
    THRESHOLDS,
    below_arg,
    mark_review,
    resolve_below,
    review_lines,
    review_report_lines,
    review_table,
    thresholds,
)
from prefopt.evaluate.stats import wilson_interval
from prefopt.evaluate.target_search import records_needed, target_line
from prefopt.tasks import get_task
from prefopt.tasks.base import Record
from tests import _formats as formats
from tests.tasks._portal import portal_records


def test_the_table_counts_the_records_every_field_of_which_is_sure_enough():
    """Four records, two fields: by hand at each threshold."""
    task = get_task("portal")
    records = portal_records([("urgent", "nurse"), ("routine", "doctor"), ("urgent", "nurse"), ("routine", "nurse")])
    preds = [{"urgency": "urgent", "staff": "nurse"},  # both right
             {"urgency": "routine", "staff": "nurse"},  # staff wrong
             {"urgency": None, "staff": "nurse"},  # no urgency named
             {"urgency": "urgent", "staff": "nurse"}]  # urgency wrong
    sure = [{"urgency": 0.95, "staff": 0.85}, {"urgency": 0.99, "staff": 0.92}, {"urgency": None, "staff": 0.99},
            {"urgency": 0.6, "staff": 0.7}]
    table = review_table(task, records, preds, sure)
    # records kept at t: every field >= t (r2 never: it named no urgency); right: both fields right
    want = {0.3: (3, 1), 0.4: (3, 1), 0.5: (3, 1), 0.6: (3, 1), 0.7: (2, 1), 0.8: (2, 1), 0.9: (1, 0), 0.95: (0, 0),
            0.99: (0, 0)}
    assert [r["threshold"] for r in table["records"]] == [0.3, 0.4, *THRESHOLDS]  # (staff has 4 labels: from 0.3)
    assert table["n"] == 4
    for row in table["records"]:
        kept, right = want[row["threshold"]]
        assert row["n"] == kept and row["kept"] == pytest.approx(kept / 4)
        assert row["right"] == (pytest.approx(right / kept) if kept else None)
        assert row["ci"] == (list(wilson_interval(right, kept)) if kept else None)
    # urgency alone: r0 .95 right, r1 .99 right, r3 .6 wrong
    # staff alone: r0 .85 right, r1 .92 wrong, r2 .99 right, r3 .7 right
    urgency = {r["threshold"]: (r["kept"], r["right"]) for r in table["fields"]["urgency"]}
    assert urgency[0.5] == (0.75, pytest.approx(2 / 3)) and urgency[0.95] == (0.5, 1.0) and urgency[0.99] == (0.25, 1.0)
    staff = {r["threshold"]: (r["kept"], r["right"]) for r in table["fields"]["staff"]}
    assert staff[0.7] == (1.0, 0.75) and staff[0.9] == (0.5, 0.5) and staff[0.95] == (0.25, 1.0)
    lines = review_lines(table)
    third, none = wilson_interval(1, 3), wilson_interval(0, 1)
    assert lines[0].startswith("records answered alone at each confidence (the others to review: predict "
                               f"--review-below P): >= 0.3: 3 of 4, 0.333 right [{third[0]:.3f}, {third[1]:.3f}]; "
                               ">= 0.4: 3 of 4, 0.333 right [")
    assert lines[0].endswith(f">= 0.9: 1 of 4, 0.000 right [0.000, {none[1]:.3f}]; >= 0.95: 0 of 4; >= 0.99: 0 of 4")
    assert lines[1].startswith("  urgency alone: >= 0.3: 3 of 4, 0.667 right [") and len(lines) == 3
    own = review_table(task, records, preds, sure, below=0.85)  # a threshold of one's own, in its place
    assert [r["threshold"] for r in own["records"]] == [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.99]
    assert own["records"][6]["n"] == 2 and own["review_below"] == 0.85  # r0 (its staff exactly .85) and r1
    assert ">= 0.85 (--review-below): " in review_lines(own)[0] and ">= 0.8: " in review_lines(own)[0]
    # a confidence compared as predict's column holds it (4 decimals): 0.69996 is the column's 0.7, kept at 0.7
    edge = review_table(task, records[:1], preds[:1], [{"urgency": 0.95, "staff": 0.69996}])
    assert [r["n"] for r in edge["records"]][2:6] == [1, 1, 1, 0]  # (0.5 to 0.8)
    one = review_table(get_task("text_classification", labels="a,b"), [Record("x", "", "a", {"label": "a"})],
                       [{"label": "a"}], [{"label": 0.8}])
    assert len(review_lines(one)) == 1  # one field: no per-field lines
    assert [r["threshold"] for r in one["records"]] == list(THRESHOLDS)  # (two labels: from 0.5)
    assert thresholds(get_task("ktas")) == (0.4, *THRESHOLDS)  # (three levels: 0.3 is below one over three)
    assert thresholds(get_task("text_classification", labels="a,b,c,d,e,f")) == (0.2, 0.3, 0.4, *THRESHOLDS)


def test_a_threshold_per_field_keeps_the_records_each_of_whose_fields_reaches_its_own():
    """``urgency >= 0.95, staff >= 0.75`` on the four records above, by hand: r0 (0.95, 0.85) and
    r1 (0.99, 0.92) kept, r2 named no urgency, r3's urgency 0.6; r1's staff is wrong. Each field's
    own threshold is a row in its place among the field's; the records' own row comes last."""
    task = get_task("portal")
    records = portal_records([("urgent", "nurse"), ("routine", "doctor"), ("urgent", "nurse"), ("routine", "nurse")])
    preds = [{"urgency": "urgent", "staff": "nurse"}, {"urgency": "routine", "staff": "nurse"},
             {"urgency": None, "staff": "nurse"}, {"urgency": "urgent", "staff": "nurse"}]
    sure = [{"urgency": 0.95, "staff": 0.85}, {"urgency": 0.99, "staff": 0.92}, {"urgency": None, "staff": 0.99},
            {"urgency": 0.6, "staff": 0.7}]
    below = {"urgency": 0.95, "staff": 0.75}
    table = review_table(task, records, preds, sure, below=below)
    assert [r["threshold"] for r in table["records"]] == [0.3, 0.4, *THRESHOLDS, below]
    own = table["records"][-1]
    assert (own["n"], own["kept"], own["right"], own["ci"]) == (2, 0.5, 0.5, list(wilson_interval(1, 2)))
    assert table["records"][:-1] == review_table(task, records, preds, sure)["records"]  # the rest as without
    staff = {r["threshold"]: (r["n"], r["right"]) for r in table["fields"]["staff"]}
    assert [r["threshold"] for r in table["fields"]["staff"]] == [0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.9, 0.95, 0.99]
    assert staff[0.75] == (3, pytest.approx(2 / 3))  # r0, r1 (wrong), r2
    assert [r["threshold"] for r in table["fields"]["urgency"]] == [0.3, 0.4, *THRESHOLDS]  # (0.95 one already)
    lines = review_lines(table)
    assert lines[0].endswith("; urgency >= 0.95, staff >= 0.75 (--review-below): 2 of 4, 0.500 right "
                             f"[{wilson_interval(1, 2)[0]:.3f}, {wilson_interval(1, 2)[1]:.3f}]")
    assert "(--review-below)" not in lines[0][:-60]  # (no single threshold marked)
    assert ">= 0.95 (--review-below): 2 of 4, 1.000 right" in lines[1] and lines[1].count("(--review-below)") == 1
    assert ">= 0.75 (--review-below): 3 of 4, 0.667 right" in lines[2] and lines[2].count("(--review-below)") == 1


@pytest.mark.parametrize("text, want", [
    ("0.9", 0.9),
    ("urgency=0.9,staff=0.7", {"urgency": 0.9, "staff": 0.7}),
    ("staff=0.7, urgency=0.9", {"urgency": 0.9, "staff": 0.7}),  # (in the task's order)
    ("0.7,urgency=0.9", {"urgency": 0.9, "staff": 0.7}),  # a bare P: the fields not named
    ("urgency=0.8,staff=0.8", 0.8),  # one for all: as a bare one
    ("0.5,urgency=0.9,staff=0.6", {"urgency": 0.9, "staff": 0.6}),
])
def test_review_below_reads_one_threshold_or_one_per_field(text, want):
    got = resolve_below(get_task("portal"), below_arg(text))
    assert got == want and (not isinstance(got, dict) or list(got) == ["urgency", "staff"])  # (the task's order)


def test_a_task_of_one_field_takes_its_threshold_named_or_bare():
    assert resolve_below(get_task("ktas"), below_arg("urgency=0.9")) == 0.9  # (KTAS's one field)
    assert resolve_below(get_task("ktas"), below_arg("0.6,urgency=0.9")) == 0.9  # (the bare one unused)
    with pytest.raises(ValueError, match="^--review-below: ktas has no field 'staff'; its fields: urgency$"):
        resolve_below(get_task("ktas"), below_arg("staff=0.9"))


@pytest.mark.parametrize("text, error", [
    ("urgency=x", "'urgency=x' in 'urgency=x': expected P or FIELD=P, comma-separated"),
    ("=0.5", "'=0.5' in '=0.5': a field's name before the '='"),
    ("urgency=0.9,urgency=0.8", "'urgency=0.9,urgency=0.8' gives urgency two thresholds: give one"),
    ("0.5,0.6", "'0.5,0.6' gives the fields not named two thresholds"),
])
def test_review_below_refuses_a_malformed_list(text, error):
    with pytest.raises(argparse.ArgumentTypeError, match="^" + re.escape(error)):
        below_arg(text)


@pytest.mark.parametrize("text, error", [
    ("urgncy=0.9,staff=0.5", "--review-below: portal has no field 'urgncy'; its fields: urgency, staff"),
    ("urgency=0.9", "--review-below: no threshold for staff (each field needs one"),
    ("urgency=1.5,staff=0.5", "--review-below urgency=1.5: a probability between 0 and 1"),
    ("0,urgency=0.5", "--review-below 0: a probability between 0 and 1"),
    ("1", "--review-below 1: a probability between 0 and 1"),
])
def test_review_below_refuses_what_the_task_cannot_take(text, error):
    with pytest.raises(ValueError) as e:
        resolve_below(get_task("portal"), below_arg(text))
    assert str(e.value).startswith(error)


def test_the_review_column_says_which_field_is_not_sure_enough():
    task = get_task("portal")
    rows = [{"message": "a", "review": "old", "predicted_urgency": "urgent", "confidence_urgency": 0.95,
             "predicted_staff": "nurse", "confidence_staff": 0.9, "model_output": "x", "finished": True, "record": "1"},
            {"message": "b", "predicted_urgency": "", "confidence_urgency": "", "predicted_staff": "nurse",
             "confidence_staff": 0.62, "model_output": "y", "finished": True, "record": "2"}]
    marked = mark_review(task, rows, 0.9)
    assert [r["review"] for r in marked] == ["", "urgency no label; staff 0.62"]
    assert list(marked[0]) == ["message", "predicted_urgency", "confidence_urgency", "predicted_staff",
                               "confidence_staff", "review", "model_output", "finished", "record"]
    assert [r["review"] for r in mark_review(task, rows, 0.91)] == ["staff 0.9", "urgency no label; staff 0.62"]
    marked = mark_review(task, rows, 0.91, past={"2"})
    tally = counts(task, marked)  # (r1: staff; r2: past the context, urgency, staff)
    assert tally["review"] == 2 and tally["review_by"] == {"urgency": 1, "staff": 2, "past the model's context": 1}
    assert summary(tally).endswith("; 2 to review (urgency 1, staff 2, past the model's context 1; the review column "
                                   "says why)")
    assert review_reasons("past the model's context; urgency no label; staff 0.62") == [
        "past the model's context", "urgency", "staff"] and review_reasons("") == []
    one = counts(task, mark_review(task, rows[:1], 0.91))
    assert one["review_by"] == {"staff": 1} and summary(one).endswith("; 1 to review (the review column says why)")
    # each field its own: urgency below 0.96 (row 1's 0.95), staff below 0.6 (neither)
    assert [r["review"] for r in mark_review(task, rows, {"urgency": 0.96, "staff": 0.6})] == [
        "urgency 0.95", "urgency no label"]
    assert [r["review"] for r in mark_review(task, rows, {"urgency": 0.5, "staff": 0.95})] == [
        "staff 0.9", "urgency no label; staff 0.62"]
    rows[0]["confidence_staff"] = 0.8996  # (as the table rounds it: shown so, not as 0.90 below 0.9)
    assert mark_review(task, rows, 0.9)[0]["review"] == "staff 0.8996"


def test_eval_writes_the_table_and_predict_marks_the_records_below_a_threshold(tiny_model, tmp_path, capsys,
                                                                                monkeypatch):
    """eval --confidence's table is its predictions' confidences counted; predict --review-below
    marks the same records' answers below it (the tiny model's answers, which name no label, given
    as one that names both: its probabilities of them differ by message); refused before any model
    loads where it cannot."""
    from prefopt.evaluate import new_records, runner

    data = formats.write_jsonl(tmp_path / "m.jsonl", [
        {"id": f"m{i}", "message": f"Message {i}: my knee hurts since {i} days",
         "urgency": ["urgent", "routine"][i % 2], "staff": "nurse"} for i in range(8)])
    answer = get_task("portal").read(str(data))[0].target  # urgent, nurse: right for half the records

    def answered(model, tok, task, records, **kw):
        texts = [answer] * len(records)
        return (texts, [True] * len(records)) if kw.get("return_ended") else texts

    monkeypatch.setattr(runner, "predict", answered)
    monkeypatch.setattr(new_records, "predict", answered)
    calibration = tmp_path / "calibration.json"  # (the tiny model is near certain of it: a temperature spreads them)
    calibration.write_text(json.dumps({"temperature": 40.0, "task": "portal", "model": str(tiny_model), "adapter": None,
                                       "confidence_scoring": SCORING}))
    common = ["--task", "portal", "--model", str(tiny_model), "--data", str(data), "--max-new-tokens", "6",
              "--calibration", str(calibration)]
    assert main(["eval", *common, "--split", "all", "--output", str(tmp_path / "e"), "--confidence",
                 "--review-below", "0.55"]) == 0
    assert "prefopt eval: records answered alone at each confidence (the others to review" in capsys.readouterr().out
    table = json.loads((tmp_path / "e" / "metrics.json").read_text())["review"]
    assert table["review_below"] == 0.55 and 0.55 in [at["threshold"] for at in table["records"]]
    rows = [json.loads(line) for line in (tmp_path / "e" / "predictions.jsonl").read_text().splitlines()]
    assert all(None not in r["confidence"].values() for r in rows)
    for at in table["records"]:
        kept = [r for r in rows if round(min(r["confidence"].values()), 4) >= at["threshold"]]
        assert at["kept"] == pytest.approx(len(kept) / 8)
        assert at["right"] == (pytest.approx(sum(r["labels"]["urgency"] == "urgent" for r in kept) / len(kept))
                               if kept else None)
    assert any(0 < at["kept"] < 1 for at in table["records"])  # some records answered alone, some not
    lowest = sorted(min(r["confidence"].values()) for r in rows)
    below = round((lowest[3] + lowest[4]) / 2, 4)  # half the records below it
    assert main(["predict", *common, "--output", str(tmp_path / "p"), "--review-below", str(below)]) == 0
    assert "; 4 to review (the review column says why)" in capsys.readouterr().out
    made = [json.loads(line) for line in (tmp_path / "p" / "predictions.jsonl").read_text().splitlines()]
    for r in made:
        low = [f for f in ("urgency", "staff") if r[f"confidence_{f}"] < below]
        assert r["review"] == "; ".join(f"{f} {r[f'confidence_{f}']:g}" for f in low)
    settings = json.loads((tmp_path / "p" / "predict.json").read_text())
    assert settings["review_below"] == below and settings["review"] == sum(bool(r["review"]) for r in made)
    # one threshold per field: each field's answer below its own is named, and eval counts the records kept
    each = {f: sorted(r[f"confidence_{f}"] for r in made)[4] for f in ("urgency", "staff")}
    given = f"staff={each['staff']:g},urgency={each['urgency']:g}"
    assert main(["predict", *common, "--output", str(tmp_path / "p2"), "--review-below", given]) == 0
    two = [json.loads(line) for line in (tmp_path / "p2" / "predictions.jsonl").read_text().splitlines()]
    for r in two:
        assert r["review"] == "; ".join(f"{f} {r[f'confidence_{f}']:g}" for f in each if r[f"confidence_{f}"] < each[f])
    assert any(r["review"] for r in two) and not all(r["review"] for r in two)
    assert json.loads((tmp_path / "p2" / "predict.json").read_text())["review_below"] == each
    capsys.readouterr()
    assert main(["eval", *common, "--split", "all", "--output", str(tmp_path / "e2"), "--confidence",
                 "--review-below", given]) == 0
    assert f"urgency >= {each['urgency']:g}, staff >= {each['staff']:g} (--review-below): " in capsys.readouterr().out
    own = json.loads((tmp_path / "e2" / "metrics.json").read_text())["review"]["records"][-1]
    assert own["threshold"] == each and own["n"] == sum(not r["review"] for r in two)
    summaries = formats.write_jsonl(tmp_path / "meqsum.jsonl", formats.meqsum_rows(2))
    for argv, error in (([*common, "--review-below", "1.5"], "--review-below 1.5: a probability between 0 and 1"),
                        ([*common, "--review-below", "0.9", "--no-confidence"], "--review-below reads the confidence "
                         "columns, which --no-confidence leaves out"),
                        (["--task", "meqsum", "--model", str(tiny_model), "--data", str(summaries), "--review-below",
                          "0.9"], "--review-below: meqsum answers in free text"),
                        ([*common, "--review-below", "urgency=0.9,stafff=0.5"], "--review-below: portal has no "
                         "field 'stafff'; its fields: urgency, staff")):
        assert main(["predict", *argv, "--output", str(tmp_path / "refused")]) == 2, argv
        assert error in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # (its form, as argparse reads it)
        main(["predict", *common, "--review-below", "urgency:0.9", "--output", str(tmp_path / "refused")])
    assert e.value.code == 2 and "expected P or FIELD=P, comma-separated" in capsys.readouterr().err
    assert main(["eval", *common[:-2], "--review-below", "0.9", "--output", str(tmp_path / "refused")]) == 2
    assert "--review-below reads the confidence --confidence scores: add --confidence" in capsys.readouterr().err
    # a finished evaluation's answers: their table at the confidence they hold (no --model: none loads)
    rescored = ["eval", "--task", "portal", "--data", str(data), "--split", "all", "--answers", str(tmp_path / "e")]
    assert main([*rescored, "--review-below", "0.55", "--output", str(tmp_path / "r")]) == 0
    again = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert again["review"] == {"confidence": "confidence", **table}
    assert again["temperature"] == 40.0 and again["calibration"] == str(calibration)
    assert main([*rescored, "--review-below", given, "--review-target", "0.5", "--output", str(tmp_path / "r2")]) == 0
    out = capsys.readouterr().out
    assert f"urgency >= {each['urgency']:g}, staff >= {each['staff']:g} (--review-below): " in out
    review = json.loads((tmp_path / "r2" / "metrics.json").read_text())["review"]
    assert review["records"][-1] == json.loads((tmp_path / "e2" / "metrics.json").read_text())["review"]["records"][-1]
    assert review["target"]["target"] == 0.5 and f"prefopt eval: {target_line(review['target'])}" in out
    assert main(["eval", "--task", "portal", "--data", str(data), "--split", "all", "--max-new-tokens", "6",
                 "--model", str(tiny_model), "--output", str(tmp_path / "plain")]) == 0  # (no --confidence)
    capsys.readouterr()
    assert main([*rescored[:-1], str(tmp_path / "plain"), "--review-below", "0.9", "--output",
                 str(tmp_path / "refused")]) == 2
    assert ("--review-below reads the confidence of the answers in " in capsys.readouterr().err)
    assert main([*rescored, "--review-below", "urgency=0.9", "--output", str(tmp_path / "refused")]) == 2
    assert "--review-below: no threshold for staff" in capsys.readouterr().err
    staged = tmp_path / "staged"  # a compare stage's rows: read at their calibrated column, as stage_review reads it
    shutil.copytree(tmp_path / "e", staged)
    rows = [json.loads(line) for line in (staged / "predictions.jsonl").read_text().splitlines()]
    for i, row in enumerate(rows):
        row["confidence_calibrated"] = {k: round(v * (0.5 + i / 20), 4) for k, v in row["confidence"].items()}
    (staged / "predictions.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert main([*rescored[:-1], str(staged), "--review-below", "0.3", "--output", str(tmp_path / "r3")]) == 0
    assert "'s answers read at their calibrated confidence (confidence_calibrated" in capsys.readouterr().out
    by_id = {row["id"]: row for row in rows}
    records = get_task("portal").read(str(data))
    want = review_table(get_task("portal"), records, [by_id[r.id]["prediction"] for r in records],
                        [by_id[r.id]["confidence_calibrated"] for r in records], 0.3)
    assert json.loads((tmp_path / "r3" / "metrics.json").read_text())["review"] == {
        "confidence": "confidence_calibrated", **want}
    assert want != review_table(get_task("portal"), records, [by_id[r.id]["prediction"] for r in records],
                                [by_id[r.id]["confidence"] for r in records], 0.3)  # (the model's own: other counts)
    older = tmp_path / "older"  # answers an older prefopt read otherwise: their confidence is of another label
    shutil.copytree(tmp_path / "e", older)
    lines = (older / "predictions.jsonl").read_text().splitlines()
    first = json.loads(lines[0]) | {"prediction": {"urgency": "routine", "staff": "nurse"}}
    (older / "predictions.jsonl").write_text("\n".join([json.dumps(first), *lines[1:]]) + "\n")
    assert main([*rescored[:-1], str(older), "--review-target", "0.5", "--output", str(tmp_path / "refused")]) == 2
    assert f"--review-target: 1 of {older}'s answers are read otherwise than when" in capsys.readouterr().err
    assert not (tmp_path / "refused").exists()


def test_compares_table_sets_the_stages_side_by_side_by_the_confidence_predict_would_give():
    """A compare stage's review reads its rows' calibrated confidence where the run fitted a
    temperature (every row holds ``confidence_calibrated``), else the model's own; report.md's
    table has a row a threshold and a cell a stage, its figures by hand; a stage not scored
    (no confidence in its rows) is left out."""
    from prefopt.evaluate.review import stage_review

    task = get_task("portal")
    records = portal_records([("urgent", "nurse"), ("routine", "doctor"), ("urgent", "nurse"), ("routine", "nurse")])
    preds = [{"urgency": "urgent", "staff": "nurse"}, {"urgency": "routine", "staff": "doctor"},
             {"urgency": "urgent", "staff": "doctor"}, {"urgency": "urgent", "staff": "nurse"}]  # right, right, no, no
    plain = [{"urgency": 0.9, "staff": 0.75}, {"urgency": 0.7, "staff": 0.45}, {"urgency": 0.95, "staff": 0.9},
             {"urgency": 0.4, "staff": 0.9}]
    softer = [{"urgency": 0.6, "staff": 0.6}, {"urgency": 0.5, "staff": 0.5}, {"urgency": 0.65, "staff": 0.62},
              {"urgency": 0.3, "staff": 0.7}]
    sft = [{"prediction": p, "confidence": c, "confidence_calibrated": k} for p, c, k in zip(preds, plain, softer)]
    base = [{"prediction": p, "confidence": c} for p, c in zip(preds, plain)]
    reviewed = {"base": stage_review(task, records, base), "SFT": stage_review(task, records, sft),
                "SFT+DPO": stage_review(task, records, [{"prediction": p} for p in preds])}
    assert reviewed["SFT"] == {"confidence": "confidence_calibrated", **review_table(task, records, preds, softer)}
    assert reviewed["base"]["confidence"] == "confidence" and reviewed["SFT+DPO"] is None
    lines = review_report_lines(reviewed)
    assert "calibrated for SFT, as the model gives it for the others;" in lines[0]
    assert lines[2:4] == ["| confidence ≥ | base | SFT |", "|---|---|---|"]
    # at 0.3 both keep all four (r0, r1 right); base at 0.5: r0 (right), r2 (wrong) kept; at 0.8: r2 alone;
    # SFT at 0.5: r0, r1 (right), r2 (wrong); at 0.8: none
    lo, hi = wilson_interval(1, 2)
    lo3, hi3 = wilson_interval(2, 3)
    lo4, hi4 = wilson_interval(2, 4)
    assert lines[4] == f"| 0.3 | 4 (100%): 0.500 [{lo4:.3f}, {hi4:.3f}] | 4 (100%): 0.500 [{lo4:.3f}, {hi4:.3f}] |"
    assert lines[6] == f"| 0.5 | 2 (50%): 0.500 [{lo:.3f}, {hi:.3f}] | 3 (75%): 0.667 [{lo3:.3f}, {hi3:.3f}] |"
    lo1, hi1 = wilson_interval(0, 1)
    assert lines[9] == f"| 0.8 | 1 (25%): 0.000 [{lo1:.3f}, {hi1:.3f}] | 0 |"
    assert review_report_lines({"base": None}) == []


def test_compares_validated_threshold_is_read_off_the_validation_answers_of_each_stages_step(tmp_path):
    """A compare folder laid out by hand: the SFT stage's validation answers are DPO's step 0, the
    SFT+DPO stage's its chosen step (best.json); each stage's confidence its own calibrated
    probabilities. At 0.4 it takes 5 records all right (0.4 ** 5 = 0.010): SFT reaches it at 0.55
    (5 of 5 right from there) and stops at 0.52 (5 of 6: P(X >= 5) = 6 * 0.4 ** 5 * 0.6 + 0.4 ** 6
    = 0.041 > 0.025), and the test items kept at 0.55 are counted; SFT+DPO's answers are all
    wrong, so none reaches it, and the report names where it stopped."""
    from prefopt.evaluate.validated_review import seeds_lines, validated_lines, validated_review

    task = get_task("portal")
    val = portal_records([("urgent", "nurse"), ("routine", "doctor"), ("urgent", "nurse"), ("routine", "nurse"),
                           ("urgent", "doctor"), ("routine", "doctor")])
    test = portal_records([("urgent", "nurse"), ("routine", "doctor"), ("urgent", "doctor"), ("routine", "nurse")])
    right = [dict(r.labels) for r in val]
    wrong = [{"urgency": "emergency", "staff": "pharmacist"} for _ in val]
    train = tmp_path / "dpo" / "train"
    (train / "best").mkdir(parents=True)
    (train / "best" / "best.json").write_text(json.dumps({"step": 2, "metric": "val_macro_f1", "value": 0.0}))
    sure = [0.9, 0.8, 0.7, 0.6, 0.55, 0.52]  # each record's least confident field (the other at 0.99)
    answered = right[:5] + [{"urgency": "urgent", "staff": "nurse"}]  # (r5 wrong)
    (train / "val_answers.jsonl").write_text("".join(json.dumps({"step": step, "ids": [r.id for r in val],
                                                                 "predictions": preds}) + "\n"
                                                     for step, preds in ((0, answered), (2, wrong))))

    def probabilities(preds):
        return [{"urgency": {p["urgency"]: s}, "staff": {p["staff"]: 0.99}} for p, s in zip(preds, sure)]

    for stage, preds in (("sft", answered), ("dpo", wrong)):
        (tmp_path / stage).mkdir(exist_ok=True)
        (tmp_path / stage / "val_probabilities.jsonl").write_text("".join(
            json.dumps({"id": r.id, "probabilities": p}) + "\n" for r, p in zip(val, probabilities(preds))))
    rows = [{"prediction": r.labels | ({"staff": "nurse"} if i == 1 else {}),  # r1 wrong
             "confidence_calibrated": {"urgency": c, "staff": 0.99}} for i, (r, c) in
            enumerate(zip(test, [0.95, 0.72, 0.5, 0.69]))]
    sft = validated_review(task, val, test, tmp_path, "sft", rows, 0.4)
    v = sft["validation"]
    assert (v["threshold"], v["n"], v["right"], v["stopped"]["threshold"]) == (0.55, 5, 1.0, 0.52)
    assert sft["test"]["threshold"] == 0.55 and (sft["test"]["n"], sft["test"]["right"]) == (3, 2 / 3)
    dpo = validated_review(task, val, test, tmp_path, "dpo", rows, 0.4)
    assert dpo["validation"]["threshold"] is None and dpo["test"] is None
    assert dpo["validation"]["best"]["threshold"] == 0.55  # (the first tried, short)
    assert validated_review(task, val, test, tmp_path, "base", rows, 0.4) is None  # (no validation answers)
    lines = validated_lines({"base": None, "SFT": sft, "SFT+DPO": dpo})
    lo, hi = wilson_interval(5, 5)
    lo2, hi2 = wilson_interval(2, 3)
    exact = f"exact lower end {0.025 ** (1 / 5):.3f}"
    kept = f"3 of 4, 0.667 [{lo2:.3f}, {hi2:.3f}]"
    assert f"| SFT | 0.55 (5 of 6, 1.000 [{lo:.3f}, {hi:.3f}], {exact}) | {kept} |" in lines
    stopped = f"none (stopped at 0.55: 5 of 6, 0.000 [0.000, {wilson_interval(0, 5)[1]:.3f}], exact lower end 0.000)"
    assert f"| SFT+DPO | {stopped} | — |" in lines
    assert not any(line.startswith("| base") for line in lines)
    few = validated_review(task, val, test, tmp_path, "sft", rows, 0.9)  # it takes 36
    # a report from before 2026-12-07 (no exact lower end, no "first"): its cells as it meant them
    old_row = {k: v for k, v in dpo["validation"]["best"].items() if k != "lower"}
    old = {"validation": {"target": 0.4, "n_records": 6, "threshold": None, "best": old_row}, "test": None, "n_test": 4}
    was = {"validation": {"target": 0.4, "n_records": 6, **{k: v for k, v in sft["validation"].items()
                                                            if k not in ("lower", "first", "fewest", "stopped")}},
           "test": sft["test"], "n_test": 4}
    assert validated_lines({"SFT": was, "SFT+DPO": old})[-2:] == [
        f"| SFT | 0.55 (5 of 6, 1.000 [{lo:.3f}, {hi:.3f}]) | {kept} |",
        f"| SFT+DPO | none (nearest 0.55: 5 of 6, 0.000 [0.000, {wilson_interval(0, 5)[1]:.3f}]) | — |"]
    short = "| SFT | none (at most 6 of 6 answered alone; the search starts at 36) | — |"
    assert short in validated_lines({"SFT": few})
    near = validated_review(task, val, test, tmp_path, "sft", rows, 0.7)  # it takes 11; 5 of 6 right would show it
    need = records_needed(5 / 6, 0.7)  # (at 5 of 6 right, so many kept: all 6 records kept, so as many items)
    assert near["validation"]["needed"] == need and need > 11
    assert (f"| SFT | none (at most 6 of 6 answered alone; the search starts at 11; about {need} items like these "
            "would show it) | — |") in validated_lines({"SFT": near})
    # seeds.md lists each seed's, the SFT+DPO stage that is the SFT model said so
    table = seeds_lines([{"seed": 0, "review_validated": {"sft": sft, "dpo": dpo}},
                         {"seed": 1, "dpo_is_sft": True, "review_validated": {"sft": sft, "dpo": sft}},
                         {"seed": 2}])
    assert "Each seed's threshold for answers right at least 0.4 of the time (`--set review_target=0.4`)" in table[3]
    assert table[-2:] == [
        f"| 0 | 0.55 (5 of 6, 1.000 [{lo:.3f}, {hi:.3f}], {exact}) | 3 of 4, 0.667 [{lo2:.3f}, {hi2:.3f}] | {stopped} "
        "| — |",
        f"| 1 | 0.55 (5 of 6, 1.000 [{lo:.3f}, {hi:.3f}], {exact}) | 3 of 4, 0.667 [{lo2:.3f}, {hi2:.3f}] | the SFT "
        "model: the same | the same |"]
    assert seeds_lines([{"seed": 0}]) == []
