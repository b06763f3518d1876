"""Which answers a person should check: a confidence threshold below which a record goes to review.

A triage team that lets the model sort messages wants it to answer alone only where it is
likely right. ``prefopt eval --confidence`` says, for each threshold of :func:`thresholds`, what
share of the records the model would answer alone (every field's predicted label at or above the
threshold) and how often those answers were right (:func:`review_table`); ``prefopt predict
--review-below P`` then marks each new record whose answer falls below ``P`` in any field, or
names no label, or whose prompt ran past the model's context, in a ``review`` column
(:func:`mark_review`). The threshold is read off labelled records the model did not train on (a
compare run's validation items, a later month), and means most where the probabilities are
calibrated (``--calibration``). ``prefopt compare`` sets its stages' tables side by side on the
test items (:func:`stage_review`, :func:`review_report_lines`), and with ``--set
review_target=A`` chooses each stage's threshold on its validation items
(:mod:`.validated_review`).
"""
from __future__ import annotations

import math
from collections.abc import Collection

from .stats import binomial_at_least, exact_lower, wilson_interval

THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)
LOWER = (0.2, 0.3, 0.4)  # rows below 0.5, where a field's labels are more than two (its answer may be less sure)
COLUMN = "review"
DIGITS = 4  # a confidence as predict's confidence_<field> column holds it, and the table compares it
PAST_CONTEXT = "past the model's context"  # a review reason: the record's prompt ran past it
TAIL = 0.025  # review_target's test: one side of a 95% CI
START = 0.25  # review_target's search starts where this share of the records is kept
COUNTED = 2000  # records_needed counts up one by one to here


def check_threshold(value: float, flag: str = "--review-below") -> None:
    """Refuse a ``--review-below`` (or ``--review-target``) that is not a probability strictly
    between 0 and 1."""
    if not 0 < value < 1:
        raise ValueError(f"{flag} {value:g}: a probability between 0 and 1 " + (
            "(0.9: an answer the model gives less than 90% goes to review)" if flag == "--review-below" else
            "(0.95: the records the model answers alone should be right at least 95% of the time)"))


def review_target(task, records, preds: list[dict], sure: list[dict], target: float) -> dict:
    """The review threshold for answers right at least ``target`` of the time, by a search that
    does not flatter the records it reads (fixed-sequence testing, as in Angelopoulos et al.'s
    Learn then Test, 2021). The thresholds that tell these records apart (each record's least
    confident field, within (0, 1) as ``--review-below`` takes it; records kept: every field's
    label at least that probability, to :data:`DIGITS` decimals, as :func:`review_table` counts
    them) are tried from the one that keeps :data:`START` of the records (or the :func:`fewest`
    it takes to reach ``target`` even all right, where more) down, and the search stops at the
    first whose records kept, all fields right, do not reach ``target`` by the exact 95% CI's
    lower end (:func:`~.stats.exact_lower`: :func:`reaches`); the threshold is the last one
    passed. Tried so, in an order fixed before any answer is looked at, the chance that a
    threshold so chosen is right less than ``target`` of the time on records drawn like these
    stays about 2.5%, however many were tried; the lowest of all that reach it would not
    (``benchmarks/bench_review_target.py``). The higher thresholds are left out: each record
    they keep, tried one by one, is one more chance for the search to stop on a wrong answer by
    bad luck before it reaches the thresholds that keep enough records to allow for some.

    Returns ``{"target", "n_records"`` (how many records), ``"fewest"``, ``"first"`` (the records
    kept where the search starts), ``"threshold"`` (None where none was reached), then
    :func:`review_table`'s row of the records kept there (``"n"``, ``"kept"``, ``"right"``,
    ``"ci"``, Wilson's, as the table's) with ``"lower"`` (the exact lower end) and ``"stopped"``
    (the row the search stopped at, None where none failed)``}``; where none was reached,
    ``"best"``: the row it stopped at, or where no threshold kept enough records, the one that kept
    the most (None where no record named every label)."""
    sure, right = _as_compared(task, records, preds, sure)
    least = [None if None in s.values() else min(s.values()) for s in sure]
    surest = sorted(((x, all(ok.values())) for x, ok in zip(least, right) if x is not None), reverse=True)
    rows, kept, good = [], 0, 0  # (the most confident first)
    for i, (x, ok) in enumerate(surest):  # kept from x up: the records down to the last of x (one pass, sorted)
        kept, good = kept + 1, good + ok
        if (i + 1 == len(surest) or surest[i + 1][0] != x) and 0 < x < 1:
            rows.append(_row(x, kept, len(records), good) | {"good": good})
    need = fewest(target)
    first = max(need, math.ceil(START * len(records)))
    passed = stopped = None
    for r in (r for r in rows if r["n"] >= first):
        if not reaches(r["good"], r["n"], target):
            stopped = r
            break
        passed = r
    out = {"target": target, "n_records": len(records), "fewest": need, "first": first}
    if passed is not None:
        return out | _exact(passed) | {"stopped": stopped and _exact(stopped)}
    best = _exact(stopped or (rows[-1] if rows else None))
    return out | {"threshold": None, "best": best, "needed": best and records_needed(best["right"], target)}


def fewest(target: float) -> int:
    """How many records kept, all right, it takes to reach ``target`` by the exact 95% CI's lower
    end (:func:`reaches`): 6 for 0.5, 17 for 0.8, 36 for 0.9, 72 for 0.95."""
    n = max(1, math.ceil(math.log(TAIL) / math.log(target)) - 1)
    while not reaches(n, n, target):
        n += 1
    return n


def records_needed(share: float, target: float, most: int = 1_000_000) -> int | None:
    """About how many records kept, right ``share`` of the time, it takes to show ``target`` by
    :func:`reaches` (``share`` of them right, rounded down): the fewest, counted up one by one to
    :data:`COUNTED` (the share rounded, a few more may fail again), then found by halving; None
    where ``share`` is not above ``target`` (no count would) or it takes more than ``most``."""
    if share <= target:
        return None

    def shown(n: int) -> bool:
        return reaches(math.floor(share * n + 1e-9), n, target)

    if (n := next((n for n in range(1, COUNTED + 1) if shown(n)), None)) is not None:
        return n
    lo, hi = COUNTED, 2 * COUNTED
    while not shown(hi):
        if hi > most:
            return None
        lo, hi = hi, 2 * hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if shown(mid) else (mid, hi)
    return hi


def reaches(right: int, n: int, target: float) -> bool:
    """Whether ``right`` of ``n`` records right show a share of at least ``target``: were it less,
    so many would come right at most :data:`TAIL` of the time (the exact 95% CI's lower end at
    ``target`` or above, :func:`~.stats.exact_lower`)."""
    return binomial_at_least(right, n, target) <= TAIL


def _exact(row: dict | None) -> dict | None:
    """A row of :func:`review_target`'s search with the exact lower end of its share right
    (``"lower"``) in place of the count it is read off."""
    if row is None:
        return None
    row = dict(row)
    return row | {"lower": exact_lower(row.pop("good"), row["n"])}


def target_line(found: dict) -> str:
    """:func:`review_target` in words."""
    goal = (f"right at least {found['target']:g} of the time (the exact 95% CI's lower end, thresholds tried downward "
            f"from the one that keeps {found['first']} records until one falls short)")
    n_records = found["n_records"]
    if found["threshold"] is not None:
        t, stopped = found["threshold"], found["stopped"]
        below = f"; below it, from {stopped['threshold']:g} up: {_figures(stopped, n_records)}" if stopped else ""
        return (f"the records answered alone were {goal} from confidence {t:g} up: review below {t:g} "
                f"({_figures(found, n_records)}{below}); check it on other records too: eval --confidence "
                f"--review-below {t:g}")
    best, first = found.get("best"), found["first"]
    if best is None:
        near = ""
    elif best["n"] >= first:
        near = f"; the first threshold tried, {best['threshold']:g}: {_figures(best, n_records)}"
    else:
        near = (f"; the search starts where {first} are answered alone ({_start(found)}) and at most {best['n']} "
                f"were (from {best['threshold']:g} up: {_figures(best, n_records)})")
    return f"at no threshold were the records answered alone {goal} on these {n_records} records{near}" + (
        f"; {more}" if (more := needed_text(found)) else "; more labelled records narrow the CI")


def needed_text(found: dict) -> str:
    """Where :func:`review_target` reached no threshold: how many records like these it would take
    to show its target at the share right where the search stopped (its ``"needed"``), in words;
    "" where it did not say (a file from before 2026-12-07, or no row)."""
    best, needed = found.get("best"), found.get("needed")
    if best is None or "needed" not in found:
        return ""
    if needed is None:
        return f"right {best['right']:.3f} of the time there, more records would not show {found['target']:g}"
    return (f"at the {best['right']:.3f} right there, about {needed} answered alone would show {found['target']:g}: "
            f"some {items_needed(found)} records like these")


def items_needed(found: dict) -> int | None:
    """:func:`review_target`'s ``"needed"`` as records in all (kept at the share its row kept)."""
    best, needed = found.get("best"), found.get("needed")
    return math.ceil(needed * found["n_records"] / best["n"]) if best and needed else None


def _start(found: dict) -> str:
    """Why :func:`review_target`'s search starts where it does, in words."""
    if found["first"] > found["fewest"]:
        return f"{START:.0%} of the {found['n_records']} records"
    return f"the fewest that, all right, reach {found['target']:g}"


def _figures(row: dict, n_records: int) -> str:
    return (f"{row['n']} of {n_records} answered alone, {row['right']:.3f} right [{row['ci'][0]:.3f}, "
            f"{row['ci'][1]:.3f}], exact lower end {row['lower']:.3f}")


def thresholds(task) -> tuple[float, ...]:
    """The thresholds :func:`review_table` reports for ``task``: :data:`THRESHOLDS`, after those of
    :data:`LOWER` above one over the most labels a field has (a field of five labels may give its
    answer at 0.3; below that share every answer is given, so such a row says nothing new)."""
    most = max((len(f.labels) for f in task.fields), default=2)
    return tuple(t for t in LOWER if t > 1 / most) + THRESHOLDS


def review_table(task, records, preds: list[dict], sure: list[dict], below: float | None = None) -> dict:
    """For each threshold of :func:`thresholds` (and ``below``, a threshold of one's own, in its
    place among them, where given: eval's ``--review-below``), the records the model would answer
    alone (every field's predicted label given at least that probability, to :data:`DIGITS`
    decimals as predict's column holds it: ``sure``, :func:`~.confidence.chosen`, None where the
    answer named no label) as ``{"threshold", "n"`` (how many), ``"kept"`` (their
    share of the records), ``"right"`` (the share of those with every field right; None where none
    is kept), ``"ci"`` (its 95% CI, Wilson's: few records kept say little)``}``, under
    ``"records"``; the same per field under ``"fields"`` (a field's answer kept and right); the
    number of records, ``"n"``; and ``"review_below"``, where given."""
    names = [f.name for f in task.fields]
    sure, right = _as_compared(task, records, preds, sure)
    out: dict = {"n": len(records), "records": [], "fields": {k: [] for k in names},
                 **({"review_below": below} if below is not None else {})}
    for t in sorted({*thresholds(task), *([below] if below is not None else [])}):
        kept = [i for i, s in enumerate(sure) if all(s[k] is not None and s[k] >= t for k in names)]
        out["records"].append(_row(t, len(kept), len(records), sum(all(right[i].values()) for i in kept)))
        for k in names:
            mine = [i for i, s in enumerate(sure) if s[k] is not None and s[k] >= t]
            out["fields"][k].append(_row(t, len(mine), len(records), sum(right[i][k] for i in mine)))
    return out


def stage_review(task, test, rows: list[dict]) -> dict | None:
    """A ``prefopt compare`` stage's :func:`review_table` on the test items ``test`` (its
    ``predictions.jsonl`` ``rows``, in their order), by the confidence ``predict`` would give:
    calibrated by the stage's temperature where the run fitted one on its validation items
    (``confidence_calibrated``), else as the model gives it; with ``"confidence"``, which. None
    where the stage's labels were not scored."""
    key = next((k for k in ("confidence_calibrated", "confidence") if rows and all(k in row for row in rows)), None)
    if key is None:
        return None
    preds, sure = [row["prediction"] for row in rows], [row[key] for row in rows]
    return {"confidence": key, **review_table(task, test, preds, sure)}


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


def _as_compared(task, records, preds: list[dict], sure: list[dict]) -> tuple[list[dict], list[dict]]:
    """Each record's confidence per field as predict's column holds it (to :data:`DIGITS`
    decimals; None where the answer named no label), and whether each field's answer was right."""
    names = [f.name for f in task.fields]
    return ([{k: None if s[k] is None else round(s[k], DIGITS) for k in names} for s in sure],
            [{k: pred.get(k) == r.labels[k] for k in names} for pred, r in zip(preds, records)])


def _row(threshold: float, kept: int, n: int, right: int) -> dict:
    return {"threshold": threshold, "n": kept, "kept": kept / n if n else 0.0, "right": right / kept if kept else None,
            "ci": list(wilson_interval(right, kept)) if kept else None}


def review_lines(table: dict) -> list[str]:
    """:func:`review_table` in words: for each threshold, how many records the model would answer
    alone and how often they were right, with its 95% CI (the others to review), ``--review-below``'s
    own threshold marked; per field where there are several."""
    def mine(r: dict) -> str:
        return " (--review-below)" if r["threshold"] == table.get("review_below") else ""

    def said(rows: list[dict]) -> str:
        return "; ".join(f">= {r['threshold']:g}{mine(r)}: {r['n']} of {table['n']}" + (
            f", {r['right']:.3f} right [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]" if r["right"] is not None else "")
            for r in rows)

    lines = [f"records answered alone at each confidence (the others to review: predict --review-below P): "
             f"{said(table['records'])}"]
    if len(table["fields"]) > 1:
        lines += [f"  {name} alone: {said(rows)}" for name, rows in table["fields"].items()]
    return lines


def mark_review(task, rows: list[dict], below: float, past: Collection[str] = ()) -> list[dict]:
    """``rows`` (:func:`~.new_records.prediction_rows`, with their ``confidence_<field>``
    columns) each with a ``review`` column before ``model_output`` (in place of one the input
    had): empty where every field's predicted label has at least probability ``below``, as the
    column holds it (to :data:`DIGITS` decimals), else why it is not, in those figures
    (``urgency 0.6213; staff no label``); and ``past the model's context`` first for the records
    whose ids are in ``past`` (their prompts ran past it: :func:`~.runner.past_context_said`),
    however sure the model was."""
    names = [f.name for f in task.fields]
    out = []
    for row in rows:
        why = "; ".join([PAST_CONTEXT] * (row["record"] in past) + [
            f"{k} no label" if row[f"confidence_{k}"] == "" else f"{k} {row[f'confidence_{k}']:g}"
            for k in names if row[f"confidence_{k}"] == "" or row[f"confidence_{k}"] < below])
        items = [(k, v) for k, v in row.items() if k != COLUMN]  # (an earlier run's column renewed)
        at = [k for k, _ in items].index("model_output")
        out.append(dict([*items[:at], (COLUMN, why), *items[at:]]))
    return out
