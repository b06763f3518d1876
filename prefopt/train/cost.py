"""What a training run cost, said from its train_summary.json: the wall time of ``train()``
(``train_seconds``; for DPO also the reference cache's fill before it) and its peak memory
(``peak_mem_mb``: the run's own, read as ``peak_memory.py`` says), as a line of the outcome on the
console and in the model card, and as the compare report's and the study's.
"""
from __future__ import annotations

WHAT = {"cuda": "CUDA memory allocated", "cpu": "the process's resident memory"}


def duration_text(seconds: float) -> str:
    """``48 s``, ``3 min 05 s``, ``2 h 07 min``: a wall time as people read it."""
    s = round(seconds)
    if s < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def cost_parts(summary: dict) -> tuple[str, str | None] | None:
    """``("60 steps in 1 min 35 s", "peak 1180 MiB")`` from a run's train_summary.json (the
    steps after ``resumed_from_step`` where the run resumed; the reference log-probs' fill before
    training, where it ran); None for a summary written before these were recorded."""
    if "train_seconds" not in summary:
        return None
    done = summary["total_steps"] - summary.get("resumed_from_step", 0)
    time = f"{done} step{'s' * (done != 1)} in {duration_text(summary['train_seconds'])}"
    if summary.get("resumed_from_step"):
        time += f" (resumed at step {summary['resumed_from_step']})"
    if summary.get("reference_fill_seconds"):
        time += f", after {duration_text(summary['reference_fill_seconds'])} computing the reference log-probs"
    peak = summary.get("peak_mem_mb")
    return time, None if peak is None else f"peak {peak:.0f} MiB"


def cost_line(summary: dict) -> str | None:
    """The outcome's line: ``trained on cpu: 60 steps in 1 min 35 s, peak 1180 MiB (the
    process's resident memory from the start of training, the weights included)``."""
    parts = cost_parts(summary)
    if parts is None:
        return None
    time, peak = parts
    device = summary.get("device", "?")
    return f"trained on {device}: {time}" + (f", {peak} ({what_peak(device)})" if peak else "")


def what_peak(device: str) -> str:
    """What the peak counts, on a device of type ``device``."""
    return f"{WHAT.get(device, WHAT['cpu'])} from the start of training, the weights included"
