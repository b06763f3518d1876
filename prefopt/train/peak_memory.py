"""The peak memory a training run logs (``peak_mem_mb`` in metrics.jsonl): the most the run has
held since its ``train()`` began, not since the process started, so that the DPO stage of a
``prefopt compare`` (one process) reports its own peak, not the SFT stage's or an evaluation's.

On CUDA it is ``torch.cuda.max_memory_allocated``, whose counter :func:`reset_peak` sets back to
what is allocated now. On a Linux CPU it is the process's peak resident set (``VmHWM``), which
writing ``5`` to ``/proc/self/clear_refs`` sets back to the resident set now (Linux 4.0 on). Where
that file cannot be written (another system, a sandbox that forbids it) the figure stays the
process's peak, as before. Either way the model's weights, loaded before, are counted: they are
held throughout.
"""
from __future__ import annotations

import torch

STATUS = "/proc/self/status"
CLEAR_REFS = "/proc/self/clear_refs"


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
