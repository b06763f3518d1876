"""Record formats and their validation.

SFT:
- ``{"prompt": str | messages, "completion": str}``
- ``{"messages": [{"role", "content"}, ...]}`` (chat; only assistant turns are trained)
- ``{"text": str}`` (language modelling: every token trained, no chat template)

Preference:
- TRL: ``{"prompt", "chosen", "rejected"}``, each a string or a message list
- TRL's implicit prompt: ``{"chosen", "rejected"}`` each holding the whole exchange (messages or
  text); what the two share at the start is the prompt (:func:`shared_prompt`)
- OpenAI preference fine-tuning: ``{"input": {"messages": [...]}, "preferred_output": [...],
  "non_preferred_output": [...]}``

Unpaired feedback (KTO):
- TRL: ``{"prompt", "completion", "label"}``, ``label`` true for a desirable completion; a
  preference record counts as two, its chosen desirable and its rejected not
"""
from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from .._errors import Pickled

Messages = list[dict[str, Any]]
ROLES = ("system", "user", "assistant", "tool")
IDENTICAL = "identical to {}: a preference pair needs two different responses"
# a cell whose formula failed, as Excel, Google Sheets and LibreOffice show it and write it to CSV
SPREADSHEET_ERRORS = re.compile(r"#(NULL!|DIV/0!|VALUE!|REF!|NAME\?|NUM!|N/A|GETTING_DATA|SPILL!|CALC!|FIELD!|"
                                r"BLOCKED!|CONNECT!|BUSY!|UNKNOWN!|PYTHON!|ERROR!)|Err:\d{3}")


class DataError(Pickled, ValueError):
    """A bad record, located by file, line and field."""

    def __init__(self, path, line: int | None, field: str | None, message: str):
        self.path, self.line, self.field, self.reason = Path(path), line, field, message
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: field {field!r}: {message}" if field else f"{where}: {message}")


class FieldError(Pickled, ValueError):
    """A record's field that cannot be encoded, found where its file and line are not known (the
    loaders add them)."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(message)


@dataclass(frozen=True)
class SFTRecord:
    """A prompt (text or messages) and its completion; or a whole chat in ``messages``; or a
    ``text`` to learn every token of."""

    prompt: str | Messages | None = None
    completion: str | None = None
    messages: Messages | None = None
    text: str | None = None
    system: str | None = None  # the record's own system prompt (its ``system`` field): :func:`with_system`


@dataclass(frozen=True)
class PreferenceRecord:
    prompt: str | Messages
    chosen: str
    rejected: str
    system: str | None = None


@dataclass(frozen=True)
class FeedbackRecord:
    """One completion of a prompt and whether it is desirable (KTO's unpaired example)."""

    prompt: str | Messages
    completion: str
    desirable: bool
    system: str | None = None


# a label as a spreadsheet cell may write it (Excel's TRUE/FALSE, 1.0 from a column of numbers, a yes/no column)
LABELS = {"true": True, "false": False, "1": True, "0": False, "1.0": True, "0.0": False, "yes": True, "no": False}


def _text(row: dict, key: str, err) -> str:
    if key not in row or row[key] is None:
        raise err(key, "missing field")
    v = row[key]
    if not isinstance(v, str):
        raise err(key, _not_text(v))
    if not v.strip():
        raise err(key, "empty text")
    return _unicode(v, key, err)


def _unicode(v: str, field: str, err) -> str:
    """``v``, refused where :func:`unicode_problem`, :func:`written_out_messages` or
    :func:`spreadsheet_error` finds one."""
    problem = unicode_problem(v) or written_out_messages(v) or spreadsheet_error(v)
    if problem:
        raise err(field, problem)
    return v


def written_out_messages(v: str) -> str | None:
    """Why ``v`` is no text to train on: messages written out as text (a CSV cell can hold only
    text; pandas' ``to_csv`` writes a list of dicts as Python's ``[{'role': ...}]``, ``json.dumps``
    as JSON), which would be trained on as those characters, brackets and keys and all."""
    s = v.strip()
    if not (s[:1] in "[{" and s[-1:] in "]}" and "role" in s and "content" in s):
        return None
    import ast
    import json

    for how, read in (("JSON", json.loads), ("a Python list", ast.literal_eval)):
        try:
            value = read(s)
        except (ValueError, SyntaxError, RecursionError, MemoryError):
            continue
        items = value if isinstance(value, list) else [value]
        if items and all(isinstance(m, dict) and "role" in m and "content" in m for m in items):
            return (f"messages written out as text ({how}), not a list of messages; a CSV cell holds only text: "
                    "keep them a list in a .jsonl, .json or .parquet file (pandas: df.to_json('data.jsonl', "
                    "orient='records', lines=True))")
    return None


def spreadsheet_error(v: str) -> str | None:
    """Why ``v`` is no text to train on: the whole of it is a spreadsheet's error value (``#N/A``
    from a lookup that found nothing, ``#DIV/0!``, LibreOffice's ``Err:502``), which a sheet, and
    its CSV export, holds where a formula failed; as a label it would be one more class."""
    s = v.strip()
    if not SPREADSHEET_ERRORS.fullmatch(s):
        return None
    return f"{s}: a spreadsheet's error value (its formula failed), not text; mend the formula or leave the record out"


def unicode_problem(v: str) -> str | None:
    """Why ``v`` is not text a tokenizer can encode: a lone surrogate (``"\\ud83d"`` in JSON,
    half of an emoji's UTF-16 pair, left by an exporter that cut text by UTF-16 units). The
    error used to come from inside the tokenizer, at a position in the chat template's text."""
    try:
        v.encode("utf-8")
    except UnicodeEncodeError as e:
        return (f"not valid Unicode: a lone surrogate {v[e.start]!r} at character {e.start + 1} (half of a UTF-16 "
                "pair, as text cut mid-emoji leaves); remove it or restore the pair")
    return None


def _not_text(v: Any) -> str:
    """Why ``v`` is not a text: a DataFrame's empty cell arrives as NaN, a float."""
    if isinstance(v, float) and v != v:
        return "empty (NaN: a DataFrame's missing cell)"
    if isinstance(v, (int, float)) and not isinstance(v, bool):  # a class number, a score: text to the model
        return (f"expected text, got the number {v!r}: write it as text (JSON: \"{v}\"; a DataFrame's column: "
                "df[column].astype(str))")
    return f"expected text, got {type(v).__name__}"


def _messages(v: Any, field: str, err) -> Messages:
    if isinstance(v, str) and (problem := written_out_messages(v)):
        raise err(field, problem)
    if not isinstance(v, list) or not v:
        raise err(field, "expected a non-empty list of messages")
    for i, m in enumerate(v):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise err(f"{field}[{i}]", "a message needs 'role' and 'content'")
        if m["role"] not in ROLES:
            raise err(f"{field}[{i}].role", f"unknown role {m['role']!r}; expected one of {ROLES}")
    return [{"role": m["role"], "content": _content(m["content"], f"{field}[{i}].content", err)}
            for i, m in enumerate(v)]


def _content(v: Any, field: str, err) -> str:
    """A message's text; OpenAI's list of content parts is read when every part is text."""
    if isinstance(v, str):
        return _unicode(v, field, err)
    if isinstance(v, list) and v and all(isinstance(part, dict) for part in v):
        for j, part in enumerate(v):
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise err(f"{field}[{j}]", f"a part of type {part.get('type')!r}: prefopt trains on text "
                                           "only (parts of type 'text' with a 'text' field)")
        return _unicode("".join(part["text"] for part in v), field, err)
    raise err(field, "expected text (or a list of text parts)")


def _prompt(row: dict, key: str, err) -> str | Messages:
    v = row.get(key)
    if isinstance(v, list):
        return _messages(v, key, err)
    return _text(row, key, err)


def _system(row: dict, prompt: str | Messages | None, err) -> str | None:
    """A record's own system prompt, its ``system`` field (Orca's DPO pairs and many instruction
    sets carry one beside the prompt; it went unread before 2026-12-06); None where the field is
    absent or empty (a spreadsheet column blank on some rows). Refused where ``prompt``'s messages
    begin with a system message of their own."""
    v = row.get("system")
    if v is None or isinstance(v, float) and v != v or isinstance(v, str) and not v.strip():
        return None
    if not isinstance(v, str):
        raise err("system", _not_text(v))
    if isinstance(prompt, list) and prompt and prompt[0]["role"] == "system":
        raise err("system", "the record's messages begin with a system message of their own: give it in one place")
    return _unicode(v, "system", err)


def with_system(prompt: str | Messages, system: str | None, tok=None) -> str | Messages:
    """``prompt`` as the model is given it: after the record's own system prompt, if it has one,
    as the first message (a text prompt then becomes the user message after it). With ``tok``: a
    :class:`FieldError` on ``system`` where the tokenizer has no chat template to render it."""
    if system is None:
        return prompt
    if tok is not None and not tok.chat_template:
        raise FieldError("system", "a system prompt needs a chat template, and this tokenizer has none: write it "
                                   "into the prompt's text, or leave the field out")
    asked = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    return [{"role": "system", "content": system}, *asked]


def _response(v: Any, field: str, err) -> str:
    """A response given as text, one assistant message, or a list holding one."""
    if isinstance(v, list):
        msgs = _messages(v, field, err)
        if len(msgs) != 1 or msgs[0]["role"] != "assistant":
            raise err(field, "a response given as messages must be exactly one assistant message")
        v = msgs[0]["content"]
    elif isinstance(v, dict):
        v = _messages([v], field, err)[0]["content"]
    if v is None:
        raise err(field, "missing field")
    if not isinstance(v, str):
        raise err(field, _not_text(v))
    if not v.strip():
        raise err(field, "empty response")
    return _unicode(v, field, err)


def record_texts(rec) -> Iterator[tuple[str, str]]:
    """``(field, text)`` for each text a parsed record holds (a message's as ``field[i].content``);
    a pair read as two feedback records, its answers as ``chosen`` and ``rejected``."""
    pair = isinstance(rec, tuple) and len(rec) == 2
    for k, r in enumerate(rec if isinstance(rec, tuple) else (rec,)):
        for f in fields(r):
            if k and f.name in ("prompt", "system"):  # a pair's prompt, the first record's too
                continue
            v = getattr(r, f.name)
            name = ("chosen", "rejected")[k] if pair and f.name == "completion" else f.name
            if isinstance(v, str):
                yield name, v
            elif isinstance(v, list):
                yield from ((f"{name}[{i}].content", m["content"]) for i, m in enumerate(v))


_WRITTEN_BREAK = re.compile(r"(?:\\r)?\\n")  # a backslash and an n: a line break as an export escaped it
_ENTITY = re.compile(r"&(?:amp|lt|gt|quot|apos|nbsp|#\d{1,7}|#x[0-9a-fA-F]{1,6});")
_MISSING = {"nan", "NaN", "NULL", "null"}  # a missing value as pandas' astype(str) and SQL exports write it
_UNESCAPE = "escaped by an export? They are trained on as written; unescape them in the data"
# each kind of text an export escaped (escaped()), and what to do about it
ESCAPES = {"breaks": ("line breaks written out as '\\n'", _UNESCAPE),
           "entities": ("HTML entities ('&amp;', '&lt;', '&#39;', ...)", _UNESCAPE),
           "missing": ("a missing value written out as their whole text ('nan', 'NULL')",
                       "an export's empty cells? They are trained on as that text; fill them in or leave those records "
                       "out")}


class EscapedText(UserWarning):
    """The loaders' warning of text an export escaped (:data:`ESCAPES`): a caller that has said it
    otherwise (compare, by the user's records) filters it by this category."""


def escaped(text: str) -> str | None:
    """Which of :data:`ESCAPES` ``text`` holds, as an export from a database or a web page writes
    it and a model would learn it as written: line breaks written out as ``\\n`` (two or more, and
    no real line break), HTML entities (``&amp;``), a missing value written out as the whole text
    (``nan``: pandas' ``astype(str)`` of an empty cell; ``NULL``); else None."""
    if text.strip() in _MISSING:
        return "missing"
    if "\n" not in text and len(_WRITTEN_BREAK.findall(text)) >= 2:
        return "breaks"
    if _ENTITY.search(text) is not None:
        return "entities"
    return None


def escape_counts(items) -> dict[str, tuple[int, Any, str]]:
    """``{kind: (how many items, the first's place, its field)}`` of ``items``, ``(place, [(field,
    text), ...])`` pairs (a record's line and :func:`record_texts`; a task record's id and its
    row's cells), whose texts hold something escaped (:func:`escaped`), by kind."""
    found: dict[str, tuple[int, Any, str]] = {}
    for place, texts in items:
        kinds: dict[str, str] = {}
        for field, text in texts:
            if (kind := escaped(text)) is not None:
                kinds.setdefault(kind, field)
        for kind, field in kinds.items():
            n, first, first_field = found.get(kind, (0, place, field))
            found[kind] = (n + 1, first, first_field)
    return found


def control_token_problem(text: str, tok, fix: str = "remove it from the data") -> str | None:
    """Why ``text`` cannot be encoded as data: it holds one of ``tok``'s special tokens written out
    (``<|im_end|>``), which encoding reads as the token itself, so a turn or a text would end where
    it stands (a pasted chatbot transcript, an answer exported with its end-of-turn mark, a
    message written to steer the model); else None. ``fix``: what to do, the message's end."""
    token = tok.control_token_in(text)
    if token is None:
        return None
    end = " at its end (an end mark an export kept? the chat template adds the model's own)" \
        if text.rstrip().endswith(token) else ""
    return (f"holds {token!r} as text{end}, which the tokenizer reads as the model's own control token, not as "
            f"characters: a turn or a text would end there; {fix}")


def control_tokens(rec, tok) -> None:
    """Refuse a record any of whose texts holds one of ``tok``'s special tokens written out
    (:func:`control_token_problem`), naming its field: :class:`FieldError`."""
    for field, text in record_texts(rec):
        if problem := control_token_problem(text, tok):
            raise FieldError(field, problem)


def _err_factory(path, line):
    return lambda field, msg: DataError(path, line, field, msg)


def parse_sft(row: dict, path, line: int) -> SFTRecord:
    err = _err_factory(path, line)
    if "messages" in row:
        msgs = _messages(row["messages"], "messages", err)
        if not any(m["role"] == "assistant" for m in msgs):
            raise err("messages", "no assistant turn to train on")
        for i, m in enumerate(msgs):
            if m["role"] == "assistant" and not m["content"].strip():
                raise err(f"messages[{i}].content", "empty assistant turn")
        record = SFTRecord(messages=msgs, system=_system(row, msgs, err))
        repeated = "prompt" in row and str(row["prompt"]).strip() in {m["content"].strip() for m in msgs}
        _unread(row, ("messages", "system", "prompt") if repeated else ("messages", "system"), "conversation", path,
                line)  # (a prompt beside the conversation that repeats one of its turns: UltraChat's, no_robots')
        return record
    if "prompt" not in row and "completion" not in row:
        if "text" in row:  # TRL's language-modelling records
            record = SFTRecord(text=_text(row, "text", err))
            _unread_beside_text(row, path, line)
            return record
        raise err("prompt", "missing field (an SFT record needs 'prompt' and 'completion', 'messages', or 'text')")
    if "completion" not in row and {"chosen", "rejected"} <= set(row):
        raise err("completion", "missing field: 'chosen' and 'rejected' make this a preference record; train on "
                                "it with prefopt dpo, not sft")
    prompt = _prompt(row, "prompt", err)
    record = SFTRecord(prompt=prompt, completion=_response(row.get("completion"), "completion", err),
                       system=_system(row, prompt, err))
    _unread(row, ("prompt", "completion", "system"), "prompt/completion", path, line)
    return record


# columns that say what a record is, not what to learn from it: left unread without a word (the
# unnamed first column is the row index pandas' to_csv writes; read back, pandas calls it "Unnamed: 0")
_ABOUT = re.compile(r"(|id|uid|uuid|idx|index|row|source|url|split|date|time|timestamp|created|lang|language|meta|"
                    r"metadata|synthetic|file|filename|path|item|dataset|subset|corpus|origin|provenance|"
                    r"unnamed: ?\d+|.*[_ -]id)", re.IGNORECASE)
_CAMEL_ID = re.compile(r"[a-z](Id|ID)$")  # patientId, recordID (not covid, fluid, thyroid: words)


def about_column(key) -> bool:
    """Whether a column only says what a record is (``id``, ``source``, ``date``, ``patientId``)."""
    return bool(_ABOUT.fullmatch(str(key)) or _CAMEL_ID.search(str(key)))


_NOT_PROSE = re.compile(r"[-+]?\d[\d,.]*%?|\d{4}-\d\d-\d\d(?:[T ][\d:.]+)?|\d{1,2}:\d\d(?::\d\d)?|"
                        r"true|false|yes|no|nan|null|none|n/?a", re.IGNORECASE)  # a cell's number, date, flag


def _worth_reading(v: Any) -> bool:
    """Whether an unread column's value may be what the model was meant to see: a text that is no
    number, date or flag, or a mapping or list of them (MedQA's options, a dict beside its question)
    that is not a conversation (UltraFeedback's ``messages``, its pair again)."""
    if isinstance(v, str):
        return bool(v.strip()) and not _NOT_PROSE.fullmatch(v.strip())
    if isinstance(v, dict):
        return any(_worth_reading(x) for x in v.values())
    if isinstance(v, list):
        return not all(isinstance(m, dict) and "role" in m for m in v) and any(_worth_reading(x) for x in v)
    return False


def _unread(row: dict, read: tuple[str, ...], kind: str, path, line: int) -> None:
    """Warn of text columns a ``kind`` record leaves unread beside the fields it reads (``read``):
    Alpaca's ``input`` where ``--columns prompt=instruction`` was given, the note the model was to
    summarise, would never be seen; MedQA's options under prompt=question. Once a file (and set of
    other columns); numbers, dates and true/false (as values or as a spreadsheet's text), a
    conversation (UltraFeedback's ``messages`` beside its pair), blank cells and columns that only
    say what a record is pass (:func:`_worth_reading`)."""
    others = {str(k): v for k, v in row.items() if k not in read and not about_column(k)}
    unread = tuple(k for k, v in others.items() if _worth_reading(v))
    if unread:
        from .headers import warn_once  # (headers reads records' errors)

        warn_once(f"{path}:{line}: {', '.join(map(repr, unread))} not read: a {kind} record is read from "
                  f"{', '.join(map(repr, read))} alone; where a column holds part of the prompt (Alpaca's 'input' "
                  "beside its 'instruction'), join it into the prompt's column first (pandas: df['prompt'] = "
                  "df['instruction'] + '\\n\\n' + df['input'])", key=("unread", str(path), kind, tuple(others)))


def _unread_beside_text(row: dict, path, line: int) -> None:
    """Warn, once a file, where a ``{"text"}`` record has columns beside it that would go unread
    (a classification export's ``text,label``: SFT would learn the notes' words, never their
    labels); columns that only say what the record is (``id``, ``source``, ``date``) are passed."""
    unread = tuple(str(k) for k, v in row.items()
                   if k != "text" and not about_column(k)
                   and (isinstance(v, (int, float)) or isinstance(v, str) and v.strip()))
    if unread:
        from .headers import warn_once  # (headers reads records' errors)

        answers = [k for k in unread if k != "system"]  # (a system prompt opens a prompt: never the answer)
        advice = (f"to teach the model to answer with {answers[0]!r}: --columns prompt=text completion={answers[0]}"
                  if answers else "a 'system' prompt opens a prompt, and a text record has none: give the records "
                                  "'prompt' and 'completion' (or 'messages') for it to be read")
        warn_once(f"{path}:{line}: {', '.join(map(repr, unread))} not read: a record with 'text' and no 'prompt' and "
                  "'completion' trains on its text alone, every token (language modelling), never on what the other "
                  f"columns say; {advice}", key=("unread", str(path), unread))


def _openai(row: dict) -> bool:
    """Whether ``row`` is an OpenAI preference record: its ``input`` a mapping, or its outputs given
    (an ``input`` of text is Alpaca's, beside a TRL-style pair; it was refused as an OpenAI one)."""
    return isinstance(row.get("input"), dict) or bool({"preferred_output", "non_preferred_output"} & set(row))


def parse_preference(row: dict, path, line: int) -> PreferenceRecord:
    err = _err_factory(path, line)
    if _openai(row):
        inp = row.get("input")
        if not isinstance(inp, dict) or "messages" not in inp:
            raise err("input.messages", "missing field")
        prompt = _messages(inp["messages"], "input.messages", err)
        chosen = _response(row.get("preferred_output"), "preferred_output", err)
        rejected = _response(row.get("non_preferred_output"), "non_preferred_output", err)
        fields = ("preferred_output", "non_preferred_output")
        read = ("input", *fields, "system")
    else:
        for key in ("chosen", "rejected"):
            if key not in row:
                raise err(key, "missing field (a preference record needs 'prompt', 'chosen', 'rejected')"
                          + _what_it_is(row))
        fields = ("chosen", "rejected")
        read = ("prompt", *fields, "system")
        if row.get("prompt") is None or _whole_exchanges(row):
            prompt, chosen, rejected = shared_prompt(row, err)
        else:
            prompt = _prompt(row, "prompt", err)
            chosen = _response(row["chosen"], "chosen", err)
            rejected = _response(row["rejected"], "rejected", err)
    if chosen.strip() == rejected.strip():
        raise err(fields[1], IDENTICAL.format(fields[0]))
    record = PreferenceRecord(prompt, chosen, rejected, _system(row, prompt, err))
    _unread(row, read, "preference", path, line)
    return record


def parse_feedback(row: dict, path, line: int) -> tuple[FeedbackRecord, ...]:
    """An unpaired record, or a preference record read as two (TRL's ``unpair_preference_dataset``)."""
    err = _err_factory(path, line)
    if "completion" not in row and ({"chosen", "rejected"} & set(row) or _openai(row)):
        pair = parse_preference(row, path, line)
        return (FeedbackRecord(pair.prompt, pair.chosen, True, pair.system),
                FeedbackRecord(pair.prompt, pair.rejected, False, pair.system))
    if "completion" not in row:
        raise err("completion", "missing field (KTO's records hold 'prompt', 'completion' and 'label'; a "
                                "preference record, with 'chosen' and 'rejected', serves as two)")
    prompt = _prompt(row, "prompt", err)
    record = FeedbackRecord(prompt, _response(row["completion"], "completion", err), _label(row, err),
                            _system(row, prompt, err))
    _unread(row, ("prompt", "completion", "label", "system"), "feedback", path, line)
    return (record,)


def _label(row: dict, err) -> bool:
    v = row.get("label")
    if v is None:
        raise err("label", "missing field (true: a desirable completion; false: an undesirable one)")
    if isinstance(v, bool):
        return v
    if isinstance(v, (int, float)) and v in (0, 1):  # 1.0 where a DataFrame column holds floats
        return bool(v)
    if isinstance(v, str) and v.strip().lower() in LABELS:  # a CSV cell
        return LABELS[v.strip().lower()]
    raise err("label", f"expected true or false (is the completion desirable?; 1/0 and yes/no are read too), got {v!r}")


def _what_it_is(row: dict) -> str:
    """For a record given to DPO that lacks a pair: the kind of record it is instead."""
    if {"chosen", "rejected"} & set(row) or not {"completion", "messages"} & set(row):
        return ""
    if "label" in row and "completion" in row:
        return ("; with 'completion' and 'label' it is an unpaired preference record (TRL's KTO format): "
                "train on such records with --loss kto; the other losses need a chosen and a rejected response "
                "to the same prompt")
    given = " and ".join(repr(k) for k in row if k in ("prompt", "completion", "messages"))
    return f"; with {given} it is an SFT record: train on it with prefopt sft"


def _whole_exchanges(row: dict) -> bool:
    """chosen and rejected are conversations that hold their prompt (HuggingFaceH4's UltraFeedback:
    a text prompt beside ``[user, assistant]`` lists)."""
    return all(isinstance(row[k], list) and len(row[k]) > 1 for k in ("chosen", "rejected"))


def shared_prompt(row: dict, err) -> tuple[str | Messages, str, str]:
    """TRL's implicit prompt: ``chosen`` and ``rejected`` each hold the whole exchange.

    Messages: the opening messages the two share are the prompt, and what follows on each side
    must be one assistant message. Text: the prompt is the longest common start cut back to a
    word boundary (a space there goes with the responses, as BPE tokenizers join it to the next
    word), so a word the two responses share stays in the prompt; DPO's log-ratio of such
    shared tokens is the same on both sides and cancels. A ``prompt`` given as well must agree.
    """
    c, r = row["chosen"], row["rejected"]
    if c == r:
        raise err("rejected", IDENTICAL.format("chosen"))
    if isinstance(c, list) and isinstance(r, list):
        cm, rm = _messages(c, "chosen", err), _messages(r, "rejected", err)
        n = 0
        while n < min(len(cm), len(rm)) and cm[n] == rm[n]:
            n += 1
        if n == 0:
            raise err("prompt", "missing field, and chosen and rejected share no opening message to take it from")
        for field, rest in (("chosen", cm[n:]), ("rejected", rm[n:])):
            if len(rest) != 1 or rest[0]["role"] != "assistant":
                got = ", ".join(m["role"] for m in rest) or "nothing"
                raise err(field, f"after the {n} opening message(s) chosen and rejected share (the prompt), "
                                 f"expected one assistant message, got {got}")
        prompt: str | Messages = cm[:n]
        given = row.get("prompt")
        if isinstance(given, list):  # as the responses' messages are read (extra keys, text parts)
            given = _messages(given, "prompt", err)
        if given is not None and given != prompt and not (
                isinstance(given, str) and given.strip() == _last_user(prompt).strip()):
            raise err("prompt", "does not match the opening messages chosen and rejected share (their last "
                                f"user message begins {_last_user(prompt)[:40]!r})")
        return prompt, _response(cm[n:], "chosen", err), _response(rm[n:], "rejected", err)
    if isinstance(c, str) and isinstance(r, str):
        n = 0
        while n < min(len(c), len(r)) and c[n] == r[n]:
            n += 1
        while n > 0 and not c[n - 1].isspace():  # back to a word boundary
            n -= 1
        if n and c[n - 1] == " ":
            n -= 1
        if not c[:n].strip():
            raise err("prompt", "missing field, and chosen and rejected share no opening text to take it from")
        return c[:n], _response(c[n:], "chosen", err), _response(r[n:], "rejected", err)
    raise err("prompt", "missing field; without it chosen and rejected must both be message lists or both text, "
                        "each holding the whole exchange")


def _last_user(messages: Messages) -> str:
    return next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
