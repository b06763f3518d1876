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

from ..losses import UNPAIRED
from ..train.diagnosis import dpo_warnings
from ..train.metrics import first_and_last, first_to_last
from .selection import dpo_selection, selection_line

WINDOW = 0.25  # the first and last quarter of the logged steps are compared
KEYS = {"sft": ("loss",),
        "dpo": ("loss", "rewards/accuracies", "rewards/margins", "logps/chosen", "logps/rejected",
                "kto/accuracies", "kl", "logps/completion")}


def stage_dynamics(train_dir: Path, keys: tuple[str, ...]) -> dict | None:
    """``first_and_last`` of the stage's log over ``WINDOW`` of its steps, and ``"loss"`` where
    the run's ``train_config.json`` names a preference loss; None without a log."""
    out = first_and_last(train_dir, keys, WINDOW)
    config = Path(train_dir) / "train_config.json"
    if out is not None and config.is_file() and "loss" in (c := json.loads(config.read_text())):
        out["loss"] = c["loss"]
    return out


def training_dynamics(out: Path) -> dict:
    """``{"sft": ..., "dpo": ..., "selection": ...}`` for a compare folder (a stage without a log,
    or a run without validation items, is left out)."""
    found = {s: stage_dynamics(Path(out) / s / "train", keys) for s, keys in KEYS.items()}
    found["selection"] = dpo_selection(out)
    return {s: d for s, d in found.items() if d is not None}


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
        window = f"(each step's batch before its update; mean of the first and last {d['window']} of {d['steps']} steps)"
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
    return lines
