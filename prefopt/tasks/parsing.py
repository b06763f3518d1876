"""Robust parsing of generated text into a class label.

Small models chat: "Sure! Based on the message, I'd say the urgency is **Urgent**." The parser
finds the label the text commits to, tolerating chatter, casing and markdown, and returns
``None`` for an empty or unreadable answer (which scores as wrong, never crashes).

Rules:
- If the text has a ``<field>: value`` line (e.g. ``Urgency: urgent``), that line is searched first.
- Otherwise the whole text is searched; the earliest mention wins, the longest on a tie (so
  "non-urgent" is not read as "urgent").
- One-character forms (option letters, KTAS digits) only count with a cue: at the very start,
  in parentheses, or after "answer", "option", "level", "ktas", "is", ":" and similar.

Reasoning models (DeepSeek-R1 and its distills, Qwen3, QwQ: ``<think>...</think>``; Magistral:
``[THINK]...[/THINK]``) think aloud before they answer, naming every option on the way; only
the text after the reasoning is their answer (:func:`final_answer`).
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from ..chat_template import REASONING_TAGS, opens_reasoning  # noqa: F401  (opens_reasoning: the task layer's too)

_CUE = r"(?:answer|option|choice|level|ktas|category|grade|urgency|triage|is|:|=|\()"


def _patterns(alias: str) -> list[re.Pattern]:
    a = re.escape(alias.strip())
    if len(alias.strip()) == 1:
        return [re.compile(rf"^\W*{a}(?![A-Za-z0-9])"),  # "B", "**B**", "B) ..."
                re.compile(rf"(?i){_CUE}\W{{0,3}}{a}(?![A-Za-z0-9])"),
                re.compile(rf"\({a}\)")]
    return [re.compile(rf"(?i)(?<![A-Za-z0-9]){a}(?![A-Za-z0-9])")]


def find_label(text: str | None, aliases: Mapping[str, Sequence[str]], field: str | None = None) -> str | None:
    """The canonical label that ``text`` commits to, or ``None``.

    ``aliases`` maps each canonical label to its surface forms (the label itself is always one).
    """
    if not text or not text.strip():
        return None
    text = text.replace("*", "").replace("`", "")
    if field:
        m = re.search(rf"(?im)^\W*{re.escape(field)}\s*[:=\-]\s*(.+)$", text)
        if m:
            got = _earliest(m.group(1), aliases)
            if got is not None:
                return got
    return _earliest(text, aliases)


def _earliest(text: str, aliases: Mapping[str, Sequence[str]]) -> str | None:
    best = None  # (start, -length, label)
    for label, forms in aliases.items():
        for form in {label, *forms}:
            for pat in _patterns(form):
                m = pat.search(text)
                if m:
                    start = m.end() - len(form.strip()) if len(form.strip()) == 1 else m.start()
                    key = (start, -len(form), label)
                    if best is None or key < best:
                        best = key
    return None if best is None else best[2]


def final_answer(text: str | None, opened: bool = False) -> tuple[str, str | None]:
    """``(answer, reasoning)``: the text after a reasoning model's last closing tag, and
    ``"done"``; ``("", "unfinished")`` where the reasoning never closed (the output opens a
    block, or ``opened``: the chat template's generation prompt opened it, as DeepSeek-R1's does
    with ``<think>``, and the output closes none): cut by the token cap before any answer; else
    the text itself and None."""
    text = text or ""
    for _, end in REASONING_TAGS:
        if end in text:
            return text.rsplit(end, 1)[1].strip(), "done"
    if opened or any(text.lstrip().startswith(start) for start, _ in REASONING_TAGS):
        return "", "unfinished"
    return text, None
