"""SIGTERM during training: finish the step, save a checkpoint, stop.

A scheduler that preempts a job (SLURM, Kubernetes, a shared server's ``kill``) sends SIGTERM
and, some seconds later, SIGKILL. Python's default for SIGTERM ends the process at once, so
every step since the last checkpoint was lost, or the whole run where it saved none. While
:func:`stop_requests` is active SIGTERM only sets a flag; the loop looks at it after each step,
saves a checkpoint and raises :class:`Terminated`, and ``--resume`` continues exactly.
"""
from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class Terminated(Exception):
    """Training stopped on SIGTERM after saving a checkpoint (the CLI exits 143, as a process
    SIGTERM ended does)."""


@contextmanager
def stop_requests() -> Iterator[Callable[[], bool]]:
    """For the block, SIGTERM sets a flag instead of ending the process; yields a function that
    says whether it came. The handler before is put back after. Outside the main thread (where
    Python cannot take signals) nothing changes and the function always says no."""
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    came: list[int] = []
    before = signal.signal(signal.SIGTERM, lambda signum, frame: came.append(signum))
    try:
        yield lambda: bool(came)
    finally:
        signal.signal(signal.SIGTERM, before)
