"""What training did, read back from each stage's ``metrics.jsonl``, for the compare report.

A test-set verdict says whether DPO helped, not why. The training log says more: each step's
implicit-reward pair accuracy is measured on that step's batch *before* its update, so within
the first epoch it is an accuracy on pairs the model has not yet trained on. If it ends near
0.5, DPO never learned to tell chosen from rejected answers, and whatever it changed on the test
set came from elsewhere (most often a shift in the answer prior).
"""
from __future__ import annotations

import json
from pathlib import Path

from ..train.metrics import first_and_last, first_to_last

VAL_ANSWERS = "val_answers.jsonl"  # in dpo/train: the validation answers at every evaluation (compare --set val)
CHOICE = "choice.json"  # in dpo/train, with compare's dpo_max_p: whether the chosen step's gain held up
WINDOW = 0.25  # the first and last quarter of the logged steps are compared
LEARNED = 0.6  # a final pair accuracy below this: DPO did not learn to rank its training pairs
CHOSEN_DROP = 1.0  # nats: a larger fall of the chosen answers' mean log-prob is pointed out
NLL_ANCHORED = ("rpo", "orpo")  # losses with a term that keeps the chosen answers likely
KEYS = {"sft": ("loss",),
        "dpo": ("loss", "rewards/accuracies", "rewards/margins", "logps/chosen", "logps/rejected")}


def stage_dynamics(train_dir: Path, keys: tuple[str, ...]) -> dict | None:
    """``first_and_last`` of the stage's log over ``WINDOW`` of its steps, and ``"loss"`` where
    the run's ``train_config.json`` names a preference loss; None without a log."""
    out = first_and_last(train_dir, keys, WINDOW)
    config = Path(train_dir) / "train_config.json"
    if out is not None and config.is_file() and "loss" in (c := json.loads(config.read_text())):
        out["loss"] = c["loss"]
    return out


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
    best = json.loads((train / "best" / "best.json").read_text())
    rows = [json.loads(line) for line in (train / "metrics.jsonl").read_text().splitlines() if line.strip()]
    summary = json.loads((train / "train_summary.json").read_text())
    split = json.loads((Path(out) / "split.json").read_text())
    config = json.loads((train / "train_config.json").read_text())
    choice = json.loads((train / CHOICE).read_text()) if (train / CHOICE).is_file() else None
    return {**best, "choice": choice, "total_steps": summary["total_steps"], "n_val": len(split.get("val", [])),
            "stopped_early": summary.get("stopped_early"), "min_gain": config.get("best_min_delta", 0.0),
            "curve": [[r["step"], r[best["metric"]]] for r in rows if best["metric"] in r]}


def against_step_0(task, val: list, out: Path, n_resamples: int, seed: int) -> dict | None:
    """The chosen DPO step against step 0 (the SFT model) on the validation items, by paired
    bootstrap of the task's primary metric over them (``delta``, ``ci``, ``p_value``): how far the
    choice could be noise. None where step 0 was chosen or the answers file lacks either step."""
    from .runner import read_answers
    from .stats import paired_bootstrap

    sel = dpo_selection(out)
    answers = read_answers(Path(out) / "dpo" / "train" / VAL_ANSWERS)
    if sel is None or sel["step"] == 0 or 0 not in answers or sel["step"] not in answers:
        return None
    a, b = ({i: p for i, p in zip(answers[k]["ids"], answers[k]["predictions"])} for k in (0, sel["step"]))
    if not all(r.id in a and r.id in b for r in val):
        return None
    return paired_bootstrap(task.primary_on(val, [a[r.id] for r in val]), task.primary_on(val, [b[r.id] for r in val]),
                            len(val), n_resamples=n_resamples, seed=seed)


def training_dynamics(out: Path) -> dict:
    """``{"sft": ..., "dpo": ..., "selection": ...}`` for a compare folder (a stage without a log,
    or a run without validation items, is left out)."""
    found = {s: stage_dynamics(Path(out) / s / "train", keys) for s, keys in KEYS.items()}
    found["selection"] = dpo_selection(out)
    return {s: d for s, d in found.items() if d is not None}


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
        (lo, hi), p = vs["ci"], vs["p_value"]
        line += (f" Against step 0 (the SFT model) on the same validation items: {vs['delta']:+.3f} [{lo:+.3f}, "
                 f"{hi:+.3f}], bootstrap p = {p:.3g}" + (": a gain the validation set cannot tell from noise."
                                                          if p >= 0.05 else "."))
    choice = sel.get("choice")
    if choice and sel["step"] != 0:
        p = "unknown" if choice["p_value"] is None else f"{choice['p_value']:.3g}"
        line += (f" With dpo_max_p {choice['max_p']:g}: its gain over step 0 has p = {p}, "
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


def _arrow(d: dict, key: str, fmt: str) -> str:
    return first_to_last(d, key, fmt) or "—"


def dynamics_lines(dyn: dict) -> list[str]:
    """The report's "Training" bullets (empty without logs)."""
    lines = []
    if "sft" in dyn:
        d = dyn["sft"]
        lines.append(f"- SFT: token NLL {_arrow(d, 'loss', '.3f')} (mean of the first and last {d['window']} "
                     f"of {d['steps']} steps).")
    if "dpo" in dyn:
        d = dyn["dpo"]
        lines.append(f"- DPO: pair accuracy {_arrow(d, 'rewards/accuracies', '.2f')}, reward margin "
                     f"{_arrow(d, 'rewards/margins', '+.3f')}, chosen log-prob {_arrow(d, 'logps/chosen', '.2f')}, "
                     f"rejected {_arrow(d, 'logps/rejected', '.2f')} (each step's batch before its update; mean of "
                     f"the first and last {d['window']} of {d['steps']} steps).")
        acc = d["last"].get("rewards/accuracies")
        if acc is not None and acc < LEARNED:
            lines.append(f"- DPO did not learn to rank its training pairs: pair accuracy {acc:.2f} at the end, where 0.5 "
                         "is chance. Any change on the test set is then a shift in what the model prefers overall "
                         "(a class, a length), not item knowledge. More pairs or steps, or a larger model, may help.")
        a, b = d["first"].get("logps/chosen"), d["last"].get("logps/chosen")
        if a is not None and b is not None and a - b > CHOSEN_DROP and d.get("loss") not in NLL_ANCHORED:
            lines.append(f"- DPO made the chosen (right) training answers less likely: their log-prob fell by "
                         f"{a - b:.2f}, a known failure of DPO without an NLL term. `--loss rpo` adds the chosen "
                         "answers' NLL; in docs/results.md it kept their log-prob where sigmoid DPO lowered it.")
    if "selection" in dyn:
        lines.append(selection_line(dyn["selection"]))
    return lines
