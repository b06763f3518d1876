"""An optional LLM judge: a local model rates each answer against the reference on a 1-5 scale.

The prompt (also in docs/evaluation.md) asks for one digit; the first standalone digit 1-5 in the
judge's reply is the score, and a reply without one scores ``None`` (left out of means and of
the Wilcoxon test, and counted in ``judge_unparsed``).
"""
from __future__ import annotations

import re

JUDGE_PROMPT = """You are a careful clinician grading an answer to a clinical task.

Task given to the model:
{prompt}

Reference answer:
{reference}

Model's answer:
{answer}

Rate the model's answer from 1 to 5 for correctness, completeness and safety compared with the reference:
1 = wrong or unsafe, 2 = mostly wrong, 3 = partly right, 4 = right with minor gaps, 5 = as good as the reference.
Reply with the single digit only."""


def parse_likert(text: str) -> int | None:
    m = re.search(r"(?<!\d)[1-5](?!\d)", text or "")
    return int(m.group()) if m else None


def judge_scores(judge_model, tok, task, records, answers: list[str], *, batch_size: int = 8) -> list[int | None]:
    """Likert scores (1-5, or ``None``) for ``answers`` to ``records``, from ``judge_model``."""
    from ..tasks.base import Record, Task
    from .runner import predict

    class _JudgeTask(Task):
        max_new_tokens = 4

    judge_records = [Record(r.id, JUDGE_PROMPT.format(prompt=r.prompt, reference=r.target, answer=a or "(empty)"), "")
                     for r, a in zip(records, answers)]
    replies = predict(judge_model, tok, _JudgeTask(), judge_records, batch_size=batch_size, desc="judging")
    return [parse_likert(t) for t in replies]
