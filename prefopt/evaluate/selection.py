"""``prefopt compare --set val=N``: choosing the DPO stage's weights on validation items.

The items are held out of both training stages. DPO answers them at every evaluation
(:func:`~prefopt.evaluate.runner.task_evaluator`, its answers kept in ``dpo/train/val_answers.jsonl``),
the trainer keeps the best weights (``best_metric``, ``best_min_delta``, ``patience``), and
with ``dpo_max_p`` the chosen step must also beat step 0, the SFT model, on them by a bootstrap
that allows for its having been chosen as the best of the evaluated steps
(``dpo/train/choice.json``). This module holds the settings' checks, the trainer
settings, which adapter the "dpo" stage is, and what the report says about the choice.
"""
from __future__ import annotations

import math
from pathlib import Path

from ..data.readers import read_rows
from ..fileio import read_json, write_json_atomic
from ..train.metrics import read_metrics
from .runner import DECODING, read_answers, task_evaluator
from .stats import best_of_bootstrap, paired_bootstrap

VAL_ANSWERS = "val_answers.jsonl"  # in dpo/train: the validation answers at every evaluation (compare --set val)
CHOICE = "choice.json"  # in dpo/train, with compare's dpo_max_p: whether the chosen step's gain held up
DECIDE_RESAMPLES = 2000  # fixed, so that --n-resamples (a report setting) cannot change a decided stage


def check_settings(s: dict) -> None:
    """``val``: None, 0, a fraction in (0, 1) or a whole count; ``dpo_eval_every``: None or a
    positive whole number; ``dpo_min_gain``: None or a number >= 0; ``dpo_patience``: None or a
    whole number >= 0; ``dpo_max_p``: None or a p-value in (0, 1]; these four only with ``val``
    (they have nothing to evaluate otherwise)."""
    val, every, gain, patience = s["val"], s["dpo_eval_every"], s["dpo_min_gain"], s["dpo_patience"]
    max_p = s["dpo_max_p"]
    number = isinstance(val, (int, float)) and not isinstance(val, bool)
    if val is not None and not (number and val >= 0 and (val < 1 or float(val).is_integer())):
        raise ValueError(f"val: a count of items (a whole number) or a fraction in (0, 1) to hold out for choosing "
                         f"DPO's weights, or 0 for none (got {val!r})")
    if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
        raise ValueError(f"dpo_eval_every: a whole number of steps >= 1 (got {every!r})")
    if gain is not None and (isinstance(gain, bool) or not isinstance(gain, (int, float)) or not gain >= 0):
        raise ValueError(f"dpo_min_gain: a number >= 0, in the task's primary metric (got {gain!r})")
    if patience is not None and (isinstance(patience, bool) or not isinstance(patience, int) or patience < 0):
        raise ValueError(f"dpo_patience: a whole number of evaluations >= 0 (got {patience!r})")
    if max_p is not None and (isinstance(max_p, bool) or not isinstance(max_p, (int, float)) or not 0 < max_p <= 1):
        raise ValueError(f"dpo_max_p: a p-value in (0, 1], e.g. 0.1 (got {max_p!r})")
    for name in ("dpo_eval_every", "dpo_min_gain", "dpo_patience", "dpo_max_p"):
        if s[name] is not None and not val:
            raise ValueError(f"{name} needs val: the validation items each evaluation answers (--set val=N)")


def trainer_settings(task, val: list, pairs: Path, s: dict, out: Path) -> tuple[dict, list]:
    """With validation items: the DPO stage's settings that keep its best weights by the task's
    score of greedy answers to them (decoded as the test set's answers are), and the evaluator
    that makes the score and keeps the answers (``dpo/train/val_answers.jsonl``); else nothing."""
    if not val:
        return {}, []
    every = s["dpo_eval_every"] or max(1, round(dpo_steps(s, pairs) / 10))
    evaluator = task_evaluator(task, val, batch_size=s["eval_batch_size"], answers=out / "dpo" / "train" / VAL_ANSWERS,
                               **{k: s[k] for k in DECODING})
    return ({"eval_every": every, "best_metric": f"val_{task.primary}", "best_mode": "max",
             "best_min_delta": float(s["dpo_min_gain"] or 0.0), "patience": s["dpo_patience"] or 0}, [evaluator])


def dpo_steps(s: dict, pairs: Path) -> int:
    """How many optimizer steps the DPO stage takes: ``dpo_steps``, else its epochs over the pairs."""
    if s["dpo_steps"]:
        return s["dpo_steps"]
    n = sum(1 for _, row in read_rows(pairs) if isinstance(row, dict))
    return max(1, math.ceil(math.ceil(n / s["dpo_batch_size"]) * s["dpo_epochs"]))


SFT_WEIGHTS = "sft/train/final"  # the SFT stage's adapter, relative to a compare run's folder


def stage_weights(out: Path) -> dict[str, str]:
    """The adapter each trained stage evaluates, relative to the run's folder (``metrics.json``
    and ``report.json`` name them so): SFT's, and :func:`dpo_weights`."""
    return {"sft": SFT_WEIGHTS, "dpo": dpo_weights(out).relative_to(out).as_posix()}


def dpo_weights(out: Path) -> Path:
    """The adapter the "dpo" stage evaluates: the one chosen on the validation items where the run
    held some out (``best/``), unless that is step 0 or ``dpo_max_p`` found its gain over the SFT
    model too weak to trust (then the SFT adapter itself: step 0 *is* the SFT model, and
    ``best/``'s copy of it differs only by rounding); else the last step's (``final/``)."""
    train, sft = Path(out) / "dpo" / "train", Path(out) / SFT_WEIGHTS
    if (train / CHOICE).is_file() and read_json(train / CHOICE)["weights"] == "sft":
        return sft
    if (train / "best" / "best.json").is_file():
        return sft if read_json(train / "best" / "best.json")["step"] == 0 else train / "best"
    return train / "final"


def require_gain(task, val: list, out: Path, s: dict, seed: int) -> str | None:
    """With ``dpo_max_p``: the chosen DPO step stays the "dpo" stage only if its answers beat step
    0's (the SFT model's) on the validation items at p < ``dpo_max_p``, by a bootstrap that allows
    for its having been chosen as the best of the evaluated steps (:func:`~.stats.best_of_bootstrap`);
    else the stage is the SFT model. Decided once, in ``dpo/train/choice.json``, and again only for
    another ``dpo_max_p`` (None removes the decision: the chosen step is the stage); returns the line
    that says what was decided, if anything was."""
    path = out / "dpo" / "train" / CHOICE
    had = read_json(path) if path.is_file() else None
    if had is not None and not (val and s["dpo_max_p"]):
        path.unlink()
        kept = "the chosen step" if had["weights"] == "best" else "the SFT model"
        return (f"dpo: no dpo_max_p this time, so the earlier decision (dpo_max_p {had['max_p']:g} kept {kept}) is "
                "dropped: the step the validation items chose is the SFT+DPO stage")
    if not (val and s["dpo_max_p"]) or (had is not None and had["max_p"] == s["dpo_max_p"]):
        return None
    sel = dpo_selection(out)  # vs None below: step 0 (the SFT model) was chosen
    vs = None if sel is None else against_step_0(task, val, out, sel["step"], DECIDE_RESAMPLES, seed)
    best_of = None if vs is None else vs["best_of"]
    keep = best_of is not None and best_of["p_value"] < s["dpo_max_p"]
    write_json_atomic(path, {"weights": "best" if keep else "sft", "max_p": s["dpo_max_p"],
                             "p_value": None if best_of is None else best_of["p_value"], "test": "best_of",
                             "n_candidates": None if best_of is None else best_of["n_candidates"],
                             "n_resamples": DECIDE_RESAMPLES})
    if best_of is None:
        return None
    return (f"dpo: the chosen step's validation gain over SFT {vs['delta']:+.3f}, p = {best_of['p_value']:.3g} as the "
            f"best of {best_of['n_candidates']} evaluated steps: "
            + ("kept" if keep else f"not below dpo_max_p {s['dpo_max_p']:g}, so the SFT+DPO stage is the SFT model"))


def dpo_selection(out: Path) -> dict | None:
    """Where a compare run held validation items out (``--set val``): the DPO step whose weights
    became the "dpo" stage (``best.json``: metric, value, step), the run's ``total_steps``, the
    number of validation items ``n_val``, the gain a step needed to replace the best before it
    (``min_gain``), where the run stopped early (``stopped_early``, else None), compare's
    ``dpo_max_p`` decision (``choice``: ``{"weights": "best" or "sft", "max_p", "p_value"}``, else
    None), and the validation score at every evaluation (``curve``: ``[step, value]`` pairs); None
    for a run without them."""
    train = Path(out) / "dpo" / "train"
    if not (train / "best" / "best.json").is_file():
        return None
    best = read_json(train / "best" / "best.json")
    rows = read_metrics(train)
    summary = read_json(train / "train_summary.json")
    split = read_json(Path(out) / "split.json")
    config = read_json(train / "train_config.json")
    choice = read_json(train / CHOICE) if (train / CHOICE).is_file() else None
    return {**best, "choice": choice, "total_steps": summary["total_steps"], "n_val": len(split.get("val", [])),
            "stopped_early": summary.get("stopped_early"), "min_gain": config.get("best_min_delta", 0.0),
            "curve": [[r["step"], r[best["metric"]]] for r in rows if best["metric"] in r]}


def against_step_0(task, val: list, out: Path, step: int, n_resamples: int, seed: int) -> dict | None:
    """The chosen DPO ``step`` against step 0 (the SFT model) on the validation items: a paired
    bootstrap of the task's primary metric over them (``delta``, ``ci``, two-sided ``p_value``,
    ``n_resamples`` resamples), and under ``best_of`` the one-sided test that allows for the step's
    having been chosen as the best of all the evaluated steps (:func:`~.stats.best_of_bootstrap`,
    ``DECIDE_RESAMPLES`` resamples, so that it is the p-value ``dpo_max_p`` decides by). None where
    step 0 was chosen or the answers file lacks either step."""
    scored = {}  # step -> its primary metric on resampled validation items, for the steps that answered them all
    for k, a in sorted(read_answers(Path(out) / "dpo" / "train" / VAL_ANSWERS).items()):
        by_id = dict(zip(a["ids"], a["predictions"]))
        if all(r.id in by_id for r in val):
            scored[k] = task.primary_on(val, [by_id[r.id] for r in val])
    if step == 0 or 0 not in scored or step not in scored:
        return None
    steps = [k for k in scored if k != 0]
    vs = paired_bootstrap(scored[0], scored[step], len(val), n_resamples=n_resamples, seed=seed)
    return {**vs, "best_of": best_of_bootstrap(scored[0], [scored[k] for k in steps], len(val),
                                               chosen=steps.index(step), n_resamples=DECIDE_RESAMPLES, seed=seed)}


def selection_line(sel: dict) -> str:
    """The report's bullet on which DPO weights the validation items chose."""
    name = sel["metric"].removeprefix("eval_").removeprefix("val_")
    curve = ", ".join(f"{v:.3f} (step {k})" for k, v in sel["curve"])
    gain = sel.get("min_gain")
    margin = f" (a step had to beat the best before it by more than {gain:g})" if gain else ""
    line = (f"- DPO weights chosen on {sel['n_val']} validation items (held out of both training stages): step "
            f"{sel['step']} of {sel['total_steps']}, validation {name} {sel['value']:.3f}{margin}; at each "
            f"evaluation: {curve}.")
    vs = sel.get("against_step_0")
    if vs:
        (lo, hi), best_of = vs["ci"], vs.get("best_of")
        line += (f" Against step 0 (the SFT model) on the same validation items: {vs['delta']:+.3f} [{lo:+.3f}, "
                 f"{hi:+.3f}], bootstrap p = {vs['p_value']:.3g}")
        if best_of:  # reports written before the best-of test have only the plain one
            line += (f"; allowing for its choice as the best of {best_of['n_candidates']} evaluated steps "
                     f"(one-sided), p = {best_of['p_value']:.3g}")
        p = (best_of or vs)["p_value"]
        line += ": a gain the validation set cannot tell from noise." if p >= 0.05 else "."
    choice = sel.get("choice")
    if choice and sel["step"] != 0:
        p = "unknown" if choice["p_value"] is None else f"{choice['p_value']:.3g}"
        how = ("as the best of the evaluated steps" if choice.get("test") == "best_of" else
               "by a plain two-sided bootstrap (decided by an earlier prefopt)")
        line += (f" With dpo_max_p {choice['max_p']:g}: its gain over step 0 has p = {p} {how}, "
                 + (f"below it, so step {sel['step']} is the SFT+DPO stage." if choice["weights"] == "best" else
                    "not below it, so the SFT+DPO stage is the SFT model."))
    stop = sel.get("stopped_early")
    if stop:
        n = stop["patience"]
        which = "the evaluation after the best" if n == 1 else f"{n} evaluations in a row"
        line += f" DPO stopped early at step {stop['step']}: {which} did not replace it."
    if sel["step"] == 0:
        margin = f" by more than {gain:g}" if gain else ""
        line += (f" Step 0 is the SFT model: no DPO step answered the validation items better{margin}, so the "
                 "SFT+DPO stage is the SFT model (the last step's adapter is in dpo/train/final).")
    return line
