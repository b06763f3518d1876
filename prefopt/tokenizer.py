"""Tokenizer: a ``tokenizers.Tokenizer`` plus what ``tokenizer_config.json`` adds.

That is the special tokens (bos/eos/pad), the chat template, and an exact
prompt/response encoding for training (see :meth:`Tokenizer.encode_prompt_response`).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from array import array
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from functools import cached_property
from pathlib import Path
from typing import Any

from .chat_template import (
    REASONING_TAGS,
    BoundaryError,
    check_chat_vars,
    describe_chat_vars,
    exchange_texts,
    parse_chat_date,
    parse_chat_vars,
    prints_date,
    render_chat,
)
from .fileio import read_json, write_json_atomic

Messages = list[dict[str, Any]]


@dataclass(frozen=True)
class PromptResponse:
    """Token ids of prompt + response; ``ids[:prompt_len]`` are exactly the prompt's tokens."""

    ids: list[int]
    prompt_len: int


# where a model folder's chat template is looked for, for the errors that say it is missing
NO_TEMPLATE_WHERE = "no 'chat_template' in tokenizer_config.json, no chat_template.jinja or .json beside it"


class Tokenizer:
    """Wraps a ``tokenizers.Tokenizer`` with HF's special tokens and chat template.

    Build one with :func:`load_tokenizer`.
    """

    def __init__(self, backend, config: dict[str, Any] | None = None, *, extra_eos_ids=(), chat_template=None):
        self.backend = backend
        self.config = dict(config or {})
        template = chat_template or self.config.get("chat_template")
        self.named_templates = named_templates(template)  # {"default": ..., "tool_use": ...} as the file gave them
        self.chat_template: str | None = pick_template(self.named_templates) if self.named_templates else template
        self.bos_token = _token_str(self.config.get("bos_token"))
        self.eos_token = _token_str(self.config.get("eos_token"))
        self.pad_token = _token_str(self.config.get("pad_token")) or self.eos_token
        self.unk_token = _token_str(self.config.get("unk_token"))
        self.bos_token_id = self._id(self.bos_token)
        self.eos_token_id = self._id(self.eos_token)
        self.pad_token_id = self._id(self.pad_token)
        eos = [self.eos_token_id, *extra_eos_ids]
        self.eos_token_ids: list[int] = list(dict.fromkeys(i for i in eos if i is not None))
        self._seen: dict[tuple[bytes, bool], array] | None = None  # see remembering()
        self._said_continued = False  # encode_prompt_response's warning, given once
        # the date a chat template that prints today's date shows; None: the clock's (as transformers).
        # Training runs pin it (TrainConfig.chat_date), so a resumed run tokenizes its data the same.
        self.chat_date: date | None = None
        # switches of the template's own (Qwen3's enable_thinking), given to every rendering: see set_chat_vars
        self.chat_vars: dict[str, Any] = {}

    @property
    def prints_date(self) -> bool:
        """Whether the chat template puts today's date in its prompts (Llama 3.1 and later)."""
        return prints_date(self.chat_template)

    def _id(self, token: str | None) -> int | None:
        return None if token is None else self.backend.token_to_id(token)

    def __len__(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``; ``add_special_tokens`` applies the tokenizer's template (e.g. BOS)."""
        if self._seen is None:
            return self.backend.encode(text, add_special_tokens=add_special_tokens).ids
        # a digest of the text, and the ids as int32: what a file's worth of texts holds stays small
        key = (hashlib.blake2b(text.encode(), digest_size=16).digest(), add_special_tokens)
        if key not in self._seen:
            self._seen[key] = array("i", self.backend.encode(text, add_special_tokens=add_special_tokens).ids)
        return self._seen[key].tolist()

    @contextmanager
    def remembering(self) -> Iterator[Tokenizer]:
        """Within the block, a text encoded before is not encoded again (``check_data`` reads a
        file twice, and a pair's prompt comes with both responses). It holds every text's ids
        until the block ends."""
        outer, self._seen = self._seen, {} if self._seen is None else self._seen
        try:
            yield self
        finally:
            self._seen = outer

    @cached_property
    def _control(self) -> re.Pattern | None:
        """One pattern for the text of the special tokens (``special`` in ``tokenizer.json``'s added
        tokens, which encoding reads out of text) that shape a conversation: those its chat template
        writes, and the bos, eos, pad and unk tokens; but a reasoning block's tags (``<think>``,
        Magistral's ``[THINK]``: a reasoning model's training data writes them in its answers, and
        its template reads them there). Other special tokens (reserved ones, a vocabulary's HTML
        tags) are left to the tokenizer. None where there are none."""
        added = getattr(self.backend, "get_added_tokens_decoder", dict)()
        template = "\n".join(self.named_templates.values()) if self.named_templates else self.chat_template or ""
        own = {self.bos_token, self.eos_token, self.pad_token, self.unk_token}
        tags = {tag for pair in REASONING_TAGS for tag in pair}
        tokens = {t.content for t in added.values()
                  if t.special and t.content and t.content not in tags and (t.content in template or t.content in own)}
        return re.compile(any_of(tokens)) if tokens else None

    def control_token_in(self, text: str) -> str | None:
        """The first special token that shapes a conversation (``<|im_end|>``, ``<|eot_id|>``,
        ``</s>``: a turn's end or start, the end of a text; :attr:`_control`) that ``text`` holds
        written out as characters, else None. Encoding reads such text as the token itself, not as
        its characters: data holding it would end a turn or a text where it stands (what a chat
        template puts around the data is not checked here)."""
        found = self._control.search(text) if self._control is not None and text else None
        return found[0] if found else None

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def render_chat(self, messages: Messages, add_generation_prompt: bool = False, **kwargs) -> str:
        """The chat template's text for ``messages``."""
        if not self.chat_template:
            raise ValueError(f"this tokenizer has no chat template ({NO_TEMPLATE_WHERE})")
        specials = {k: _token_str(v) for k, v in self.config.items() if k.endswith("_token")}
        return render_chat(
            self.chat_template, messages, add_generation_prompt=add_generation_prompt,
            special_tokens=specials, today=self.chat_date, **(self.chat_vars | kwargs),
        )

    def apply_chat_template(
        self, messages: Messages, add_generation_prompt: bool = False, tokenize: bool = True, **kwargs
    ) -> list[int] | str:
        """Render ``messages`` and (by default) tokenize the text without adding special tokens."""
        text = self.render_chat(messages, add_generation_prompt=add_generation_prompt, **kwargs)
        return self.encode(text, add_special_tokens=False) if tokenize else text

    def encode_prompt_response(self, prompt: str | Messages, response: str, *, chat: bool | None = None) -> PromptResponse:
        """Encode a prompt and its response with an exact boundary.

        With a chat template (``chat=True``, the default when there is one) the prompt is
        rendered with ``add_generation_prompt=True`` and the whole exchange with the
        response as the last assistant turn (or, where the template renders a finished turn
        otherwise than the prompt, as a reasoning model's does, the response after the prompt:
        :func:`~prefopt.chat_template.exchange_texts`, said once in a warning). Without one,
        the texts are concatenated and EOS is appended. Either way the prompt's tokens must be
        a prefix of the full sequence's tokens; when tokenization merges across the boundary a
        :class:`BoundaryError` says so instead of silently shifting it.
        """
        use_chat = bool(self.chat_template) if chat is None else chat
        if use_chat:
            msgs = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
            prompt_text, full_text, continued = exchange_texts(
                lambda m, gen: self.render_chat(m, add_generation_prompt=gen), msgs, response)
            if continued and not self._said_continued:
                self._said_continued = True
                warnings.warn("the chat template renders a finished assistant turn otherwise than the prompt a model "
                              "answers from (a reasoning model's, which drops the reasoning block its generation "
                              "prompt opens, or one that moves the system prompt): each response is taken as it "
                              "follows that prompt, then the template's end of turn (docs/training.md, \"Reasoning "
                              "models\")", stacklevel=2)
            prompt_ids = self.encode(prompt_text, add_special_tokens=False)
            full_ids = self.encode(full_text, add_special_tokens=False)
        else:
            if not isinstance(prompt, str):  # a ValueError: the loaders name the file, line and field
                raise ValueError("a message-list prompt needs a chat template, and this tokenizer has none "
                                 f"({NO_TEMPLATE_WHERE}); give the prompt as text")
            prompt_ids = self.encode(prompt)
            full_ids = self.encode(prompt + response)
            if self.eos_token_id is not None and (not full_ids or full_ids[-1] != self.eos_token_id):
                full_ids = full_ids + [self.eos_token_id]
        n = len(prompt_ids)
        if full_ids[:n] != prompt_ids:
            glued = isinstance(prompt, str) and prompt[-1:].isalnum() and response[:1].isalnum()
            fix = ("Start the response with a space or a newline: the two texts run together" if glued else
                   "Move trailing whitespace from the prompt into the response")
            raise BoundaryError(
                "the prompt's tokens are not a prefix of prompt+response: the tokenizer merged text across "
                f"the boundary (prompt ends {self.decode(prompt_ids[-3:], False)!r}, response starts "
                f"{response[:20]!r}). {fix}."
            )
        if len(full_ids) == n:
            raise BoundaryError("the response encodes to no tokens")
        return PromptResponse(full_ids, n)

    def save(self, out_dir: str | os.PathLike) -> None:
        """Write ``tokenizer.json`` and ``tokenizer_config.json`` (with the chat template)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.backend.save(str(out / "tokenizer.json"))
        config = dict(self.config)
        if self.named_templates and pick_template(self.named_templates) == self.chat_template:
            config["chat_template"] = [{"name": k, "template": v} for k, v in self.named_templates.items()]
        elif self.chat_template:
            config["chat_template"] = self.chat_template
        write_json_atomic(out / "tokenizer_config.json", config)


def any_of(words: Iterable[str]) -> str:
    """A regular expression that matches any of ``words`` (non-empty), as a trie: a search tries
    each position once, where an alternation of the words tries them all (Mistral's tokenizer
    has a thousand special tokens, ``[control_N]``: 0.5 ms a 2 kB text that way, 17 µs this)."""
    trie: dict = {}
    for word in words:
        node = trie
        for ch in word:
            node = node.setdefault(ch, {})
        node[""] = {}  # a word ends here

    def pattern(node: dict) -> str:
        alts = [re.escape(ch) + pattern(child) for ch, child in sorted(node.items()) if ch]
        if not alts:
            return ""
        body = alts[0] if len(alts) == 1 else "(?:" + "|".join(alts) + ")"
        return f"(?:{body})?" if "" in node else body

    return pattern(trie)


def set_chat_date(toks: Iterable[Tokenizer], chat_date: str | None, shown_in: str) -> str | None:
    """Set ``chat_date`` (YYYY-MM-DD, or None: the clock's) on each tokenizer in ``toks``; where one's
    chat template prints the date, return the line that says which it shows in every ``shown_in``."""
    toks = list(toks)
    day = parse_chat_date(chat_date) if chat_date else None
    for tok in toks:
        tok.chat_date = day
    if day is None or not any(tok.prints_date for tok in toks):
        return None
    return f"the chat template prints today's date: every {shown_in} shows {day:%d %b %Y} (chat_date {chat_date})"


def set_chat_vars(tok: Tokenizer, chat_vars: dict[str, Any] | None, where: str = "the model",
                  shown_in: str = "prompt") -> str | None:
    """Give ``tok``'s chat template ``chat_vars`` (``{"enable_thinking": False}``; None or empty:
    none) in every rendering; a ValueError where the template (that of ``where``) does not read one
    of them. Return the line that says so for every ``shown_in``, where there are any."""
    chat_vars = parse_chat_vars(chat_vars or {})  # names checked: a template's own, not prefopt's
    check_chat_vars(tok.chat_template, chat_vars, where)
    tok.chat_vars = chat_vars
    return f"every {shown_in} is rendered with {describe_chat_vars(chat_vars)}" if chat_vars else None


def named_templates(template) -> dict[str, str] | None:
    """A ``chat_template`` given as named templates (``[{"name": "default", "template": ...},
    {"name": "tool_use", ...}]``, as Hermes and Command R models write it; or a mapping of them)
    as ``{name: template}``; None for one template (text) or none."""
    if template is None or isinstance(template, str):
        return None
    if isinstance(template, dict):
        template = [{"name": k, "template": v} for k, v in template.items()]
    named = isinstance(template, list) and template and all(
        isinstance(t, dict) and isinstance(t.get("name"), str) and isinstance(t.get("template"), str) for t in template)
    if not named:
        raise ValueError("chat_template: expected a template (text) or a list of named templates "
                         "({\"name\": ..., \"template\": ...}), got " + json.dumps(template)[:120])
    return {t["name"]: t["template"] for t in template}


def pick_template(named: dict[str, str]) -> str:
    """The template a conversation without tools is rendered with, as transformers picks it: the one
    named ``default`` (or the only one); prefopt renders no tool calls, so ``tool_use`` and
    ``rag`` are never chosen."""
    if "default" in named:
        return named["default"]
    if len(named) == 1:
        return next(iter(named.values()))
    raise ValueError(f"chat_template: {len(named)} named templates ({', '.join(named)}) and none named 'default': "
                     "prefopt cannot tell which renders a plain conversation; name one 'default' in "
                     "tokenizer_config.json")


def load_tokenizer(name_or_path: str | os.PathLike) -> Tokenizer:
    """Load the tokenizer of a model folder, alias or hub id.

    Reads ``tokenizer.json`` (required), ``tokenizer_config.json``,
    ``special_tokens_map.json``, ``chat_template.jinja`` (else ``chat_template.json``, where
    image+text models such as Gemma 3 keep it; named templates beside the default in
    ``additional_chat_templates/``, or as a list in tokenizer_config.json) and the EOS ids of
    ``generation_config.json`` where present.
    """
    from tokenizers import Tokenizer as Backend

    from .model.hub import resolve_model_dir

    d = resolve_model_dir(name_or_path)
    if not (d / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{d}: no tokenizer.json (prefopt needs the fast-tokenizer file)")
    config = _read_json(d / "special_tokens_map.json")
    config.update(_read_json(d / "tokenizer_config.json"))
    template = (d / "chat_template.jinja").read_text() if (d / "chat_template.jinja").is_file() else \
        _read_json(d / "chat_template.json").get("chat_template")  # image+text models' processor file
    more = sorted((d / "additional_chat_templates").glob("*.jinja"))  # transformers 5 saves named ones so
    if isinstance(template, str) and more:
        template = {"default": template, **{f.stem: f.read_text() for f in more}}
    eos = _read_json(d / "generation_config.json").get("eos_token_id")
    extra = eos if isinstance(eos, list) else [eos] if isinstance(eos, int) else []
    try:
        return Tokenizer(Backend.from_file(str(d / "tokenizer.json")), config, extra_eos_ids=extra,
                         chat_template=template)
    except ValueError as e:  # a chat template prefopt cannot use: say whose
        raise ValueError(f"{d}: {e}") from None


def _read_json(path: Path) -> dict:
    return read_json(path) if path.is_file() else {}


def _token_str(v) -> str | None:
    return v.get("content") if isinstance(v, dict) else v
