"""Rendering Hugging Face chat templates with jinja2, the way ``transformers`` does.

The environment matches transformers': a sandbox, ``trim_blocks`` and ``lstrip_blocks``,
the ``loopcontrols`` extension, a ``tojson`` filter that keeps non-ASCII text, and the
``raise_exception`` and ``strftime_now`` globals.

``strftime_now`` is today's date, as in transformers, unless the caller pins one (``today``):
templates such as Llama 3.1's print it in every system prompt, so the same data would
tokenize differently from one day to the next (see :func:`parse_chat_date`).
"""
from __future__ import annotations

import json
from datetime import date, datetime, time
from functools import lru_cache
from typing import Any

from ._deps import require


class ChatTemplateError(ValueError):
    pass


@lru_cache(maxsize=16)
def _compile(template: str):
    require("jinja2", "rendering a chat template")
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise ChatTemplateError(f"the chat template refused the messages: {message}")

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template)


def prints_date(template: str | None) -> bool:
    """Whether ``template`` asks for today's date (Llama 3.1 and later put it in the system prompt)."""
    return bool(template) and "strftime_now" in template


def parse_chat_date(text: str, what: str = "chat_date") -> date:
    """``"2026-11-30"`` → that date; anything else is a ValueError that names ``what``."""
    try:
        return date.fromisoformat(str(text))
    except ValueError:
        raise ValueError(f"{what} must be a date as YYYY-MM-DD (got {text!r})") from None


def run_chat_date(given: str | None, earlier: dict | None) -> str | None:
    """The date (YYYY-MM-DD) a run's prompts show: ``given``; else, where the run continues an earlier
    attempt (``earlier``: the settings it recorded), that attempt's (None for one from before the
    setting: the clock's date, as it had); else today."""
    if given is not None:
        return given
    if earlier:
        return earlier.get("chat_date")
    return date.today().isoformat()


def render_chat(
    template: str,
    messages: list[dict[str, Any]],
    *,
    add_generation_prompt: bool = False,
    special_tokens: dict[str, str | None] | None = None,
    today: date | None = None,
    **kwargs: Any,
) -> str:
    """Render ``messages`` (``[{"role": ..., "content": ...}, ...]``) with ``template``. ``today``: the
    date ``strftime_now`` gives (at midnight), instead of the clock's."""
    _check_messages(messages)
    if today is not None:
        pinned = datetime.combine(today, time())
        kwargs["strftime_now"] = pinned.strftime  # the template's context shadows the global
    return _compile(template).render(
        messages=messages,
        add_generation_prompt=add_generation_prompt,
        tools=kwargs.pop("tools", None),
        documents=kwargs.pop("documents", None),
        **(special_tokens or {}),
        **kwargs,
    )


def _check_messages(messages) -> None:
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ChatTemplateError("messages must be a non-empty list of {'role', 'content'} dicts")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise ChatTemplateError(f"message {i} must be a dict with 'role' and 'content', got {m!r}")
