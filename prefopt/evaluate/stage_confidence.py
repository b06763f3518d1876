"""``prefopt compare``'s confidence: how sure each stage is of its answers, and whether that tells
right answers from wrong.

With the ``confidence`` setting (on by default) and a task whose answers are labels
(:func:`~.confidence.scorable`), each stage's every possible answer is scored after each test
prompt (:func:`~.confidence.label_probabilities`). The stage's ``metrics.json`` gains
``confidence`` (:func:`~.confidence.confidence_metrics`), and each line of its
``predictions.jsonl`` the probability of each predicted label (``confidence``) and the
``likeliest`` labels, as ``prefopt eval --confidence`` writes them. A stage answered before (by an
earlier run, or one without the setting) is scored without answering again. The report sets the
stages side by side (:func:`confidence_lines`): DPO sharpens a model's preferences, and a stage
that is more accurate may still be less able to say which of its answers to check.

``metrics.json`` records how the answers were scored (``confidence_scoring``,
:data:`~.confidence.SCORING`); a stage scored by an earlier prefopt that scored them otherwise is
scored again.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..fileio import jsonl_text, write_json_atomic, write_text_atomic
from .confidence import (
    SCORING,
    answer_logprobs,
    auroc,
    brier_gaps,
    chosen,
    confidence_metrics,
    marginals,
    scorable,
    scored_answers,
)
from .pooling import p_cell
from .stats import p_text, paired_bootstrap
from .temperature import fit_temperature


def scored(metrics: dict) -> bool:
    """Whether a stage's ``metrics`` hold confidence scored as prefopt scores it now."""
    return "confidence" in metrics and metrics.get("confidence_scoring") == SCORING


def wanted(task, settings: dict) -> bool:
    """Whether a compare run with ``settings`` scores ``task``'s stages' labels."""
    return bool(settings.get("confidence")) and scorable(task) is None


VAL_PROBABILITIES = "val_probabilities.jsonl"  # in a stage's folder: the validation items' labels' probabilities


def complete(metrics: dict, val: list | None, rows: list[dict] = (), out_dir: str | Path | None = None) -> bool:
    """Whether a stage's ``metrics`` and ``rows`` (in ``out_dir``) hold all a run with
    validation items ``val`` adds: its confidence scored as now, and with ``val`` its
    calibration on them, each row's calibrated confidence and the validation items' calibrated
    probabilities (:data:`VAL_PROBABILITIES`) too (which a run before 2026-12-07 did not keep:
    its stages are scored again)."""
    return scored(metrics) and (not val or "calibrated" in metrics and all("confidence_calibrated" in r for r in rows)
                                and (out_dir is None or (Path(out_dir) / VAL_PROBABILITIES).is_file()))


def add_confidence(model, tok, task, test, out_dir: str | Path, rows: list[dict], metrics: dict, *,
                   batch_size: int, desc: str = "scoring labels", val: list | None = None) -> tuple[list[dict], dict]:
    """A finished evaluation's ``rows`` and ``metrics`` (:func:`~.runner.read_results` of
    ``out_dir``, made on ``test``) with ``model``'s confidence added; both files rewritten
    atomically, the predictions first (the metrics' ``confidence`` marks the work done). With
    validation items ``val``, the temperature fitted on them calibrates the test items' label
    probabilities too (:func:`calibrated_on`): ``metrics["calibrated"]`` and each row's
    ``brier_calibrated`` and ``confidence_calibrated`` (the predicted labels' probabilities as
    ``predict --calibration`` gives them); and the validation items' label probabilities,
    calibrated, are written to :data:`VAL_PROBABILITIES` (``{"id", "probabilities"}`` a line: a
    review threshold is chosen on them, :mod:`.validated_review`)."""
    if [row["id"] for row in rows] != [r.id for r in test]:
        raise ValueError(f"{out_dir}: predictions.jsonl answers other items than the test set; delete the folder "
                         "to evaluate the stage again")
    answers = answer_logprobs(model, tok, task, test, batch_size=batch_size, desc=desc)
    preds = [row["prediction"] for row in rows]
    summary, per_row = scored_answers(task, test, preds, [marginals(task, a) for a in answers])
    metrics = {**metrics, "confidence": summary, "confidence_scoring": SCORING}
    if val:
        on_val = answer_logprobs(model, tok, task, val, batch_size=batch_size, desc=f"{desc} (validation items)")
        metrics["calibrated"], per_row["brier_calibrated"], per_row["confidence_calibrated"] = calibrated_on(
            task, val, on_val, test, preds, answers)
        t = metrics["calibrated"]["temperature"]
        write_text_atomic(Path(out_dir) / VAL_PROBABILITIES, jsonl_text(
            {"id": r.id, "probabilities": marginals(task, a, t)} for r, a in zip(val, on_val)))
    rows = [{**row, **{k: v[i] for k, v in per_row.items()}} for i, row in enumerate(rows)]
    out = Path(out_dir)
    write_text_atomic(out / "predictions.jsonl", jsonl_text(rows))
    write_json_atomic(out / "metrics.json", metrics)
    return rows, metrics


def calibrated_on(task, val: list, val_answers: list, test: list, preds: list[dict], test_answers: list
                  ) -> tuple[dict, list[dict[str, float]], list[dict[str, float | None]]]:
    """The temperature fitted on the validation items ``val`` (their answers' log-probs,
    :func:`~.confidence.answer_logprobs`; :func:`~.temperature.fit_temperature`) and what it does
    to the test items' probabilities: ``temperature``, the fit's figures, and per field the test
    items' ``brier`` and ``ece`` calibrated (``fields``); each test item's Brier calibrated; and
    each one's confidence in its predicted labels calibrated (:func:`~.confidence.chosen`)."""
    fit = fit_temperature(task, val, val_answers)
    probabilities = [marginals(task, a, fit["temperature"]) for a in test_answers]
    metrics = confidence_metrics(task, test, preds, probabilities)
    return ({**fit, "fitted_on": len(val),
             "fields": {name: {"brier": c["brier"], "ece": c["ece"]} for name, c in metrics.items()}},
            brier_gaps(task, test, probabilities), chosen(task, preds, probabilities))


def compare_calibrated(rows: list[dict], *, n_resamples: int = 2000, seed: int = 0) -> dict[str, dict]:
    """Per field, a stage's Brier score calibrated (each row's ``brier_calibrated``) against its
    own at T = 1 (``brier``), by the paired bootstrap over the test items; empty where the rows
    hold none (no validation items)."""
    if not rows or not all("brier_calibrated" in row and "brier" in row for row in rows):
        return {}
    return {name: paired_bootstrap(_mean_gap(rows, "brier", name), _mean_gap(rows, "brier_calibrated", name),
                                   len(rows), n_resamples=n_resamples, seed=seed) for name in rows[0]["brier"]}


def _mean_gap(rows: list[dict], key: str, name: str):
    """The mean over a resample of rows (their indices) of each row's ``key`` (a Brier gap) for
    field ``name``: a statistic for :func:`~.stats.paired_bootstrap`."""
    gaps = np.array([row[key][name] for row in rows], dtype=float)
    return lambda idx: float(gaps[idx].mean())


def compare_auroc(rows_a: list[dict], rows_b: list[dict], *, n_resamples: int = 2000, seed: int = 0
                  ) -> dict[str, dict | None]:
    """Per field, stage b's AUROC among the answers that named a label against stage a's, by the
    paired bootstrap over the same test items (``rows_*``: two stages' ``predictions.jsonl``
    rows, scored). None for a field where either AUROC is undefined on all the items; resamples
    on which one is undefined are left out (``n_valid``). Empty where a stage was not scored."""
    if not all("confidence" in row for row in rows_a + rows_b):
        return {}
    return {name: _auroc_test(rows_a, rows_b, name, n_resamples, seed) for name in rows_a[0]["confidence"]}


def compare_brier(rows_a: list[dict], rows_b: list[dict], *, n_resamples: int = 2000, seed: int = 0
                  ) -> dict[str, dict]:
    """Per field, stage b's Brier score against stage a's, by the paired bootstrap over the same
    test items (each row's ``brier``: :func:`~.confidence.brier_gaps`). Empty where a stage's rows
    hold none (not scored, or scored before 2026-12-06)."""
    if not all("brier" in row for row in rows_a + rows_b):
        return {}
    return {name: paired_bootstrap(_mean_gap(rows_a, "brier", name), _mean_gap(rows_b, "brier", name), len(rows_a),
                                   n_resamples=n_resamples, seed=seed) for name in rows_a[0]["brier"]}


def _auroc_test(rows_a, rows_b, name, n_resamples, seed) -> dict | None:
    def stat(rows):
        conf = np.array([np.nan if r["confidence"][name] is None else r["confidence"][name] for r in rows])
        right = np.array([r["prediction"].get(name) == r["labels"][name] for r in rows])

        def on(idx: np.ndarray) -> float:
            named = ~np.isnan(conf[idx])
            a = auroc(conf[idx][named], right[idx][named])
            return np.nan if a is None else a
        return on

    a, b = stat(rows_a), stat(rows_b)
    everything = np.arange(len(rows_a))
    if np.isnan(a(everything)) or np.isnan(b(everything)):
        return None
    return paired_bootstrap(a, b, len(rows_a), n_resamples=n_resamples, seed=seed)


def confidence_lines(stages: dict[str, dict]) -> list[str]:
    """report.md's Confidence section for ``stages`` (``{stage's name: its metrics}``), or nothing
    where a stage was not scored."""
    if not stages or any("confidence" not in m for m in stages.values()):
        return []
    lines = ["## Confidence", "",
             "Each stage scored every possible answer after each test prompt; a label's probability is the share of "
             "the answers that name it. AUROC: how well the probability of the label an answer named tells right "
             "answers from wrong (0.5: not at all; —: all right or all wrong), over all answers (one that named no "
             "label counts as 0, so it ranks last and is wrong) and over those that named a label. Where many named "
             "none, the first mostly tells those from the rest; the second says whether the probability itself "
             "sorts the answers. The likeliest labels are those given the highest probability: the model's best "
             "guess, also where its answer named none. Calibration, of the probabilities themselves: Brier, the "
             "mean squared gap between each label's probability and the truth (1 for the record's label, 0 for the "
             "others; 0 best, 2 worst), and ECE, the gap between the likeliest label's probability and how often it "
             "is right, over ten bins of probability (0: a label given 0.8 is right 8 times in 10).", "",
             "| stage | field | accuracy of the answers | named a label | AUROC, all answers | AUROC, those named | "
             "accuracy, more confident half | the others | median confidence | accuracy of the likeliest labels | "
             "Brier | ECE |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for stage, m in stages.items():
        for name, c in m["confidence"].items():
            lines.append(f"| {stage} | {name} | {fmt(m.get(name, {}).get('accuracy'))} | {fmt(c.get('named'))} | "
                         f"{fmt(c['auroc'])} | {fmt(c.get('auroc_named'))} | {fmt(c['accuracy_confident_half'])} | "
                         f"{fmt(c['accuracy_other_half'])} | {fmt(c['median'])} | "
                         f"{fmt(c['accuracy_likeliest'])} | {fmt(c.get('brier'))} | {fmt(c.get('ece'))} |")
    return lines


def auroc_comparison_lines(comparisons: dict[str, dict]) -> list[str]:
    """report.md's table of :func:`compare_auroc` for each comparison (``{"SFT+DPO vs SFT":
    {field: result or None}}``), or nothing where none was made."""
    if not any(comparisons.values()):
        return []
    lines = ["Paired bootstrap of the AUROC among answers that named a label, over the same test items (a "
             "resample holding only right or only wrong named answers has no AUROC and is left out):", "",
             "| comparison | field | ΔAUROC, named | 95% CI | bootstrap p | resamples used |",
             "|---|---|---|---|---|---|"]
    for label, fields in comparisons.items():
        for name, c in (fields or {}).items():
            if c is None:
                lines.append(f"| {label} | {name} | — (undefined in a stage: its named answers all right, all "
                             "wrong, or none) | | | |")
                continue
            lines.append(f"| {label} | {name} | {c['delta']:+.3f} | [{c['ci'][0]:+.3f}, {c['ci'][1]:+.3f}] | "
                         f"{p_text(c).lstrip('= ')} | {c.get('n_valid', c['n_resamples'])} of {c['n_resamples']} |")
    return lines


def brier_comparison_lines(comparisons: dict[str, dict]) -> list[str]:
    """report.md's table of :func:`compare_brier` for each comparison (``{"SFT+DPO vs SFT": {field:
    result}}``), or nothing where none was made."""
    if not any(comparisons.values()):
        return []
    lines = ["Paired bootstrap of the Brier score (lower: label probabilities nearer the truth, by their "
             "calibration and their sharpness both), over the same test items:", "",
             "| comparison | field | ΔBrier | 95% CI | bootstrap p |", "|---|---|---|---|---|"]
    for label, fields in comparisons.items():
        for name, c in (fields or {}).items():
            lines.append(f"| {label} | {name} | {c['delta']:+.3f} | [{c['ci'][0]:+.3f}, {c['ci'][1]:+.3f}] | "
                         f"{p_text(c).lstrip('= ')} |")
    return lines


def calibrated_lines(stages: dict[str, dict], tests: dict[str, dict]) -> list[str]:
    """report.md's table of each stage calibrated on the validation items (``stages``: ``{stage's
    name: its metrics}``, those with ``calibrated``; ``tests``: ``{stage's name:``
    :func:`compare_calibrated` ``}``), or nothing where the run held no validation items out."""
    cal = {stage: m for stage, m in stages.items() if "calibrated" in m and "confidence" in m}
    if not cal:
        return []
    n = next(iter(cal.values()))["calibrated"]["fitted_on"]
    lines = [f"Calibrated: each stage's label probabilities divided by the temperature T fitted on the {n} validation "
             "items (by the likelihood of their right answers; T > 1: the stage was too sure, T < 1: not sure enough), "
             "then scored on the test items, against the same at T = 1 by the paired bootstrap (ΔBrier < 0: nearer the "
             "truth). Each stage's folder holds its temperature in `calibration.json`, for `prefopt predict "
             "--calibration` (docs/evaluation.md, \"Calibrating the probabilities\").", "",
             "| stage | T | field | Brier | calibrated | ΔBrier [95% CI], p | ECE | calibrated |",
             "|---|---|---|---|---|---|---|---|"]
    for stage, m in cal.items():
        c = m["calibrated"]
        bound = bound_text(c)
        for name, f in c["fields"].items():
            plain, t = m["confidence"][name], tests.get(stage, {}).get(name)
            lines.append(f"| {stage} | {c['temperature']:.3f}{bound} | {name} | {fmt(plain.get('brier'))} | "
                         f"{fmt(f['brier'])} | {paired_text(t)} | {fmt(plain.get('ece'))} | {fmt(f['ece'])} |")
    return lines


def confidence_console_lines(stages: dict[str, dict]) -> list[str]:
    """Per field, each stage's AUROC among the answers that named a label and its likeliest-label
    accuracy, in a line for a terminal."""
    if not stages or any("confidence" not in m for m in stages.values()):
        return []
    return [f"confidence in {name}: AUROC among answers that named a label " + ", ".join(
                f"{s} {auroc_named_text(m['confidence'][name], m.get('n'), 'n/a')}" for s, m in stages.items())
            + "; accuracy of the likeliest labels " + ", ".join(
                f"{s} {fmt(m['confidence'][name]['accuracy_likeliest'])}" for s, m in stages.items())
            for name in next(iter(stages.values()))["confidence"]]


def auroc_named_text(c: dict, n: int | None, none: str = "—") -> str:
    """A field's AUROC among the answers that named a label (``c``: its :func:`~.confidence.confidence_metrics`),
    with how many of the ``n`` answers did where not all did: "0.933 (8 of 60 named)"."""
    text, named = fmt(c.get("auroc_named"), none), c.get("named")
    return text if named is None or named == 1 or n is None else f"{text} ({round(named * n)} of {n} named)"


def paired_text(c: dict | None) -> str:
    """A paired bootstrap's result (or a pooled one's) in a table's cell: "+0.004 [-0.025, +0.033],
    p 0.788", or "—" where there is none."""
    if c is None:
        return "—"
    return f"{c['delta']:+.3f} [{c['ci'][0]:+.3f}, {c['ci'][1]:+.3f}], p {p_cell(c)}"


def bound_text(c: dict) -> str:
    """A fitted temperature's note where it hit a bound of the search (``calibrated``'s ``bound``)."""
    return {"high": " (the highest tried)", "low": " (the lowest tried)"}.get(c.get("bound"), "")


def fmt(v, none: str = "—") -> str:
    """A figure to three decimals, or ``none`` where it is undefined."""
    return none if v is None else f"{v:.3f}"
