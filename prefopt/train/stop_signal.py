"""SIGTERM or a first Ctrl-C during training: finish the step, save a checkpoint, stop.

A scheduler that preempts a job (SLURM, Kubernetes, a shared server's ``kill``) sends SIGTERM
and, some seconds later, SIGKILL. Python's default for SIGTERM ends the process at once, and
Ctrl-C (SIGINT) raised KeyboardInterrupt wherever the step was: every step since the last
checkpoint was lost, or the whole run where it saved none. While :func:`stop_requests` is
active, either signal only sets a flag; the loop looks at it after each step, saves a
checkpoint and stops (:class:`Terminated` for SIGTERM, KeyboardInterrupt for Ctrl-C), and
``--resume`` continues exactly. A second Ctrl-C stops at once, as before.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from .._context import holding


class Terminated(Exception):
    """Training stopped on SIGTERM after saving a checkpoint (the CLI exits 143, as a process
    SIGTERM ended does)."""


@dataclass(frozen=True)
class GoingOn:
    """How a stopped run's messages tell the user to go on, in the words of the program that runs
    the trainer: ``resume`` continues from the last checkpoint (``"rerun with --resume"``),
    ``restart`` starts again where there is none, ``save_more`` (after "it saved no checkpoint")
    names the setting that saves checkpoints, ``output`` the one that names the run's folder;
    ``smaller`` (after "the run will likely run out of memory.") how to make a step hold less, and
    ``fewer_answers`` how to make answering hold less (fewer prompts at once)."""
    resume: str = "rerun with --resume"
    restart: str = "rerun with --overwrite"
    save_more: str = " (set --save-every)"
    output: str = "--output-dir"
    smaller: str = ("Lower --batch-size (raising --grad-accum to match), --max-length, or add --gradient-checkpointing; "
                    "--estimate-memory says what a step of other settings holds (docs/training.md)")
    fewer_answers: str = ("Lower --batch-size: fewer prompts answered at once (the same answers, up to rounding); "
                          "--estimate-memory says what a batch holds (docs/evaluation.md)")


COMMAND_LINE = GoingOn()  # prefopt sft / dpo / kto
_going_on: ContextVar[GoingOn | None] = ContextVar("prefopt_going_on", default=None)


def going_on() -> GoingOn:
    """The words of :class:`GoingOn` in force (the command line's, unless :func:`going_on_by`)."""
    return _going_on.get() or COMMAND_LINE


def going_on_by(words: GoingOn) -> AbstractContextManager[None]:
    """Within the block, the trainers' stop messages say how to go on in ``words`` (``prefopt
    compare``: rerunning the same command resumes a stage, and it has no --resume)."""
    return holding(_going_on, words)


def ctrl_c_line(when: str) -> str:
    """The line a first Ctrl-C prints: the run stops ``when`` (``"after this step, with a checkpoint"``)."""
    return f"\nprefopt: Ctrl-C: the run stops {when} (Ctrl-C again: at once)\n"


AFTER_THE_STEP = "after this step, with a checkpoint"
FIRST_CTRL_C = ctrl_c_line(AFTER_THE_STEP)  # the training loop's


def _say(text: str) -> None:
    """``text`` on stderr from a signal handler: through ``sys.stderr`` (a notebook shows it), or
    straight to file descriptor 2 where the signal landed inside a write to that stream (a
    buffered stream refuses a nested write with a RuntimeError, before it changes anything)."""
    try:
        sys.stderr.write(text)
        sys.stderr.flush()
    except (RuntimeError, OSError, ValueError):
        os.write(2, text.encode())


@contextmanager
def stop_requests(at_once: bool = False, ctrl_c: str = AFTER_THE_STEP) -> Iterator[Callable[[], int]]:
    """For the block, SIGTERM and a first Ctrl-C set a flag instead of stopping the process at
    once; yields a function that gives the signal that came (``signal.SIGTERM``, ``SIGINT``) or 0.
    Ctrl-C is taken over only where Python's own handler has it (a program's own is left alone);
    a second one raises KeyboardInterrupt there and then. ``at_once``: SIGTERM raises
    :class:`Terminated` where it lands and Ctrl-C raises Python's KeyboardInterrupt (for work that
    changes no weights: an evaluation), inside another block too. ``ctrl_c``: when the run stops after
    a first Ctrl-C, as its line says (:func:`ctrl_c_line`). The handlers before are put back after.
    Outside the main thread (where Python cannot take signals) nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield lambda: 0
        return
    came: list[int] = []

    def on_term(signum, frame):
        came.append(signum)
        if at_once:
            raise Terminated("stopped by SIGTERM")

    def on_int(signum, frame):
        if signal.SIGINT in came:
            signal.default_int_handler(signum, frame)  # KeyboardInterrupt, here and now
        came.append(signum)
        _say(ctrl_c_line(ctrl_c))

    on_int.ours = True  # (a block inside this one, at_once, gives Ctrl-C back to Python's handler)
    before = {signal.SIGTERM: signal.signal(signal.SIGTERM, on_term)}
    held = signal.getsignal(signal.SIGINT)
    if held is signal.default_int_handler and not at_once:
        before[signal.SIGINT] = signal.signal(signal.SIGINT, on_int)
    elif at_once and getattr(held, "ours", False):
        before[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield lambda: signal.SIGTERM if signal.SIGTERM in came else (signal.SIGINT if came else 0)
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)
