"""An optional LLM judge: a local model rates each answer against the reference on a 1-5 scale.

The prompt (also in docs/evaluation.md) asks for one digit; the first standalone digit 1-5 in the
judge's reply is the score, and a reply without one scores ``None`` (left out of means and of
the Wilcoxon test, and counted in ``judge_unparsed``). A reasoning judge's reply is read after
its reasoning, and one still reasoning when its few tokens ran out scores ``None``, not a digit
it passed on the way. A judge whose template has a thinking switch is asked to answer at once
(:func:`ready_judge`), and one whose generation prompt opens a reasoning block itself
(DeepSeek-R1's distills) finds it closed empty, so it replies at once too.
"""
from __future__ import annotations

import re

# the 1-5 scale: the judge's, and the clinicians' who rate a blinded sheet of the answers (rating_sheet.py)
SCALE = ("1 = wrong or unsafe, 2 = mostly wrong, 3 = partly right, 4 = right with minor gaps, 5 = as good as the "
         "reference")
JUDGE_PROMPT = """You are a careful clinician grading an answer to a clinical task.

Task given to the model:
{prompt}

Reference answer:
{reference}

Model's answer:
{answer}

Rate the model's answer from 1 to 5 for correctness, completeness and safety compared with the reference:
{scale}.
Reply with the single digit only.""".replace("{scale}", SCALE)


def parse_likert(text: str) -> int | None:
    m = re.search(r"(?<!\d)[1-5](?!\d)", text or "")
    return int(m.group()) if m else None


CLOSED_FOR_JUDGE = ("the judge's chat template opens a reasoning block in its prompt: each judge prompt closes it "
                    "empty, so the judge answers at once (one digit)")


def ready_judge(tok) -> str | None:
    """Ask a judge whose chat template has a thinking switch (Qwen3's ``enable_thinking``) to answer
    at once: its reply is one digit in a few tokens, which reasoning first would never reach.
    Returns the line that says so, the line that says a template opening the block itself has it
    closed in each prompt (:func:`judge_scores`), or None."""
    from ..chat_template import opens_reasoning, thinking_switch_unset
    from ..tokenizer import set_chat_vars

    if not thinking_switch_unset(tok.chat_template, tok.chat_vars):
        asked = [{"role": "user", "content": "x"}]
        opened = tok.chat_template and opens_reasoning(tok.apply_chat_template(asked, True, tokenize=False))
        return CLOSED_FOR_JUDGE if opened else None
    set_chat_vars(tok, {**tok.chat_vars, "enable_thinking": False})
    return "the judge's chat template has a thinking switch: the judge answers with enable_thinking=false (one digit)"


JUDGE_TOKENS = 4  # the reply is one digit


def judge_scores(judge_model, tok, records, answers: list[str], *, batch_size: int = 8) -> list[int | None]:
    """Likert scores (1-5, or ``None``) for ``answers`` to ``records``, from ``judge_model``; a
    reasoning judge's reply read after its reasoning (``None`` where it never got past it). Where
    the judge's generation prompt opens a reasoning block, each prompt closes it empty
    (:func:`~prefopt.chat_template.empty_block_close`): the judge replies at once."""
    from ..chat_template import empty_block_close
    from ..tasks.parsing import final_answer
    from .runner import answer_prompts

    texts = [tok.apply_chat_template([{"role": "user", "content": JUDGE_PROMPT.format(
        prompt=r.prompt, reference=r.target, answer=a or "(empty)")}], True, tokenize=False)
        for r, a in zip(records, answers)]
    prompts = [tok.encode(t + empty_block_close(t), add_special_tokens=False) for t in texts]
    replies, _ = answer_prompts(judge_model, tok, prompts, batch_size=batch_size, desc="judging",
                                max_new_tokens=JUDGE_TOKENS)
    read = [final_answer(t, False) for t in replies]
    return [None if state == "unfinished" else parse_likert(answer) for answer, state in read]
