"""An optional LLM judge: a local model rates each answer against the reference on a 1-5 scale.

The prompt (also in docs/evaluation.md) asks for one digit; the first standalone digit 1-5 in the
judge's reply is the score, and a reply without one scores ``None`` (left out of means and of
the Wilcoxon test, and counted in ``judge_unparsed``). A reasoning judge's reply is read after
its reasoning, and one still reasoning when its few tokens ran out scores ``None``, not a digit
it passed on the way; a judge whose template has a thinking switch is asked to answer at once
(:func:`ready_judge`).
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


def ready_judge(tok) -> str | None:
    """Ask a judge whose chat template has a thinking switch (Qwen3's ``enable_thinking``) to answer
    at once: its reply is one digit in a few tokens, which reasoning first would never reach.
    Returns the line that says so, or None where the template has no such switch or it is set."""
    from ..chat_template import thinking_switch_unset
    from ..tokenizer import set_chat_vars

    if not thinking_switch_unset(tok.chat_template, tok.chat_vars):
        return None
    set_chat_vars(tok, {**tok.chat_vars, "enable_thinking": False})
    return "the judge's chat template has a thinking switch: the judge answers with enable_thinking=false (one digit)"


def judge_scores(judge_model, tok, task, records, answers: list[str], *, batch_size: int = 8) -> list[int | None]:
    """Likert scores (1-5, or ``None``) for ``answers`` to ``records``, from ``judge_model``; a
    reasoning judge's reply read after its reasoning (``None`` where it never got past it)."""
    from ..tasks.base import Record, Task
    from ..tasks.parsing import final_answer
    from .runner import predict, reasoning_opened

    class _JudgeTask(Task):
        max_new_tokens = 4

    judge_records = [Record(r.id, JUDGE_PROMPT.format(prompt=r.prompt, reference=r.target, answer=a or "(empty)"), "")
                     for r, a in zip(records, answers)]
    replies = predict(judge_model, tok, _JudgeTask(), judge_records, batch_size=batch_size, desc="judging")
    opened = reasoning_opened(tok, _JudgeTask(), judge_records)
    read = [final_answer(t, opened) for t in replies]
    return [None if state == "unfinished" else parse_likert(answer) for answer, state in read]
