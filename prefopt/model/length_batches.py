"""Which prompts are answered (or scored) together: sorted by length, and a batch closed early
where the next prompt would make it run more padding than a batch more costs.

A batch runs every row to its longest prompt's length (left padding), so one long letter among
fifteen short messages had all sixteen run to the letter's length: 16 × 3000 tokens where
15 × 300 + 3000 were asked for. A batch more is not free either: it runs its own decoding steps
(``new_tokens`` of them, each reading every weight once) and its own shared start (the system
prompt every prompt begins with). So a batch is closed before a prompt that would bring its
padding past :data:`STEP_TOKENS` prompt tokens for each of those steps, plus the shared start.
Prompts of similar lengths (a task's messages after its system prompt) are answered in batches
of ``batch_size``; lengths that spread (a folder of letters) are split.
``benchmarks/bench_length_batches.py`` measures both against the batches of ``batch_size``
prompts in length order (answering) or in the records' order (scoring) that came before.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

# prompt tokens whose run costs about as much as one decoding step of a batch more: on a 2-core
# CPU SmolLM2 took ~27 ms a step and ~1.2 ms a prompt token (docs/benchmarks.md); on a GPU a step
# is worth more tokens (its weights read for one token's work): set high there, so that only
# plainly lopsided batches are split (not measured: no GPU was lent when this was written)
STEP_TOKENS = {"cpu": 32, "cuda": 256}


def length_batches(lengths: Sequence[int], batch_size: int, new_tokens: int = 1, device: str | torch.device = "cpu",
                   start: int = 0) -> list[list[int]]:
    """The indices of prompts of ``lengths`` tokens in batches of at most ``batch_size``, shortest
    first; a batch closed before a prompt that would have it run more padding than ``new_tokens`` ×
    :data:`STEP_TOKENS` [``device``'s kind: a ``torch.device`` or ``"cpu"``, ``"cuda"``] +
    ``start`` tokens, what a batch more costs (``new_tokens``: the decoding steps a batch takes, 1
    for a scoring pass; ``start``: the tokens every prompt begins with, run once a batch). Where
    lengths spread evenly, a batch's padding then about equals what a batch more costs, which
    makes the least work of padding and batches together."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    limit = new_tokens * STEP_TOKENS.get(getattr(device, "type", device), STEP_TOKENS["cuda"]) + start
    batches: list[list[int]] = []
    batch: list[int] = []
    tokens = 0
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        n = lengths[i]
        padding = len(batch) * n - tokens  # the batch's, with this prompt its longest
        if batch and (len(batch) == batch_size or padding > limit):
            batches.append(batch)
            batch, tokens = [], 0
        batch.append(i)
        tokens += n
    return batches + [batch] * bool(batch)


def batch_shapes(lengths: Sequence[int], batch_size: int, new_tokens: int = 1, device: str = "cpu",
                 start: int = 0) -> list[tuple[int, int]]:
    """The ``(prompts, the longest one's tokens)`` of the batches :func:`length_batches` makes, less
    those another batch matches or passes in both: one of these holds the most, so a memory
    estimate takes the largest of theirs (a batch of more prompts, or of longer ones, may)."""
    shapes = {(len(b), max(lengths[i] for i in b))
              for b in length_batches(lengths, batch_size, new_tokens, device, start)}
    return sorted(s for s in shapes if not any(o != s and o[0] >= s[0] and o[1] >= s[1] for o in shapes))
