"""Repetition controls for decoding: the repetition penalty and the n-gram ban.

Small models decoding greedily often loop on one sentence until the token cap (ACI-Bench visit
notes: every note of every stage). Two controls, both as transformers defines them:

- ``repetition_penalty`` (Keskar et al., 2019): the logit of a token already in the row is divided
  by the penalty where positive and multiplied by it where negative.
- ``no_repeat_ngram_size`` n: a token that would complete an n-gram already in the row is banned.

``scope`` says what "the row" is. ``"all"``, as transformers, holds the prompt and the output, so
a summary is also pushed away from the words of the text it summarises. ``"output"`` holds only
the generated tokens: it breaks loops and leaves copying from the prompt alone.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

SCOPES = ("all", "output")


def penalize_repeats(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """``logits`` ``(B, V)`` with the repetition penalty applied where ``seen`` ``(B, V)`` is True:
    divided by ``penalty`` where positive, multiplied where negative."""
    return torch.where(seen, torch.where(logits < 0, logits * penalty, logits / penalty), logits)


def check_repeat_options(repetition_penalty: float, no_repeat_ngram_size: int, scope: str) -> None:
    if repetition_penalty <= 0:
        raise ValueError(f"repetition_penalty must be positive (1 = none), got {repetition_penalty}")
    if isinstance(no_repeat_ngram_size, bool) or not isinstance(no_repeat_ngram_size, int) \
            or no_repeat_ngram_size < 0:
        raise ValueError(f"no_repeat_ngram_size must be a whole number >= 0 (0 = none), got {no_repeat_ngram_size!r}")
    if scope not in SCOPES:
        raise ValueError(f"repeat_scope must be one of {', '.join(SCOPES)}, got {scope!r}")


class RepeatGuard:
    """Each row's tokens so far, for the repetition penalty and the n-gram ban.

    ``apply`` adjusts one step's logits; ``add`` records the tokens chosen, for rows still going.
    Padding is never part of a row (transformers counts left padding in its n-grams; one prompt at
    a time the two agree).
    """

    def __init__(self, prompts: Sequence[Sequence[int]], vocab_size: int, *, repetition_penalty: float = 1.0,
                 no_repeat_ngram_size: int = 0, scope: str = "all", device=None):
        check_repeat_options(repetition_penalty, no_repeat_ngram_size, scope)
        self.penalty, self.n = repetition_penalty, no_repeat_ngram_size
        self.rows = [list(p) if scope == "all" else [] for p in prompts]
        self.seen = None
        if self.penalty != 1.0:
            self.seen = torch.zeros(len(prompts), vocab_size, dtype=torch.bool, device=device)
            for i, row in enumerate(self.rows):
                if row:
                    self.seen[i, torch.tensor(row, device=device)] = True
        self.grams: list[dict[tuple, set[int]]] = [{} for _ in prompts]  # (n-1)-gram -> tokens that followed it
        if self.n:
            for i, row in enumerate(self.rows):
                for end in range(self.n, len(row) + 1):
                    self._note(i, row[end - self.n:end])

    @property
    def active(self) -> bool:
        return self.penalty != 1.0 or self.n > 0

    def _note(self, i: int, gram: list[int]) -> None:
        self.grams[i].setdefault(tuple(gram[:-1]), set()).add(gram[-1])

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits`` ``(B, V)``, penalised and with banned tokens at -inf (a new tensor)."""
        if self.seen is not None:
            logits = penalize_repeats(logits, self.seen, self.penalty)
        if self.n:
            logits = logits.clone()
            for i, row in enumerate(self.rows):
                if len(row) >= self.n - 1:
                    banned = self.grams[i].get(tuple(row[len(row) - self.n + 1:]))
                    if banned:
                        logits[i, list(banned)] = float("-inf")
        return logits

    def select(self, rows: list[int]) -> None:
        """Keep only ``rows`` (in this order), which become rows 0, 1, ...: the batch without its
        finished rows."""
        self.rows = [self.rows[i] for i in rows]
        self.grams = [self.grams[i] for i in rows]
        if self.seen is not None:
            self.seen = self.seen[torch.tensor(rows, dtype=torch.long, device=self.seen.device)]

    def add(self, tokens: list[int], rows: list[int]) -> None:
        """Record ``tokens[k]`` as the next token of row ``rows[k]``."""
        for i, t in zip(rows, tokens):
            row = self.rows[i]
            row.append(t)
            if self.seen is not None:
                self.seen[i, t] = True
            if self.n and len(row) >= self.n:
                self._note(i, row[-self.n:])
