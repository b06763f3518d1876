"""The peak memory a training run holds, from its ``train()`` on: ``peak_mem_mb`` in
metrics.jsonl (the peak so far, at each logged step) and in train_summary.json.

It is the run's own, not the process's, so that the DPO stage of a ``prefopt compare`` (one
process) reports its own peak, not the SFT stage's or an evaluation's, and both count the model's
weights (loaded before, held throughout). On CUDA it is ``torch.cuda.max_memory_allocated``, its
counter reset when the run starts (as Hugging Face's Trainer does for its memory metrics). On a
Linux CPU it is the process's resident set, read every :data:`INTERVAL` seconds by a thread and
at every read of the peak: close to the true peak (a spike shorter than the interval can be
missed), where the kernel's own counter (``VmHWM``, the ``maximum resident set size`` of
``/usr/bin/time``) could only be reset for the whole process, under any tool that reads it.
Elsewhere (macOS, Windows) there is no figure.
"""
from __future__ import annotations

import os
import threading

import torch

INTERVAL = 0.01  # seconds between the thread's reads of the resident set (each about 10 µs)
STATM = "/proc/self/statm"


def resident_bytes() -> int | None:
    """This process's resident set now (Linux), else None."""
    try:
        with open(STATM, "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class PeakMemory:
    """The peak from :meth:`__enter__` on, in MiB (:meth:`mb`); a context manager around a run.
    On a CPU the sampling thread lives only inside the ``with`` block."""

    def __init__(self, device: torch.device):
        self.device = device
        self._peak = 0
        self._lock = threading.Lock()  # the thread and mb() both raise the peak: neither may lower it
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        now = resident_bytes()
        if now is not None:
            self._peak = now
            self._stop.clear()
            self._thread = threading.Thread(target=self._sample, name="prefopt-peak-memory", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None

    def _sample(self) -> None:
        while not self._stop.wait(INTERVAL):
            self._note(resident_bytes())

    def _note(self, now: int | None) -> None:
        if now is not None:
            with self._lock:
                self._peak = max(self._peak, now)

    def mb(self) -> float | None:
        """The peak so far in MiB (the resident set now included); None where it cannot be read."""
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        now = resident_bytes()
        self._note(now)
        return None if now is None else self._peak / 2**20
