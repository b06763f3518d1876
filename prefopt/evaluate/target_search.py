"""``prefopt eval --review-target A`` (and ``compare --set review_target=A``): the review
threshold for answers right at least A of the time, by a search that does not flatter the
records it reads.

:func:`~.review.review_table` counts the records the model would answer alone at a few fixed
thresholds; a team that asks instead for a share right wants the threshold chosen for it. Taken
as the lowest of all thresholds whose lower end reaches A, it is the lowest of many looks at the
same records and falls short more often than its CI says (up to 7% against 2.5% on simulated
sets: ``benchmarks/bench_review_target.py``). :func:`review_target` tries them in an order fixed
before any answer is read, each by an exact binomial test (:func:`reaches`), and stops at the
first that falls short; :func:`records_needed` says how many records would show A where none did.
"""
from __future__ import annotations

import math

from .review import as_compared, table_row
from .stats import binomial_at_least, exact_lower

TAIL = 0.025  # review_target's test: one side of a 95% CI
START = 0.25  # review_target's search starts where this share of the records is kept
COUNTED = 2000  # records_needed counts up one by one to here


def review_target(task, records, preds: list[dict], sure: list[dict], target: float) -> dict:
    """The review threshold for answers right at least ``target`` of the time, by a search that
    does not flatter the records it reads (fixed-sequence testing, as in Angelopoulos et al.'s
    Learn then Test, 2021). The thresholds that tell these records apart (each record's least
    confident field, within (0, 1) as ``--review-below`` takes it; records kept: every field's
    label at least that probability, to :data:`~.review.DIGITS` decimals, as
    :func:`~.review.review_table` counts them) are tried from the one that keeps :data:`START` of
    the records (or the :func:`fewest` it takes to reach ``target`` even all right, where more)
    down, and the search stops at the first whose records kept, all fields right, do not reach
    ``target`` by the exact 95% CI's lower end (:func:`~.stats.exact_lower`: :func:`reaches`); the
    threshold is the last one passed. Tried so, in an order fixed before any answer is looked at, the chance that a
    threshold so chosen is right less than ``target`` of the time on records drawn like these
    stays about 2.5%, however many were tried; the lowest of all that reach it would not
    (``benchmarks/bench_review_target.py``). The higher thresholds are left out: each record
    they keep, tried one by one, is one more chance for the search to stop on a wrong answer by
    bad luck before it reaches the thresholds that keep enough records to allow for some.

    Returns ``{"target", "n_records"`` (how many records), ``"fewest"``, ``"first"`` (the records
    kept where the search starts), ``"threshold"`` (None where none was reached), then
    :func:`~.review.review_table`'s row of the records kept there (``"n"``, ``"kept"``, ``"right"``,
    ``"ci"``, Wilson's, as the table's) with ``"lower"`` (the exact lower end) and ``"stopped"``
    (the row the search stopped at, None where none failed)``}``; where none was reached,
    ``"best"``: the row it stopped at, or where no threshold kept enough records, the one that kept
    the most (None where no record named every label), and ``"needed"`` (:func:`records_needed`
    at its share right)."""
    sure, right = as_compared(task, records, preds, sure)
    least = [None if None in s.values() else min(s.values()) for s in sure]
    surest = sorted(((x, all(ok.values())) for x, ok in zip(least, right) if x is not None), reverse=True)
    rows, kept, good = [], 0, 0  # (the most confident first)
    for i, (x, ok) in enumerate(surest):  # kept from x up: the records down to the last of x (one pass, sorted)
        kept, good = kept + 1, good + ok
        if (i + 1 == len(surest) or surest[i + 1][0] != x) and 0 < x < 1:
            rows.append(table_row(x, kept, len(records), good) | {"good": good})
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


def unreachable_line(target: float, n_val: int) -> str | None:
    """Where ``n_val`` validation items cannot show ``target`` even were every one answered alone
    and right (fewer than :func:`fewest`): what to say before a run trains for hours to find no
    threshold; None where they can."""
    need = fewest(target)
    if n_val >= need:
        return None
    return (f"review_target {target:g}: it takes at least {need} validation items answered alone, all right, to show "
            f"{target:g} by the exact 95% CI's lower end, and val holds {n_val}: no review threshold can be chosen "
            f"(--set val=N of several times {need} would let one be)")


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
    if needed is None and best["right"] > found["target"]:  # (records_needed looked no further)
        return f"at the {best['right']:.3f} right there, over a million answered alone would show {found['target']:g}"
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
