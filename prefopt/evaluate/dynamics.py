"""What training did, read back from each stage's ``metrics.jsonl``, for the compare report.

A test-set verdict says whether DPO helped, not why. The training log says more: each step's
implicit-reward pair accuracy is measured on that step's batch *before* its update, so within
the first epoch it is an accuracy on pairs the model has not yet trained on. If it ends near
0.5, DPO never learned to tell chosen from rejected answers, and whatever it changed on the test
set came from elsewhere (most often a shift in the answer prior).
"""
from __future__ import annotations

from pathlib import Path

from ..fileio import read_json
from ..losses import UNPAIRED
from ..train.cost import cost_parts, what_peak
from ..train.diagnosis import dpo_warnings
from ..train.metrics import first_and_last, first_to_last
from .selection import dpo_selection, selection_line

WINDOW = 0.25  # the first and last quarter of the logged steps are compared
COST = ("train_seconds", "peak_mem_mb", "device", "total_steps", "resumed_from_step", "reference_fill_seconds")
KEYS = {"sft": ("loss",),
        "dpo": ("loss", "rewards/accuracies", "rewards/margins", "logps/chosen", "logps/rejected",
                "kto/accuracies", "kl", "logps/completion", "pairs", "examples")}


def stage_dynamics(train_dir: Path, keys: tuple[str, ...]) -> dict | None:
    """``first_and_last`` of the stage's log over ``WINDOW`` of its steps, ``"loss"`` where the
    run's ``train_config.json`` names a preference loss, and ``"cost"``: its time and peak memory
    from ``train_summary.json`` (a stage trained before they were recorded has none); None
    without a log."""
    out = first_and_last(train_dir, keys, WINDOW)
    config, summary = Path(train_dir) / "train_config.json", Path(train_dir) / "train_summary.json"
    if out is not None and config.is_file() and "loss" in (c := read_json(config)):
        out["loss"] = c["loss"]
    if out is not None and summary.is_file() and "train_seconds" in (s := read_json(summary)):
        out["cost"] = {k: s[k] for k in COST if k in s}
    return out


def training_dynamics(out: Path) -> dict:
    """``{"sft": ..., "dpo": ..., "selection": ...}`` for a compare folder (a stage without a log,
    or a run without validation items, is left out)."""
    found = {s: stage_dynamics(Path(out) / s / "train", keys) for s, keys in KEYS.items()}
    found["selection"] = dpo_selection(out)
    return {s: d for s, d in found.items() if d is not None}


def _arrow(d: dict, key: str, fmt: str) -> str:
    return first_to_last(d, key, fmt) or "—"


def _logged(d: dict) -> int:
    """How many steps a stage's ``first_and_last`` averaged over (a report from before 2026-12-05
    lacks ``logged``: its ``steps``, as many where every step was logged)."""
    return d.get("logged", d["steps"])


def dynamics_lines(dyn: dict) -> list[str]:
    """The report's "Training" bullets (empty without logs)."""
    lines = []
    if "sft" in dyn:
        d = dyn["sft"]
        lines.append(f"- SFT: token NLL {_arrow(d, 'loss', '.3f')} (mean of the first and last {d['window']} "
                     f"of {_logged(d)} logged steps).")
    if "dpo" in dyn:
        d = dyn["dpo"]
        window = (f"(each step's batch before its update; mean of the first and last {d['window']} of {_logged(d)} "
                  "logged steps)")
        if d.get("loss") in UNPAIRED:
            lines.append(f"- {UNPAIRED[d['loss']]}: share on the label's side of the reference point {_arrow(d, 'kto/accuracies', '.2f')}, "
                         f"reference point (KL estimate) {_arrow(d, 'kl', '.3f')}, completion log-prob "
                         f"{_arrow(d, 'logps/completion', '.2f')} {window}.")
        else:
            lines.append(f"- DPO: pair accuracy {_arrow(d, 'rewards/accuracies', '.2f')}, reward margin "
                         f"{_arrow(d, 'rewards/margins', '+.3f')}, chosen log-prob {_arrow(d, 'logps/chosen', '.2f')}, "
                         f"rejected {_arrow(d, 'logps/rejected', '.2f')} {window}.")
        lines += [f"- {w}" for w in dpo_warnings(d, d.get("loss"))]
    if "selection" in dyn:
        lines.append(selection_line(dyn["selection"]))
    return lines + ([line] if (line := cost_text(dyn)) else [])


def cost_text(dyn: dict) -> str | None:
    """``- Time and memory on cpu: SFT 60 steps in 1 min 35 s, peak 1180 MiB; DPO ...`` for the
    stages whose cost was recorded; None where none was."""
    names = {"sft": "SFT", "dpo": UNPAIRED.get(dyn.get("dpo", {}).get("loss"), "DPO")}
    stages = {names[s]: d["cost"] for s in names if "cost" in (d := dyn.get(s, {}))}
    if not stages:
        return None
    devices = sorted({c.get("device", "?") for c in stages.values()})
    parts = [f"{name} {', '.join(p for p in cost_parts(c) if p)}" for name, c in stages.items()]
    peak = f" (peak: {what_peak(devices[0])})" if any(c.get("peak_mem_mb") for c in stages.values()) else ""
    return f"- Time and memory on {' and '.join(devices)}: {'; '.join(parts)}{peak}."
