"""How often a review threshold chosen for "answers right at least A of the time" falls short on
new records: ``prefopt.evaluate.target_search.review_target`` (since 2026-12-07: thresholds tried
downward from the one that keeps a quarter of the records, stopping at the first whose exact 95%
lower end falls short of A) against the search before it (the lowest threshold whose Wilson 95%
lower end reached A, among all), on simulated validation sets whose truth is known.

Each record has a confidence ``c`` drawn from Beta(4, 2) (most answers given fairly surely) and is
right with probability ``c`` (``calibrated``), ``c ** 2`` (``overconfident``: sure answers wrong
more often than they say) or 0.78 whatever ``c`` (``flat``: confidence that tells nothing, every
threshold just short of 0.8). A threshold ``t``'s true share right, among the records at or above
it, is ``E[P(right | c) | c >= t]`` (integrated on a grid of 200001 points); a choice falls short
where that share is below A. Both searches read the same draws; the records' two portal fields
carry the same confidence and are right or wrong together.

    .venv/bin/python benchmarks/bench_review_target.py                 # ~2 min on 2 cores
    .venv/bin/python benchmarks/bench_review_target.py --n-val 60,300 --targets 0.5,0.8 --reps 500
"""
from __future__ import annotations

import argparse
import platform
import time

import numpy as np

from prefopt.evaluate.stats import wilson_interval
from prefopt.evaluate.target_search import review_target
from prefopt.tasks import get_task
from prefopt.tasks.base import Record

SCENARIOS = {"calibrated": lambda c: c, "overconfident": lambda c: c ** 2,  # P(right | c)
             "flat": lambda c: np.full_like(c, 0.78)}
GRID = np.linspace(0.0, 1.0, 200_001)


def truth(p_right) -> tuple[np.ndarray, np.ndarray]:
    """At each grid threshold: the share of records at or above it, and their true share right."""
    density = GRID ** 3 * (1 - GRID)  # Beta(4, 2), unnormalised
    above = np.cumsum((density / density.sum())[::-1])[::-1]
    right = np.cumsum((density * p_right(GRID))[::-1])[::-1] / np.maximum(np.cumsum(density[::-1])[::-1], 1e-300)
    return above, right


def before(least: list[float], ok: list[bool], target: float) -> float | None:
    """The search before 2026-12-07: the lowest threshold whose records kept were all right at a
    share whose Wilson 95% lower end reached ``target``, among every record's own confidence."""
    for t in sorted(set(least)):
        kept = [good for x, good in zip(least, ok) if x >= t]
        if 0 < t < 1 and wilson_interval(sum(kept), len(kept))[0] >= target:
            return t
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-val", default="60,300", help="validation set sizes, comma-separated")
    ap.add_argument("--targets", default="0.5,0.7,0.8,0.9", help="the shares right asked for")
    ap.add_argument("--reps", type=int, default=1000, help="validation sets drawn for each row")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    task = get_task("portal")
    labels = {"urgency": "urgent", "staff": "nurse"}
    wrong = {"urgency": "routine", "staff": "doctor"}
    rng = np.random.default_rng(args.seed)
    began = time.perf_counter()
    print(f"# {platform.machine()} {platform.system()}, {args.reps} validation sets a row, seed {args.seed}")
    print("| scenario | validation items | A | search | found a threshold | fell short of A | share answered "
          "alone, where found (mean) |")
    print("|---|---|---|---|---|---|---|")
    for name, p_right in SCENARIOS.items():
        above, right = truth(p_right)
        for n in (int(x) for x in args.n_val.split(",")):
            records = [Record(f"r{i}", "", "", labels) for i in range(n)]
            for target in (float(x) for x in args.targets.split(",")):
                tally = {"now": [0, 0, 0.0], "before": [0, 0, 0.0]}
                for _ in range(args.reps):
                    c = np.round(rng.beta(4, 2, size=n), 4)
                    ok = list(rng.random(n) < p_right(c))
                    sure = [{"urgency": float(x), "staff": float(x)} for x in c]
                    preds = [labels if good else wrong for good in ok]
                    chosen = {"now": review_target(task, records, preds, sure, target)["threshold"],
                              "before": before([float(x) for x in c], ok, target)}
                    for how, t in chosen.items():
                        if t is None:
                            continue
                        i = int(round(t * (len(GRID) - 1)))
                        tally[how][0] += 1
                        tally[how][1] += right[i] < target
                        tally[how][2] += above[i]
                for how, (found, short, share) in tally.items():
                    print(f"| {name} | {n} | {target:g} | {how} | {found / args.reps:.1%} | "
                          f"{short / args.reps:.1%} | {share / found if found else 0:.1%} |", flush=True)
    print(f"# {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
