"""``compare --test-data``: a given file of labelled records is the test set, all of it (a later
period's, another site's), and ``--data`` trains alone, less the records of the same text."""
import csv
import json
from dataclasses import asdict
from pathlib import Path

import pytest

from prefopt.cli import main
from prefopt.evaluate.compare import CompareConfig, run_compare
from prefopt.tasks import PORTAL_DATA, get_task, split_records, split_with_test
from tests.tasks.test_compare_smoke import TINY

FIELDS = ["message", "urgency", "staff"]


def _portal_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
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
