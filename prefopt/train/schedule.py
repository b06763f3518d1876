"""The learning-rate schedule, as a plain function of the step."""
from __future__ import annotations

import math


def lr_at(step: int, *, base_lr: float, total_steps: int, warmup_steps: int = 0,
          schedule: str = "cosine", min_lr_ratio: float = 0.0) -> float:
    """Learning rate for optimizer step ``step`` (0-based): linear warmup, then decay.

    ``cosine`` and ``linear`` decay from ``base_lr`` to ``min_lr_ratio * base_lr`` at
    ``total_steps``; ``constant`` stays at ``base_lr`` after warmup.
    """
    if warmup_steps and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return base_lr
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    floor = base_lr * min_lr_ratio
    if schedule == "linear":
        return floor + (base_lr - floor) * (1 - progress)
    if schedule == "cosine":
        return floor + (base_lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    raise ValueError(f"unknown schedule {schedule!r}")
