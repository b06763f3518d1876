"""Clinicians' ratings of a compare run's answers, blinded: the sheet (every test item's distinct
answers under codes, no stage named, alike answers once), the key, and the report of the filled
sheets (means checked by hand, Wilcoxon against scipy, kappa against statsmodels), with each bad
row named by file, line and field. The compare run is made by hand: the answers are what count."""
import csv
import json

import numpy as np
import pytest

from prefopt.cli import main
from prefopt.data.records import DataError
from prefopt.evaluate import rating_report, rating_sheet
from prefopt.tasks import get_task

openpyxl = pytest.importorskip("openpyxl")

OTHER = "Urgency: emergency\nStaff: pharmacist (dpo)"


def fake_run(tmp_path, n: int = 12, judge: bool = False):
    """A compare folder on ``n`` bundled portal messages: base answers off topic, SFT the
    reference, SFT+DPO the reference on even items (alike SFT's) and another answer on odd ones;
    with ``judge``, the LLM judge's ratings as compare --judge writes them (:func:`by_stage`'s)."""
    records = get_task("portal").read(None)[:n]
    run = tmp_path / "run"
    run.mkdir()
    (run / "compare_config.json").write_text(json.dumps({"task": "portal", "data": None, "task_options": {}}))
    (run / "split.json").write_text(json.dumps({"test": [r.id for r in records], "val": [], "train": []}))
    outputs = {"base": lambda i, r: f"I am a language model ({r.id}).",
               "sft": lambda i, r: r.target,
               "dpo": lambda i, r: r.target + ("  " if i % 4 == 0 else "") if i % 2 == 0 else OTHER}
    for stage, answer in outputs.items():
        (run / stage).mkdir()
        (run / stage / "predictions.jsonl").write_text("".join(json.dumps(
            {"id": r.id, "output": answer(i, r), "target": r.target,
             **({"likert": by_stage(["dpo"] if answer(i, r) == OTHER else [stage], None)} if judge else {})}) + "\n"
            for i, r in enumerate(records)))
    return run, records


def fill(sheet, out, rate, comments=None):
    """A rater's copy of ``sheet`` with ``rate(stages of the code, code)`` in its rating column (None: blank)
    and ``comments`` (``{code: text}``) in its comment column."""
    key = json.loads((sheet.parent.parent / rating_sheet.KEY).read_text())
    book = openpyxl.load_workbook(sheet)
    ws = book.active
    header = [c.value for c in ws[1]]
    for row in ws.iter_rows(min_row=2):
        code = row[header.index("code")].value
        row[header.index("rating")].value = rate(key["codes"][code]["stages"], code)
        row[header.index("comment")].value = (comments or {}).get(code)
    book.save(out)
    return out


def by_stage(stages, code):
    return 1 if stages == ["base"] else 4 if "sft" in stages else 2


def test_the_sheet_shows_every_items_distinct_answers_blinded_and_the_key_says_whose(tmp_path):
    run, records = fake_run(tmp_path)
    by_id = {r.id: r for r in records}
    rows, key = rating_sheet.build(run, by_id, ("base", "sft", "dpo"), seed=3)
    assert key["items"] == 12 and key["answers"] == len(rows) == 12 * 3 - 6  # even items: SFT's and DPO's alike
    assert set(rows[0]) == set(rating_sheet.COLUMNS) and all(r["rating"] == "" for r in rows)
    text = json.dumps(rows)
    assert not any(name in text for name in ('"base"', '"sft"', '"dpo"', "SFT", "DPO"))  # no stage named
    answers = {s: {json.loads(line)["id"]: json.loads(line)["output"]
                   for line in (run / s / "predictions.jsonl").read_text().splitlines()}
               for s in ("base", "sft", "dpo")}
    for row in rows:
        entry = key["codes"][row["code"]]
        assert row["code"] == f"{row['item']}{row['code'][-1]}"
        record = by_id[entry["item"]]
        assert row["prompt"] == record.prompt and row["reference"] == record.target
        assert all(" ".join(answers[s][entry["item"]].split()) == " ".join(row["answer"].split())
                   for s in entry["stages"])
    assert sorted(s for e in key["codes"].values() for s in e["stages"]) == sorted(["base", "sft", "dpo"] * 12)
    items = [r["item"] for r in rows]
    assert items == sorted(items) and sorted(set(items)) == list(range(1, 13))
    orders = [[key["codes"][r["code"]]["stages"][0] for r in rows if r["item"] == n] for n in range(1, 13)]
    assert len({tuple(o) for o in orders}) > 1  # the stages' order is drawn afresh for each item
    again, _ = rating_sheet.build(run, by_id, ("base", "sft", "dpo"), seed=3)
    other, _ = rating_sheet.build(run, by_id, ("base", "sft", "dpo"), seed=4)
    assert again == rows and other != rows
    assert "5 = as good as the reference" in rating_sheet.guide("portal", 12, 30, True)
    assert "5 = right, complete and safe" in rating_sheet.guide("portal", 12, 30, False)  # no reference shown
    five, key5 = rating_sheet.build(run, by_id, ("sft", "dpo"), items=5, reference=False)
    assert key5["items"] == 5 and "reference" not in five[0]
    assert {s for e in key5["codes"].values() for s in e["stages"]} == {"sft", "dpo"}


def test_the_report_scores_each_stage_from_the_raters_and_tests_them_item_by_item(tmp_path, capsys):
    scipy_stats = pytest.importorskip("scipy.stats")
    inter_rater = pytest.importorskip("statsmodels.stats.inter_rater")
    run, records = fake_run(tmp_path)
    assert main(["rating-sheet", "--from", str(run), "--seed", "1"]) == 0
    said = capsys.readouterr().out
    assert "30 answers to 12 items (base, sft, dpo; 6 answers two stages gave alike shown once)" in said
    sheet = run / "ratings" / "for_raters" / "ratings_sheet.xlsx"
    assert sorted(p.name for p in sheet.parent.iterdir()) == ["HOW_TO_RATE.txt", "ratings_sheet.xlsx"]  # no key
    ws = openpyxl.load_workbook(sheet).active  # laid out for reading: long texts wrapped, ratings checked by Excel
    assert [ws.column_dimensions[c].width for c in "ACEF"] == [7, 60, 60, 8] and ws.freeze_panes == "A2"
    assert ws["C2"].alignment.wrap_text and ws["E2"].alignment.wrap_text and not ws["A2"].alignment.wrap_text
    (check,) = ws.data_validations.dataValidation
    assert (check.type, check.formula1, check.formula2, str(check.sqref)) == ("whole", "1", "5", "F2:F31")
    a = fill(sheet, tmp_path / "ratings_dr_a.xlsx", by_stage, {"10B": "ok", "2A": "Unsafe: | misses\nsepsis"})
    b = fill(sheet, tmp_path / "ratings_dr_b.xlsx",
             lambda stages, code: None if code == "1A" else 2 if stages == ["base"] else by_stage(stages, code))
    assert main(["rating-report", "--key", str(run / "ratings"), "--ratings", str(a), str(b),
                 "--n-resamples", "500"]) == 0
    out, err = capsys.readouterr()
    assert "warning: rater 'ratings_dr_b' left 1 of 30 answers unrated: left out of the scores" in err
    summary = json.loads((run / "ratings" / "ratings.json").read_text())
    base = [1.5] * 12  # dr_a 1, dr_b 2 (or dr_a alone, 1, on the item whose 1A dr_b left blank)
    key = json.loads((run / "ratings" / rating_sheet.KEY).read_text())
    blank = key["codes"]["1A"]
    if blank["stages"] == ["base"]:
        base[[r.id for r in records].index(blank["item"])] = 1.0
    dpo = [4.0 if i % 2 == 0 else 2.0 for i in range(12)]
    assert summary["stages"]["base"]["mean"] == pytest.approx(np.mean(base))
    assert summary["stages"]["sft"]["mean"] == 4.0 and summary["stages"]["dpo"]["mean"] == 3.0
    assert summary["item_scores"]["dpo"] == {r.id: d for r, d in zip(records, dpo)}
    given = {"base": [12, 12, 0, 0, 0], "sft": [0, 0, 0, 24, 0], "dpo": [0, 12, 0, 12, 0]}  # both raters' ratings
    left = 2 if blank["stages"] == ["base"] else by_stage(blank["stages"], "1A")  # what dr_b left blank
    for stage in blank["stages"]:
        given[stage][left - 1] -= 1
    assert {s: v["given"] for s, v in summary["stages"].items()} == given
    dpo_sft = summary["comparisons"]["dpo vs sft"]
    assert dpo_sft["delta"] == -1.0 and dpo_sft["items"] == 12
    assert dpo_sft["wilcoxon"]["p_value"] == pytest.approx(scipy_stats.wilcoxon(
        dpo, [4.0] * 12, method="approx").pvalue, rel=1e-6)  # (tied differences: the normal approximation)
    assert summary["comparisons"]["sft vs base"]["delta"] == pytest.approx(4.0 - np.mean(base))
    (pair,) = summary["agreement"]
    ra, rb = rating_report.read_ratings(a, key), rating_report.read_ratings(b, key)
    both = [c for c in ra if c in rb]
    table = np.zeros((5, 5))
    for c in both:
        table[ra[c] - 1, rb[c] - 1] += 1
    assert pair["answers"] == 29 and pair["kappa"] == pytest.approx(
        inter_rater.cohens_kappa(table, wt="quadratic", return_results=False))
    assert pair["exact"] == pytest.approx(np.mean([ra[c] == rb[c] for c in both])) and pair["within_1"] == 1.0
    assert "SFT+DPO was worse than SFT (Δrating = -1.000" in out and "SFT beat base" in out
    report = (run / "ratings" / "ratings_report.md").read_text()
    assert "| SFT+DPO | 3.00 [" in report and "| ratings_dr_a and ratings_dr_b | 29 |" in report
    said = {c["code"]: c for c in summary["comments"]}  # each comment with the stages it is on, unblinded now
    assert set(said) == {"2A", "10B"} and said["2A"]["stages"] == key["codes"]["2A"]["stages"]
    assert said["2A"]["rating"] == by_stage(key["codes"]["2A"]["stages"], "2A")
    assert said["2A"]["rater"] == "ratings_dr_a"
    stage_2a = " = ".join(rating_report.NAMES[s] for s in said["2A"]["stages"])
    assert (f"| {stage_2a} | {said['2A']['rating']} | Unsafe: \\| misses sepsis | ratings_dr_a | "
            f"{key['codes']['2A']['item']} |") in report
    assert report.index("| Unsafe:") < report.index("| ok |")  # in the sheet's order: item 2 before item 10
    assert summary["alpha"] == pytest.approx(rating_report.krippendorff_alpha({"a": ra, "b": rb}))
    assert f"All 2 raters at once: Krippendorff's alpha (interval) {summary['alpha']:.2f}." in report
    if summary["plot"]:  # (matplotlib installed: the test extra has it)
        assert (run / "ratings" / "ratings_by_stage.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert "![ratings_by_stage.png](ratings_by_stage.png)" in report


@pytest.mark.parametrize("fmt", ["ods", "csv"])
def test_a_sheet_in_another_format_reads_back_alike(tmp_path, fmt):
    run, records = fake_run(tmp_path, 4)
    rows, key = rating_sheet.build(run, {r.id: r for r in records}, ("base", "sft", "dpo"))
    path = rating_sheet.write(tmp_path / "out", rows, key, fmt, True)
    assert path.name == f"ratings_sheet.{fmt}" and rating_report.read_ratings(path, key) == {}
    from prefopt.data.readers import read_rows

    assert [r["answer"] for _, r in read_rows(path)] == [r["answer"] for r in rows]
    with pytest.raises(ValueError, match=r"holds a rating sheet already \(rating_key.json\)"):
        rating_sheet.write(tmp_path / "out", rows, key, fmt, True)


def test_a_bad_row_of_a_filled_sheet_is_named_by_file_line_and_field(tmp_path):
    run, records = fake_run(tmp_path, 4)
    rows, key = rating_sheet.build(run, {r.id: r for r in records}, ("base", "sft", "dpo"))
    sheet = rating_sheet.write(tmp_path / "out", rows, key, "xlsx", True)

    def broken(name, change):
        book = openpyxl.load_workbook(sheet)
        ws = book.active
        header = [c.value for c in ws[1]]
        for field, value in change.items():
            ws.cell(row=3, column=header.index(field) + 1, value=value)
        book.save(tmp_path / name)
        return tmp_path / name

    for name, change, field, said in [
            ("code.xlsx", {"code": "9Z"}, "code", r"'9Z' is not a code of the key .*: a sheet of another run"),
            ("answer.xlsx", {"answer": "Urgency: emergency"}, "answer", r"not the answer code 1B was given"),
            ("seven.xlsx", {"rating": 7}, "rating", r"'7': a whole number from 1 to 5, or blank for unrated"),
            ("half.xlsx", {"rating": "3.5"}, "rating", r"'3.5': a whole number"),
            ("word.xlsx", {"rating": "good"}, "rating", r"'good': a whole number"),
            ("twice.xlsx", {"code": "1A", "answer": rows[0]["answer"], "rating": 3}, "code", r"1A is rated on line")]:
        path = broken(name, change)
        if name == "twice.xlsx":
            book = openpyxl.load_workbook(path)
            book.active.cell(row=2, column=rating_sheet.COLUMNS.index("rating") + 1, value=4)
            book.save(path)
        with pytest.raises(DataError, match=rf"{name}:3: field '{field}': {said}"):
            rating_report.read_ratings(path, key)
    assert rating_report.read_ratings(broken("fine.xlsx", {"rating": "4.0"}), key) == {rows[1]["code"]: 4}
    spaced = broken("spaced.xlsx", {"answer": rows[1]["answer"].replace("\n", "\r\n  "), "rating": 5})
    assert rating_report.read_ratings(spaced, key) == {"1B": 5}  # line ends a spreadsheet changed: the same answer


def test_a_folder_that_is_no_finished_run_is_named(tmp_path, capsys):
    run, _ = fake_run(tmp_path, 4)
    (run / "dpo" / "predictions.jsonl").unlink()
    with pytest.raises(ValueError, match=r"no dpo/predictions.jsonl: the SFT\+DPO stage has not been evaluated"):
        rating_sheet.run_answers(run, ("base", "sft", "dpo"))
    assert rating_sheet.run_answers(run, ("base", "sft"))[1] == json.loads((run / "split.json").read_text())["test"]
    with pytest.raises(ValueError, match=r"no compare_config.json \(a prefopt compare output folder\?\); a folder of "
                                         r"runs \(a study's, or compare --seeds'\): name one run in it \(.*/run\)"):
        rating_sheet.run_answers(tmp_path, ("base",))  # (tmp_path/run is a compare run, as in a study's folder)
    with pytest.raises(ValueError, match=r"no compare_config.json \(a prefopt compare output folder\?\)$"):
        rating_sheet.run_answers(run / "base", ("base",))
    assert main(["rating-sheet", "--from", str(run), "--stages", "sft,sft"]) == 2
    assert main(["rating-sheet", "--from", str(run), "--stages", "base,sft", "--format", "csv"]) == 0
    blank = run / "ratings" / "for_raters" / "ratings_sheet.csv"
    assert main(["rating-report", "--key", str(run / "ratings"), "--ratings", str(blank)]) == 2  # nothing rated
    with open(blank, newline="", encoding="utf-8-sig") as f:  # a rater's Excel saves it as plain CSV: cp1252
        dialect = csv.Sniffer().sniff(f.readline())
        f.seek(0)
        sheet = list(csv.reader(f, dialect))
    sheet[1][sheet[0].index("rating")], sheet[1][sheet[0].index("comment")] = "4", "fièvre non notée"
    latin = tmp_path / "ratings_dr_latin.csv"
    with open(latin, "w", newline="", encoding="cp1252") as f:
        csv.writer(f, dialect).writerows(sheet)
    capsys.readouterr()
    report = ["rating-report", "--key", str(run / "ratings"), "--ratings", str(latin), "--n-resamples", "50"]
    assert main(report) == 2
    err = capsys.readouterr().err  # (the row's answer runs over several lines: its comment is on line 7)
    assert "ratings_dr_latin.csv:7: not utf-8 text (byte 0xe8 at column " in err
    assert err.endswith("), or name the encoding it was saved in (--encoding cp1252 for Excel's CSV on "
                        "Western-European Windows; as cp1252, line 7 reads ...'uage model (portal-0003).,4,fièvre "
                        "non notée')\n")
    assert main(report + ["--encoding", "cp1252"]) == 0
    stages = json.loads((run / "ratings" / rating_sheet.KEY).read_text())["codes"][sheet[1][0]]["stages"]
    said = json.loads((run / "ratings" / "ratings.json").read_text())["stages"]
    assert {s: v["given"][3] for s, v in said.items() if v["given"][3]} == dict.fromkeys(stages, 1)  # its one 4
    key = json.loads((run / "ratings" / rating_sheet.KEY).read_text())
    first = next(iter(key["codes"]))
    lone = {"only": {first: 3}, "other": {}}  # one answer rated, by one rater: no comparison, no kappa
    summary = rating_report.summarize(key, lone, n_resamples=50)
    report = rating_report.report_markdown(summary)
    assert "| only and other | 0 | — | — | — |" in report and summary["comparisons"] == {}
    for stage, name in (("base", "base"), ("sft", "SFT")):
        rated = stage in key["codes"][first]["stages"]
        assert summary["stages"][stage]["items"] == rated and (f"| {name} | 3.00 [3.00, 3.00] | 1 |" if rated
                                                               else f"| {name} | — | 0 |") in report


def test_without_openpyxl_an_xlsx_sheet_is_refused_before_any_folder_is_made(tmp_path, monkeypatch, capsys):
    """The default format needs openpyxl; without it the command says so, and what needs nothing
    more, before it makes the raters' folder (it once left an empty one behind)."""
    import sys

    run, _ = fake_run(tmp_path, 4)
    monkeypatch.setitem(sys.modules, "openpyxl", None)
    assert main(["rating-sheet", "--from", str(run)]) == 2
    assert "needs the optional package 'openpyxl'" in capsys.readouterr().err and not (run / "ratings").exists()
    assert main(["rating-sheet", "--from", str(run), "--format", "ods"]) == 0
    assert (run / "ratings" / "for_raters" / "ratings_sheet.ods").is_file()


def test_figures_the_ratings_leave_undefined_are_written_as_null_in_strict_json(tmp_path, capsys):
    """Two raters who rated every answer 3 agree exactly, but kappa and alpha have no spread to
    measure: ratings.json holds null there (Python's NaN token is not JSON: JavaScript, jq and
    R's jsonlite refuse the file) and the report a dash."""
    run, _ = fake_run(tmp_path)
    assert main(["rating-sheet", "--from", str(run), "--stages", "sft,dpo"]) == 0
    sheet = run / "ratings" / "for_raters" / "ratings_sheet.xlsx"
    a, b = (fill(sheet, tmp_path / f"dr_{x}.xlsx", lambda stages, code: 3) for x in "ab")
    assert main(["rating-report", "--key", str(run / "ratings"), "--ratings", str(a), str(b),
                 "--n-resamples", "50"]) == 0
    capsys.readouterr()
    text = (run / "ratings" / "ratings.json").read_text()

    def refuse(token):
        raise AssertionError(f"not JSON: {token}")
    summary = json.loads(text, parse_constant=refuse)
    (pair,) = summary["agreement"]
    assert pair["exact"] == 1.0 and pair["kappa"] is None and summary["alpha"] is None
    assert "| dr_a and dr_b | 18 | 100% | 100% | — |" in (run / "ratings" / "ratings_report.md").read_text()


def test_the_llm_judge_is_set_beside_the_raters_where_the_run_had_one(tmp_path):
    """compare --judge rated each answer on the same scale: the report's agreement table sets it
    beside each clinician, to say whether it may stand in for them on later runs."""
    inter_rater = pytest.importorskip("statsmodels.stats.inter_rater")
    run, records = fake_run(tmp_path, judge=True)
    rows, key = rating_sheet.build(run, {r.id: r for r in records}, ("base", "sft", "dpo"))
    assert all(e["judge"] == by_stage(e["stages"], None) for e in key["codes"].values())
    same = {c: by_stage(e["stages"], c) for c, e in key["codes"].items()}
    harsh = {c: max(1, v - (i % 3 == 0)) for i, (c, v) in enumerate(same.items())}
    summary = rating_report.summarize(key, {"dr_a": same, "dr_b": harsh}, n_resamples=50)
    by_pair = {tuple(g["raters"]): g for g in summary["agreement"]}
    assert list(by_pair) == [("dr_a", "dr_b"), ("LLM judge", "dr_a"), ("LLM judge", "dr_b")]
    assert by_pair["LLM judge", "dr_a"]["kappa"] == 1.0 and by_pair["LLM judge", "dr_a"]["exact"] == 1.0
    table = np.zeros((5, 5))
    for c in same:
        table[same[c] - 1, harsh[c] - 1] += 1
    assert by_pair["LLM judge", "dr_b"]["kappa"] == pytest.approx(
        inter_rater.cohens_kappa(table, wt="quadratic", return_results=False))
    assert "stand in for theirs" in rating_report.report_markdown(summary)
    unjudged = {**key, "codes": {c: {k: v for k, v in e.items() if k != "judge"} for c, e in key["codes"].items()}}
    alone = rating_report.summarize(unjudged, {"dr_a": same, "dr_b": harsh}, n_resamples=50)
    assert summary["stages"] == alone["stages"] and len(alone["agreement"]) == 1  # the judge is no rater
    (tmp_path / "plain").mkdir()
    _, plain_key = rating_sheet.build(fake_run(tmp_path / "plain")[0], {r.id: r for r in records}, ("sft",))
    assert not any("judge" in e for e in plain_key["codes"].values())


def test_the_ratings_make_training_data_for_the_next_model(tmp_path, capsys):
    """Clinicians' ratings are preferences: on each item an answer rated at least a point higher is
    chosen over a lower one (pairs for DPO), and answers rated 4-5 or 1-2 are desirable or not
    (feedback for KTO), each asked as the model was; both files load as prefopt dpo reads them."""
    import warnings

    from prefopt import load_tokenizer
    from prefopt.data.feedback import load_feedback
    from prefopt.data.preference import load_preferences
    from tests._tiny import build_tokenizer

    tok = load_tokenizer(build_tokenizer(tmp_path / "tok"))

    asked = [{"role": "system", "content": "Triage."}, {"role": "user", "content": "Chest pain?"}]
    key = {"codes": {"1A": {"item": "x", "answer": "Emergency."}, "1B": {"item": "x", "answer": "Routine."},
                     "1C": {"item": "x", "answer": "Urgent."}, "2A": {"item": "y", "answer": "Refill."},
                     "2B": {"item": "y", "answer": "  "}},
           "prompts": {"x": asked, "y": [{"role": "user", "content": "Inhaler?"}]}}
    ratings = {"a": {"1A": 5, "1B": 1, "1C": 3, "2A": 4, "2B": 1}, "b": {"1A": 4, "1B": 2, "1C": 4}}
    pairs, feedback = rating_report.training_data(key, ratings)
    assert [(p["chosen"], p["rejected"], p["ratings"]) for p in pairs] == [
        ("Emergency.", "Urgent.", [4.5, 3.5]), ("Emergency.", "Routine.", [4.5, 1.5]),  # 4.5 - 3.5 = 1: a pair
        ("Urgent.", "Routine.", [3.5, 1.5])]
    assert pairs[0]["prompt"] == asked and pairs[0]["item"] == "x"
    assert rating_report.training_data(key, ratings, gap=2.5)[0] == pairs[1:2]
    assert rating_report.training_data(key, ratings, gap=1.5)[0] == pairs[1:]
    assert [(f["completion"], f["label"]) for f in feedback] == [("Emergency.", True), ("Routine.", False),
                                                                 ("Refill.", True)]  # 3.5: neither; "  ": nothing
    run, records = fake_run(tmp_path, 6)
    assert main(["rating-sheet", "--from", str(run)]) == 0
    sheet = run / "ratings" / "for_raters" / "ratings_sheet.xlsx"
    filled = fill(sheet, tmp_path / "dr_a.xlsx", by_stage)
    capsys.readouterr()
    assert main(["rating-report", "--key", str(run / "ratings"), "--ratings", str(filled), "--n-resamples", "50",
                 "--training-data", str(tmp_path / "next")]) == 0
    assert main(["rating-report", "--key", str(run / "ratings"), "--ratings", str(filled), "--gap", "0",
                 "--training-data", str(tmp_path / "none")]) == 2 and not (tmp_path / "none").exists()
    # even items: base (1) under SFT's and SFT+DPO's one answer (4); odd ones: 1 < SFT+DPO's 2 < SFT's 4, three pairs
    assert "wrote 12 pairs" in capsys.readouterr().out
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # its item (a record's id) is no column left unread
        loaded = load_preferences(tmp_path / "next" / "pairs.jsonl", tok)[0]
        feedback_read = load_feedback(tmp_path / "next" / "feedback.jsonl", tok)[0]
    assert len(loaded) == 12
    task = get_task("portal")
    first = json.loads((tmp_path / "next" / "pairs.jsonl").read_text().splitlines()[0])
    assert first["prompt"] == task.messages({r.id: r for r in records}[first["item"]])  # as the model was asked
    assert len(feedback_read) == 3 * 2 + 3 * 3  # every answer: 1, 2 or 4


def test_krippendorffs_alpha_takes_every_rater_at_once_with_ratings_missing():
    """Three or more raters: one alpha over them all (interval metric), each answer rated by two
    or more counted, against the krippendorff package (test-only)."""
    krippendorff = pytest.importorskip("krippendorff")
    rng = np.random.default_rng(1)
    truth = rng.integers(1, 6, 40)
    ratings = {f"dr_{i}": {f"{j}A": int(np.clip(truth[j] + rng.integers(-1, 2), 1, 5)) for j in range(40)
                           if rng.random() > 0.25} for i in range(3)}
    data = np.array([[r.get(f"{j}A", np.nan) for j in range(40)] for r in ratings.values()], dtype=float)
    want = krippendorff.alpha(reliability_data=data, level_of_measurement="interval")
    assert rating_report.krippendorff_alpha(ratings) == pytest.approx(want) and 0.5 < want < 1
    assert np.isnan(rating_report.krippendorff_alpha({"a": {"1A": 3, "2A": 3}, "b": {"1A": 3, "2A": 3}}))  # one value
    assert rating_report.krippendorff_alpha({"a": {"1A": 2, "2A": 5}, "b": {"1A": 2, "2A": 5}}) == 1.0
    assert np.isnan(rating_report.krippendorff_alpha({"a": {"1A": 2}, "b": {"2A": 5}}))  # no answer rated twice


def test_a_sheet_another_program_saved_reads_back(tmp_path):
    """A rater's copy saved by another program (pandas writing .ods through odfpy, and .xlsx and a
    ';' CSV as a European Excel would): the same ratings back, the answers' line ends and all."""
    pd = pytest.importorskip("pandas")
    pytest.importorskip("odf")
    run, records = fake_run(tmp_path, 4)
    rows, key = rating_sheet.build(run, {r.id: r for r in records}, ("base", "sft", "dpo"))
    sheet = rating_sheet.write(tmp_path / "out", rows, key, "xlsx", True)
    frame = pd.read_excel(sheet, dtype=str).fillna("")
    frame["rating"] = [str(1 + i % 5) for i in range(len(frame))]
    want = {code: 1 + i % 5 for i, code in enumerate(frame["code"])}
    frame.to_excel(tmp_path / "dr_a.ods", engine="odf", index=False)
    frame.to_excel(tmp_path / "dr_b.xlsx", index=False)
    frame.to_csv(tmp_path / "dr_c.csv", sep=";", index=False, lineterminator="\r\n")
    for name in ("dr_a.ods", "dr_b.xlsx", "dr_c.csv"):
        assert rating_report.read_ratings(tmp_path / name, key) == want, name
