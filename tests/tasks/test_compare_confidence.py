"""``prefopt compare``'s confidence: each stage's label probabilities, added to its evaluation
without answering again, and set side by side in the report (prefopt.evaluate.stage_confidence)."""
import importlib.util
import json
from dataclasses import asdict

import numpy as np
import pytest
import torch

from prefopt.evaluate.compare import CompareConfig, run_compare
from prefopt.evaluate.confidence import SCORING, auroc, label_probabilities
from prefopt.evaluate.report import console_lines
from prefopt.evaluate.stage_confidence import (
    add_confidence,
    auroc_comparison_lines,
    compare_auroc,
    confidence_console_lines,
    confidence_lines,
)
from prefopt.tasks import get_task
from prefopt.tokenizer import load_tokenizer
from tests import _formats as formats

TINY = {"max_train": 8, "test": 4, "sft_steps": 2, "dpo_steps": 2, "batch_size": 2, "max_length": 256,
        "eval_batch_size": 8}
STAGES = ("base", "sft", "dpo")


def _rows(out, stage):
    return [json.loads(line) for line in (out / stage / "predictions.jsonl").read_text().splitlines()]


def _metrics(out, stage):
    return json.loads((out / stage / "metrics.json").read_text())


def _test_records(task, out, data=None):
    ids = json.loads((out / "split.json").read_text())["test"]
    by_id = {r.id: r for r in task.read(data)}
    return [by_id[i] for i in ids]


@pytest.mark.slow
def test_each_stage_is_scored_later_without_answering_again_and_the_report_sets_them_side_by_side(
        tiny_model, tmp_path, monkeypatch, capsys):
    """A run made with ``confidence=false`` has none; the same run with it on trains nothing and
    answers nothing again, loads each stage's model once, and adds what the stage's own model gives:
    the probabilities :func:`label_probabilities` computes on it, their AUROC by hand, and the
    likeliest labels. A rerun then has nothing to do."""
    import prefopt.evaluate.compare as compare
    import prefopt.pretrained

    out = tmp_path / "run"
    off = CompareConfig(task="portal", model=str(tiny_model), output=str(out), n_resamples=100,
                        overrides={**TINY, "confidence": False})
    run_compare(off)
    before = {s: _rows(out, s) for s in STAGES}
    assert all("confidence" not in _metrics(out, s) and "confidence" not in before[s][0] for s in STAGES)
    assert "## Confidence" not in (out / "report.md").read_text()
    adapters = {s: (out / s / "train" / "final" / "adapter_model.safetensors").read_bytes() for s in ("sft", "dpo")}

    calls, loads, load = [], [], prefopt.pretrained.load_model
    monkeypatch.setattr(compare, "predict", lambda *a, **k: calls.append(k))
    monkeypatch.setattr(prefopt.pretrained, "load_model",
                        lambda *a, **kw: loads.append(kw.get("adapter")) or load(*a, **kw))
    capsys.readouterr()
    report = run_compare(CompareConfig(**{**asdict(off), "overrides": TINY}))  # on by default
    log = capsys.readouterr().out
    assert calls == [] and loads == [None, out / "sft/train/final", out / "dpo/train/final"]
    assert adapters == {s: (out / s / "train" / "final" / "adapter_model.safetensors").read_bytes()
                        for s in ("sft", "dpo")}
    task, tok = get_task("portal"), load_tokenizer(str(tiny_model))
    test = _test_records(task, out)
    for stage in STAGES:
        assert f"{stage}: scored every label of the 4 test items" in log
        rows, metrics = _rows(out, stage), _metrics(out, stage)
        # the answers are the ones made before; only the three keys are new
        assert [{k: v for k, v in r.items() if k not in ("confidence", "likeliest", "brier")}
                for r in rows] == before[stage]
        adapter = None if stage == "base" else out / stage / "train" / "final"
        model = load(str(tiny_model), dtype=torch.float32, adapter=adapter, merge=adapter is not None)
        probs = label_probabilities(model, tok, task, test, show_progress=False)
        for row, p in zip(rows, probs):
            for f in task.fields:
                named = row["prediction"][f.name]
                assert row["confidence"][f.name] == (None if named is None else pytest.approx(p[f.name][named]))
                assert row["likeliest"][f.name] == max(p[f.name], key=p[f.name].get)
                assert row["brier"][f.name] == pytest.approx(sum(
                    (p[f.name].get(label, 0.0) - (label == row["labels"][f.name])) ** 2 for label in f.labels))
        for f in task.fields:
            c = metrics["confidence"][f.name]
            conf = [r["confidence"][f.name] or 0.0 for r in rows]
            right = [r["prediction"][f.name] == r["labels"][f.name] for r in rows]
            assert c["auroc"] == auroc(conf, right)
            named = [r["confidence"][f.name] is not None for r in rows]
            assert c["named"] == sum(named) / len(rows)
            assert c["auroc_named"] == auroc([x for x, n in zip(conf, named) if n],
                                             [x for x, n in zip(right, named) if n])
            assert c["accuracy_likeliest"] == pytest.approx(
                sum(r["likeliest"][f.name] == r["labels"][f.name] for r in rows) / len(rows))
            assert c["brier"] == pytest.approx(sum(r["brier"][f.name] for r in rows) / len(rows))
        assert report["stages"][stage]["metrics"]["confidence"] == metrics["confidence"]

    text = (out / "report.md").read_text()
    section = text.split("## Confidence", 1)[1].split("\n## ", 1)[0]
    table, tested = section.split("Paired bootstrap of the AUROC", 1)
    body = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| stage")]
    assert [tuple(cell.strip() for cell in line.split("|")[1:3]) for line in body] == [
        (name, field) for name in ("base", "SFT", "SFT+DPO") for field in ("urgency", "staff")]
    likeliest = _metrics(out, "dpo")["confidence"]["staff"]["accuracy_likeliest"]
    assert body[-1].split("|")[-2].strip() == f"{likeliest:.3f}"
    for pair, c in report["comparisons"].items():  # each pair of stages: its named AUROCs' paired bootstrap
        a, b = (_metrics(out, s)["confidence"] for s in pair.split("->"))
        for f in task.fields:
            got, x, y = c["confidence_auroc"][f.name], a[f.name]["auroc_named"], b[f.name]["auroc_named"]
            assert (got is None) == (x is None or y is None)
            assert got is None or got["delta"] == pytest.approx(y - x)
    for pair, c in report["comparisons"].items():  # and their Brier scores', item by item
        a, b = (_rows(out, s) for s in pair.split("->"))
        for f in task.fields:
            mean = [sum(r["brier"][f.name] for r in rows) / len(rows) for rows in (a, b)]
            assert c["brier"][f.name]["delta"] == pytest.approx(mean[1] - mean[0])
    tested, calibrated = tested.split("Paired bootstrap of the Brier score", 1)
    assert len([line for line in tested.splitlines() if line.startswith("| SFT")]) == 6
    assert len([line for line in calibrated.splitlines() if line.startswith("| SFT")]) == 6
    if importlib.util.find_spec("matplotlib"):  # each field's reliability curves, the stages side by side
        assert {"calibration_urgency.png", "calibration_staff.png"} <= set(report["plots"])
        assert (out / "calibration_staff.png").read_bytes().startswith(b"\x89PNG")
    for stage in STAGES:  # the bins the curves are drawn from give the ECE
        for c in _metrics(out, stage)["confidence"].values():
            n = sum(b["n"] for b in c["reliability"])
            assert n == 4 and c["ece"] == pytest.approx(sum(b["n"] / n * abs(b["confidence"] - b["accuracy"])
                                                            for b in c["reliability"]))
    said = [line for line in console_lines(report) if "AUROC" in line]  # the terminal's summary, a line per field
    assert said == confidence_console_lines({n: _metrics(out, s) for n, s in zip(("base", "SFT", "SFT+DPO"), STAGES)})
    assert [line.split(":")[0] for line in said] == ["confidence in urgency", "confidence in staff"]

    capsys.readouterr()
    run_compare(CompareConfig(**{**asdict(off), "overrides": TINY}))
    assert "scored every label" not in capsys.readouterr().out and len(loads) == 3

    # a stage scored by an earlier prefopt (no confidence_scoring recorded) is scored again, alone
    old = _metrics(out, "sft")
    assert old["confidence_scoring"] == SCORING and all(_metrics(out, s)["confidence_scoring"] == SCORING
                                                        for s in STAGES)
    (out / "sft" / "metrics.json").write_text(json.dumps({k: v for k, v in old.items() if k != "confidence_scoring"}))
    run_compare(CompareConfig(**{**asdict(off), "overrides": TINY}))
    log = capsys.readouterr().out
    assert "sft: scored every label" in log and log.count("scored every label") == 1
    assert loads[3:] == [out / "sft/train/final"] and calls == [] and _metrics(out, "sft") == old


def test_a_free_text_task_is_not_scored_and_a_bad_value_stops_the_run_before_its_folder(tiny_model, tmp_path,
                                                                                       monkeypatch):
    """MeQSum's answers are free text: its stages are evaluated without confidence (the base stage
    here; the run stops before training). ``confidence=maybe`` is refused before any work, and the
    folder is not claimed."""
    import prefopt.evaluate.compare as compare

    data = formats.write_jsonl(tmp_path / "meqsum.jsonl", formats.meqsum_rows(8))
    with pytest.raises(ValueError, match="confidence: true or false"):
        run_compare(CompareConfig(task="meqsum", model=str(tiny_model), output=str(tmp_path / "bad"),
                                  data=str(data), overrides={**TINY, "confidence": "maybe"}))
    assert not (tmp_path / "bad").exists()

    class Stop(Exception):
        pass

    def stop(*a, **k):
        raise Stop

    monkeypatch.setattr(compare, "_sft", stop)
    out = tmp_path / "run"
    with pytest.raises(Stop):
        run_compare(CompareConfig(task="meqsum", model=str(tiny_model), output=str(out), data=str(data),
                                  overrides={**TINY, "max_new_tokens": 4}))
    assert "rougeL" in _metrics(out, "base")
    assert "confidence" not in _metrics(out, "base") and "confidence" not in _rows(out, "base")[0]


def test_add_confidence_refuses_answers_to_other_items(tiny_model, tmp_path):
    task = get_task("portal")
    records = task.read(None)[:3]
    rows = [{"id": r.id, "prediction": {"urgency": None, "staff": None}} for r in records]
    with pytest.raises(ValueError, match="other items than the test set"):
        add_confidence(None, None, task, records[::-1], tmp_path, rows, {}, batch_size=4)
    assert not (tmp_path / "metrics.json").exists()


def test_the_sections_need_every_stage_scored_and_say_n_a_where_auroc_is_undefined():
    c = {"auroc": None, "auroc_named": None, "named": 1.0, "accuracy_confident_half": 1.0, "accuracy_other_half": None,
         "median": 0.9, "accuracy_likeliest": 1.0}
    scored = {"triage": {"accuracy": 1.0}, "confidence": {"triage": c}}
    assert confidence_lines({"base": {"triage": {}}, "SFT": scored}) == []
    assert confidence_console_lines({"base": {}, "SFT": scored}) == []
    lines = confidence_lines({"SFT": scored})
    assert lines[-1] == "| SFT | triage | 1.000 | 1.000 | — | — | 1.000 | — | 0.900 | 1.000 | — | — |"  # no calibration:
    # a run from before it was measured
    assert confidence_lines({"SFT": {**scored, "confidence": {"triage": {**c, "brier": 0.1234, "ece": 0.05}}}})[-1] \
        == "| SFT | triage | 1.000 | 1.000 | — | — | 1.000 | — | 0.900 | 1.000 | 0.123 | 0.050 |"
    assert confidence_console_lines({"SFT": scored}) == [
        "confidence in triage: AUROC among answers that named a label SFT n/a; accuracy of the likeliest labels "
        "SFT 1.000"]
    few = {"n": 60, "triage": {"accuracy": 0.1}, "confidence": {"triage": {**c, "auroc_named": 0.0, "named": 2 / 60}}}
    assert confidence_console_lines({"base": few, "SFT": {**scored, "n": 60}}) == [
        "confidence in triage: AUROC among answers that named a label base 0.000 (2 of 60 named), SFT n/a; "
        "accuracy of the likeliest labels base 1.000, SFT 1.000"]


def test_the_brier_test_pairs_the_items_and_needs_both_stages_scored():
    from prefopt.evaluate.stage_confidence import brier_comparison_lines, compare_brier

    a = [{"brier": {"urgency": g}} for g in (0.5, 0.2, 1.0, 0.1)]
    b = [{"brier": {"urgency": g}} for g in (0.1, 0.2, 0.4, 0.1)]
    got = compare_brier(a, b, n_resamples=500)["urgency"]
    assert got["delta"] == pytest.approx((0.8 - 1.8) / 4) and got["ci"][0] <= got["delta"] <= got["ci"][1]
    assert compare_brier(a, a, n_resamples=50)["urgency"]["delta"] == 0
    assert compare_brier(a, [{}] * 4) == {}  # a stage scored before Brier scores were kept
    assert brier_comparison_lines({"SFT+DPO vs SFT": {}}) == []
    assert brier_comparison_lines({"SFT+DPO vs SFT": {"urgency": got}})[-1].startswith(
        "| SFT+DPO vs SFT | urgency | -0.250 | [")


def _brute_auroc(conf, right):
    """Right over wrong among all pairs, ties half: the definition, pair by pair."""
    pairs = [(c, d) for c, r in zip(conf, right) if r for d, w in zip(conf, right) if not w]
    return sum((c > d) + 0.5 * (c == d) for c, d in pairs) / len(pairs) if pairs else None


def test_compare_auroc_is_the_paired_bootstrap_of_the_named_answers_auroc_by_hand():
    """Two stages' rows: b's AUROC among named answers against a's, each resample's AUROCs by
    pair counting on the same draws; a resample where either is undefined is left out."""
    rng = np.random.default_rng(5)
    rows = {}
    for stage in ("a", "b"):
        rows[stage] = []
        for i in range(12):
            gold = "x" if i % 2 else "y"
            named = None if (stage == "a" and i in (3, 8)) else ("x" if rng.random() < 0.6 else "y")
            rows[stage].append({"labels": {"f": gold}, "prediction": {"f": named},
                                "confidence": {"f": None if named is None else float(rng.random())}})

    def on(stage, idx):
        kept = [rows[stage][i] for i in idx if rows[stage][i]["confidence"]["f"] is not None]
        return _brute_auroc([r["confidence"]["f"] for r in kept], [r["prediction"]["f"] == r["labels"]["f"]
                                                                   for r in kept])

    got = compare_auroc(rows["a"], rows["b"], n_resamples=400, seed=2)["f"]
    draws = np.random.default_rng(2)
    deltas = []
    for _ in range(400):
        idx = draws.integers(0, 12, 12)
        x, y = on("a", idx), on("b", idx)
        if x is not None and y is not None:
            deltas.append(y - x)
    assert got["delta"] == pytest.approx(on("b", range(12)) - on("a", range(12)))
    assert got.get("n_valid", 400) == len(deltas)
    assert got["ci"] == pytest.approx(list(np.quantile(deltas, [0.025, 0.975])))
    assert got["p_value"] == pytest.approx(min(1.0, 2 * min(np.mean(np.array(deltas) <= 0),
                                                            np.mean(np.array(deltas) >= 0))))
    # a stage whose named answers are all right has no AUROC: no test; unscored rows: nothing
    right = [{**r, "prediction": {"f": r["labels"]["f"]}, "confidence": {"f": 0.5}} for r in rows["a"]]
    assert compare_auroc(right, rows["b"]) == {"f": None}
    assert compare_auroc([{k: v for k, v in r.items() if k != "confidence"} for r in rows["a"]], rows["b"]) == {}
    lines = auroc_comparison_lines({"B vs A": {"f": got}, "B vs C": {"f": None}, "C vs A": {}})
    assert lines[-2] == (f"| B vs A | f | {got['delta']:+.3f} | [{got['ci'][0]:+.3f}, {got['ci'][1]:+.3f}] | "
                         f"{got['p_value']:.3g} | {len(deltas)} of 400 |")
    assert lines[-1].startswith("| B vs C | f | — (undefined in a stage")
    assert auroc_comparison_lines({"B vs A": {}, "B vs C": None}) == []
