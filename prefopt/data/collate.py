"""Batching: right-pad token arrays into tensors (labels -100 on padding), or lay them end to end in one row."""
from __future__ import annotations

from array import array
from collections.abc import Sequence

import torch

IGNORE = -100


def as_tensor(ids: Sequence[int]) -> torch.Tensor:
    """An example's ids (an ``array('i')``, as :class:`~prefopt.data.sft.TokenizedExample` keeps them)
    as a 1-D tensor without a per-element copy (it shares the array's memory: read it, copy it on)."""
    if isinstance(ids, array) and ids.typecode == "i":
        return torch.frombuffer(ids, dtype=torch.int32) if len(ids) else torch.zeros(0, dtype=torch.int32)
    return torch.tensor(list(ids), dtype=torch.long)


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
        ids[i, :n] = as_tensor(e.input_ids)
        labels[i, :n] = as_tensor(e.labels)
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def packed_collate(examples: Sequence, start: int = 0) -> dict[str, torch.Tensor]:
    """The examples laid end to end in one row, without padding: ``input_ids``, ``labels`` and an
    all-ones ``attention_mask``, each ``(1, L)`` with L the examples' total length, and ``lengths``
    ``(B,)``, for ``Transformer.forward(..., packed=lengths)``, which keeps each example to itself.
    Each example's first label is -100: the shifted loss would otherwise ask the previous example's
    last position for it (unpadded, the shift drops it anyway), so the loss is the padded batch's.

    ``start``: the first tokens every example has (untrained prompt tokens, a system prompt and
    instructions) lead the row once, ``[start | rest 1 | rest 2 | ...]``; ``lengths`` are then the
    rests', ``start`` says how many tokens lead (``Transformer.forward(..., packed=lengths,
    packed_start=start)`` lets each rest see the start and itself) and ``tokens`` how many the
    examples hold in all."""
    ids = torch.cat([as_tensor(examples[0].input_ids[:start])]
                    + [as_tensor(e.input_ids[start:]) for e in examples]).long()[None]
    labels = torch.cat([torch.full((start,), IGNORE)] + [as_tensor(e.labels[start:]) for e in examples]).long()
    lengths = torch.tensor([len(e.input_ids) - start for e in examples], dtype=torch.long)
    labels[start + torch.cumsum(lengths, 0) - lengths] = IGNORE
    out = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels[None], "lengths": lengths}
    if start:  # and how many tokens the examples hold, run or not (the trainer's tokens a second)
        out["start"], out["tokens"] = torch.tensor(start), torch.tensor(sum(len(e.input_ids) for e in examples))
    return out
