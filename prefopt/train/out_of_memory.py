"""Running out of memory during training, said as what to change rather than as a traceback.

PyTorch's own error names the allocation that failed and suggests an allocator setting; it
does not know the run. :func:`explained` runs a job and turns it into :class:`OutOfMemory`, which says when
the run stopped, how large its micro-batches were, and which of the run's settings would
shrink them (each named as the CLI flag; the config fields have the same names). The original
exception keeps no traceback, so the failed step's frames (and the activations they hold) are
freed: a notebook can change the settings and train again in the same process.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from typing import TypeVar

import torch

T = TypeVar("T")


class OutOfMemory(MemoryError):
    """Training ran out of memory; the message says where and what to change."""


def is_out_of_memory(e: BaseException) -> bool:
    """A failed allocation: CUDA's (``torch.OutOfMemoryError``), the CPU allocator's (a plain
    RuntimeError from ``DefaultCPUAllocator``) or Python's."""
    return isinstance(e, (torch.OutOfMemoryError, MemoryError)) or (
        isinstance(e, RuntimeError) and "can't allocate memory" in str(e))


def explained(trainer, job: Callable[[], T], phase: str | None = None) -> T:
    """``job()``; an allocation failure in it leaves as :class:`OutOfMemory`. ``phase``: a no-grad
    pass before training (``"filling the reference cache"``), else training."""
    try:
        return job()
    except (RuntimeError, MemoryError) as e:
        if not is_out_of_memory(e) or isinstance(e, OutOfMemory):
            raise
        message = out_of_memory_message(trainer, str(e), phase)
        e.__traceback__ = None
    # raised out here, with nothing to chain to: torch's error and its traceback (the failed step's frames and
    # the tensors they hold) are let go (a context manager's __exit__ would keep the traceback in its frame)
    raise OutOfMemory(message)


def out_of_memory_message(trainer, error: str, phase: str | None = None) -> str:
    c = trainer.config
    first = re.sub(r"^\[enforce fail at [^\]]*\][^.]*\.\s*", "", error.strip().split("\n")[0])  # (the CPU allocator's)
    what = ". ".join(first.split(". ")[:3]).rstrip(".")  # torch's: what failed, how much is free
    if phase:
        when = f"while {phase}"
    else:
        when = f"after {trainer.step} of {trainer.total_steps} steps" if trainer.step else "before the first step"
    fixes = []
    if c.batch_size > 1:  # the same examples per optimizer step, in smaller micro-batches
        b = c.batch_size // 2 if c.batch_size % 2 == 0 else 1
        fixes.append(f"--batch-size {b} --grad-accum {c.grad_accum * c.batch_size // b} (the same examples per "
                     f"optimizer step)")
    if not c.gradient_checkpointing and not phase:  # (a no-grad pass keeps no activations)
        fixes.append("--gradient-checkpointing")
    fixes.append(f"a shorter --max-length (now {c.max_length})")
    if c.lora and not c.quantize:
        fixes.append("--quantize nf4 (the base in 4 bits)")
    if getattr(trainer, "ref_mode", None) == "model" and not phase:
        fixes.append("ref_cache= (the reference model's log-probs from disk, and no reference model in memory)")
    return (f"out of memory on {trainer.device} {when} ({what}), with micro-batches of {c.batch_size} examples "
            f"of up to {c.max_length} tokens. To fit, try {', '.join(fixes)} (in Python: the config fields of "
            f"those names). These change the run's settings: start it again with --overwrite (overwrite=True) "
            f"or into another --output-dir")
