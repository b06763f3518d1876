"""What a training run cost: its time and its peak memory, logged per step (``peak_mem_mb`` in
metrics.jsonl) and for the run (``train_seconds``, ``peak_mem_mb`` in train_summary.json; a line of
the outcome on the console and in the model card; the compare report's Training section).

The peak is the most the run has held since its ``train()`` began, not since the process
started, so the DPO stage of a ``prefopt compare`` (one process) reports its own peak, not the SFT
stage's or an evaluation's. On CUDA it is ``torch.cuda.max_memory_allocated``, whose counter
:func:`reset_peak` sets back to what is allocated now. On a Linux CPU it is the process's peak
resident set (``VmHWM``), which writing ``5`` to ``/proc/self/clear_refs`` sets back to the
resident set now (Linux 4.0 on). Where that file cannot be written (another system, a sandbox
that forbids it) the figure stays the process's peak. Either way the model's weights, loaded
before, are counted: they are held throughout.
"""
from __future__ import annotations

import torch

STATUS = "/proc/self/status"
CLEAR_REFS = "/proc/self/clear_refs"
WHAT = {"cuda": "CUDA memory allocated", "cpu": "the process's resident memory"}


def reset_peak(device: torch.device) -> bool:
    """Start counting the peak afresh from what is held now; whether the counter could be reset."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:
        with open(CLEAR_REFS, "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def peak_mb(device: torch.device) -> float | None:
    """The peak since :func:`reset_peak` in MiB: CUDA's max allocated, or the peak RSS (Linux) on a
    CPU; None where neither can be read (a CPU that is not Linux's)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        with open(STATUS) as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


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
    time = f"{done} steps in {duration_text(summary['train_seconds'])}"
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
