"""Running out of memory during training, said as what to change rather than as a traceback.

PyTorch's own error names the allocation that failed and suggests an allocator setting; it
does not know the run. :func:`explained` runs a job and turns that error into
:class:`OutOfMemory`, which says when the run stopped, how large its micro-batches were, and
which of the run's settings would shrink them (each named as the CLI flag; the config fields
have the same names). The original exception keeps no traceback, so the failed step's frames
(and the activations they hold) are freed: a notebook can change the settings and train again
in the same process. compare says it in its own settings (``compare_config.memory_advice``).
"""
from __future__ import annotations

import re
from collections.abc import Callable
from typing import TypeVar

import torch

from .._errors import Pickled
from ..fileio import size_text
from .distributed import shards_as_it_moves
from .state import latest_checkpoint

T = TypeVar("T")


class OutOfMemory(Pickled, MemoryError):
    """Training ran out of memory; the message says where and what to change. ``what``: PyTorch's
    own words on the allocation that failed; ``when``: where the run was (``after 2 of 4 steps``);
    ``layers``: how many layers the backward goes through, where the run knew (compare's advice
    on ``gradient_checkpointing_layers`` stops there); ``weights``: the weights alone did not fit
    on the device (no batch was involved)."""

    def __init__(self, message: str, what: str = "", when: str = "", layers: int | None = None,
                 weights: bool = False):
        super().__init__(message)
        self.what, self.when, self.layers, self.weights = what, when, layers, weights


def is_out_of_memory(e: BaseException) -> bool:
    """A failed allocation: CUDA's (``torch.OutOfMemoryError``), the CPU allocator's (a plain
    RuntimeError from ``DefaultCPUAllocator``) or Python's."""
    return isinstance(e, (torch.OutOfMemoryError, MemoryError)) or (
        isinstance(e, RuntimeError) and "can't allocate memory" in str(e))


def torch_words(e: BaseException) -> str:
    """What failed and how much was free, from PyTorch's message (its first three sentences;
    the allocator's advice and the CPU allocator's source position left out)."""
    first = re.sub(r"^\[enforce fail at [^\]]*\][^.]*\.\s*", "", str(e).strip().split("\n")[0])
    return ". ".join(first.split(". ")[:3]).rstrip(".")


def reraised(job: Callable[[], T], advise: Callable[[BaseException], OutOfMemory]) -> T:
    """``job()``; an allocation failure in it leaves as ``advise(error)``. That is raised out
    here, with nothing to chain to, and the failure's traceback is dropped: its frames (the failed
    step's tensors) are let go (a context manager's ``__exit__`` would keep them in its frame)."""
    try:
        return job()
    except (RuntimeError, MemoryError) as e:
        if not is_out_of_memory(e):
            raise
        error = advise(e)
        e.__traceback__ = None
    raise error


def explained(trainer, job: Callable[[], T], phase: str | None = None) -> T:
    """``job()``; an allocation failure in it leaves as :class:`OutOfMemory` naming ``trainer``'s
    settings. ``phase``: a no-grad pass before training (``"filling the reference cache"``), else
    training."""
    def advise(e: BaseException) -> OutOfMemory:
        return e if isinstance(e, OutOfMemory) else training_advice(trainer, torch_words(e), phase)
    return reraised(job, advise)


def more_layers(n: int, layers: int | None) -> int | None:
    """The count of layers to recompute that the advice offers a run recomputing ``n``: twice as
    many, up to the ``layers`` the backward goes through (None: not known); None where ``n`` is
    all of them already."""
    if layers is not None and n >= layers:
        return None
    return 2 * n if layers is None else min(2 * n, layers)


def _more_checkpointing(c, layers: int | None) -> str | None:
    """The flags that recompute more layers' activations than the run does, if any can
    (``layers``: how many the backward goes through, None where not known)."""
    if not c.gradient_checkpointing:
        return "--gradient-checkpointing"
    n = c.gradient_checkpointing_layers
    if n and layers is not None and (more := more_layers(n, layers)):
        return (f"--gradient-checkpointing-layers {more} (now {n} of the {layers} layers the backward goes through; "
                "none: all)")
    return None


def training_advice(trainer, what: str, phase: str | None = None) -> OutOfMemory:
    """The message: when, the micro-batch, and the settings that need less memory (those the run
    does not use already). Gradient checkpointing changes no result, so where the run has a
    checkpoint ``--resume`` takes it; the others start the run again."""
    c = trainer.config
    if phase:
        when = f"while {phase}"
    else:
        when = f"after {trainer.step} of {trainer.total_steps} steps" if trainer.step else "before the first step"
    layers = _backward_layers(trainer)
    more = None if phase else _more_checkpointing(c, layers)  # (a no-grad pass keeps no activations)
    resumable = more is not None and latest_checkpoint(trainer.output_dir) is not None
    fixes = [f"{more} with --resume (the same results, from the last checkpoint)"] if resumable else []
    if c.batch_size > 1:  # the same examples per optimizer step, in smaller micro-batches
        b = c.batch_size // 2 if c.batch_size % 2 == 0 else 1
        fixes.append(f"--batch-size {b} --grad-accum {c.grad_accum * c.batch_size // b} (the same examples per "
                     f"optimizer step)")
    if more is not None and not resumable:
        fixes.append(more)
    fixes.append(f"a shorter --max-length (now {c.max_length})")
    if c.lora and not c.quantize:
        if c.dtype == "float32":
            fixes.append("--dtype bfloat16 (the frozen base in 16 bits; the adapter stays float32)")
        fixes.append("--quantize nf4 (the base in 4 bits)")
    if getattr(trainer, "ref_mode", None) == "model" and not phase:
        fixes.append("ref_cache= (the reference model's log-probs from disk, and no reference model in memory)")
    restart = (f"{'The others' if resumable else 'These'} change the run's settings: start it again with --overwrite "
               "(overwrite=True) or into another --output-dir")
    return OutOfMemory(f"out of memory on {trainer.device} {when} ({what}), with micro-batches of {c.batch_size} "
                       f"examples of up to {c.max_length} tokens. To fit, try {', '.join(fixes)} (in Python: the "
                       f"config fields of those names). {restart}{_estimate_hint(trainer)}", what, when, layers)


def moved(trainer, module: torch.nn.Module, which: str = "model") -> torch.nn.Module:
    """``module`` moved to ``trainer``'s device; where its weights alone do not fit there, an
    :class:`OutOfMemory` that says so, their size and the settings that hold them in less (a
    smaller batch, PyTorch's advice for a failed step, changes nothing here)."""
    return reraised(lambda: module.to(trainer.device), lambda e: weights_advice(trainer, module, torch_words(e), which))


def weights_advice(trainer, module: torch.nn.Module, what: str, which: str = "model") -> OutOfMemory:
    """The message where moving ``which``'s weights to the device failed, before any step."""
    c = trainer.config
    sizes: dict[torch.dtype, int] = {}
    for t in [*module.parameters(), *module.buffers()]:
        sizes[t.dtype] = sizes.get(t.dtype, 0) + t.numel() * t.element_size()
    held = ", ".join(f"{size_text(n)} in {str(dtype).removeprefix('torch.')}"
                     for dtype, n in sorted(sizes.items(), key=lambda kv: -kv[1])[:2])
    dist = getattr(trainer, "dist", None)
    sharded = dist is not None and shards_as_it_moves(dist, c.fsdp)  # (a --ref reference model too)
    if sharded:
        held += f" (about {size_text(sum(sizes.values()) / dist.world)} on each of the {dist.world} processes' " \
                "devices, sharded)"
    fixes = []
    if which != "model":
        fixes.append("ref_cache= (the reference model's log-probs from disk, and no reference model in memory)")
    if c.lora and not c.quantize:
        if c.dtype == "float32":
            fixes.append("--dtype bfloat16 (the frozen base in 16 bits, half of float32's; the adapter stays float32)")
        fixes.append("--quantize nf4 (the base's projections in 4 bits)")
    elif not c.lora:
        fixes.append("LoRA (leave out --no-lora: the base is then frozen and --dtype bfloat16 or --quantize nf4 hold "
                     "it in less)")
        fixes.append("more GPUs under --fsdp (torchrun --nproc-per-node: each holds its share of the weights)"
                     if sharded else "--fsdp under torchrun on several GPUs (each holds its share of the weights)")
    fixes.append("a smaller model")
    return OutOfMemory(f"out of memory on {trainer.device} moving the {which}'s weights there, before the first step "
                       f"({what}): they take {held}, and a smaller batch does not change that. To fit, try "
                       f"{', '.join(fixes)} (in Python: the config fields of those names)"
                       f"{_estimate_hint(trainer, module)}",
                       what, "before the first step", weights=True)


def _estimate_hint(trainer, model: torch.nn.Module | None = None) -> str:
    """Where the memory estimate covers the run (``memory_estimate.uncovered``; a command's model
    given as a folder, not a .gguf file): how to see what a step of other settings holds before
    starting it. ``model``: the trainer's (default), or one not yet its own."""
    from ..model.hub import is_gguf
    from .memory_estimate import uncovered

    model = model if model is not None else getattr(trainer, "model", None)  # (an empty container is falsy)
    c, cfg = trainer.config, getattr(model, "config", None)
    if not hasattr(cfg, "sparse") or is_gguf(c.model) or uncovered(c, cfg):
        return ""
    return (f"; the command with --estimate-memory {trainer.device.type} added says what a step of the new settings "
            "holds, without loading anything")


def _backward_layers(trainer) -> int | None:
    """How many layers the backward of ``trainer``'s model goes through (None where it cannot say)."""
    model = getattr(trainer, "model", None)
    return model.backward_layers() if hasattr(model, "backward_layers") else None
