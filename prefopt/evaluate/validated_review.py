"""``prefopt compare --set val=N --set review_target=A``: a review threshold chosen on the
validation items, then checked on the test items, for each trained stage.

A team that lets the model answer alone the messages it is sure of wants those answers right at
least A of the time. :func:`~.target_search.review_target` finds the confidence down to which
that held, by the exact 95% CI's lower end, thresholds tried downward from the one that keeps a
quarter of the records until one falls short. Here it is chosen on the validation items (held
out of both training stages) and the test items say what it does on records it did not see: how
many the stage answers alone there, and how often rightly.

The validation answers are the ones that chose the DPO weights (``dpo/train/val_answers.jsonl``:
step 0 is the SFT model's, the chosen step the SFT+DPO stage's); their confidence is the stage's
calibrated probability of the predicted labels (:data:`~.stage_confidence.VAL_PROBABILITIES`),
as ``predict --calibration`` gives it, and so is the test items' (``confidence_calibrated``). The
base model answers no validation items, and is left out.
"""
from __future__ import annotations

from pathlib import Path

from ..fileio import json_records, read_json
from .confidence import chosen
from .review import review_table
from .runner import read_answers
from .selection import SFT_WEIGHTS, VAL_ANSWERS, dpo_weights
from .stage_confidence import VAL_PROBABILITIES
from .target_search import items_needed, review_target


def check_review_target(s: dict) -> None:
    """``review_target``: None, or a probability in (0, 1) with ``val`` (the items it is chosen on)
    and ``confidence`` (the probabilities it reads)."""
    a = s["review_target"]
    if a is None:
        return
    if isinstance(a, bool) or not isinstance(a, (int, float)) or not 0 < a < 1:
        raise ValueError(f"review_target: a probability in (0, 1), the share of the answers a stage gives alone that "
                         f"should be right (0.9; got {a!r})")
    if not s["val"]:
        raise ValueError("review_target needs val: the validation items its threshold is chosen on (--set val=N)")
    if not s["confidence"]:
        raise ValueError("review_target reads the label probabilities confidence scores: leave confidence on")


def validation_predictions(out: Path, stage: str, val: list) -> list[dict] | None:
    """Each validation item's predicted labels by ``stage``'s weights, in ``val``'s order: DPO's
    answers at step 0 for the SFT stage, at the chosen step for the SFT+DPO stage; None for the
    base model, and where the answers are not all there."""
    if stage == "base":
        return None
    weights = dpo_weights(out)
    best = out / "dpo" / "train" / "best" / "best.json"
    if stage == "sft" or weights == out / SFT_WEIGHTS:
        step = 0
    elif weights.name == "best" and best.is_file():
        step = read_json(best)["step"]
    else:
        return None
    got = read_answers(out / "dpo" / "train" / VAL_ANSWERS).get(step)
    if got is None:
        return None
    by_id = dict(zip(got["ids"], got["predictions"]))
    return [by_id[r.id] for r in val] if all(r.id in by_id for r in val) else None


def validation_probabilities(stage_dir: Path, val: list) -> list[dict] | None:
    """The validation items' calibrated label probabilities a stage's scoring kept, in ``val``'s
    order; None where they are not all there."""
    path = stage_dir / VAL_PROBABILITIES
    if not path.is_file():
        return None
    by_id = {r["id"]: r["probabilities"] for r in json_records(path)}
    return [by_id[r.id] for r in val] if all(r.id in by_id for r in val) else None


def validated_review(task, val: list, test: list, out: Path, stage: str, rows: list[dict], target: float
                     ) -> dict | None:
    """``stage``'s review threshold for ``target`` chosen on the validation items ``val``
    (:func:`~.target_search.review_target` on their calibrated confidence: ``"validation"``), and
    the test items it keeps there (``rows``, the stage's ``predictions.jsonl``: ``"test"``,
    :func:`~.review.review_table`'s row at that threshold; None where none was reached; and
    how many there are, ``"n_test"``); None where the stage has no validation answers or
    calibrated confidence (the base model)."""
    preds = validation_predictions(out, stage, val)
    probabilities = validation_probabilities(out / stage, val)
    if preds is None or probabilities is None or not all("confidence_calibrated" in r for r in rows):
        return None
    found = review_target(task, val, preds, chosen(task, preds, probabilities), target)
    if found["threshold"] is None:
        return {"validation": found, "test": None, "n_test": len(test)}
    table = review_table(task, test, [r["prediction"] for r in rows], [r["confidence_calibrated"] for r in rows],
                         below=found["threshold"])
    return {"validation": found, "test": next(r for r in table["records"] if r["threshold"] == found["threshold"]),
            "n_test": len(test)}


def validated_lines(stages: dict[str, dict | None]) -> list[str]:
    """report.md's table of :func:`validated_review` for each trained stage (``{stage's name: its
    review}``), or nothing where none has one."""
    stages = {name: r for name, r in stages.items() if r}
    if not stages:
        return []
    first = next(iter(stages.values()))["validation"]
    target, n_val = first["target"], first["n_records"]
    lines = [f"Review threshold for answers right at least {target:g} of the time (`--set review_target={target:g}`): "
             f"the calibrated confidence down to which the {n_val} validation items a stage answered alone were "
             "right that often, by the exact 95% CI's lower end, thresholds tried downward from the one that keeps "
             "a quarter of them until one falls short (so the choice does not flatter these items), then the test "
             "items it would answer alone from there "
             "(`prefopt predict --calibration STAGE --review-below THRESHOLD` sends the others to a person). Chosen "
             "on the validation items, it is checked on records it did not see; the base model answered none of "
             "them.", "",
             "| stage | threshold (validation items: answered alone, right [95% CI]) | test items answered alone, "
             "right [95% CI] |", "|---|---|---|"]
    lines += [f"| {name} | {_chosen(r)} | {_checked(r)} |" for name, r in stages.items()]
    return lines


def _right(row: dict) -> str:
    return "—" if row["right"] is None else f"{row['right']:.3f} [{row['ci'][0]:.3f}, {row['ci'][1]:.3f}]"


def validated_of(report: dict) -> dict[str, dict]:
    """A compare run's :func:`validated_review` of each trained stage that has one, from its
    ``report.json`` (``{stage: review}``; {} for a run without a target)."""
    return {s: report["stages"][s]["review_validated"] for s in ("sft", "dpo")
            if "review_validated" in report["stages"].get(s, {})}


def seeds_lines(runs: list[dict]) -> list[str]:
    """``seeds.md``'s table of each seed's :func:`validated_review` (``runs``: the seeds'
    summaries, each with ``review_validated``, ``{stage: review}``, where its run had a target),
    or nothing where none had one. A threshold is a choice made on each seed's own validation
    items, so the seeds are listed, not pooled."""
    rows = [(str(r["seed"]), r["review_validated"], bool(r.get("dpo_is_sft"))) for r in runs
            if r.get("review_validated")]
    if not rows:
        return []
    return ["", "## Review threshold", "",
            f"Each seed's threshold for answers right at least {target_of(rows):g} of the time (`--set review_target="
            f"{target_of(rows):g}`), chosen on its own validation items (how many it answered alone there, and how "
            "often rightly) and checked on its test items (its report.md says more):", "", *table_lines("seed", rows)]


def table_lines(key: str, rows: list[tuple[str, dict, bool]]) -> list[str]:
    """A markdown table of review thresholds, a row each ``(name, {stage: review}, whether the
    SFT+DPO stage is the SFT model)``, its first column headed ``key``: each trained stage's
    threshold with its validation figures, then the test items it kept."""
    lines = [f"| {key} | SFT: threshold (validation) | SFT on the test items | SFT+DPO: threshold (validation) | "
             "SFT+DPO on the test items |", "|---|---|---|---|---|"]
    for name, reviews, dpo_is_sft in rows:
        cells = [_chosen(reviews.get("sft")), _checked(reviews.get("sft"))]
        cells += ["the SFT model: the same", "the same"] if dpo_is_sft else \
            [_chosen(reviews.get("dpo")), _checked(reviews.get("dpo"))]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def target_of(rows: list[tuple[str, dict, bool]]) -> float:
    """The share right the thresholds of :func:`table_lines`' ``rows`` were chosen for."""
    return next(iter(rows[0][1].values()))["validation"]["target"]


def _chosen(found: dict | None) -> str:
    """A stage's threshold and its validation figures, in a cell."""
    if found is None:
        return "—"
    v = found["validation"]
    if v["threshold"] is not None:
        return f"{v['threshold']:g} ({v['n']} of {v['n_records']}, {_right(v)}{_lower(v)})"
    best = v.get("best")
    if best is None:
        return "none"
    if "first" not in v:  # (a report from before 2026-12-07: the threshold whose CI started highest)
        return f"none (nearest {best['threshold']:g}: {best['n']} of {v['n_records']}, {_right(best)})"
    more = f"; about {n} items like these would show it" if (n := items_needed(v)) else ""
    if best["n"] < v["first"]:
        return f"none (at most {best['n']} of {v['n_records']} answered alone; the search starts at {v['first']}{more})"
    return (f"none (stopped at {best['threshold']:g}: {best['n']} of {v['n_records']}, {_right(best)}{_lower(best)}"
            f"{more})")


def _lower(row: dict) -> str:
    """A row's exact lower end, where it has one (a run's report from before 2026-12-07 has not)."""
    return f", exact lower end {row['lower']:.3f}" if "lower" in row else ""


def _checked(found: dict | None) -> str:
    """A stage's test items at its threshold, in a cell."""
    if found is None or found["test"] is None:
        return "—"
    t = found["test"]
    return f"{t['n']} of {found['n_test']}, {_right(t)}"
