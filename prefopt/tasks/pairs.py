"""Preference pairs for DPO, by a named strategy for the rejected side.

- ``wrong_label``: the reference answer against a wrong class or option, drawn in proportion
  to class frequency so each class is about as often rejected as chosen (another record's
  text for free-text tasks). ``wrong_label_hardest``: the hardest wrong answer
  instead (the neighbouring level for ordinal triage fields).
- ``model_errors``: on-policy negatives. The SFT model generates on the training prompts; its
  answers that the task's metric scores wrong (classification) or below the reference
  (free text, ROUGE-L under ``max_quality``) become the rejected side. Prompts it already gets
  right fall back to ``wrong_label`` so every prompt still gives a pair.
- ``ranked``: pairs given in a file (``prompt``/``chosen``/``rejected``), used as they are.
"""
from __future__ import annotations

import random
from collections.abc import Callable

from .base import Record, Task

STRATEGIES = ("wrong_label", "wrong_label_hardest", "model_errors", "ranked")


def _pair(task: Task, r: Record, rejected: str, source: str) -> dict:
    return {"prompt": task.messages(r), "chosen": r.target, "rejected": rejected, "id": r.id, "source": source}


def _wrong(task: Task, r: Record, rng: random.Random, records: list[Record], hardest: bool = False) -> list[str]:
    """The task's wrong answers for ``r``, without any that reads the same as its target."""
    return [w for w in task.wrong_answers(r, rng, records, hardest) if w.strip() != r.target.strip()]


def wrong_label_pairs(task: Task, records: list[Record], *, seed: int = 0, per_record: int = 1,
                      hardest: bool = False) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for r in records:
        out += [_pair(task, r, w, "wrong_label") for w in _wrong(task, r, rng, records, hardest)[:per_record]]
    return out


def model_error_pairs(task: Task, records: list[Record], generate: Callable[[list[Record]], list[str]], *,
                      seed: int = 0, max_quality: float = 0.9, opened: bool = False) -> tuple[list[dict], dict]:
    """``generate(records) -> texts`` runs the SFT model. Returns the pairs and counts. A
    reasoning model's answer is judged after its reasoning (``opened``: the prompt opened it)."""
    rng = random.Random(seed)
    texts = generate(records)
    out, mined = [], 0
    for r, text in zip(records, texts):
        pred = task.parse_output(text, r, opened)
        if task.kind == "classification":
            bad = not task.correct(r, pred)
        else:
            bad = float(task.item_scores([r], [pred])[0]) < max_quality
        if bad and text.strip() and text.strip() != r.target.strip():
            out.append(_pair(task, r, text.strip(), "model_errors"))
            mined += 1
        else:
            wrong = _wrong(task, r, rng, records)
            if wrong:
                out.append(_pair(task, r, wrong[0], "wrong_label"))
    return out, {"prompts": len(records), "model_errors": mined, "fallback_wrong_label": len(out) - mined}
