"""``compare --test-data``: a given file of labelled records is the test set, all of it (a later
period's, another site's), and ``--data`` trains alone, less the records of the same text; and
``--set group_by=COLUMN``: a patient's records go to one split (eval ``--group-by`` alike)."""
import csv
import json
from dataclasses import asdict
from pathlib import Path

import pytest

from prefopt.cli import main
from prefopt.evaluate.compare import CompareConfig, run_compare
from prefopt.tasks import PORTAL_DATA, count_groups, get_task, split_records, split_with_test
from tests.tasks.test_compare_smoke import TINY

FIELDS = ["message", "urgency", "staff"]


def _portal_csv(path: Path, rows: list[dict], fields=FIELDS) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return path


def _bundled() -> list[dict]:
    return [json.loads(line) for line in PORTAL_DATA.read_text().splitlines() if line.strip()]


def test_the_given_records_are_the_test_set_whatever_the_seed_and_their_texts_leave_training():
    task = get_task("portal")
    records = task.read()
    train, tested = records[:40], records[40:46] + [records[3], records[7]]
    for seed in (0, 1):
        splits, dropped = split_with_test(train, tested, val=4, seed=seed)
        assert splits["test"] == tested and dropped == 2
        assert len(splits["train"]) == 34 and len(splits["val"]) == 4
        assert not {r.id for r in splits["train"] + splits["val"]} & {records[3].id, records[7].id}
    assert split_with_test(train, tested, seed=0)[0]["train"] != split_with_test(train, tested, seed=1)[0]["train"]
    # with nothing given, the split draws its test set from the records, as before
    assert split_records(train, test=4, seed=0)["test"] != split_records(train, test=4, seed=1)["test"]
    with pytest.raises(ValueError, match="every one of the 2 training records is also a test record"):
        split_with_test(records[:2], records[:5])


def test_compare_tests_every_stage_on_the_given_file_and_rates_its_records(tiny_model, tmp_path, capsys):
    """Both files are CSVs, so their record ids (``portal:LINE``) are alike: what reads the run's test
    items back (rating-sheet) must read them from the test file."""
    rows = _bundled()
    data = _portal_csv(tmp_path / "2025.csv", rows[:30])
    later = _portal_csv(tmp_path / "2026-01.csv", rows[300:306] + [rows[5]])  # one message seen in training too
    out = tmp_path / "run"
    tiny = {k: v for k, v in TINY.items() if k != "test"}
    cfg = CompareConfig(task="portal", model=str(tiny_model), output=str(out), data=str(data), test_data=str(later),
                        n_resamples=100, overrides=tiny)
    report = run_compare(cfg)
    log = capsys.readouterr().out
    assert f"1 of 30 records of {data} are also in --test-data {later} (the same text): left out of training" in log
    tested = get_task("portal").read(str(later))
    split = json.loads((out / "split.json").read_text())
    assert split["test"] == [r.id for r in tested] and report["n_test"] == 7
    assert "portal:7" not in split["train"]  # rows[5], line 7 of 2025.csv
    for stage in ("base", "sft", "dpo"):
        answered = [json.loads(line)["id"] for line in (out / stage / "predictions.jsonl").read_text().splitlines()]
        assert answered == split["test"]
    md = (out / "report.md").read_text()
    assert f"7 test items (all of `{later}`, --test-data)" in md
    assert "The test set is `--test-data`'s, whatever the seed; the seed drew training's randomness once" in md

    assert main(["rating-sheet", "--from", str(out), "--format", "csv", "--output", str(tmp_path / "r")]) == 0
    sheet = (tmp_path / "r" / "for_raters").glob("*.csv")
    prompts = {row["prompt"] for path in sheet for row in csv.DictReader(open(path, encoding="utf-8-sig"))}
    assert prompts == {r.prompt for r in tested}  # not the training file's records of those ids

    # eval on the run's split file reads its test items from the test file, not from --data's ids alike
    ev = ["eval", "--task", "portal", "--model", str(tiny_model), "--split-file", str(out / "split.json"),
          "--output", str(tmp_path / "eval")]
    assert main([*ev, "--data", str(data)]) == 2
    assert f"its run tested on --test-data {later}, not on {data}: pass --data {later}" in capsys.readouterr().err
    assert main([*ev, "--data", str(later)]) == 0
    evaluated = [json.loads(line) for line in (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in evaluated] == split["test"]

    other = _portal_csv(tmp_path / "2026-02.csv", rows[310:316])
    with pytest.raises(ValueError, match=r"other settings \(test_data: "):
        run_compare(CompareConfig(**{**asdict(cfg), "test_data": str(other)}))


def test_a_test_file_is_refused_before_any_work_where_it_cannot_be_the_test_set(tiny_model, tmp_path, capsys):
    rows = _bundled()
    data = _portal_csv(tmp_path / "train.csv", rows[:30])
    later = _portal_csv(tmp_path / "later.csv", rows[300:306])
    base = ["compare", "--task", "portal", "--model", str(tiny_model), "--data", str(data)]
    out = tmp_path / "run"
    assert main([*base, "--test-data", str(later), "--set", "test=5", "--output", str(out)]) == 2
    assert "--set test=5: the test set is --test-data" in capsys.readouterr().err
    assert main([*base, "--test-data", str(tmp_path / "nope.csv"), "--output", str(out)]) == 2
    assert f"--test-data {tmp_path / 'nope.csv'}: no such file" in capsys.readouterr().err
    assert not out.exists()
    # a generic classifier reads its labels off --data: a label only the test file holds could never be answered
    notes = tmp_path / "notes.csv"
    notes.write_text("text,label\n" + "".join(f"note {i},{'urgent' if i % 2 else 'routine'}\n" for i in range(12)))
    new = tmp_path / "new.csv"
    new.write_text("text,label\nnote a,urgent\nnote b,asap\n")
    with pytest.raises(ValueError, match=r"--test-data .*new.csv: record 'new.csv:3': label 'asap' is none of the "
                                         r"labels the training data holds \(routine, urgent\)"):
        run_compare(CompareConfig(task="text_classification", model=str(tiny_model), output=str(out),
                                  data=str(notes), test_data=str(new), overrides={"max_train": 8}))
    assert not out.exists()


def test_every_seed_tests_on_the_given_file(tiny_model, tmp_path, capsys):
    rows = _bundled()
    data = _portal_csv(tmp_path / "train.csv", rows[:30])
    later = _portal_csv(tmp_path / "later.csv", rows[300:306])
    out = tmp_path / "seeds"
    assert main(["compare", "--task", "portal", "--model", str(tiny_model), "--data", str(data), "--test-data",
                 str(later), "--output", str(out), "--seeds", "0,1", "--n-resamples", "100",
                 *[f"--set={k}={v}" for k, v in TINY.items() if k != "test"]]) == 0
    splits = [json.loads((out / f"seed-{s}" / "split.json").read_text()) for s in (0, 1)]
    assert splits[0]["test"] == splits[1]["test"] == [r.id for r in get_task("portal").read(str(later))]
    assert splits[0]["train"] != splits[1]["train"]  # the seed still draws training's records and order
    assert (f"Every seed tests on `{later}` (--test-data) and draws its own training randomness"
            in (out / "seeds.md").read_text())
    pooled = tmp_path / "pooled"  # the runs pooled one by one say the same
    assert main(["pool-seeds", str(out / "seed-0"), str(out / "seed-1"), "--output", str(pooled)]) == 0
    assert f"Every seed tests on `{later}` (--test-data)" in (pooled / "seeds.md").read_text()


def _with_patients(rows: list[dict]) -> list[dict]:
    """``rows`` with an ``mrn``: message i is patient i // 3's (three messages each)."""
    return [{**row, "mrn": f"P{i // 3:03d}"} for i, row in enumerate(rows)]


def test_group_by_keeps_each_patients_records_in_one_split(tmp_path):
    rows = _with_patients(_bundled()[:60])
    rows[59]["message"] = rows[0]["message"]  # P019 repeats a message of P000's: the two patients are one group
    path = _portal_csv(tmp_path / "export.csv", rows, [*FIELDS, "mrn"])
    records = get_task("portal").read(str(path))
    assert count_groups(records) == 59 and count_groups(records, "mrn") == 19
    for seed in (0, 1, 2):
        splits = split_records(records, test=5, val=3, seed=seed, group_by="mrn")
        where = {}
        for part, recs in splits.items():
            for r in recs:
                assert where.setdefault(r.meta["row"]["mrn"], part) == part  # one split a patient
        assert sum(p == "test" for p in where.values()) in (5, 6)  # 5 groups: P000 and P019 are one
    with pytest.raises(ValueError, match=r"test \(10\) \+ val \(9\) leave no training data out of 19 groups \(records "
                                         r"with the same 'mrn', or the same text\): hold fewer out"):
        split_records(records, test=10, val=9, group_by="mrn")
    # no column, or an empty cell: the record could not be kept with its patient
    with pytest.raises(ValueError, match=r"group_by 'patient': record 'portal:2' has no such column \(have: message, "
                                         r"urgency, staff, mrn\)"):
        split_records(records, group_by="patient")
    rows[4]["mrn"] = " "
    blank = get_task("portal").read(str(_portal_csv(tmp_path / "blank.csv", rows, [*FIELDS, "mrn"])))
    with pytest.raises(ValueError, match="group_by 'mrn': record 'portal:6' has it empty; every record must name its "
                                         "group"):
        split_records(blank, group_by="mrn")
    # a given test set leaves its patients' other records out of training
    tested = [r for r in records if r.meta["row"]["mrn"] in ("P001", "P002")][:4]  # P001's three, one of P002's
    splits, dropped = split_with_test(records, tested, group_by="mrn")
    assert dropped == 6 and not {r.meta["row"]["mrn"] for r in splits["train"]} & {"P001", "P002"}


def test_compare_splits_by_patient_and_eval_draws_the_same_test_items(tiny_model, tmp_path, capsys):
    rows = _with_patients(_bundled()[:45])
    data = _portal_csv(tmp_path / "export.csv", rows, [*FIELDS, "mrn"])
    out = tmp_path / "run"
    tiny = {**TINY, "test": 3, "group_by": "mrn"}
    run_compare(CompareConfig(task="portal", model=str(tiny_model), output=str(out), data=str(data),
                              n_resamples=100, overrides=tiny))
    assert "group_by mrn: 45 records in 15 groups, each in one split" in capsys.readouterr().out
    split = json.loads((out / "split.json").read_text())
    by_id = {r.id: r.meta["row"]["mrn"] for r in get_task("portal").read(str(data))}
    tested = {by_id[i] for i in split["test"]}
    assert len(split["test"]) == 9 and len(tested) == 3  # three patients, all three messages of each
    assert not tested & {by_id[i] for i in split["train"]}
    assert main(["eval", "--task", "portal", "--model", str(tiny_model), "--data", str(data), "--test", "3",
                 "--group-by", "mrn", "--output", str(tmp_path / "eval")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in rows) == sorted(split["test"])
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["evaluated"]["group_by"] == "mrn"
    assert main(["compare", "--task", "portal", "--model", str(tiny_model), "--data", str(data), "--set",
                 "group_by=", "--output", str(tmp_path / "bad")]) == 2
    assert "group_by: a column of the data, such as a patient's id (got '')" in capsys.readouterr().err


def test_without_group_by_the_splits_are_those_earlier_runs_recorded():
    """compare refuses to resume a folder whose split.json differs: the bundled messages' splits
    (three seeds, the quick and full presets' sizes) are pinned to those made before group_by."""
    import hashlib

    records = get_task("portal").read()
    made = [{k: [r.id for r in v] for k, v in split_records(records, test=test, val=val, seed=seed,
                                                             max_train=most).items()}
            for seed in (0, 1, 2) for test, val, most in ((60, 0, 160), (0.2, 32, None))]
    assert hashlib.sha256(json.dumps(made).encode()).hexdigest() == ("42b7041f1f9fcbad22f7ad174c2ca2eb66a75b0b2b45752"
                                                                     "02a76306fc7886921")


def test_one_workbook_a_sheet_for_training_and_one_for_testing(tiny_model, tmp_path, capsys):
    """``--sheet`` names --data's sheet, ``--test-sheet`` the test file's (here the same workbook):
    the test set is the second sheet's rows, and rating-sheet reads them from it again."""
    from tests import _formats as formats

    rows = _bundled()
    cells = [[[r[k] for k in FIELDS] for r in part] for part in (rows[:30], rows[300:306])]
    book = formats.write_workbook(tmp_path / "portal.xlsx", {"2025": [FIELDS, *cells[0]],
                                                             "2026-01": [FIELDS, *cells[1]]})
    out = tmp_path / "run"
    argv = ["compare", "--task", "portal", "--model", str(tiny_model), "--data", str(book), "--sheet", "2025",
            "--test-data", str(book)]
    tiny = [f"--set={k}={v}" for k, v in TINY.items() if k != "test"]
    assert main([*argv, "--test-sheet", "2026-01", "--n-resamples", "100", "--output", str(out), *tiny]) == 0
    tested = get_task("portal", sheet="2026-01").read(str(book))
    assert json.loads((out / "split.json").read_text())["test"] == [r.id for r in tested]
    assert main(["rating-sheet", "--from", str(out), "--format", "csv", "--output", str(tmp_path / "r")]) == 0
    sheet = tmp_path / "r" / "for_raters" / "ratings_sheet.csv"
    assert {row["prompt"] for row in csv.DictReader(open(sheet, encoding="utf-8-sig"))} == {r.prompt for r in tested}
    # without --test-sheet the test file is read as a workbook of its own: its two sheets of data, one to be named
    capsys.readouterr()
    assert main([*argv, "--output", str(tmp_path / "two")]) == 2
    err = capsys.readouterr().err
    assert (f"{book}: 2 sheets hold data ('2025', '2026-01'); name the one to read (--test-sheet NAME), so that the "
            "test set is the sheet you mean") in err
    assert not (tmp_path / "two").exists()
    assert main(["compare", "--task", "portal", "--model", str(tiny_model), "--test-sheet", "x",
                 "--output", str(tmp_path / "three")]) == 2
    assert "--test-sheet x: the sheet of --test-data, which is not given" in capsys.readouterr().err


def test_check_data_sets_a_test_file_against_the_training_data_as_compare_will(tiny_model, tmp_path, capsys):
    """``check-data --task --test-data``: both files checked, then the training records compare
    leaves out (the same text, with ``--group-by`` the same patient), the test labels no training
    record holds (compare refuses them: exit 1) and each label's share in both."""
    fields = ["text", "label", "mrn"]
    train = _portal_csv(tmp_path / "2025.csv", [
        {"text": "chest pain at rest", "label": "cardiac", "mrn": "1"},
        {"text": "short of breath on stairs", "label": "cardiac", "mrn": "2"},
        {"text": "itchy rash on the arm", "label": "skin", "mrn": "3"},
        {"text": "a mole changed colour", "label": "skin", "mrn": "1"}], fields)
    rows = [{"text": "palpitations at night", "label": "cardiac", "mrn": "1"},
            {"text": "itchy rash on the arm", "label": "skin", "mrn": "6"},
            {"text": "a red scaly patch", "label": "skin", "mrn": "7"},
            {"text": "swollen ankle", "label": "cardiac", "mrn": "8"}]
    test = _portal_csv(tmp_path / "2026.csv", rows, fields)
    argv = ["check-data", "--task", "text_classification", "--model", str(tiny_model), "--data", str(train),
            "--test-data", str(test)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"{test}: text_classification records, as compare's SFT examples; 4 of 4 records kept" in out
    assert ("  1 of 4 training records are also test records (the same text; the first: 2025.csv:4): compare "
            "leaves them out of training") in out
    assert ("  label, each label's share of the test records (of the training records): 'cardiac' 50% (50%), "
            "'skin' 50% (50%)") in out
    # the same as compare's split: the same text, and with group_by the same patient too (mrn 1: 2025.csv:2, :5)
    records, tested = get_task("text_classification").read(str(train)), get_task("text_classification").read(str(test))
    assert split_with_test(records, tested)[1] == 1 and split_with_test(records, tested, group_by="mrn")[1] == 3
    assert main([*argv, "--group-by", "mrn"]) == 0
    out = capsys.readouterr().out
    assert "  group_by mrn: 4 records in 3 groups (the same text or the same value), each in one split" in out
    assert "  group_by mrn: 4 records in 4 groups" in out
    assert "  3 of 4 training records are also test records (the same text or mrn; the first: 2025.csv:2)" in out
    assert main([*argv, "--group-by", "ward"]) == 1  # compare refuses records of no group
    out = capsys.readouterr().out
    assert "  group_by 'ward': record '2025.csv:2' has no such column (have: text, label, mrn)" in out
    assert "  group_by 'ward': record '2026.csv:2' has no such column (have: text, label, mrn)" in out
    assert "1 of 4 training records are also test records (the same text;" in out  # the text's overlap still said
    # a label the training data does not hold: compare refuses the file; the check says which and exits 1
    _portal_csv(test, [*rows, {"text": "a broken wrist", "label": "bones", "mrn": "9"}], fields)
    assert main(argv) == 1
    out = capsys.readouterr().out
    assert ("  label: 1 test record of a label no training record holds ('bones' 1; the first: 2026.csv:6): compare "
            "refuses the test file (the prompt offers only cardiac, skin)") in out
    assert "'cardiac' 40% (50%), 'skin' 40% (50%), 'bones' 20% (0%)" in out
    with pytest.raises(ValueError, match="none of the labels the training data holds"):  # as compare does
        run_compare(CompareConfig(task="text_classification", model=str(tiny_model), data=str(train),
                                  test_data=str(test), output=str(tmp_path / "run")))
    for flags, error in ((["--test-sheet", "x"], "--test-sheet x: the sheet of --test-data, which is not given"),
                         (["--test-data", str(tmp_path / "no.csv")],
                          f"--test-data {tmp_path / 'no.csv'}: no such file")):
        assert main(["check-data", "--task", "portal", "--model", str(tiny_model), *flags]) == 2
        assert error in capsys.readouterr().err
    assert main(["check-data", "--model", str(tiny_model), "--data", str(train), "--group-by", "mrn"]) == 2
    assert "--group-by is for a task's data, as compare reads it (--task)" in capsys.readouterr().err
