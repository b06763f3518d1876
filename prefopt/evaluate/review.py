"""Which answers a person should check: a confidence threshold below which a record goes to review.

A triage team that lets the model sort messages wants it to answer alone only where it is
likely right. ``prefopt eval --confidence`` says, for each threshold of :func:`thresholds`, what
share of the records the model would answer alone (every field's predicted label at or above the
threshold) and how often those answers were right (:func:`review_table`); ``prefopt predict
--review-below P`` then marks each new record whose answer falls below ``P`` in any field, or
names no label, or whose prompt ran past the model's context, in a ``review`` column
(:func:`mark_review`); ``--review-below urgency=0.9,staff=0.7`` gives each field its own (an
urgent message missed may cost more than one sent to the wrong desk: :func:`below_arg`,
:func:`resolve_below`). The threshold is read off labelled records the model did not train on
(a compare run's validation items, a later month), and means most where the probabilities are
calibrated (``--calibration``). ``prefopt compare`` sets its stages' tables side by side on the
test items (:func:`stage_review`, :func:`review_report_lines`), and with ``--set
review_target=A`` chooses each stage's threshold on its validation items
(:mod:`.validated_review`, by :mod:`.target_search`).
"""
from __future__ import annotations

import argparse
from collections.abc import Collection

from .stats import wilson_interval

THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)
LOWER = (0.2, 0.3, 0.4)  # rows below 0.5, where a field's labels are more than two (its answer may be less sure)
COLUMN = "review"
DIGITS = 4  # a confidence as predict's confidence_<field> column holds it, and the table compares it
PAST_CONTEXT = "past the model's context"  # a review reason: the record's prompt ran past it


def check_threshold(value: float, flag: str = "--review-below", name: str = "") -> None:
    """Refuse a ``--review-below`` (field ``name``'s, where given) or ``--review-target`` that is
    not a probability strictly between 0 and 1."""
    if not 0 < value < 1:
        raise ValueError(f"{flag} {name + '=' if name else ''}{value:g}: a probability between 0 and 1 " + (
            "(0.9: an answer the model gives less than 90% goes to review)" if flag == "--review-below" else
            "(0.95: the records the model answers alone should be right at least 95% of the time)"))


def below_arg(text: str) -> float | dict:
    """An argparse type: ``--review-below``'s ``P`` (every field's threshold), or one per field,
    ``urgency=0.9,staff=0.7``, where a bare ``P`` among them is the threshold of the fields not
    named (``0.7,urgency=0.9``): a float, or ``{field: P}`` with the bare one under ``""``. Only
    the form is read here; :func:`resolve_below` checks the fields and the values against the task."""
    try:
        return float(text)
    except ValueError:
        pass
    out: dict = {}
    for part in text.split(","):
        name, eq, value = part.partition("=")
        name = name.strip() if eq else ""
        try:
            out_value = float(value if eq else part)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{part.strip()!r} in {text!r}: expected P or FIELD=P, comma-separated (0.8, or "
                "urgency=0.9,staff=0.7, or 0.7,urgency=0.9: a bare P for the fields not named)") from None
        if eq and not name:
            raise argparse.ArgumentTypeError(f"{part.strip()!r} in {text!r}: a field's name before the '='")
        if name in out:
            raise argparse.ArgumentTypeError(
                f"{text!r} gives {'the fields not named' if not name else name} two thresholds: give one")
        out[name] = out_value
    return out


def resolve_below(task, below: float | dict, flag: str = "--review-below") -> float | dict:
    """:func:`below_arg`'s value for ``task``: a float where every field has one threshold, else
    ``{field: P}`` for each of its fields, in their order; refused where a value is not a
    probability strictly between 0 and 1, a name is not one of the task's fields, or a field is
    left without one."""
    if not isinstance(below, dict):
        check_threshold(below, flag)
        return below
    names = [f.name for f in task.fields]
    unknown = [k for k in below if k and k not in names]
    if unknown:
        raise ValueError(f"{flag}: {task.name} has no field {', '.join(map(repr, unknown))}; its fields: "
                         f"{', '.join(names)}")
    for k, value in below.items():
        check_threshold(value, flag, k)
    missing = [k for k in names if k not in below and "" not in below]
    if missing:
        raise ValueError(f"{flag}: no threshold for {', '.join(missing)} (each field needs one: name it, or give a "
                         f"bare P for the fields not named, as in {flag} 0.7,{names[0]}=0.9)")
    out = {k: below.get(k, below.get("")) for k in names}
    return out[names[0]] if len(set(out.values())) == 1 else out


def below_of(below: float | dict, name: str) -> float:
    """Field ``name``'s threshold under :func:`resolve_below`'s value ``below``."""
    return below[name] if isinstance(below, dict) else below


def thresholds(task) -> tuple[float, ...]:
    """The thresholds :func:`review_table` reports for ``task``: :data:`THRESHOLDS`, after those of
    :data:`LOWER` above one over the most labels a field has (a field of five labels may give its
    answer at 0.3; below that share every answer is given, so such a row says nothing new)."""
    most = max((len(f.labels) for f in task.fields), default=2)
    return tuple(t for t in LOWER if t > 1 / most) + THRESHOLDS


def review_table(task, records, preds: list[dict], sure: list[dict], below: float | dict | None = None) -> dict:
    """For each threshold of :func:`thresholds` (and ``below``, a threshold of one's own, in its
    place among them, where given: eval's ``--review-below``), the records the model would answer
    alone (every field's predicted label given at least that probability, to :data:`DIGITS`
    decimals as predict's column holds it: ``sure``, :func:`~.confidence.chosen`, None where the
    answer named no label) as ``{"threshold", "n"`` (how many), ``"kept"`` (their
    share of the records), ``"right"`` (the share of those with every field right; None where none
    is kept), ``"ci"`` (its 95% CI, Wilson's: few records kept say little)``}``, under
    ``"records"``; the same per field under ``"fields"`` (a field's answer kept and right); the
    number of records, ``"n"``; and ``"review_below"``, where given. A ``below`` of one threshold
    per field (:func:`resolve_below`'s dict) is each field's own row in its place under
    ``"fields"`` and the last row under ``"records"``, its ``"threshold"`` that dict."""
    names = [f.name for f in task.fields]
    sure, right = as_compared(task, records, preds, sure)
    out: dict = {"n": len(records), "records": [], "fields": {k: [] for k in names},
                 **({"review_below": below} if below is not None else {})}
    own = [] if below is None or isinstance(below, dict) else [below]
    for t in sorted({*thresholds(task), *own}):
        out["records"].append(_kept_row(t, {k: t for k in names}, sure, right))
    if isinstance(below, dict):
        out["records"].append(_kept_row(dict(below), below, sure, right))
    for k in names:
        for t in sorted({*thresholds(task), *([] if below is None else [below_of(below, k)])}):
            out["fields"][k].append(_kept_row(t, {k: t}, sure, right))
    return out


def _kept_row(threshold: float | dict, at: dict, sure: list[dict], right: list[dict]) -> dict:
    """The :func:`table_row` of the records whose fields ``at`` names are each given at least its
    threshold there, right where those fields are."""
    kept = [i for i, s in enumerate(sure) if all(s[k] is not None and s[k] >= t for k, t in at.items())]
    return table_row(threshold, len(kept), len(sure), sum(all(right[i][k] for k in at) for i in kept))


def stage_review(task, test, rows: list[dict]) -> dict | None:
    """A ``prefopt compare`` stage's :func:`review_table` on the test items ``test`` (its
    ``predictions.jsonl`` ``rows``, in their order), by the confidence ``predict`` would give:
    calibrated by the stage's temperature where the run fitted one on its validation items
    (``confidence_calibrated``), else as the model gives it; with ``"confidence"``, which. None
    where the stage's labels were not scored."""
    key = confidence_key(rows)
    if key is None:
        return None
    preds, sure = [row["prediction"] for row in rows], [row[key] for row in rows]
    return {"confidence": key, **review_table(task, test, preds, sure)}


def confidence_key(rows: list[dict]) -> str | None:
    """The confidence an evaluation's ``rows`` are read at: ``confidence_calibrated`` where every
    row holds it (a compare stage's test rows, where the run fitted a temperature on its
    validation items), else ``confidence``, the one its eval wrote; None where a row holds neither."""
    return next((k for k in ("confidence_calibrated", "confidence")
                 if rows and all(isinstance(row.get(k), dict) for row in rows)), None)


def review_report_lines(stages: dict[str, dict | None]) -> list[str]:
    """report.md's table of :func:`stage_review` for each stage (``{stage's name: its review}``)
    side by side: at each threshold, how many test items each stage would answer alone and how
    often rightly; nothing where no stage was scored."""
    stages = {name: r for name, r in stages.items() if r}
    if not stages:
        return []
    calibrated = [name for name, r in stages.items() if r["confidence"] == "confidence_calibrated"]
    n = next(iter(stages.values()))["n"]
    how = ("calibrated by the temperature each stage fitted on the validation items, as `prefopt predict "
           "--calibration` gives it" if len(calibrated) == len(stages) else
           f"calibrated for {', '.join(calibrated)}, as the model gives it for the others" if calibrated else
           "uncalibrated, as the model gives it")
    lines = [f"Answered alone: how many of the {n} test items each stage would answer without a person's review at "
             f"each confidence (every field's predicted label given at least that probability, {how}; the others "
             "go to review: `prefopt predict --review-below P`), and the share of those right in every field, with "
             "its 95% CI (Wilson's). A threshold read off this table flatters it: choose it on other labelled items "
             "(`prefopt eval --confidence --review-target A` on the validation items) and check it here.", "",
             "| confidence ≥ | " + " | ".join(stages) + " |", "|---|" + "---|" * len(stages)]
    for i, row in enumerate(next(iter(stages.values()))["records"]):  # (the task's thresholds, the same in each)
        lines.append(f"| {row['threshold']:g} | " + " | ".join(_cell(r["records"][i]) for r in stages.values()) + " |")
    return lines


def _cell(row: dict) -> str:
    if not row["n"]:
        return "0"
    return f"{row['n']} ({row['kept']:.0%}): {row['right']:.3f} [{row['ci'][0]:.3f}, {row['ci'][1]:.3f}]"


def as_compared(task, records, preds: list[dict], sure: list[dict]) -> tuple[list[dict], list[dict]]:
    """Each record's confidence per field as predict's column holds it (to :data:`DIGITS`
    decimals; None where the answer named no label), and whether each field's answer was right."""
    names = [f.name for f in task.fields]
    return ([{k: None if s[k] is None else round(s[k], DIGITS) for k in names} for s in sure],
            [{k: pred.get(k) == r.labels[k] for k in names} for pred, r in zip(preds, records)])


def table_row(threshold: float | dict, kept: int, n: int, right: int) -> dict:
    """A row of :func:`review_table`: ``kept`` of ``n`` records answered alone at ``threshold``,
    ``right`` of them right in every field."""
    return {"threshold": threshold, "n": kept, "kept": kept / n if n else 0.0, "right": right / kept if kept else None,
            "ci": list(wilson_interval(right, kept)) if kept else None}


def review_lines(table: dict) -> list[str]:
    """:func:`review_table` in words: for each threshold, how many records the model would answer
    alone and how often they were right, with its 95% CI (the others to review), ``--review-below``'s
    own threshold marked; per field where there are several."""
    own = table.get("review_below")

    def said(rows: list[dict], name: str | None = None) -> str:
        mine = own if name is None or own is None else below_of(own, name)
        return "; ".join(f"{at_text(r['threshold'])}{' (--review-below)' if r['threshold'] == mine else ''}: "
                         f"{r['n']} of {table['n']}" + (
            f", {r['right']:.3f} right [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]" if r["right"] is not None else "")
            for r in rows)

    lines = [f"records answered alone at each confidence (the others to review: predict --review-below P): "
             f"{said(table['records'])}"]
    if len(table["fields"]) > 1:
        lines += [f"  {name} alone: {said(rows, name)}" for name, rows in table["fields"].items()]
    return lines


def at_text(threshold: float | dict) -> str:
    """A row's threshold in words: ``>= 0.8``, or one per field, ``urgency >= 0.9, staff >= 0.7``."""
    if isinstance(threshold, dict):
        return ", ".join(f"{k} >= {t:g}" for k, t in threshold.items())
    return f">= {threshold:g}"


def mark_review(task, rows: list[dict], below: float | dict, past: Collection[str] = ()) -> list[dict]:
    """``rows`` (:func:`~.new_records.prediction_rows`, with their ``confidence_<field>``
    columns) each with a ``review`` column before ``model_output`` (in place of one the input
    had): empty where every field's predicted label has at least probability ``below`` (its own,
    where :func:`resolve_below` gave one per field), as the
    column holds it (to :data:`DIGITS` decimals), else why it is not, in those figures
    (``urgency 0.6213; staff no label``); and ``past the model's context`` first for the records
    whose ids are in ``past`` (their prompts ran past it: :func:`~.runner.past_context_said`),
    however sure the model was."""
    names = [f.name for f in task.fields]
    out = []
    for row in rows:
        why = "; ".join([PAST_CONTEXT] * (row["record"] in past) + [
            f"{k} no label" if row[f"confidence_{k}"] == "" else f"{k} {row[f'confidence_{k}']:g}"
            for k in names if row[f"confidence_{k}"] == "" or row[f"confidence_{k}"] < below_of(below, k)])
        items = [(k, v) for k, v in row.items() if k != COLUMN]  # (an earlier run's column renewed)
        at = [k for k, _ in items].index("model_output")
        out.append(dict([*items[:at], (COLUMN, why), *items[at:]]))
    return out
