"""Batching: right-pad token lists into tensors; labels are -100 on padding."""
from __future__ import annotations

from collections.abc import Sequence

import torch

IGNORE = -100


def pad_collate(examples: Sequence, pad_id: int) -> dict[str, torch.Tensor]:
    """``input_ids``, ``attention_mask`` and ``labels``, each ``(B, T)`` with T the longest example.

    ``labels`` are the inputs' own ids (not shifted) with -100 where no loss is taken; the
    loss shifts them by one.
    """
    T = max(len(e.input_ids) for e in examples)
    B = len(examples)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    labels = torch.full((B, T), IGNORE, dtype=torch.long)
    mask = torch.zeros((B, T), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}
