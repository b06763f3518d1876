"""Rendering Hugging Face chat templates with jinja2, the way ``transformers`` does.

The environment matches transformers': a sandbox, ``trim_blocks`` and ``lstrip_blocks``,
the ``loopcontrols`` extension, the ``{% generation %}`` block, namespaces that refuse names
starting with ``_``, a ``tojson`` filter that keeps non-ASCII text, and the
``raise_exception`` and ``strftime_now`` globals (``benchmarks/check_chat_templates.py``: 70
real templates render as transformers renders them).

``strftime_now`` is today's date, as in transformers, unless the caller pins one (``today``):
templates such as Llama 3.1's print it in every system prompt, so the same data would
tokenize differently from one day to the next (see :func:`parse_chat_date`).

A template may also read switches of its own, which transformers passes as keyword arguments to
``apply_chat_template`` (Qwen3's ``enable_thinking=False``): prefopt calls them chat variables
(:func:`parse_chat_vars`, :func:`check_chat_vars`), and a run pins them as it pins the date.

Training cuts a response off its prompt by the template's own text (:func:`exchange_texts`),
reasoning models' templates included, whose finished turns are not their prompt plus the answer.
"""
from __future__ import annotations

import json
import warnings
from datetime import date, datetime, time
from functools import lru_cache
from typing import Any

from ._deps import require


class ChatTemplateError(ValueError):
    pass


class BoundaryError(ValueError):
    """The prompt's tokens are not a prefix of the prompt+response tokens."""


# how reasoning models mark their thinking: DeepSeek-R1 and its distills, Qwen3, QwQ; Magistral
REASONING_TAGS = (("<think>", "</think>"), ("[THINK]", "[/THINK]"))
_MARK = "\ue000prefopt-response\ue000"  # private-use characters: no template or text holds them


def open_reasoning(prompt_text: str) -> tuple[str, str] | None:
    """The tags of the reasoning block a generation prompt (its text) ends inside (DeepSeek-R1's
    ``<｜Assistant｜><think>\n``: ``("<think>", "</think>")``), else None."""
    for start, end in REASONING_TAGS:
        at = prompt_text.rfind(start)
        if at >= 0 and end not in prompt_text[at:]:
            return start, end
    return None


def opens_reasoning(prompt_text: str) -> bool:
    """Whether a generation prompt (its text) ends inside a reasoning block it opened."""
    return open_reasoning(prompt_text) is not None


def empty_block_close(prompt_text: str) -> str:
    """The text that closes, empty, the reasoning block a generation prompt opened (DeepSeek-R1's
    ``<think>\n``: ``"\n</think>\n\n"``, so the block reads as Qwen3's empty one,
    ``<think>\n\n</think>\n\n``); ``""`` where the prompt opened none."""
    block = open_reasoning(prompt_text)
    if block is None:
        return ""
    return ("\n" if prompt_text.endswith("\n") else "") + block[1] + "\n\n"


def exchange_texts(render, messages: list[dict[str, Any]], response: str) -> tuple[str, str, bool]:
    """``(prompt, full, continued)``: the text a model answers from (``render(messages, True)``, the
    generation prompt on) and the whole exchange with ``response`` as its last turn, which starts
    with it, so the response can be cut off exactly.

    The exchange is the template's rendering of the finished turn where that extends the prompt
    and keeps the response's reasoning, if it has any (``continued`` False). Reasoning models'
    templates do not: DeepSeek-R1's, QwQ's and Gemma
    4's generation prompts open (or hold an empty) reasoning block that a finished assistant turn
    drops, and some templates (Mistral NeMo's) place the system prompt by the last user turn. The
    exchange is then the prompt as the model sees it when it answers, the response, and the
    template's end of turn (what it writes after an assistant turn's text) (``continued`` True);
    where the prompt left a reasoning block open and the response does not close it, the response
    follows an empty block, as Qwen3's template writes one (``<think>\n\n</think>\n\n``), so that
    the model learns to close it and answer; a response written with its reasoning whole
    (``<think>\n...\n</think>\n\nanswer``, the form Qwen3's template takes apart itself) is
    continued inside the block the prompt opened, without opening it twice. A BoundaryError where
    the template rewrites an assistant turn's text (the end of turn cannot be told)."""
    prompt = render(messages, True)
    if _closed_empty_block(prompt) and any(end in response for _, end in REASONING_TAGS):
        warnings.warn(THINKING_OFF, stacklevel=2)
    full = render(messages + [{"role": "assistant", "content": response}], False)
    if full.startswith(prompt) and _keeps_reasoning(full[len(prompt):], response):
        return prompt, full, False
    marked = render(messages + [{"role": "assistant", "content": _MARK}], False)
    if marked.count(_MARK) != 1:
        raise BoundaryError("the chat template renders the prompt differently with and without the response, and "
                            "rewrites an assistant turn's text, so the response cannot be cut off exactly; prompt "
                            f"ends {prompt[-60:]!r}")
    block, newline = open_reasoning(prompt), "\n" if prompt.endswith("\n") else ""
    if block:
        start, close = block
        if response.lstrip().startswith(start):  # a reasoned response written whole: the prompt opened it already
            response = response.lstrip()[len(start):].lstrip(newline)
        if close not in response:
            response = empty_block_close(prompt) + response
    return prompt, prompt + response + marked.split(_MARK, 1)[1], True


THINKING_OFF = ("responses written with their reasoning (<think>...</think>) follow a prompt that closes an empty "
                "reasoning block (thinking switched off: enable_thinking=false): each trains as a second block "
                "after the empty one, which is not how the model answers either way; train reasoning data with "
                "thinking on, or leave the reasoning out of the responses")


def _closed_empty_block(prompt: str) -> bool:
    """Whether a generation prompt ends with an empty, closed reasoning block (Qwen3's
    ``<think>\n\n</think>\n\n`` under ``enable_thinking=false``): the model is to answer without
    reasoning."""
    tail = prompt.rstrip()
    for start, end in REASONING_TAGS:
        if tail.endswith(end) and tail[:-len(end)].rstrip().endswith(start):
            return True
    return False


def _keeps_reasoning(turn: str, response: str) -> bool:
    """Whether a rendered ``turn`` holds the reasoning ``response`` was written with (the text
    before its closing tag): some templates drop it from every finished turn (DeepSeek-V3.1's)."""
    for _, end in REASONING_TAGS:
        if end in response:
            thought = response.split(end, 1)[0]
            for start, _ in REASONING_TAGS:
                thought = thought.replace(start, "")
            return thought.strip() in turn
    return True


def _environment(**options):
    """The sandbox templates run in: transformers' extensions (``loopcontrols``, and the
    ``{% generation %}`` block some templates mark the assistant's text with, rendered as it is:
    prefopt finds a response by the prompt's boundary), and ``namespace`` objects that refuse
    underscore-prefixed attributes, as transformers' do (a template is code from the Hub)."""
    require("jinja2", "rendering a chat template")
    from jinja2 import nodes
    from jinja2.exceptions import SecurityError
    from jinja2.ext import Extension
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    from jinja2.utils import Namespace

    class Generation(Extension):
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.CallBlock(self.call_method("_render", []), [], [], body).set_lineno(lineno)

        def _render(self, caller):
            return caller()

    class SafeNamespace(Namespace):
        def __init__(*args, **kwargs):  # Namespace's own signature: any keyword, self included, is an attribute
            attrs = dict(*args[1:], **kwargs)
            for name in attrs:
                _no_dunder(name)
            Namespace.__init__(args[0], attrs)

        def __setitem__(self, name, value):
            _no_dunder(name)
            super().__setitem__(name, value)

    def _no_dunder(name):
        if isinstance(name, str) and name.startswith("_"):
            raise SecurityError(f"a chat template may not set {name!r} on a namespace (a name starting with '_')")

    env = ImmutableSandboxedEnvironment(extensions=["jinja2.ext.loopcontrols", Generation], **options)
    env.globals["namespace"] = SafeNamespace
    return env


@lru_cache(maxsize=16)
def _compile(template: str):
    def raise_exception(message):
        raise ChatTemplateError(f"the chat template refused the messages: {message}")

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = _environment(trim_blocks=True, lstrip_blocks=True)
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


def run_chat_vars(given: dict | None, earlier: dict | None) -> dict | None:
    """The chat variables a run's prompts are rendered with: ``given``; else, where the run
    continues an earlier attempt (``earlier``: the settings it recorded), that attempt's; else none."""
    if given is not None or not earlier:
        return given
    return earlier.get("chat_vars")


# what a template is given by the renderer itself: a chat variable may not take these names
_RESERVED = frozenset({"messages", "add_generation_prompt", "tools", "documents", "strftime_now", "raise_exception",
                       "date_string"})


def parse_chat_vars(items) -> dict[str, Any]:
    """``["enable_thinking=false"]`` (or a dict) → ``{"enable_thinking": False}``: each value read as
    JSON where it is (``false``, ``3``, ``"text"``), else kept as text; a ValueError saying why not."""
    if isinstance(items, dict):
        pairs = list(items.items())
    else:
        items = [items] if isinstance(items, str) else items
        if not isinstance(items, (list, tuple)) or not all(isinstance(x, str) for x in items):
            raise ValueError(f"expected NAME=VALUE entries or a mapping, got {items!r}")
        pairs = []
        for item in items:
            name, eq, text = item.partition("=")
            if not eq:
                raise ValueError(f"expected NAME=VALUE, got {item!r} (e.g. enable_thinking=false)")
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                value = text
            pairs.append((name.strip(), value))
    out = {}
    for name, value in pairs:
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"{name!r} is not a template variable's name")
        if name in _RESERVED or name.endswith("_token"):
            raise ValueError(f"{name!r} is set by prefopt itself (the messages, the generation prompt, "
                             "the special tokens, the date); give only the template's own switches")
        out[name] = value
    return out


def template_variables(template: str) -> set[str]:
    """The names ``template`` reads that it does not set itself (``messages``, ``bos_token``,
    ``enable_thinking`` ...)."""
    from jinja2 import meta

    return set(meta.find_undeclared_variables(_environment().parse(template)))


def check_chat_vars(template: str | None, chat_vars: dict[str, Any], where: str) -> None:
    """A ValueError unless ``template`` (that of ``where``, a model) reads each of ``chat_vars``: a
    misspelt switch would otherwise change nothing, silently."""
    if not chat_vars:
        return
    if not template:
        raise ValueError(f"chat variables ({', '.join(chat_vars)}) were given, but {where} has no chat template")
    known = template_variables(template) - _RESERVED
    for name in chat_vars:
        if name not in known:
            from .hints import did_you_mean

            own = sorted(k for k in known if not k.endswith("_token"))
            raise ValueError(f"the chat template of {where} does not read {name!r}{did_you_mean(name, own)}; the "
                             f"variables it reads: {', '.join(own) or 'none of its own'}")


def thinking_switch_unset(template: str | None, chat_vars: dict[str, Any]) -> bool:
    """Whether ``template`` reads a thinking switch (Qwen3's ``enable_thinking``: unset, a hybrid
    model reasons before it answers) that ``chat_vars`` leaves unset."""
    return bool(template) and "enable_thinking" not in chat_vars and "enable_thinking" in template_variables(template)


def chat_vars_entries(chat_vars: dict[str, Any]) -> list[str]:
    """``{"enable_thinking": False}`` → ``["enable_thinking=false"]``: ``--chat-vars``' entries,
    which :func:`parse_chat_vars` reads back to the same values."""
    return [f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in chat_vars.items()]


def describe_chat_vars(chat_vars: dict[str, Any]) -> str:
    """``{"enable_thinking": False}`` → ``enable_thinking=false``, as given on the command line."""
    return " ".join(chat_vars_entries(chat_vars))


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
        if not isinstance(m["content"], str):  # a template adds it to strings: a TypeError inside jinja
            raise ChatTemplateError(f"message {i} ({m['role']!r}): content must be text, got "
                                    f"{type(m['content']).__name__}")
