"""End to end for every task family on a tiny random model: load → SFT → DPO → eval → report.

The five study families read a handful of real records from ``../shared/data`` (or
``$PREFOPT_SHARED_DATA``) and skip cleanly without it, and always run on synthetic rows in the
same formats (tests/_formats.py); the bundled portal set always runs.
"""
import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from prefopt.data.readers import read_rows
from prefopt.evaluate.compare import CompareConfig, run_compare
from prefopt.evaluate.compare_config import PRESETS
from prefopt.model.digest import weights_sha256
from prefopt.tasks import PORTAL_DATA, get_task
from tests import _formats as formats
from tests._tiny import build_hf_model
from tests.tasks.conftest import StopAtSFT

SHARED = Path(os.environ.get("PREFOPT_SHARED_DATA", Path(__file__).resolve().parents[2].parent / "shared" / "data"))
TINY = {"max_train": 8, "test": 4, "sft_steps": 2, "dpo_steps": 2, "batch_size": 2, "max_length": 256,
        "eval_batch_size": 8}


def _head(src: Path, dst: Path, n: int, encoding="utf-8") -> Path:
    lines = src.read_text(encoding=encoding).splitlines(keepends=True)
    dst.write_text("".join(lines[:n]), encoding=encoding)
    return dst


def _synthetic(family: str, tmp: Path) -> tuple[str, Path, dict]:
    """The family's task on made-up rows in its real file's format (tests/_formats.py)."""
    if family == "text classification":
        return "medical_abstracts", formats.write_abstracts(tmp / "medical_tc.csv", 14), {}
    if family == "numeric classification":
        return "uci_heart", formats.write_uci(tmp / "uci", 16), {}
    if family == "clinical reasoning":
        return "medqa", formats.write_jsonl(tmp / "medqa.jsonl", formats.medqa_rows(14)), {}
    if family == "summarization":
        return "meqsum", formats.write_jsonl(tmp / "meqsum.jsonl", formats.meqsum_rows(14)), {}
    if family == "triage":
        return "ktas", formats.write_ktas(tmp / "data.csv", 15), {"disposition": True}
    raise ValueError(family)


def _subset(family: str, tmp: Path) -> tuple[str, Path, dict]:
    """The first rows of the family's real dataset (skipped where ../shared/data is absent)."""
    if not SHARED.is_dir():
        pytest.skip(f"shared datasets not found at {SHARED}")
    if family == "text classification":
        import csv

        with open(SHARED / "text_classification/medical_abstracts/medical_tc.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        picked = [next(r for r in rows if r["condition_label"] == c) for c in "12345"] + rows[:9]
        out = tmp / "abstracts.csv"
        with open(out, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["condition_label", "medical_abstract"])
            w.writeheader()
            w.writerows({**r, "medical_abstract": r["medical_abstract"][:400]} for r in picked)
        return "medical_abstracts", out, {}
    if family == "numeric classification":
        d = tmp / "uci"
        d.mkdir()
        _head(SHARED / "numeric_classification/uci_heart_disease/processed.cleveland.data",
              d / "processed.cleveland.data", 8)
        _head(SHARED / "numeric_classification/uci_heart_disease/processed.hungarian.data",
              d / "processed.hungarian.data", 8, "latin-1")  # has '?' missing values
        return "uci_heart", d, {}
    if family == "clinical reasoning":
        return "medqa", _head(SHARED / "clinical_reasoning/medqa/medqa_usmle_4options.jsonl", tmp / "medqa.jsonl", 14), {}
    if family == "summarization":
        return "meqsum", _head(SHARED / "summarization/meqsum/meqsum.jsonl", tmp / "meqsum.jsonl", 14), {}
    if family == "triage":
        return "ktas", _head(SHARED / "triage/ktas/data.csv", tmp / "ktas.csv", 15, "latin-1"), {"disposition": True}
    raise ValueError(family)


def _check(out: Path) -> dict:
    report = json.loads((out / "report.json").read_text())
    n_test = len(json.loads((out / "split.json").read_text())["test"])
    assert n_test >= 4 and report["n_test"] == n_test
    assert report["model_sha256"] == weights_sha256(report["model"]) is not None  # which base weights the run used
    assert set(report["stages"]) == {"base", "sft", "dpo"}
    assert set(report["comparisons"]) == {"base->sft", "sft->dpo", "base->dpo"}
    for s in ("base", "sft", "dpo"):
        rows = [json.loads(line) for line in (out / s / "predictions.jsonl").read_text().splitlines()]
        assert len(rows) == n_test
        metrics = json.loads((out / s / "metrics.json").read_text())
        assert metrics["unfinished"] == pytest.approx(1 - sum(r["ended"] for r in rows) / n_test)
        # every task whose answers are labels is scored for confidence (tests/tasks/test_compare_confidence.py)
        assert ("confidence" in metrics) == all("likeliest" in r for r in rows) == (report["task"] != "meqsum")
    for s in ("sft", "dpo"):
        assert (out / s / "train" / "final" / "adapter_model.safetensors").is_file()
    text = (out / "report.md").read_text()
    assert "SFT vs base:" in text and "DPO vs SFT:" in text
    assert "trained on a" not in text  # (float32: the default base; test_compare_trains_both_stages_on_the_base...)
    assert ("## Confidence" in text) == (report["task"] != "meqsum")
    test_line = "Wilcoxon signed-rank on per-item rougeL" if report["task"] == "meqsum" else "Exact McNemar"
    assert test_line in text
    # free text: the report points at the clinicians' blinded ratings of this run (tests/evaluate/test_ratings.py)
    assert (f"`prefopt rating-sheet --from {out}` writes them a blinded sheet" in text) == (report["task"] == "meqsum")
    assert (out / "metric_by_stage.png").is_file() or "Plots skipped" in text
    if (out / "metric_by_stage.png").is_file():  # each training stage's curves, linked from the report
        assert all(f"![{s}/train/training_curves.png]({s}/train/training_curves.png)" in text for s in ("sft", "dpo"))
        assert all((out / s / "train" / "training_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
                   for s in ("sft", "dpo"))
    summary = json.loads((out / "dpo" / "train" / "train_summary.json").read_text())
    assert summary["reference_forwards"] == 0  # DPO used the reference cache
    _use_the_models(out, report)
    return report


def _use_the_models(out: Path, report: dict) -> None:
    """The report's "The models" commands run as written: eval on the run's own data (for
    NEW_FILE), the SFT adapter's eval tested against it where SFT+DPO is another model, predict,
    generate, merge, export-gguf and reviewed-pairs on predict's table."""
    import shlex

    from prefopt.cli import main
    from prefopt.evaluate.cli import key_values

    text = (out / "report.md").read_text()
    assert f"- SFT+DPO: `{report['weights']['dpo']}`" in text and report["weights"]["sft"] == "sft/train/final"
    block = text.split("## The models", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [shlex.split(line) for line in block.splitlines() if line and not line.startswith("#")]
    paired = report["weights"]["dpo"] != report["weights"]["sft"]  # an SFT evaluation to test SFT+DPO's against
    assert [c[1] for c in commands] == ["eval"] * (1 + paired) + ["predict", "generate", "merge", "export-gguf",
                                                                  "reviewed-pairs"]
    by_name = {c[1]: c for c in commands}
    assert all(c[c.index("--adapter") + 1] == str(out / report["weights"]["dpo"])
               for c in [commands[0], *(by_name[n] for n in ("predict", "generate", "merge", "export-gguf"))])
    config = json.loads((out / "compare_config.json").read_text())
    options = [a for before, a in zip(commands[0], commands[0][1:]) if before == "--task-option"]
    assert key_values(options) == config["task_options"]  # the task as the run made it (ktas: disposition)
    for c in commands[:1 + paired]:  # NEW_FILE: the run's own data; the same 3 items each time
        assert main([config["data"] or str(PORTAL_DATA) if a == "NEW_FILE" else a for a in c[1:]] + ["--limit", "3"]) == 0
    assert len((out / "new-eval" / "predictions.jsonl").read_text().splitlines()) == 3
    if paired:
        test = json.loads((out / "new-eval-sft" / "paired.json").read_text())
        assert test["against"] == str(out / "new-eval") and test["n"] == 3 and ("mcnemar" in test) != (
            "item_wilcoxon" in test) and test["verdict"]
    # NEW_RECORDS: the run's labelled data (the labels go unread); of the bundled 360 messages the first 5
    data = config["data"] or str(_head(PORTAL_DATA, out.parent / "new_records.jsonl", 5))
    assert main([data if a == "NEW_RECORDS" else a for a in by_name["predict"][1:]]) == 0
    n = len(get_task(config["task"], **config["task_options"]).read(data))
    written = json.loads((out / "predictions" / "predict.json").read_text())
    assert written["n"] == n and written["adapter"] == str(out / report["weights"]["dpo"])
    generate = [a if a != "..." else "Chest pain since this morning." for a in by_name["generate"][1:]]
    assert main(generate + ["--max-new-tokens", "3"]) == 0
    assert main(by_name["merge"][1:]) == 0 and (out / "merged" / "config.json").is_file()
    assert main(by_name["export-gguf"][1:]) == 0 and (out / "sft-dpo.gguf").stat().st_size > 0
    # REVIEWED: predict's table, which kept the input's labels (as a person's, for every row)
    table = next((out / "predictions").glob("predictions.*"))
    assert main([str(table) if a == "REVIEWED" else a for a in by_name["reviewed-pairs"][1:]]) == 0
    made = json.loads((out / "reviewed" / "reviewed_pairs.json").read_text())
    assert made["labelled"] == n and made["pairs"] == made["wrong"] - made["empty_answers"]


@pytest.mark.slow
@pytest.mark.parametrize("source", ["real", "synthetic"])
@pytest.mark.parametrize("family", ["text classification", "numeric classification", "clinical reasoning",
                                    "summarization", "triage"])
def test_every_family_runs_end_to_end(family, source, tiny_model, tmp_path):
    """Each task family through base -> SFT -> DPO and the report: on the first rows of its real
    dataset where ../shared/data is present, and always on synthetic rows in the same format."""
    task, data, options = (_subset if source == "real" else _synthetic)(family, tmp_path)
    out = tmp_path / "run"
    run_compare(CompareConfig(task=task, model=str(tiny_model), output=str(out), data=str(data),
                              task_options=options, n_resamples=200, overrides=TINY))
    report = _check(out)
    from prefopt.cli import main

    assert main(["rating-sheet", "--from", str(out), "--format", "csv"]) == 0  # a real run's answers, to rate
    sheet = [r for _, r in read_rows(out / "ratings" / "for_raters" / "ratings_sheet.csv")]
    assert len({r["item"] for r in sheet}) == report["n_test"] and all(r["answer"] is not None for r in sheet)


@pytest.mark.slow
def test_portal_compare_resumes_and_mines_model_errors(tiny_model, tmp_path, capsys, monkeypatch):
    import prefopt.pretrained

    out = tmp_path / "run"
    cfg = CompareConfig(task="portal", model=str(tiny_model), output=str(out), strategy="model_errors",
                        n_resamples=200, overrides=TINY)
    loads, load = [], prefopt.pretrained.load_model
    monkeypatch.setattr(prefopt.pretrained, "load_model",
                        lambda *a, **kw: loads.append(kw.get("adapter")) or load(*a, **kw))
    run_compare(cfg)
    sft, dpo = out / "sft" / "train" / "final", out / "dpo" / "train" / "final"
    # base; SFT, evaluated then mined for errors (one load); SFT+DPO, one adapter that holds both
    assert loads == [None, sft, dpo]
    report = _check(out)
    pairs_report = json.loads((out / "data" / "pairs_report.json").read_text())
    assert pairs_report["strategy"] == "model_errors" and pairs_report["prompts"] == 8
    assert pairs_report["model_errors"] + pairs_report["fallback_wrong_label"] == pairs_report["pairs"]

    # interrupt after SFT: the DPO stage and report are gone; a rerun reuses base and SFT
    shutil.rmtree(out / "dpo")
    (out / "report.json").unlink()
    (out / "sft" / "train" / "training_curves.png").unlink()  # as a run from before the curves
    capsys.readouterr()
    again = run_compare(cfg)
    log = capsys.readouterr().out
    assert "base: reusing" in log and "sft: reusing" in log and "dpo: reusing" not in log
    assert (out / "sft" / "train" / "training_curves.png").is_file()  # drawn for the report from its metrics
    assert "sft/train/training_curves.png" in again["plots"]
    assert again["stages"]["base"] == report["stages"]["base"]
    assert again["stages"]["sft"]["primary"] == report["stages"]["sft"]["primary"]

    # another loss (or seed, or any stage setting) must not reuse this run's stages
    # decoding too: the SFT model's answers to the training prompts became the pairs
    for change in ({"loss": "rpo"}, {"seed": 1}, {"overrides": {**TINY, "dpo_lr": 1e-3}},
                   {"overrides": {**TINY, "no_repeat_ngram_size": 3}}):
        other = CompareConfig(**{**asdict(cfg), **change})
        with pytest.raises(ValueError, match="other settings") as err:
            run_compare(other)
        assert next(iter(change)) in str(err.value)
        # what may change instead; not decoding here, where the SFT model's answers became the pairs
        assert str(err.value).endswith("(A finished run may be rerun with another dpo_max_p, confidence, "
                                       "gradient_checkpointing, gradient_checkpointing_layers, pack, share_start, "
                                       "eval_batch_size, --n-resamples, --device or --eval-dtype: they train "
                                       "nothing.)")
    assert json.loads((out / "compare_config.json").read_text())["loss"] == "sigmoid"  # untouched
    run_compare(CompareConfig(**{**asdict(cfg), "n_resamples": 100}))  # report-only: allowed
    # the data behind the same settings changed: the split check still refuses
    (out / "split.json").write_text(json.dumps({"train": [], "test": ["x"]}))
    with pytest.raises(ValueError, match="different split"):
        run_compare(cfg)


def test_eval_cli_writes_predictions_and_metrics(tiny_model, tmp_path, capsys):
    from prefopt.cli import main

    out = tmp_path / "eval"
    assert main(["eval", "--task", "portal", "--model", str(tiny_model), "--output", str(out), "--limit", "5",
                 "--batch-size", "4"]) == 0
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(rows) == 5 and metrics["n"] == 5 and 0 <= metrics["macro_f1"] <= 1
    assert {"id", "target", "output", "prediction", "correct"} <= set(rows[0])
    assert len({r["target"] for r in rows}) > 1  # a sample of the split, not its first class
    assert "triage" in metrics["urgency"]
    assert main(["eval", "--task", "portal", "--model", str(tiny_model), "--output", str(out),
                 "--task-option", "nope=1"]) == 2
    assert "task 'portal' has no option 'nope'" in capsys.readouterr().err
    # a second evaluation into the same folder keeps the first one
    first = [(out / f).read_text() for f in ("predictions.jsonl", "metrics.json")]
    assert main(["eval", "--task", "portal", "--model", str(tiny_model), "--output", str(out), "--limit", "3",
                 "--batch-size", "4"]) == 0
    assert f"{out} held an evaluation; it is kept in {out / 'earlier' / '1'}" in capsys.readouterr().out
    assert [(out / "earlier" / "1" / f).read_text() for f in ("predictions.jsonl", "metrics.json")] == first
    assert json.loads((out / "metrics.json").read_text())["n"] == 3


def test_eval_reads_a_spreadsheet_export_given_its_options_on_the_command_line(tiny_model, tmp_path, capsys):
    """A German Excel export (';' between cells, cp1252, a trailing row of empty cells) through
    the command line: without its encoding it stops at the first bad byte and says which option
    to pass; with it (and the labels as a comma list) every row is evaluated."""
    from prefopt.cli import main

    data = tmp_path / "export.csv"
    rows = ["Notiz;Dringlichkeit"] + [f'"Rezept für Ramipril; {i} Packungen";Routine' if i % 2 else
                                      f"Brustschmerz seit {i} Std., Übelkeit;dringend" for i in range(6)] + [";"]
    data.write_bytes("\r\n".join(rows).encode("cp1252") + b"\r\n")
    args = ["eval", "--task", "text_classification", "--model", str(tiny_model), "--data", str(data), "--split", "all",
            "--task-option", "text_column=Notiz", "--task-option", "label_column=Dringlichkeit",
            "--task-option", "labels=dringend,routine", "--max-new-tokens", "4"]
    assert main(args + ["--output", str(tmp_path / "no")]) == 2
    err = capsys.readouterr().err
    assert "export.csv:2: not utf-8 text (byte 0xdc at column 27)" in err and "--task-option encoding=cp1252" in err
    assert not (tmp_path / "no").exists()
    assert main(args + ["--task-option", "encoding=cp1252", "--output", str(tmp_path / "eval")]) == 0
    preds = [json.loads(line) for line in (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in preds) == [f"export.csv:{i}" for i in range(2, 8)]
    assert sorted(r["target"] for r in preds) == ["dringend"] * 3 + ["routine"] * 3


def test_eval_and_predict_read_the_sheet_named_by_sheet_as_by_the_task_option(tiny_model, tmp_path, capsys):
    """``--sheet NAME`` on eval, predict and compare is the task option ``sheet``: the workbook of
    two data sheets is refused without it and read by it; a task of its own format, and a
    ``--sheet`` that the task option contradicts, are refused before any model loads."""
    from prefopt.cli import main

    formats.write_workbook(tmp_path / "notes.xlsx", {
        "train": [["note", "urgency"], ["Chest pain", "urgent"], ["Refill", "routine"]],
        "Test set": [["note", "urgency"], ["Crushing chest pain", "urgent"], ["Repeat prescription", "routine"],
                     ["Fainted twice today", "urgent"]]})
    args = ["--task", "text_classification", "--model", str(tiny_model), "--data", str(tmp_path / "notes.xlsx"),
            "--task-option", "text_column=note", "--task-option", "label_column=urgency"]
    assert main(["eval", *args, "--split", "all", "--output", str(tmp_path / "no")]) == 2
    assert "2 sheets hold data ('train', 'Test set'); name the one to read (--sheet NAME)" in capsys.readouterr().err
    assert main(["eval", *args, "--split", "all", "--max-new-tokens", "4", "--sheet", "test set",
                 "--output", str(tmp_path / "eval")]) == 0
    preds = [json.loads(line) for line in (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert sorted(r["target"] for r in preds) == ["routine", "urgent", "urgent"]  # the test sheet's three rows
    evaluated = json.loads((tmp_path / "eval" / "metrics.json").read_text())["evaluated"]
    assert evaluated == {"task": "text_classification", "task_options": {"text_column": "note", "label_column":
                         "urgency", "sheet": "test set"}, "data": str((tmp_path / "notes.xlsx").resolve()),
                         "split": "all", "limit": None, "seed": 0, "model": str(Path(tiny_model).resolve()),
                         "model_sha256": weights_sha256(tiny_model), "adapter": None, "adapter_sha256": None}
    assert main(["predict", *args, "--task-option", "labels=urgent,routine", "--max-new-tokens", "4",
                 "--sheet", "train", "--no-confidence", "--output", str(tmp_path / "pred")]) == 0
    rows = [row for _, row in read_rows(tmp_path / "pred" / "predictions.xlsx")]
    assert [r["note"] for r in rows] == ["Chest pain", "Refill"] and all("predicted_label" in r for r in rows)
    for argv, said in [
        (["eval", "--task", "medqa", "--model", str(tiny_model), "--sheet", "train"],
         "--sheet: task 'medqa' reads its own data format, not a workbook's sheet"),
        (["compare", *args, "--sheet", "train", "--task-option", "sheet=Test set"],
         "--sheet 'train' and --task-option sheet='Test set' name different sheets: give one")]:
        assert main([*argv, "--output", str(tmp_path / "refused")]) == 2
        assert said in capsys.readouterr().err
    assert not (tmp_path / "refused").exists()


def test_eval_against_an_earlier_evaluation_tests_the_pair_on_the_same_items(tiny_model, tmp_path, capsys):
    """``--against DIR``: this evaluation against DIR's, item by item, into paired.json; refused
    before any model loads where DIR lacks an item or holds another reference for it."""
    from prefopt.cli import main

    base = ["eval", "--task", "portal", "--model", str(tiny_model), "--limit", "5", "--batch-size", "8",
            "--n-resamples", "300"]
    first, second = tmp_path / "first", tmp_path / "second"
    assert main(base + ["--output", str(first)]) == 0
    assert main(base + ["--output", str(second), "--against", str(first)]) == 0
    out = capsys.readouterr().out
    paired = json.loads((second / "paired.json").read_text())  # the same model twice: nothing changes
    assert paired["against"] == str(first) and paired["n"] == 5 and paired["primary"]["delta"] == 0
    assert paired["mcnemar"]["a_only"] == paired["mcnemar"]["b_only"] == 0 and paired["primary"]["n_resamples"] == 300
    assert f"prefopt eval: No difference: {second} and {first} score the same on every resample" in out
    assert f"Exact McNemar on per-item correctness: {second} vs {first}: 0 items newly right, 0 newly wrong" in out

    for args, error in ((["--limit", "9"], "of the 9 items are not in that evaluation (first: "),
                        (["--against", str(tmp_path / "none")], "no evaluation there (predictions.jsonl and metrics")):
        argv = base + ["--output", str(tmp_path / "refused"), "--against", str(first)] + args
        assert main(argv) == 2
        assert error in capsys.readouterr().err and not (tmp_path / "refused").exists()
    rows = [json.loads(line) for line in (first / "predictions.jsonl").read_text().splitlines()]
    rows[2]["target"] = "Urgency: routine\nStaff: nobody"
    (first / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(base + ["--output", str(tmp_path / "refused"), "--against", str(first)]) == 2
    assert f"item {rows[2]['id']!r} has another reference there: it evaluated other data" in capsys.readouterr().err
    assert main(base + ["--output", str(second)]) == 0  # a new evaluation there: the old test moves with its answers
    assert not (second / "paired.json").exists() and (second / "earlier" / "1" / "paired.json").is_file()


def test_eval_answers_tests_two_finished_evaluations_without_a_model(tiny_model, tmp_path, capsys, monkeypatch):
    """``--answers DIR --against OTHER``: DIR's answers scored again, with every row's fields, and
    the paired test the answering run gives, with no model loaded; refusals name the folder."""
    import prefopt.pretrained
    from prefopt.cli import main

    base = ["eval", "--task", "portal", "--limit", "6", "--batch-size", "8", "--n-resamples", "300"]
    a, b, answered = tmp_path / "a", tmp_path / "b", tmp_path / "answered"
    assert main(base + ["--model", str(tiny_model), "--output", str(a), "--confidence"]) == 0
    assert main(base + ["--model", str(tiny_model), "--output", str(b), "--confidence", "--max-new-tokens", "3"]) == 0
    assert main(base + ["--model", str(tiny_model), "--output", str(answered), "--confidence", "--max-new-tokens", "3",
                        "--against", str(a)]) == 0
    capsys.readouterr()

    def no_model(*args, **kw):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(prefopt.pretrained, "load_model", no_model)
    rescored = tmp_path / "rescored"
    assert main(base + ["--answers", str(b), "--against", str(a), "--output", str(rescored)]) == 0
    out = capsys.readouterr().out
    want = json.loads((answered / "paired.json").read_text())
    got = json.loads((rescored / "paired.json").read_text())
    assert {k: v for k, v in got.items() if k != "verdict"} == {k: v for k, v in want.items() if k != "verdict"}
    assert "confidence_auroc" in got and f"{b} vs {a}" in out
    assert (rescored / "predictions.jsonl").read_text() == (b / "predictions.jsonl").read_text()
    metrics = json.loads((rescored / "metrics.json").read_text())
    assert metrics["answers_from"] == str(b) and metrics["max_new_tokens"] == 3
    assert metrics["macro_f1"] == json.loads((b / "metrics.json").read_text())["macro_f1"]
    assert metrics["evaluated"] == {"task": "portal", "task_options": {}, "data": "the task's bundled data",
                                    "split": "test", "test": 0.2, "limit": 6, "seed": 0,
                                    "model": str(Path(tiny_model).resolve()),
                                    "model_sha256": weights_sha256(tiny_model), "adapter": None,
                                    "adapter_sha256": None}  # b's model
    for args, error in ((["--answers", str(b), "--output", str(b)], "is the --answers folder"),
                        (["--answers", str(b), "--output", str(tmp_path / "r"), "--limit", "9"],
                         f"--answers {b}: 3 of the 9 items are not in that evaluation"),
                        (["--output", str(tmp_path / "r")], "--model is needed (or --answers DIR"),
                        (["--answers", str(b), "--output", str(tmp_path / "r"), "--model", str(tiny_model),
                          "--confidence"], "so --model, --confidence would do nothing; leave them out")):
        assert main(base + args) == 2
        assert error in capsys.readouterr().err


def test_eval_scores_a_reasoning_models_answers_after_its_reasoning(tiny_model, tmp_path, capsys, monkeypatch):
    """Outputs that think first (``<think>``, naming other labels) are scored on what follows the
    reasoning; with a generation prompt that opened the block (DeepSeek-R1's), an output cut
    before closing it names nothing, and eval says so; ``--answers`` rescoring keeps both."""
    from prefopt.cli import main

    base = ["eval", "--task", "portal", "--limit", "4", "--batch-size", "8", "--n-resamples", "200"]
    first = tmp_path / "first"
    assert main(base + ["--model", str(tiny_model), "--output", str(first)]) == 0
    rows = [json.loads(line) for line in (first / "predictions.jsonl").read_text().splitlines()]
    thought = "<think>\nUrgency: emergency? Staff: physician? No.\n</think>\n\n"
    for i, row in enumerate(rows):  # two answers after the reasoning, two cut inside it
        row["output"] = thought + row["target"] if i < 2 else "Urgency: emergency? Staff: physician? Let me"
    (first / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    capsys.readouterr()
    assert main(base + ["--answers", str(first), "--output", str(tmp_path / "a")]) == 0
    got = [json.loads(line) for line in (tmp_path / "a" / "predictions.jsonl").read_text().splitlines()]
    assert [g["correct"] for g in got[:2]] == [True, True]  # not "emergency"/"physician" from the thinking
    assert json.loads((tmp_path / "a" / "metrics.json").read_text())["reasoning_unfinished"] == 0
    metrics = json.loads((first / "metrics.json").read_text())
    (first / "metrics.json").write_text(json.dumps({**metrics, "reasoning_opened": True}))
    assert main(base + ["--answers", str(first), "--output", str(tmp_path / "b")]) == 0
    got = [json.loads(line) for line in (tmp_path / "b" / "predictions.jsonl").read_text().splitlines()]
    assert [g["correct"] for g in got[:2]] == [True, True]
    assert [g["prediction"] for g in got[2:]] == [{"urgency": None, "staff": None}] * 2
    assert json.loads((tmp_path / "b" / "metrics.json").read_text())["reasoning_unfinished"] == 0.5

    monkeypatch.setattr("prefopt.evaluate.runner.reasoning_opened", lambda *a: True)  # as DeepSeek-R1's template
    assert main(base + ["--model", str(tiny_model), "--output", str(tmp_path / "c"), "--max-new-tokens", "4"]) == 0
    out = capsys.readouterr().out  # the tiny model never closes a block: every answer is still reasoning
    assert "prefopt eval: 100% of the answers were still reasoning when the 4-token cap stopped them" in out
    assert "raise --max-new-tokens N" in out


def test_eval_on_a_compare_runs_split_file_scores_exactly_its_test_items(tiny_model, tmp_path, capsys):
    from prefopt.cli import main
    from prefopt.tasks import get_task

    ids = [r.id for r in get_task("portal").read()]
    chosen = [ids[7], ids[2], ids[11]]
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": ids[20:], "test": chosen}))
    out = tmp_path / "eval"
    assert main(["eval", "--task", "portal", "--model", str(tiny_model), "--output", str(out),
                 "--split-file", str(split)]) == 0
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == chosen
    split.write_text(json.dumps({"test": [ids[0], "portal:nope"]}))
    assert main(["eval", "--task", "portal", "--model", str(tiny_model), "--output", str(out),
                 "--split-file", str(split)]) == 2
    assert "1 of 2 test ids are not in the data (first: 'portal:nope')" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["eval", "compare"])
def test_a_task_without_bundled_data_asks_for_data_and_claims_no_folder(command, tiny_model, tmp_path, capsys):
    from prefopt.cli import main

    out = tmp_path / "run"
    assert main([command, "--task", "medqa", "--model", str(tiny_model), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "task 'medqa' ships no data: pass --data" in err and "Traceback" not in err
    assert not out.exists()  # a rerun with --data is not refused as "other settings"


@pytest.mark.parametrize("command", ["eval", "compare"])
def test_a_bad_row_stops_eval_and_compare_pointing_at_the_check_that_lists_every_one(command, tiny_model, tmp_path,
                                                                                     capsys):
    from prefopt.cli import main

    rows = [json.loads(x) for x in PORTAL_DATA.read_text().splitlines()[:12]]
    rows[4]["urgency"], rows[7]["message"] = "whenever", " "
    data = tmp_path / "portal.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    assert main([command, "--task", "portal", "--model", str(tiny_model), "--data", str(data), "--output", str(out)]) == 2
    assert (f"prefopt {command}: error: {data}:5: field 'urgency': 'whenever' is not one of the labels (emergency, "
            "urgent, routine); --task-option urgency_map=\"whenever=LABEL\" reads a word of your file's as a label "
            "(prefopt check-data --task portal lists every bad row)") in capsys.readouterr().err
    assert not out.exists()
    assert main(["check-data", "--task", "portal", "--model", str(tiny_model), "--data", str(data)]) == 1
    bad = [x for x in capsys.readouterr().out.splitlines() if x.startswith("  bad: ")]
    assert [x.split(": field ")[0] for x in bad] == [f"  bad: {data}:5", f"  bad: {data}:8"]


@pytest.mark.parametrize("command", ["eval", "compare", "compare --judge"])
def test_a_model_without_a_chat_template_is_refused_before_any_work(command, tiny_model, tmp_path, capsys):
    """A base model's tokenizer has no chat template: eval crashed at the first prompt, and compare
    after claiming its folder, with "this tokenizer has no chat template" and a traceback."""
    from prefopt.cli import main

    base = tmp_path / "base"
    shutil.copytree(tiny_model, base)
    cfg = json.loads((base / "tokenizer_config.json").read_text())
    (base / "tokenizer_config.json").write_text(json.dumps({**cfg, "chat_template": None}))
    out = tmp_path / "run"
    name, *judge = command.split()
    model, judge = (tiny_model, [*judge, str(base)]) if judge else (base, [])
    assert main([name, "--task", "portal", "--model", str(model), "--output", str(out), *judge]) == 2
    err = capsys.readouterr().err
    assert (f"prefopt {name}: error: {base}: its tokenizer has no chat template (no 'chat_template' in "
            "tokenizer_config.json, no chat_template.jinja or .json beside it), and the tasks' prompts are chat messages; use "
            "an instruct (chat) model, or copy the chat_template.jinja of its instruct version into its folder") in err
    assert not out.exists()


def test_a_chat_template_file_in_the_folder_is_what_the_refusal_says_it_is(tiny_model, tmp_path):
    """The refusal above suggests adding chat_template.jinja to the base model's folder: done, the
    tokenizer reads it and the check passes, and prompts render as with the config's template."""
    from prefopt.evaluate.runner import require_chat
    from prefopt.tokenizer import load_tokenizer

    base = tmp_path / "base"
    shutil.copytree(tiny_model, base)
    cfg = json.loads((base / "tokenizer_config.json").read_text())
    (base / "tokenizer_config.json").write_text(json.dumps({**cfg, "chat_template": None}))
    with pytest.raises(ValueError, match="no chat_template.jinja or .json beside it"):
        require_chat(load_tokenizer(base), str(base))
    (base / "chat_template.jinja").write_text(cfg["chat_template"])
    tok = load_tokenizer(base)
    require_chat(tok, str(base))
    messages = [{"role": "user", "content": "Chest pain since this morning."}]
    assert tok.apply_chat_template(messages, add_generation_prompt=True) == \
        load_tokenizer(tiny_model).apply_chat_template(messages, add_generation_prompt=True)


def test_a_judge_scores_every_stage_and_the_report_tests_its_scores(tiny_model, tmp_path, monkeypatch):
    """``compare --judge``: the judge reads each test item's prompt, reference and the stage's
    answer; its replies become Likert scores (one it cannot parse is left out and counted), their
    mean is in each stage's metrics and the report's table, and each comparison has a Wilcoxon
    test and a paired bootstrap on them. The judge's replies are scripted (a random tiny model's
    are noise); everything around them is the real path."""
    import prefopt.evaluate.runner as runner

    replies = iter([["3", "Score: 3", "no idea", "3"], ["4", "4", "4/5", "4"], ["5", "5 - as good", "5", "five"]])
    seen, answer_prompts = [], runner.answer_prompts

    def scripted(model, tok, prompts, **kw):
        if kw.get("desc") != "judging":
            return answer_prompts(model, tok, prompts, **kw)
        seen.append([tok.decode(p, False) for p in prompts])
        texts = next(replies)
        return texts, [True] * len(texts)

    monkeypatch.setattr(runner, "answer_prompts", scripted)
    # the judge is loaded for each evaluation and released after it: no training step holds its weights
    import gc
    import weakref

    import prefopt.evaluate.compare as compare
    import prefopt.train.run as train_run

    judges, load_judge, trainings = [], compare._load_judge, []

    def loaded(cfg):
        judges.append(weakref.ref(model := load_judge(cfg)))
        return model

    def training(run):
        def checked(*a, **kw):
            gc.collect()
            trainings.append(sum(j() is not None for j in judges))
            return run(*a, **kw)
        return checked

    monkeypatch.setattr(compare, "_load_judge", loaded)
    for name in ("run_sft", "run_dpo"):
        monkeypatch.setattr(train_run, name, training(getattr(train_run, name)))
    _, data, _ = _synthetic("summarization", tmp_path)
    out = tmp_path / "run"
    report = run_compare(CompareConfig(task="meqsum", model=str(tiny_model), output=str(out), data=str(data),
                                       judge=str(tiny_model), n_resamples=200, overrides=TINY))
    assert len(judges) == 3 and trainings == [0, 0]  # one load a stage; none alive when SFT and DPO train
    test = get_task("meqsum").read(str(data))
    test = {r.id: r for r in test}
    for stage, prompts, likert, unparsed in zip(("base", "sft", "dpo"), seen, ([3, 3, None, 3], [4] * 4, [5, 5, 5, None]),
                                                (0.25, 0, 0.25)):
        rows = [json.loads(line) for line in (out / stage / "predictions.jsonl").read_text().splitlines()]
        assert [r["likert"] for r in rows] == likert
        for prompt, row in zip(prompts, rows):
            item = test[row["id"]]
            assert item.prompt in prompt and item.target in prompt and (row["output"] or "(empty)") in prompt
        metrics = json.loads((out / stage / "metrics.json").read_text())
        assert metrics["likert"] == pytest.approx(np.mean([x for x in likert if x is not None]))
        assert metrics["judge_unparsed"] == unparsed
    base_to_dpo = report["comparisons"]["base->dpo"]
    assert base_to_dpo["likert_wilcoxon"]["p_value"] is not None  # on the 2 items both stages' replies scored
    assert base_to_dpo["likert_bootstrap"]["delta"] == pytest.approx(2.0)
    text = (out / "report.md").read_text()
    assert "judge Likert 3.00" in text and "judge Likert 4.00" in text and "judge Likert 5.00" in text


@pytest.mark.slow
def test_ranked_strategy_trains_on_given_pairs(tiny_model, tmp_path):
    from prefopt.data.records import DataError
    from prefopt.tasks import get_task

    task = get_task("portal")
    recs = task.load()[:6]
    given = tmp_path / "given.jsonl"
    given.write_text("".join(json.dumps({"prompt": task.messages(r), "chosen": r.target,
                                         "rejected": "Urgency: routine\nStaff: front desk"
                                         if r.labels["urgency"] != "routine" else "Urgency: emergency\nStaff: nurse"})
                             + "\n" for r in recs))
    out = tmp_path / "run"
    run_compare(CompareConfig(task="portal", model=str(tiny_model), output=str(out), strategy="ranked",
                              pairs=str(given), n_resamples=100, overrides=TINY))
    _check(out)
    assert json.loads((out / "data" / "pairs_report.json").read_text())["strategy"] == "ranked"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "chosen": "same", "rejected": "same"}\n')
    with pytest.raises(DataError, match="bad.jsonl:1"):
        run_compare(CompareConfig(task="portal", model=str(tiny_model), output=str(tmp_path / "run2"),
                                  strategy="ranked", pairs=str(bad), n_resamples=100, overrides=TINY))
    with pytest.raises(ValueError, match="needs --pairs"):
        run_compare(CompareConfig(task="portal", model=str(tiny_model), output=str(tmp_path / "run3"),
                                  strategy="ranked", overrides=TINY))


@pytest.mark.parametrize("overrides, expected", [({}, 1024), ({"max_length": 512}, 512)])
def test_compare_raises_max_length_to_what_the_task_needs(overrides, expected, tiny_model, tmp_path, monkeypatch,
                                                          capsys):
    """ACI-Bench notes run to ~930 tokens: at the quick preset's 384 every note lost its end (and its
    end-of-turn token), so compare trains at the task's 1024 unless --set max_length says otherwise."""
    import csv

    import prefopt.evaluate.compare as compare

    data = tmp_path / "aci.csv"
    with open(data, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["dialogue", "note"])
        w.writeheader()
        w.writerows({"dialogue": f"[doctor] hello {i}. [patient] my knee hurts.", "note": f"Knee pain {i}."}
                    for i in range(6))

    class Stop(Exception):
        pass

    def stop(*a, **k):
        raise Stop

    monkeypatch.setattr(compare, "_keep_split", stop)  # the settings are stored before the split is
    with pytest.raises(Stop):
        run_compare(CompareConfig(task="aci_bench", model=str(tiny_model), data=str(data), output=str(tmp_path / "run"),
                                  overrides=overrides))
    stored = json.loads((tmp_path / "run" / "compare_config.json").read_text())["settings"]
    assert stored["max_length"] == expected
    assert ("max_length 1024, not the quick preset's 384" in capsys.readouterr().out) == (not overrides)


@pytest.mark.parametrize("overrides, expected", [({}, 2), ({"test": 5}, 5)])
def test_compare_keeps_most_of_a_small_dataset_for_training(overrides, expected, tiny_model, tmp_path, monkeypatch,
                                                            capsys):
    """The quick preset tests on 60 items: on ACI-Bench's 87 encounters (67 in train.csv) that left 27
    (or 7) to train on. A count that would leave less to train on than to test becomes a fifth."""
    import prefopt.evaluate.compare as compare

    data = tmp_path / "portal.jsonl"
    data.write_text("".join(json.dumps({"message": f"Refill request number {i}, please.", "urgency": "routine",
                                        "staff": "pharmacist"}) + "\n" for i in range(10)))
    seen = {}

    class Stop(Exception):
        pass

    def stop(splits, out):
        seen["test"] = len(splits["test"])
        raise Stop

    monkeypatch.setattr(compare, "_keep_split", stop)
    with pytest.raises(Stop):
        run_compare(CompareConfig(task="portal", model=str(tiny_model), data=str(data), output=str(tmp_path / "run"),
                                  overrides=overrides))
    stored = json.loads((tmp_path / "run" / "compare_config.json").read_text())["settings"]
    assert stored["test"] == seen["test"] == expected
    log = capsys.readouterr().out
    assert ("test 2 of 10 items (a fifth), not the quick preset's 60, which would leave 0 to train on" in log) \
        == (not overrides)


@pytest.mark.parametrize("overrides", [{}, {"max_new_tokens": 40}, {"repetition_penalty": 1.2}])
def test_compare_lets_long_reference_answers_end(overrides, tiny_model, tmp_path, monkeypatch, capsys):
    """ACI-Bench's notes run to ~350 tokens and it generated 256: every note of every stage was cut
    before it could end, and ROUGE scored the cap. Free-text tasks now generate room for their
    longest reference (10% more, rounded up to 32 tokens) unless --set max_new_tokens says."""
    import csv

    import prefopt.evaluate.compare as compare
    from prefopt.evaluate.runner import fit_max_new_tokens
    from prefopt.tasks import get_task
    from prefopt.tokenizer import load_tokenizer

    data = tmp_path / "notes.csv"
    with open(data, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["source", "target"])
        w.writeheader()
        w.writerows({"source": f"Visit {i}: knee pain.", "target": " ".join(["knee pain and swelling"] * (30 + i))}
                    for i in range(10))
    task, tok = get_task("summarization"), load_tokenizer(str(tiny_model))
    want, cut = fit_max_new_tokens(task, tok, task.read(str(data)))
    assert cut == 10 and want % 32 == 0 and want >= 1.1 * (len(tok.encode(task.read(str(data))[-1].target)) + 1)
    seen = []

    class Stop(Exception):
        pass

    def predict(*a, max_new_tokens=None, repetition_penalty=None, **k):
        seen.append((max_new_tokens, repetition_penalty))
        raise Stop

    monkeypatch.setattr(compare, "predict", predict)
    with pytest.raises(Stop):
        run_compare(CompareConfig(task="summarization", model=str(tiny_model), data=str(data),
                                  output=str(tmp_path / "run"), overrides={"test": 2, **overrides}))
    expected = overrides.get("max_new_tokens", want)
    stored = json.loads((tmp_path / "run" / "compare_config.json").read_text())["settings"]
    assert seen == [(expected, overrides.get("repetition_penalty"))] and stored["max_new_tokens"] == expected
    log = capsys.readouterr().out
    assert (f"max_new_tokens {want}, not summarization's 96: 10 of 10 reference answers are longer" in log) \
        == ("max_new_tokens" not in overrides)


def test_fit_max_new_tokens_leaves_short_answers_and_labels_to_the_task():
    from types import SimpleNamespace

    from prefopt.evaluate.runner import fit_max_new_tokens
    from prefopt.tasks import get_task
    from prefopt.tasks.base import Record

    words = SimpleNamespace(encode=str.split)  # one token per word
    short = [Record("1", "q", "Is metformin safe in pregnancy?")]
    long = [Record("1", "q", "word " * 95), Record("2", "q", "word " * 200)]
    assert fit_max_new_tokens(get_task("meqsum"), words, short) == (None, 0)
    assert fit_max_new_tokens(get_task("summarization"), words, long) == (224, 1)  # 1.1 * 201 → 221 → 224
    assert fit_max_new_tokens(get_task("summarization"), words, long[:1]) == (None, 0)  # 96 fits 95 + end
    assert fit_max_new_tokens(get_task("portal"), words, long) == (None, 0)  # labels: parsed from the start


@pytest.mark.parametrize("flag", [[], ["--max-new-tokens", "50"], ["--max-new-tokens", "50", "--repetition-penalty", "1.2"],
                                  ["--max-new-tokens", "50", "--no-repeat-ngram-size", "3", "--repeat-scope", "output"]])
def test_eval_cli_lets_long_reference_answers_end(flag, tiny_model, tmp_path, monkeypatch, capsys):
    import prefopt.evaluate.runner as runner
    from prefopt.cli import main

    data = tmp_path / "notes.jsonl"
    data.write_text("".join(json.dumps({"source": f"Visit {i}.", "target": "knee pain and swelling " * 40}) + "\n"
                            for i in range(5)))
    seen = []

    def predict(model, tok, task, records, *, return_ended=False, **k):
        seen.append(k)
        return ["knee pain"] * len(records), [True, False, True, True, True]

    monkeypatch.setattr(runner, "predict", predict)
    assert main(["eval", "--task", "summarization", "--model", str(tiny_model), "--data", str(data), "--split", "all",
                 "--output", str(tmp_path / "eval"), *flag]) == 0
    out = capsys.readouterr().out
    given = dict(zip(flag[::2], flag[1::2]))
    assert seen[0]["repetition_penalty"] == (1.2 if "--repetition-penalty" in given else None)
    assert seen[0]["no_repeat_ngram_size"] == (3 if "--no-repeat-ngram-size" in given else None)
    assert seen[0]["repeat_scope"] == given.get("--repeat-scope")
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["unfinished"] == pytest.approx(0.2) and metrics["max_new_tokens"] == seen[0]["max_new_tokens"]
    # what made the answers, with None spelt out as what it means
    assert (metrics["repetition_penalty"], metrics["no_repeat_ngram_size"], metrics["repeat_scope"]) == \
        (float(given.get("--repetition-penalty", 1)), int(given.get("--no-repeat-ngram-size", 0)),
         given.get("--repeat-scope", "all"))
    rows = [json.loads(line) for line in (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert [r["ended"] for r in rows] == [True, False, True, True, True]
    if flag:
        assert seen[0]["max_new_tokens"] == 50 and "reference answers are longer" not in out
    else:
        n = seen[0]["max_new_tokens"]
        assert n > 96 and n % 32 == 0
        assert f"max_new_tokens {n}, not summarization's 96: 5 of 5 reference answers are longer" in out


def test_compare_trains_with_gradient_checkpointing_and_resumes_with_it(tiny_model, tmp_path, sft_configs):
    """ACI-Bench at 1024 tokens peaked at 9.5 GB in training. --set gradient_checkpointing=true trades
    time for memory; it changes no result, so a run interrupted for want of memory may resume with it."""
    out = str(tmp_path / "run")
    for extra in ({}, {"gradient_checkpointing": True, "gradient_checkpointing_layers": 1},
                  {"gradient_checkpointing": True}):
        with pytest.raises(StopAtSFT):
            run_compare(CompareConfig(task="portal", model=str(tiny_model), output=out, overrides={**TINY, **extra}))
    assert [c.checkpointing() for c in sft_configs] == [False, 1, True]
    for bad, error in (({"gradient_checkpointing_layers": 1}, "gradient_checkpointing_layers 1 needs "
                                                              "gradient_checkpointing=true"),
                       ({"gradient_checkpointing": True, "gradient_checkpointing_layers": 0},
                        r"gradient_checkpointing_layers: a whole number >= 1 or null \(got 0\)"),
                       ({"gradient_checkpointing": 2}, r"gradient_checkpointing: true or false \(got 2\)")):
        with pytest.raises(ValueError, match=error):
            run_compare(CompareConfig(task="portal", model=str(tiny_model), output=out, overrides={**TINY, **bad}))
    with pytest.raises(ValueError, match="other settings.*sft_lr.*rerun with another max_new_tokens, repetition_penalty, "
                                         "no_repeat_ngram_size, repeat_scope, dpo_max_p"):
        run_compare(CompareConfig(task="portal", model=str(tiny_model), output=out,
                                  overrides={**TINY, "sft_lr": 1e-3}))


def test_eval_and_compare_run_where_they_are_told_and_record_it(tiny_model, tmp_path, sft_configs, capsys):
    """They loaded every model on the CPU in float32, whatever the machine had: an 8B model on a GPU
    box was evaluated on its CPU. Now --device/--dtype (auto: the GPU, in bfloat16) as training."""
    import torch

    from prefopt.cli import main

    out = tmp_path / "eval"
    assert main(["eval", "--task", "portal", "--model", str(tiny_model), "--output", str(out), "--limit", "3",
                 "--dtype", "bfloat16", "--device", "cpu"]) == 0
    assert {k: json.loads((out / "metrics.json").read_text())[k] for k in ("device", "dtype")} == \
        {"device": "cpu", "dtype": "bfloat16"}
    if not torch.cuda.is_available():
        assert main(["eval", "--task", "portal", "--model", str(tiny_model), "--output", str(tmp_path / "e2"),
                     "--device", "cuda"]) == 2
        assert "prefopt eval: error: device 'cuda': " in capsys.readouterr().err
        assert not (tmp_path / "e2").exists()

    run_dir = tmp_path / "run"
    for device in ("cpu", "auto"):  # where it runs is no setting of the run's: it may resume elsewhere
        with pytest.raises(StopAtSFT):
            run_compare(CompareConfig(task="portal", model=str(tiny_model), output=str(run_dir), overrides=TINY,
                                      device=device, eval_dtype="float32"))
    assert [c.device for c in sft_configs] == ["cpu", "auto"]
    assert {k: json.loads((run_dir / "base" / "metrics.json").read_text())[k] for k in ("device", "dtype")} == \
        {"device": "cpu", "dtype": "float32"}
    with pytest.raises(ValueError, match=r"unknown compare settings \['device'\]; device is not a preset setting: "
                       "pass --device"):
        run_compare(CompareConfig(task="portal", model=str(tiny_model), output=str(tmp_path / "r2"),
                                  overrides={"device": "cpu"}))
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        run_compare(CompareConfig(task="portal", model=str(tiny_model), output=str(tmp_path / "r2"), device="gpu"))
    with pytest.raises(ValueError, match=r"^unknown compare settings \['bta', 'lr'\] \(did you mean 'beta'\?\) \(lr: "
                       r"sft_lr or dpo_lr, each stage's own\); the settings: batch_size, beta, "):  # a trainer's name
        run_compare(CompareConfig(task="portal", model=str(tiny_model), output=str(tmp_path / "r2"),
                                  overrides={"lr": 1e-4, "bta": 0.1}))
    assert not (tmp_path / "r2").exists()


@pytest.mark.gpu
def test_eval_on_a_gpu_by_default_gives_the_cpus_answers_in_float32(tiny_model, tmp_path):
    import torch

    from prefopt.cli import main

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    common = ["eval", "--task", "portal", "--model", str(tiny_model), "--limit", "8", "--batch-size", "4"]
    runs = {"auto": [], "gpu32": ["--dtype", "float32"], "cpu": ["--device", "cpu"]}
    for name, flags in runs.items():
        assert main([*common, "--output", str(tmp_path / name), *flags]) == 0
    got = {n: json.loads((tmp_path / n / "metrics.json").read_text()) for n in runs}
    assert (got["auto"]["device"], got["auto"]["dtype"]) == ("cuda:0", "bfloat16")
    assert (got["gpu32"]["device"], got["cpu"]["dtype"]) == ("cuda:0", "float32")
    outputs = {n: [json.loads(x)["output"] for x in (tmp_path / n / "predictions.jsonl").read_text().splitlines()]
               for n in ("gpu32", "cpu")}
    assert outputs["gpu32"] == outputs["cpu"]


def test_a_run_made_before_a_setting_was_added_still_resumes(tiny_model, tmp_path, monkeypatch):
    """compare_config.json files written before max_new_tokens, repetition_penalty,
    gradient_checkpointing and val existed lack them; their values then were None, None, False and None. Such a
    folder (runs/triage-demo of an earlier make demo) resumes; a real change is named key by key."""
    import prefopt.train.run as run

    class Stop(Exception):
        pass

    def run_sft(config):
        raise Stop

    monkeypatch.setattr(run, "run_sft", run_sft)
    out = tmp_path / "run"
    cfg = CompareConfig(task="portal", model=str(tiny_model), output=str(out), overrides=TINY)
    with pytest.raises(Stop):
        run_compare(cfg)
    stored = json.loads((out / "compare_config.json").read_text())
    for key in ("max_new_tokens", "repetition_penalty", "no_repeat_ngram_size", "repeat_scope",
                "gradient_checkpointing", "val", "dpo_eval_every", "dpo_min_gain",
                "dpo_patience", "dpo_max_p", "confidence", "lora_r", "lora_alpha", "lora_dora", "lora_rslora",
                "lora_dropout", "lora_targets", "lora_layers", "lora_experts", "quantize", "train_dtype", "ld_alpha",
                "f_divergence", "f_alpha"):
        del stored["settings"][key]
    del stored["chat_date"]  # added on 2026-11-30: such a run keeps the clock's date, as it had
    (out / "compare_config.json").write_text(json.dumps(stored))
    with pytest.raises(Stop):
        run_compare(cfg)
    with pytest.raises(ValueError) as err:
        run_compare(CompareConfig(task="portal", model=str(tiny_model), output=str(out),
                                  overrides={**TINY, "beta": 0.5}))
    assert "(overrides.beta: None -> 0.5; settings.beta: 0.1 -> 0.5)" in str(err.value)
    with pytest.raises(ValueError, match=r"settings.lora_dora: False -> True"):  # another adapter: not the same run
        run_compare(CompareConfig(task="portal", model=str(tiny_model), output=str(out),
                                  overrides={**TINY, "lora_dora": True}))


def test_compare_trains_dora_adapters_with_the_rank_it_is_given(tiny_model, tmp_path):
    """``--set lora_dora=true --set lora_r=4``: both stages train DoRA r 4; the SFT+DPO adapter is
    one DoRA adapter on the base model (r 4 + 4). ``--set quantize=nf4``: both train on a 4-bit
    base and every stage is evaluated on it. Bad values are named before any work."""
    from prefopt.lora_files import read_adapter_config

    q = tmp_path / "nf4"
    run_compare(CompareConfig(task="portal", model=str(tiny_model), output=str(q), overrides={**TINY, "quantize": "nf4"}))
    assert all("on its nf4 (4-bit) base" in (q / s / "train" / "final" / "README.md").read_text()
               for s in ("sft", "dpo"))
    assert all(json.loads((q / s / "metrics.json").read_text())["quantized"] == "nf4" for s in ("base", "sft", "dpo"))
    out = tmp_path / "run"
    report = run_compare(CompareConfig(task="portal", model=str(tiny_model), output=str(out),
                                       overrides={**TINY, "lora_dora": True, "lora_r": 4, "lora_alpha": 8}))
    sft = read_adapter_config(out / "sft" / "train" / "final")
    dpo = read_adapter_config(out / report["weights"]["dpo"])
    assert (sft.dora, sft.r, sft.alpha) == (True, 4, 8.0)
    assert (dpo.dora, dpo.r) == (True, 8) and (out / report["weights"]["dpo"] / "stacked_on.json").is_file()
    with pytest.raises(ValueError, match="lora_dora: true or false"):
        CompareConfig(task="portal", model=str(tiny_model), output=str(tmp_path / "x"),
                      overrides={"lora_dora": "yes"}).settings()
    with pytest.raises(ValueError, match="lora_dora with quantize"):
        CompareConfig(task="portal", model=str(tiny_model), output=str(tmp_path / "x"),
                      overrides={"lora_dora": True, "quantize": "nf4"}).settings()
    with pytest.raises(ValueError, match="quantize: null or one of nf4"):
        CompareConfig(task="portal", model=str(tiny_model), output=str(tmp_path / "x"),
                      overrides={"quantize": "int8"}).settings()
    with pytest.raises(ValueError, match="lora_r: a whole number >= 1"):
        CompareConfig(task="portal", model=str(tiny_model), output=str(tmp_path / "x"),
                      overrides={"lora_r": 0}).settings()


def test_compare_trains_both_stages_on_the_base_dtype_it_is_given(tiny_model, tmp_path, monkeypatch):
    """``--set train_dtype=bfloat16``: SFT and DPO train on a bfloat16 base (half of float32's memory:
    the setting compare's out-of-memory advice names), their adapters in float32; the report says
    so. A value that is not a dtype is named before any work."""
    import torch
    from safetensors.torch import load_file

    import prefopt.train.run as run

    loaded = []
    real = run.load_model
    monkeypatch.setattr(run, "load_model", lambda *a, **k: loaded.append(k["dtype"]) or real(*a, **k))
    out = tmp_path / "bf16"
    report = run_compare(CompareConfig(task="portal", model=str(tiny_model), output=str(out),
                                       overrides={**TINY, "train_dtype": "bfloat16"}))
    assert loaded == [torch.bfloat16, torch.bfloat16]  # the SFT stage's base, then DPO's (SFT merged in)
    for stage in ("sft", "dpo"):
        assert json.loads((out / stage / "train" / "train_config.json").read_text())["dtype"] == "bfloat16"
    for path in (out / "sft" / "train" / "final", out / report["weights"]["dpo"]):
        saved = load_file(path / "adapter_model.safetensors")
        assert saved and {t.dtype for t in saved.values()} == {torch.float32}
    assert "; both stages trained on a bfloat16 base." in (out / "report.md").read_text()
    with pytest.raises(ValueError, match="train_dtype: one of float32, bfloat16, float16 \\(got 'fp16'\\)"):
        CompareConfig(task="portal", model=str(tiny_model), output=str(tmp_path / "x"),
                      overrides={"train_dtype": "fp16"}).settings()


def test_compare_trains_dpo_with_ld_alpha_an_f_divergence_and_wpo(tiny_model, tmp_path):
    """``--set ld_alpha=0.5 --set f_divergence=js_divergence --set wpo=true``: the DPO stage trains
    LD-DPO under the JS divergence with WPO's weights (its config, card and the report say so); bad
    values are named before any work."""
    out = tmp_path / "run"
    run_compare(CompareConfig(task="portal", model=str(tiny_model), output=str(out),
                              overrides={**TINY, "ld_alpha": 0.5, "f_divergence": "js_divergence", "wpo": True}))
    trained = json.loads((out / "dpo" / "train" / "train_config.json").read_text())
    assert (trained["ld_alpha"], trained["f_divergence"], trained["wpo"]) == (0.5, "js_divergence", True)
    card = (out / "dpo" / "train" / "final" / "README.md").read_text()
    assert "f-DPO with the js divergence, LD-DPO (tokens past the shorter answer's length weigh 0.5), WPO" in card
    assert ("loss `sigmoid` with LD-DPO (alpha 0.5), f-DPO (js_divergence) and WPO pair weights"
            in (out / "report.md").read_text())
    for bad, loss, match in (({"ld_alpha": 1.5}, "sigmoid", r"compare settings: ld_alpha must be in \[0, 1\]"),
                             ({"ld_alpha": "half"}, "sigmoid", "ld_alpha: null or a number"),
                             ({"f_divergence": "kl"}, "sigmoid", "f_divergence must be one of"),
                             ({"f_divergence": "forward_kl"}, "bco_pair", "not to bco_pair"),
                             ({"ld_alpha": 0.5}, "kto", "for pair losses, not kto"),
                             ({"wpo": "yes"}, "sigmoid", "wpo: true or false"),
                             ({"wpo": True}, "aot", "'aot' is not a per-pair loss")):
        with pytest.raises(ValueError, match=match):
            CompareConfig(task="portal", model=str(tiny_model), output=str(tmp_path / "x"), loss=loss,
                          overrides=bad).settings()


def test_compare_trains_the_adapter_layers_scale_and_dropout_it_is_given(tiny_model, tmp_path):
    """``--set lora_targets=q_proj,v_proj,lm_head --set lora_rslora=true --set lora_dropout=0``:
    both stages' adapters as asked (the head's included); bad values, and a head tied to the
    embedding, are named before the run claims its folder."""
    from prefopt.lora_files import read_adapter, read_adapter_config

    out = tmp_path / "run"
    report = run_compare(CompareConfig(task="portal", model=str(tiny_model), output=str(out), overrides={
        **TINY, "lora_targets": "q_proj, v_proj", "lora_rslora": True, "lora_dropout": 0.0, "lora_r": 4,
        "lora_layers": 1}))
    sft = read_adapter_config(out / "sft" / "train" / "final")
    assert (sorted(sft.target_modules), sft.rslora, sft.dropout, sft.r, sft.layers) == (["q_proj", "v_proj"], True,
                                                                                        0.0, 4, (1,))
    assert read_adapter_config(out / report["weights"]["dpo"]).layers == (1,)
    head = tmp_path / "head"
    report = run_compare(CompareConfig(task="portal", model=str(tiny_model), output=str(head), overrides={
        **TINY, "lora_targets": "q_proj, v_proj,lm_head", "lora_r": 4}))
    _, tensors = read_adapter(head / report["weights"]["dpo"])  # SFT's and DPO's updates, stacked
    assert tensors["lm_head.lora_A.weight"].shape[0] == 8 and tensors["lm_head.lora_B.weight"].abs().max() > 0
    stored = json.loads((head / "compare_config.json").read_text())["settings"]
    assert stored["lora_targets"] == ["q_proj", "v_proj", "lm_head"]
    for bad, match in (({"lora_targets": "q_proj,vproj"}, r"lora_targets: no layer named \['vproj'\] \(did you mean "
                                                           r"'v_proj'\?\)"),
                       ({"lora_targets": []}, "lora_targets: null or layer names"),
                       ({"lora_dropout": 1.0}, r"lora_dropout: a number in \[0, 1\) \(got 1.0\)"),
                       ({"lora_rslora": "yes"}, "lora_rslora: true or false"),
                       ({"lora_layers": "2-1"}, r"lora_layers: '2-1' is not layer numbers")):
        with pytest.raises(ValueError, match=match):
            CompareConfig(task="portal", model=str(tiny_model), output=str(tmp_path / "x"), overrides=bad).settings()
    tied = tmp_path / "tied"
    build_hf_model(tied, max_position_embeddings=4096, tie_word_embeddings=True)
    with pytest.raises(ValueError, match=r"tied.*: lm_head: this model's output head is its input embedding"):
        run_compare(CompareConfig(task="portal", model=str(tied), output=str(tmp_path / "t"),
                                  overrides={**TINY, "lora_targets": "q_proj,lm_head"}))
    assert not (tmp_path / "t").exists()


def test_compare_adapts_a_mixtures_experts_in_both_stages(tmp_path):
    """``--set lora_experts=true --set lora_dropout=0`` on a mixture of experts: SFT's and DPO's
    adapters both cover the experts' tensors, stacked into one (r 4 + 4); what the experts cannot
    take is named before any work."""
    from prefopt.lora_files import read_adapter

    model = tmp_path / "moe"
    build_hf_model(model, arch="qwen3_moe", max_position_embeddings=4096)
    out = tmp_path / "run"
    report = run_compare(CompareConfig(task="portal", model=str(model), output=str(out), overrides={
        **TINY, "lora_experts": True, "lora_dropout": 0.0, "lora_r": 4, "lora_targets": "q_proj"}))
    cfg, tensors = read_adapter(out / report["weights"]["dpo"])
    assert (cfg.r, cfg.target_modules, cfg.target_parameters) == (8, ("q_proj",), ("gate_up_proj", "down_proj"))
    b = tensors["model.layers.0.mlp.expert_adapters.down_proj.lora_B.weight"]  # (E, out, r 4 + 4)
    assert b.shape[-1] == 8 and b[..., :4].abs().max() > 0 and b[..., 4:].abs().max() > 0  # both stages trained
    for bad, match in (({"lora_experts": True}, "lora_experts: LoRA on the experts takes no dropout: set lora_dropout"),
                       ({"lora_experts": "yes"}, "lora_experts: true or false")):
        with pytest.raises(ValueError, match=match):
            CompareConfig(task="portal", model=str(model), output=str(tmp_path / "x"), overrides=bad).settings()
    dense = tmp_path / "dense"
    build_hf_model(dense, max_position_embeddings=4096)
    with pytest.raises(ValueError, match=r"lora_experts: .*dense \(llama\) has no mixture of experts"):
        run_compare(CompareConfig(task="portal", model=str(dense), output=str(tmp_path / "d"),
                                  overrides={**TINY, "lora_experts": True, "lora_dropout": 0.0}))
    assert not (tmp_path / "d").exists()


@pytest.mark.slow
def test_new_decoding_settings_evaluate_every_stage_again_and_retrain_nothing(tiny_model, tmp_path, capsys,
                                                                             monkeypatch):
    """Decoding changes only the evaluations (wrong_label pairs do not depend on it), so a finished run
    may be re-run with --set no_repeat_ngram_size=3: each stage is evaluated again, no adapter is
    retrained. A stage whose answers were made with another cap (a task default changed since, as
    ACI-Bench's 256 → 384) is evaluated again too, where it used to be reused silently."""
    import prefopt.evaluate.compare as compare

    out = tmp_path / "run"
    cfg = CompareConfig(task="portal", model=str(tiny_model), output=str(out), n_resamples=100, overrides=TINY)
    run_compare(cfg)
    first = {s: [(out / s / f).read_text() for f in ("predictions.jsonl", "metrics.json")] for s in ("base", "sft", "dpo")}
    adapters = {s: (out / s / "train" / "final" / "adapter_model.safetensors").read_bytes() for s in ("sft", "dpo")}
    calls, predict = [], compare.predict
    monkeypatch.setattr(compare, "predict", lambda *a, **k: calls.append(k) or predict(*a, **k))
    capsys.readouterr()
    new = CompareConfig(**{**asdict(cfg), "overrides": {**TINY, "no_repeat_ngram_size": 3, "repeat_scope": "output"}})
    run_compare(new)
    log = capsys.readouterr().out
    for stage in ("base", "sft", "dpo"):
        assert (f"{stage}: evaluating again, its answers were made with other decoding settings "
                f"(no_repeat_ngram_size 0 -> 3, repeat_scope 'all' -> 'output'); those are kept in "
                f"{out / stage / 'earlier' / '1'}") in log
        # nothing is lost: the first evaluation is kept as it was
        assert [(out / stage / "earlier" / "1" / f).read_text() for f in ("predictions.jsonl", "metrics.json")] \
            == first[stage]
        metrics = json.loads((out / stage / "metrics.json").read_text())
        assert (metrics["no_repeat_ngram_size"], metrics["repeat_scope"]) == (3, "output")
    assert [(k["no_repeat_ngram_size"], k["repeat_scope"]) for k in calls] == [(3, "output")] * 3
    assert "sft: reusing" in log and "dpo: reusing" in log
    assert adapters == {s: (out / s / "train" / "final" / "adapter_model.safetensors").read_bytes()
                        for s in ("sft", "dpo")}
    _check(out)

    run_compare(new)  # the same again: nothing to do
    assert not calls[3:] and "evaluating again" not in capsys.readouterr().out
    path = out / "sft" / "metrics.json"
    metrics = json.loads(path.read_text())
    path.write_text(json.dumps({**metrics, "max_new_tokens": 7}))
    run_compare(new)
    log = capsys.readouterr().out
    assert f"sft: evaluating again, its answers were made with other decoding settings (max_new_tokens 7 -> " \
           f"{metrics['max_new_tokens']}); those are kept in {out / 'sft' / 'earlier' / '2'}" in log
    assert len(calls) == 4 and "base: reusing" in log and "dpo: reusing" in log


@pytest.mark.parametrize("bad, match", [({"repeat_scope": "prompt"}, "repeat_scope must be one of all, output"),
                                        ({"no_repeat_ngram_size": "four"}, "no_repeat_ngram_size must be a whole"),
                                        ({"repetition_penalty": 0}, "repetition_penalty must be positive")])
def test_bad_decoding_settings_stop_compare_before_it_claims_a_folder(bad, match, tiny_model, tmp_path):
    with pytest.raises(ValueError, match=match):
        run_compare(CompareConfig(task="portal", model=str(tiny_model), output=str(tmp_path / "run"),
                                  overrides={**TINY, **bad}))
    assert not (tmp_path / "run").exists()


def test_predict_tells_answers_the_cap_stopped_from_those_that_ended(monkeypatch):
    """ACI-Bench: every note of every stage ran to the cap, which nothing in the report showed."""
    from types import SimpleNamespace

    import prefopt.evaluate.runner as runner
    from prefopt.tasks import get_task
    from prefopt.tasks.base import Record

    tok = SimpleNamespace(eos_token_ids=[2, 9], pad_token_id=0, apply_chat_template=lambda m, **k: [1, 1],
                          decode=lambda ids: " ".join(map(str, ids)), control_token_in=lambda text: None)
    monkeypatch.setattr(runner, "generate", lambda model, prompts, **k: [[5, 9], [5, 6, 7], [], [4, 2]][:len(prompts)])
    model = SimpleNamespace(training=False, eval=lambda: None, train=lambda mode: None)
    records = [Record(str(i), "q", "a") for i in range(4)]
    texts, ended = runner.predict(model, tok, get_task("meqsum"), records, batch_size=4, show_progress=False,
                                  return_ended=True)
    assert ended == [True, False, False, True] and texts[1] == "5 6 7"
    assert runner.predict(model, tok, get_task("meqsum"), records, batch_size=4, show_progress=False) == texts


@pytest.fixture(scope="module")
def dated_model(tmp_path_factory):
    """A tiny model whose chat template prints today's date (Llama 3.1's way)."""
    from tests._tiny import LLAMA31, build_tokenizer

    d = tmp_path_factory.mktemp("dated")
    build_hf_model(d, tokenizer=False, max_position_embeddings=4096)
    build_tokenizer(d, template=LLAMA31, bos="<|begin_of_text|>", eos="<|eot_id|>")
    return d


def test_eval_pins_the_date_a_chat_template_prints_and_records_it(dated_model, tiny_model, tmp_path, capsys,
                                                                  monkeypatch):
    import prefopt.evaluate.runner as runner
    from prefopt.cli import main
    from prefopt.tokenizer import load_tokenizer

    prompts, generate = [], runner.generate
    monkeypatch.setattr(runner, "generate", lambda model, ids, **kw: prompts.extend(ids) or generate(model, ids, **kw))
    out = tmp_path / "eval"
    assert main(["eval", "--task", "portal", "--model", str(dated_model), "--output", str(out), "--limit", "3",
                 "--chat-date", "2024-02-29"]) == 0
    assert json.loads((out / "metrics.json").read_text())["chat_date"] == "2024-02-29"
    tok = load_tokenizer(dated_model)
    assert len(prompts) == 3 and all("Today Date: 29 Feb 2024\n" in tok.decode(p, False) for p in prompts)
    assert main(["eval", "--task", "portal", "--model", str(tiny_model), "--output", str(tmp_path / "plain"),
                 "--limit", "3"]) == 0
    assert "chat_date" not in json.loads((tmp_path / "plain" / "metrics.json").read_text())  # its prompts hold none
    assert main(["eval", "--task", "portal", "--model", str(dated_model), "--output", str(tmp_path / "bad"),
                 "--chat-date", "29.02.2024"]) == 2
    assert "--chat-date must be a date as YYYY-MM-DD (got '29.02.2024')" in capsys.readouterr().err


def test_a_compare_run_keeps_the_date_its_chat_template_prints(dated_model, tmp_path, sft_configs, capsys,
                                                               monkeypatch):
    """With Llama 3.1's template every prompt holds today's date. A run records the day it started and
    keeps it for every stage, so one resumed the next day reuses its base evaluation and trains on the
    same text; metrics.json says which date the prompts showed."""
    from tests._clock import DAY, move_to_next_day, set_today

    out, today = tmp_path / "run", set_today(monkeypatch, DAY)
    cfg = CompareConfig(task="portal", model=str(dated_model), output=str(out), overrides=TINY)
    with pytest.raises(StopAtSFT):
        run_compare(cfg)
    assert f"every prompt shows {today:%d %b %Y} (chat_date {today.isoformat()})" in capsys.readouterr().out
    base = json.loads((out / "base" / "metrics.json").read_text())
    assert base["chat_date"] == json.loads((out / "compare_config.json").read_text())["chat_date"] == today.isoformat()

    move_to_next_day(monkeypatch)
    with pytest.raises(StopAtSFT):
        run_compare(cfg)
    assert "base: reusing" in capsys.readouterr().out
    assert [c.chat_date for c in sft_configs] == [today.isoformat()] * 2  # SFT trains on the first day's text
    capsys.readouterr()
    with pytest.raises(ValueError, match=rf"other settings \(chat_date: '{today.isoformat()}' -> '2025-01-02'\)"):
        run_compare(CompareConfig(**{**asdict(cfg), "chat_date": "2025-01-02"}))
    assert "every prompt shows" not in capsys.readouterr().out  # not said of a run that is refused
    with pytest.raises(ValueError, match="chat_date must be a date as YYYY-MM-DD"):
        run_compare(CompareConfig(**{**asdict(cfg), "output": str(tmp_path / "other"), "chat_date": "tomorrow"}))
    assert not (tmp_path / "other").exists()


def test_compare_packs_sft_by_default_and_set_pack_false_pads(tiny_model, tmp_path):
    """``pack`` reaches the SFT stage (True by default, ``--set pack=false`` padded); a run may resume
    with another value, as with gradient_checkpointing, and a run recorded before it existed counts as
    padded."""
    from prefopt.evaluate.compare_config import _flat

    runs = {}
    for pack in (True, False):
        out = tmp_path / f"run{pack}"
        over = {**TINY} if pack else {**TINY, "pack": False}
        run_compare(CompareConfig(task="portal", model=str(tiny_model), output=str(out), overrides=over))
        runs[pack] = json.loads((out / "sft" / "train" / "train_config.json").read_text())["pack"]
        assert json.loads((out / "compare_config.json").read_text())["settings"]["pack"] is pack
    assert runs == {True: True, False: False}
    # the presets' share_start stays with DPO; SFT's needs pack, so the padded SFT stage runs without it
    train = {stage: json.loads((tmp_path / "runFalse" / stage / "train" / "train_config.json").read_text())
             for stage in ("sft", "dpo")}
    assert train["sft"]["share_start"] is False and train["dpo"]["share_start"] is True
    # resumes with the other value: nothing to retrain, no refusal
    run_compare(CompareConfig(task="portal", model=str(tiny_model), output=str(tmp_path / "runFalse"),
                              overrides={**TINY}))
    old = {"settings": {"beta": 0.1}}
    assert "settings.pack" not in _flat(old)  # compared as neither: resuming never depends on it
    with pytest.raises(ValueError, match="pack: true or false"):
        CompareConfig(task="portal", model=str(tiny_model), output=str(tmp_path / "x"),
                      overrides={"pack": "no"}).settings()


def test_compare_share_start_reaches_both_training_stages_and_needs_pack(tiny_model, tmp_path):
    """share_start (the presets' default since 2026-12-04): the SFT stage runs the portal prompts'
    shared start once a batch and the DPO stage its pairs after it (their train_configs say so)
    and the run finishes; a finished run resumes with the other value (as with pack: only
    dropout's draws differ); without pack it is refused before any work."""
    assert all(p["share_start"] is True for p in PRESETS.values())
    out = tmp_path / "run"
    report = run_compare(CompareConfig(task="portal", model=str(tiny_model), output=str(out), n_resamples=100,
                                       overrides={**TINY}))
    for stage in ("sft", "dpo"):
        assert json.loads((out / stage / "train" / "train_config.json").read_text())["share_start"] is True
    assert report["stages"]["sft"]["metrics"]["n"] == TINY["test"]
    run_compare(CompareConfig(task="portal", model=str(tiny_model), output=str(out), n_resamples=100,
                              overrides={**TINY, "share_start": False}))  # nothing retrained, nothing refused
    with pytest.raises(ValueError, match="share_start runs the start once in SFT's packed row: it needs pack=true"):
        CompareConfig(task="portal", model=str(tiny_model), output=str(tmp_path / "x"),
                      overrides={"pack": False, "share_start": True}).settings()


@pytest.mark.slow
def test_compare_with_kto_trains_its_preference_stage_on_the_pairs_unpaired(tiny_model, tmp_path):
    """``--loss kto``: the DPO stage reads compare's pairs as KTO does (each pair two examples,
    chosen desirable, rejected not) and the report's training line speaks of KTO's numbers."""
    out = tmp_path / "run"
    run_compare(CompareConfig(task="portal", model=str(tiny_model), output=str(out), loss="kto", n_resamples=200,
                              overrides=TINY))
    report = _check(out)
    n_pairs = json.loads((out / "data" / "pairs_report.json").read_text())["pairs"]
    train_config = json.loads((out / "dpo" / "train" / "train_config.json").read_text())
    assert train_config["loss"] == "kto"
    assert f"{2 * n_pairs} training examples" in (out / "dpo" / "train" / "final" / "README.md").read_text()
    text = (out / "report.md").read_text()
    assert "- KTO: share on the label's side of the reference point" in text and "- DPO: pair accuracy" not in text
    assert report["stages"]
