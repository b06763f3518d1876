"""prefopt reviewed-pairs: a predict table a person has labelled, turned into DPO pairs (the
person's answer against the model's wrong one), KTO feedback and SFT records."""
import csv
import json

import pytest

from prefopt.cli import build_parser, main
from prefopt.data.records import DataError
from prefopt.evaluate.reviewed_pairs import read_reviewed, summary_lines, training_data
from prefopt.evaluate.stats import wilson_interval
from prefopt.tasks import get_task
from tests import _formats as formats


def _row(i: int, said: tuple[str, str], person: tuple[str, str] | None, output: str | None = None,
         review: str = "urgency 0.6") -> dict:
    """A predict row (the model said ``said``) with the person's labels (``person``; None: not reviewed)."""
    return {"id": f"m{i}", "message": f"Message {i}: my knee hurts since {i} days",
            "predicted_urgency": said[0], "confidence_urgency": 0.6, "likeliest_urgency": said[0] or "urgent",
            "predicted_staff": said[1], "confidence_staff": 0.7, "likeliest_staff": said[1] or "nurse",
            "review": review, "model_output": output if output is not None else
            f"Urgency: {said[0]}\nStaff: {said[1]}", "finished": True, "record": f"m{i}",
            "urgency": person[0] if person else "", "staff": person[1] if person else ""}


ROWS = [_row(0, ("urgent", "nurse"), ("urgent", "nurse"), review=""),  # right (answered alone)
        _row(1, ("urgent", "nurse"), ("emergency", "nurse")),  # urgency wrong
        _row(2, ("routine", "physician"), None),  # not reviewed
        _row(3, ("routine", "physician"), ("routine", "front desk"), review=""),  # staff wrong (answered alone)
        _row(4, ("", ""), ("urgent", "pharmacist"), output="I cannot tell."),  # named no label: both wrong
        _row(5, ("urgent", "nurse"), ("routine", "pharmacist"), output="")]  # wrong and empty: no pair


def test_each_wrong_answer_becomes_a_pair_and_every_labelled_row_feedback_and_sft(tmp_path):
    """By hand: rows 1, 3 and 4 wrong (a pair each, the model's output rejected), 0 right, 2 not
    reviewed (left out), 5 wrong but empty (counted, no pair nor feedback)."""
    task = get_task("portal")
    path = formats.write_jsonl(tmp_path / "reviewed.jsonl", ROWS)
    reviewed = read_reviewed(task, str(path))
    assert [r.id for r in reviewed.records] == ["m0", "m1", "m3", "m4", "m5"]
    assert reviewed.unlabelled == [3] and reviewed.rows == 6  # (JSONL line 3: row m2)
    pairs, feedback, sft, counts = training_data(task, reviewed.records)
    assert [(p["id"], p["chosen"], p["rejected"]) for p in pairs] == [
        ("m1", "Urgency: emergency\nStaff: nurse", "Urgency: urgent\nStaff: nurse"),
        ("m3", "Urgency: routine\nStaff: front desk", "Urgency: routine\nStaff: physician"),
        ("m4", "Urgency: urgent\nStaff: pharmacist", "I cannot tell.")]
    assert all(p["prompt"] == task.messages(r) for p, r in zip(pairs, [reviewed.records[i] for i in (1, 2, 3)]))
    assert all(p["source"] == "reviewed" for p in pairs)
    assert [(f["id"], f["label"]) for f in feedback] == [("m0", True), ("m1", False), ("m3", False), ("m4", False)]
    assert [(s["id"], s["completion"]) for s in sft] == [(r.id, r.target) for r in reviewed.records]
    assert counts == {"labelled": 5, "right": 1, "wrong": 4, "wrong_by_field": {"urgency": 3, "staff": 3},
                      "empty_answers": 1, "reviewed_pairs": 3, "wrong_label_pairs": 0, "pairs": 3,
                      # m0 and m3 answered alone (one right), m1, m4, m5 sent to review (none right)
                      "answered_alone": {"labelled": 2, "right": 1, "share": 0.5, "ci": list(wilson_interval(1, 2))},
                      "sent_to_review": {"labelled": 3, "right": 0, "share": 0.0, "ci": list(wilson_interval(0, 3))}}
    lines = summary_lines("r.jsonl", reviewed, counts)
    half, none = wilson_interval(1, 2), wilson_interval(0, 3)
    assert lines[2] == (f"answered alone (review column empty): 1 of the 2 labelled right (0.500 [{half[0]:.3f}, "
                        f"{half[1]:.3f}]); sent to review: 0 of the 3 labelled right (0.000 [0.000, {none[1]:.3f}])")
    no_review = [{k: v for k, v in r.items() if k != "review"} for r in ROWS]
    plain = read_reviewed(task, str(formats.write_jsonl(tmp_path / "plain.jsonl", no_review)))
    assert "answered_alone" not in training_data(task, plain.records)[3]  # (a table without the review column)
    half = [dict(r) for r in ROWS]  # a row labelled in one field alone: left out, as one with none
    half[3]["staff"] = ""
    assert read_reviewed(task, str(formats.write_jsonl(tmp_path / "half.jsonl", half))).unlabelled == [3, 4]
    filled, _, _, more = training_data(task, reviewed.records, right_answers="wrong_label")
    assert filled[:3] == pairs and [p["id"] for p in filled[3:]] == ["m0"] and filled[3]["source"] == "wrong_label"
    assert filled[3]["chosen"] == "Urgency: urgent\nStaff: nurse" != filled[3]["rejected"]
    assert more["pairs"] == 4 and more["wrong_label_pairs"] == 1


def test_without_predicted_columns_the_output_is_read_by_the_task(tmp_path):
    """A table whose predicted_<field> columns were deleted: the model's output parsed again."""
    task = get_task("portal")
    rows = [{k: v for k, v in r.items() if not k.startswith("predicted_")} for r in ROWS]
    reviewed = read_reviewed(task, str(formats.write_jsonl(tmp_path / "r.jsonl", rows)))
    assert [p["id"] for p in training_data(task, reviewed.records)[0]] == ["m1", "m3", "m4"]


def test_a_free_text_answer_the_person_edited_is_a_pair(tmp_path):
    """Summaries: the person's text in the task's target column; an edit (beyond case, spacing and
    end punctuation) makes a pair, a summary left as it was none."""
    task = get_task("summarization")
    rows = [{"source": f"Long note {i} about the patient's knee.", "predicted": said, "model_output": said,
             "target": person} for i, (said, person) in enumerate([
                 ("Knee pain.", "knee pain"),  # the same, case and end punctuation aside
                 ("Knee pain.", "Knee pain for two weeks."),  # edited
                 ("Knee pain.", "")])]  # not reviewed
    reviewed = read_reviewed(task, str(formats.write_jsonl(tmp_path / "s.jsonl", rows)))
    pairs, feedback, _, counts = training_data(task, reviewed.records)
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("Knee pain for two weeks.", "Knee pain.")]
    assert [f["label"] for f in feedback] == [True, False] and "wrong_by_field" not in counts


@pytest.mark.parametrize("change, error", [
    (lambda rows: rows[1].update(urgency="urgnt"), "r.jsonl:2: field 'urgency': 'urgnt' is not one of the labels"),
    (lambda rows: [r.pop("model_output") for r in rows], "r.jsonl: no 'model_output' column: not a prefopt predict "
                                                         "table"),
    (lambda rows: [r.update(urgency="", staff="") for r in rows], "r.jsonl: no row has a person's labels (urgency, "
                                                                  "staff: 6 rows without)"),
    (lambda rows: rows[3].update(message=""), "r.jsonl:4: field 'message': empty"),
])
def test_a_typo_a_table_not_from_predict_or_one_with_no_labels_is_refused(tmp_path, change, error):
    rows = [dict(r) for r in ROWS]
    change(rows)
    with pytest.raises((DataError, ValueError)) as e:
        read_reviewed(get_task("portal"), str(formats.write_jsonl(tmp_path / "r.jsonl", rows)))
    assert error in str(e.value)


def test_reviewed_pairs_writes_files_dpo_kto_and_sft_train_on(tiny_model, tmp_path, capsys):
    """The command on a CSV as a spreadsheet keeps it (the model's output over two physical lines:
    rows named by the line they start on), then each file trains a step."""
    path = tmp_path / "reviewed.csv"
    with path.open("w", newline="", encoding="utf-8-sig") as f:
        w = csv.DictWriter(f, fieldnames=list(ROWS[0]))
        w.writeheader()
        w.writerows(ROWS)
    out = tmp_path / "rp"
    assert main(["reviewed-pairs", "--task", "portal", "--data", str(path), "--output", str(out)]) == 0
    said = capsys.readouterr().out
    assert (f"prefopt reviewed-pairs: {path}: 6 rows, 5 with a person's labels (1 without a label in every field, "
            "left out: lines 6)") in said
    assert ("the model's answer was right on 1 and wrong on 4 (urgency 3, staff 3): 3 pairs, the person's answer "
            "chosen and the model's rejected; 1 wrong answers were empty (no pair)") in said
    told = said.split("(on top of the SFT adapter the answers came from: ", 1)[1].split(")", 1)[0]
    dpo = build_parser().parse_args(told.replace("MODEL", "m").replace("ADAPTER", "a").split()[1:])
    assert (dpo.command, dpo.data, dpo.output_dir) == ("dpo", [str(out / "pairs.jsonl")], "DIR") and "-dir DIR" in told
    made = json.loads((out / "reviewed_pairs.json").read_text())
    assert made["unlabelled_lines"] == [6] and made["pairs"] == 3 and made["data"] == str(path.resolve())
    assert main(["reviewed-pairs", "--task", "portal", "--data", str(path), "--output", str(out)]) == 0
    assert (out / "earlier" / "1" / "pairs.jsonl").read_text() == (out / "pairs.jsonl").read_text()
    common = ["--model", str(tiny_model), "--max-steps", "1", "--batch-size", "2", "--no-progress"]
    assert main(["sft", *common, "--data", str(out / "sft.jsonl"), "--output-dir", str(tmp_path / "sft")]) == 0
    assert main(["dpo", *common, "--data", str(out / "pairs.jsonl"), "--output-dir", str(tmp_path / "dpo"),
                 "--sft-adapter", str(tmp_path / "sft" / "final")]) == 0
    assert main(["dpo", *common, "--data", str(out / "feedback.jsonl"), "--output-dir", str(tmp_path / "kto"),
                 "--loss", "kto"]) == 0
    assert (tmp_path / "dpo" / "final" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "kto" / "final" / "adapter_model.safetensors").is_file()


def test_a_numeric_table_read_back_is_asked_as_predict_asked_it(tmp_path):
    """A numeric table's features are all its columns but the label: read back from predict's table,
    the columns predict wrote (its answer, confidence, review...) are not features, so each pair's
    prompt is the one the model answered; predict run on that table again writes them anew."""
    from prefopt.evaluate.new_records import prediction_rows, table_text

    task = get_task("numeric_table", labels="yes,no")
    source = tmp_path / "heart.csv"
    source.write_text("age,bp,label\n61,140,yes\n45,120,no\n")
    records = task.read(str(source))
    rows = prediction_rows(task, records, ["yes", "yes"], [True, True],
                           [{"label": {"yes": 0.8, "no": 0.2}}, {"label": {"yes": 0.6, "no": 0.4}}])
    rows = [row | {"review": "label 0.6" if i else ""} for i, row in enumerate(rows)]
    table = tmp_path / "reviewed.csv"
    table.write_text(table_text(rows, "csv"))
    assert "model_output" in table.read_text() and "label" in rows[0]  # (the labels kept from the input)
    reviewed = read_reviewed(task, str(table))
    assert [r.prompt for r in reviewed.records] == [r.prompt for r in records]
    assert "- age: 61\n- bp: 140" in reviewed.records[0].prompt and "confidence" not in reviewed.records[0].prompt
    pairs = training_data(task, reviewed.records)[0]
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("no", "yes")]
    again = prediction_rows(task, reviewed.records, ["no", "no"], [True, True])  # predict on it: written anew
    assert [list(r) for r in again] == [["age", "bp", "label", "predicted_label", "model_output", "finished",
                                         "record"]] * 2  # (the stale review column too)


def test_uci_heart_reads_its_records_back_from_predicts_table(tmp_path):
    """UCI's own files have no header; predict's table of them has (the dataset's column names):
    read by those names, the same prompts and labels."""
    from prefopt.evaluate.new_records import prediction_rows, table_text

    task = get_task("uci_heart")
    source = tmp_path / "processed.test.data"
    source.write_text("63.0,1.0,1.0,145.0,233.0,1.0,2.0,150.0,0.0,2.3,3.0,0.0,6.0,0\n"
                      "67.0,1.0,4.0,160.0,286.0,0.0,2.0,108.0,1.0,1.5,2.0,3.0,3.0,2\n")
    records = task.read(str(source))
    rows = prediction_rows(task, records, ["no", "no"], [True, True])
    table = tmp_path / "predictions.csv"
    table.write_text(table_text(rows, "csv"))
    back = read_reviewed(task, str(table)).records
    assert [(r.prompt, r.labels) for r in back] == [(r.prompt, r.labels) for r in records]
    assert [p["id"] for p in training_data(task, back)[0]] == [back[1].id]  # (num 2: "yes", answered "no")


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_pubmedqa_reads_its_records_back_from_predicts_table(tmp_path, fmt):
    """A PubMedQA record's contexts are a list: predict's JSONL keeps it, its CSV writes it as JSON
    text, which is read back as the list, so the prompt is the one the model answered."""
    from prefopt.evaluate.new_records import prediction_rows, table_text

    task = get_task("pubmedqa")
    source = tmp_path / "ori_pqal.json"
    source.write_text(json.dumps({str(i): {"QUESTION": f"Does drug {i} help?", "CONTEXTS": [f"Trial {i}.", "It did."],
                                           "final_decision": "yes"} for i in range(2)}))
    records = task.read(str(source))
    table = tmp_path / f"predictions.{fmt}"
    table.write_text(table_text(prediction_rows(task, records, ["no", "yes"], [True, True]), fmt))
    back = read_reviewed(task, str(table)).records
    assert [r.prompt for r in back] == [r.prompt for r in records] and "Context: Trial 0. It did." in back[0].prompt
    assert [p["rejected"] for p in training_data(task, back)[0]] == ["no"]
