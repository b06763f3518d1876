"""SFT examples: load and validate a file, tokenize with loss only on response tokens, truncate."""
from __future__ import annotations

import hashlib
import warnings
from array import array
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .._deps import progress
from ..tokenizer import BoundaryError, Tokenizer
from .columns import column_of, hinted, with_columns
from .decoding import encoding_scope
from .files import data_files, describe, is_paths
from .readers import in_memory, read_rows, source_name
from .records import (
    ESCAPES,
    DataError,
    EscapedText,
    SFTRecord,
    control_tokens,
    escape_counts,
    parse_sft,
    record_texts,
    with_system,
)
from .sheets import sheet_scope

IGNORE = -100
WINDOWS_ARE_SFT = "text_windows is for SFT's {\"text\"} records; a preference pair is not split"


@dataclass(frozen=True)
class TokenizedExample:
    """Token ids and labels (IGNORE, -100, where no loss is taken), kept as int32 arrays
    (``array('i')``; any sequence of ints is accepted): about 9 bytes a token for both, where
    Python lists of ints took 46, so a large dataset fits in memory (docs/benchmarks.md)."""

    input_ids: Sequence[int]
    labels: Sequence[int]

    def __post_init__(self) -> None:
        for name in ("input_ids", "labels"):
            v = getattr(self, name)
            if not (isinstance(v, array) and v.typecode == "i"):
                object.__setattr__(self, name, array("i", v))

    @property
    def n_label_tokens(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE)

    @property
    def n_tokens(self) -> int:
        return len(self.input_ids)


def token_digest(*arrays: array) -> bytes:
    """A 16-byte digest of token arrays (``TokenizedExample``'s ids, labels, or slices of them): to
    compare or count sequences without keeping them (a set of tuples of ints took ~70 bytes a token)."""
    return hashlib.blake2b(b"".join(a.tobytes() for a in arrays), digest_size=16).digest()


@dataclass(frozen=True)
class Cut:
    """What truncation dropped from one example (or both sequences of a pair)."""

    prompt: int = 0  # tokens cut from the start of the prompt
    response: int = 0  # tokens cut from the end of the response: it no longer ends as written

    @property
    def tokens(self) -> int:
        return self.prompt + self.response

    def __add__(self, other: Cut) -> Cut:
        return Cut(self.prompt + other.prompt, self.response + other.response)


@dataclass
class LoadReport:
    """What loading a file (or several) did: how many records were read, kept, skipped (and why),
    truncated."""

    path: Path  # the file, or what names several (a folder, a pattern, a list: :func:`~.files.describe`)
    n_read: int = 0
    n_kept: int = 0
    n_truncated: int = 0
    max_length: int | None = None  # the limit they were truncated to
    n_tokens: int = 0  # in the kept records, before truncation
    n_tokens_cut: int = 0  # of those, dropped by truncation
    n_response_cut: int = 0  # records whose response lost its end (and its end-of-turn token)
    skipped: list[DataError] = field(default_factory=list)
    kept_lines: list[int] = field(default_factory=list)  # each kept record's line, in the examples' order
    files: list[Path] = field(default_factory=list)  # the files read, in order (none for records in memory)
    # each example's record, counted from 0 over all files: a text split into windows gives several examples
    kept_records: list[int] = field(default_factory=list)
    per_file: list[tuple[Path, int, int]] = field(default_factory=list)  # (file, read, kept) where several were read
    kept_files: list[str] = field(default_factory=list)  # each example's file, beside kept_lines, where several
    # conversations trained one example per assistant turn (:class:`Turns`), and the examples they made
    n_split: int = 0
    n_split_examples: int = 0

    @classmethod
    def merged(cls, path, parts: list[LoadReport]) -> LoadReport:
        """One report for files loaded one by one: counts summed, skips and lines in order (a
        line alone no longer says which file it is in: ``kept_files`` does, and each skip's path)."""
        out = cls(path, max_length=parts[0].max_length if parts else None)
        for r in parts:
            out.kept_records += [out.n_kept + i for i in r.kept_records]
            for name in ("n_read", "n_kept", "n_truncated", "n_tokens", "n_tokens_cut", "n_response_cut", "n_split",
                         "n_split_examples"):
                setattr(out, name, getattr(out, name) + getattr(r, name))
            out.skipped += r.skipped
            out.kept_lines += r.kept_lines
            out.files += r.files
            out.per_file += r.per_file or [(f, r.n_read, r.n_kept) for f in r.files]
        if len(out.per_file) < 2:
            out.per_file = []
        else:
            out.kept_files = [str(r.files[0]) for r in parts for _ in r.kept_lines]
        return out

    @property
    def kept_places(self) -> list[tuple[str | None, int]]:
        """Each example's file (None where one file or records in memory were read) and line."""
        return list(zip(self.kept_files or [None] * len(self.kept_lines), self.kept_lines))

    @property
    def name(self) -> str:
        """The path, and how many files it stands for where several were read."""
        return f"{self.path} ({len(self.files)} files)" if len(self.files) > 1 else str(self.path)

    def summary(self) -> str:
        msg = f"{self.name}: {self.n_kept} of {self.n_read} records kept"
        if self.n_truncated:
            msg += f", {self.n_truncated} truncated to fit"
            msg += f" max_length={self.max_length}" if self.max_length else ""
            share = self.n_tokens_cut / max(self.n_tokens, 1)
            msg += f" ({share:.0%} of all tokens cut" if share >= 0.005 else " (under 1% of all tokens cut"
            msg += f"; {self.n_response_cut} lost the end of their response)" if self.n_response_cut else ")"
        if self.n_split:
            msg += (f"; {self.n_split} conversation{'s' * (self.n_split != 1)} of several assistant turns "
                    f"train{'s' * (self.n_split == 1)} as "
                    f"{self.n_split_examples} examples, one per turn (the chat template renders a finished turn "
                    "otherwise than the prompt a model answers from)")
        if self.skipped:
            reasons = Counter(e.reason for e in self.skipped)
            msg += f"; {len(self.skipped)} skipped: " + "; ".join(f"{n}x {r}" for r, n in reasons.most_common())
            first = self.skipped[0]  # its place alone: its reason is among those counted
            place = f"{first.path}:{first.line}" if first.line is not None else str(first.path)
            msg += f" (first: {place}" + (f", field {first.field!r})" if first.field else ")")
        return msg


class NoRecordsError(DataError):
    """Not one record of a file was usable; ``report`` holds what was read and why each was skipped."""

    def __init__(self, path, line, field, message: str, report: LoadReport):
        super().__init__(path, line, field, message)
        self.report = report


def sources(path) -> list:
    """What is read one by one for ``path``: the files it names (:func:`~.files.data_files`), or
    the records it holds, as a list (:func:`~.readers.in_memory`: a list of dicts, a DataFrame, a
    ``datasets.Dataset``, a generator, read once)."""
    return data_files(path) if is_paths(path) else [in_memory(path)]


def source_label(path) -> str | Path:
    """What errors and reports call ``path`` as a whole."""
    return Path(describe(path)) if is_paths(path) else source_name(path)


def load_records(path, parse: Callable, skip_bad: bool = False) -> tuple[list[tuple[int, object]], LoadReport]:
    """Parse every row of ``path`` (a file, several, or records in memory) with ``parse(row,
    file, line)``; returns ``(line, record)`` pairs, file after file.

    A bad record raises its :class:`DataError` (file, line, field), unless ``skip_bad``:
    then it is counted in the report, with its reason, and loading goes on.
    """
    parts = [_records(s, parse, skip_bad) for s in sources(path)]
    return [x for recs, _ in parts for x in recs], LoadReport.merged(source_label(path), [r for _, r in parts])


def _records(source, parse: Callable, skip_bad: bool) -> tuple[list[tuple[int, object]], LoadReport]:
    name = source_name(source)
    report = LoadReport(Path(name), files=[Path(source)] if is_paths(source) else [])
    out = []
    for line, row in read_rows(source):
        report.n_read += 1
        try:
            if isinstance(row, DataError):
                raise row
            out.append((line, parse(row, name, line)))
        except DataError as e:
            e = hinted(e, row)  # a spreadsheet's 'Prompt' header
            if not skip_bad:
                raise e from None
            report.skipped.append(e)
    report.n_kept = len(out)
    return out, report


class TurnsError(BoundaryError):
    """A conversation's assistant turns are not spans of its whole rendering (the template renders a
    finished turn otherwise than the prompt a model answers from): one example cannot hold them all."""


class Turns(list):
    """The examples a conversation of several assistant turns trains as, one per turn, where one
    sequence cannot hold them all (:func:`turn_examples`); a plain list of examples is a text's windows."""


def tokenize_sft(
    rec: SFTRecord, tok: Tokenizer, *, max_length: int, max_prompt_length: int | None = None
) -> tuple[TokenizedExample, Cut]:
    """Token ids and labels for one record, and what truncation dropped (:class:`Cut`).

    Raises ``BoundaryError`` or ``ValueError`` for records that cannot be encoded exactly, and
    :class:`TurnsError` for a conversation whose assistant turns one sequence cannot hold
    (:func:`turn_examples` encodes it, as :func:`load_sft` does).
    """
    messages = with_system(rec.messages, rec.system, tok) if rec.messages is not None else None
    if messages is not None and not _one_final_answer(messages):
        ids, labels = _encode_chat(messages, tok)
    elif rec.text is not None:  # every token is learnt; nothing is a prompt
        ids = _text_ids(rec.text, tok)
        labels = list(ids)
    else:  # a prompt and its response; a conversation ending on its one answer is one too
        prompt, response = (messages[:-1], messages[-1]["content"]) if messages is not None \
            else (with_system(rec.prompt, rec.system, tok), rec.completion)
        enc = tok.encode_prompt_response(prompt, response)
        ids, labels = enc.ids, [IGNORE] * enc.prompt_len + enc.ids[enc.prompt_len:]
    return truncate(ids, labels, max_length=max_length, max_prompt_length=max_prompt_length)


def _text_ids(text: str, tok: Tokenizer) -> list[int]:
    """A text record's tokens, ending with the end-of-text token."""
    ids = tok.encode(text)
    if tok.eos_token_id is not None and (not ids or ids[-1] != tok.eos_token_id):
        ids = ids + [tok.eos_token_id]
    return ids


def text_windows_of(text: str, tok: Tokenizer, max_length: int) -> list[TokenizedExample]:
    """A text's tokens as windows of at most ``max_length`` that together train each token once.

    A window's first token is only read, never predicted (a causal model predicts token ``t``
    from those before it), so each window after the first starts on the last token of the one
    before: the windows step by ``max_length - 1`` and every token of the text but its first is
    a target exactly once, as in one pass over the whole text, with at most ``max_length - 1``
    tokens of context (a window's early tokens see little of what came before)."""
    if max_length < 2:
        raise ValueError(f"max_length={max_length}: a window needs 2 tokens (one read, one learnt)")
    ids = _text_ids(text, tok)
    step = max_length - 1
    return [TokenizedExample(ids[i: i + max_length], ids[i: i + max_length])
            for i in range(0, max(len(ids) - 1, 1), step)]


def _one_final_answer(messages) -> bool:
    """Whether a conversation's one assistant turn is its last: a prompt and its response
    (:meth:`~prefopt.tokenizer.Tokenizer.encode_prompt_response`: the tokens :func:`_encode_chat`
    gives, and a reasoning model's template, which renders a finished turn otherwise than its
    prompt, is taken too)."""
    roles = [m["role"] for m in messages]
    return len(roles) > 1 and roles[-1] == "assistant" and roles.count("assistant") == 1


def _encode_chat(messages, tok: Tokenizer) -> tuple[list[int], list[int]]:
    """Train on every assistant turn: each turn's tokens are those between the conversation
    rendered up to the turn (with the generation prompt) and rendered through it."""
    full = tok.apply_chat_template(messages)
    labels = [IGNORE] * len(full)
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        if i == 0:
            raise ValueError("a conversation cannot open with an assistant turn")
        start = tok.apply_chat_template(messages[:i], add_generation_prompt=True)
        end = tok.apply_chat_template(messages[: i + 1])
        if full[: len(start)] != start or full[: len(end)] != end:
            raise TurnsError(f"assistant turn {i}: its tokens are not an exact span of the whole conversation (the "
                             "chat template renders a finished turn otherwise than the prompt a model answers from); "
                             "prefopt.data.sft.turn_examples (load_sft) trains it one example per assistant turn")
        labels[len(start): len(end)] = full[len(start): len(end)]
    return full, labels


def turn_examples(messages, tok: Tokenizer, *, max_length: int, max_prompt_length: int | None = None
                  ) -> tuple[Turns, Cut]:
    """A conversation as one example per assistant turn: the conversation before the turn, rendered
    as the prompt a model answers from then, and the turn as its response
    (:meth:`~prefopt.tokenizer.Tokenizer.encode_prompt_response`), each cut to ``max_length``.

    For templates whose finished turns are not their prompts plus the answer (DeepSeek-R1's and
    QwQ's drop an earlier turn's reasoning; Mistral NeMo's moves the system prompt to the last user
    turn), where no single sequence holds every turn as the model saw it. Each turn is learnt
    once, after the context it was written in; the earlier turns are read again in each later
    example (tokens grow with the square of the turns)."""
    out, cut = Turns(), Cut()
    for i, m in enumerate(messages):
        if m["role"] == "assistant":
            enc = tok.encode_prompt_response(messages[:i], m["content"])
            ex, c = truncate(enc.ids, [IGNORE] * enc.prompt_len + enc.ids[enc.prompt_len:], max_length=max_length,
                             max_prompt_length=max_prompt_length)
            out.append(ex)
            cut = cut + c
    return out, cut


def prompt_len(labels) -> int:
    """Tokens before the first trained one."""
    return next((i for i, x in enumerate(labels) if x != IGNORE), len(labels))


def truncate(ids, labels, *, max_length: int, max_prompt_length: int | None = None, budget_for: int | None = None):
    """Fit ``ids`` into ``max_length``.

    The prompt (everything before the first trained token) is cut from the left, keeping
    its end: first to ``max_prompt_length``, then, if the whole is still too long, down to
    what the response leaves free but no shorter than half of ``max_length``. Then the
    response is cut from the right. ``budget_for`` sizes the prompt's cut for a response of
    that length instead of this one's, so a chosen/rejected pair can share one prompt cut.
    Returns the example and what was dropped (:class:`Cut`).
    """
    first = prompt_len(labels)
    p_ids, p_lab, r_ids, r_lab = ids[:first], labels[:first], ids[first:], labels[first:]
    if max_prompt_length is not None and len(p_ids) > max_prompt_length:
        p_ids, p_lab = p_ids[-max_prompt_length:], p_lab[-max_prompt_length:]
    reserve = len(r_ids) if budget_for is None else budget_for
    if len(p_ids) + reserve > max_length:
        keep = max(min(len(p_ids), max_length // 2), max_length - reserve)
        if keep < len(p_ids):
            p_ids, p_lab = p_ids[len(p_ids) - keep:], p_lab[len(p_lab) - keep:]
    cut = Cut(prompt=first - len(p_ids), response=max(0, len(r_ids) - (max_length - len(p_ids))))
    r_ids, r_lab = r_ids[: max_length - len(p_ids)], r_lab[: max_length - len(p_ids)]
    ids, labels = p_ids + r_ids, p_lab + r_lab
    if all(x == IGNORE for x in labels):
        raise ValueError(f"no response token fits in max_length={max_length} (prompt has {len(p_ids)} tokens)")
    return TokenizedExample(ids, labels), cut


def load_sft(
    path: str | Path | list[dict],
    tok: Tokenizer,
    *,
    max_length: int = 1024,
    max_prompt_length: int | None = None,
    skip_bad: bool = False,
    show_progress: bool = True,
    columns: dict[str, str] | None = None,
    text_windows: bool = False,
    sheet: str | None = None,
    encoding: str | None = None,
) -> tuple[list[TokenizedExample], LoadReport]:
    """Read, validate and tokenize an SFT file (JSONL, JSON, CSV, TSV, Parquet, .xlsx, .xls or .ods), a list of record
    dicts or a DataFrame.

    Every record is checked; a bad one raises a :class:`DataError` naming the file, line and
    field (``<records>:3`` for the third dict of a list), unless ``skip_bad=True``, which skips
    it and records why in the report. ``show_progress``: a progress bar, once tokenizing has
    taken 2 s (about 1,500 records of 400 tokens). ``columns``: ``{field: column}``, each field
    read from a column of another name (:func:`~prefopt.data.columns.column_map`); errors name the column.
    ``text_windows``: a ``{"text"}`` record longer than ``max_length`` becomes several examples
    (:func:`text_windows_of`) instead of being cut to its start. A conversation of several
    assistant turns is one example, or one per turn where its template renders finished turns
    otherwise than its prompts (:func:`turn_examples`; the report counts them). ``sheet``: the
    sheet of each Excel workbook to read (else its one sheet in view that holds data).
    ``encoding``: the text files' (CSV, TSV, JSON, JSONL; else UTF-8: ``cp1252`` for Excel's CSV on
    Western-European Windows).
    """
    def encode(rec):
        if text_windows and rec.text is not None:
            return text_windows_of(rec.text, tok, max_length), Cut()
        try:
            return tokenize_sft(rec, tok, max_length=max_length, max_prompt_length=max_prompt_length)
        except TurnsError:
            return turn_examples(rec.messages, tok, max_length=max_length, max_prompt_length=max_prompt_length)

    examples, report = load_tokenized(path, with_columns(parse_sft, columns), encode, skip_bad=skip_bad,
                                      show_progress=show_progress, sheet=sheet, encoding=encoding, tok=tok,
                                      field_of=lambda rec, field=None: column_of(field or _field(rec), columns))
    report.max_length = max_length
    return examples, report


def _field(rec: SFTRecord) -> str:
    """The field an SFT record's encoding error is named by."""
    return "messages" if rec.messages is not None else "text" if rec.text is not None else "completion"


def load_tokenized(path, parse: Callable, encode: Callable, *, skip_bad: bool, field_of: Callable,
                   show_progress: bool = True, sheet: str | None = None, encoding: str | None = None,
                   tok: Tokenizer | None = None):
    """Parse every record, then ``encode(record) -> (example, Cut)`` each one, under a progress bar
    that shows once it has taken 2 s (``show_progress``); file after file where ``path`` names
    several (:func:`~.files.data_files`).

    An encoding failure becomes a :class:`DataError` on ``field_of(record, field)`` (``field``:
    the one a :class:`~.records.FieldError` names, else None) at the record's file and line,
    raised or (``skip_bad``) counted in the report like a parse failure; so does, with ``tok``, a
    text holding one of its special tokens written out (:func:`~.records.control_tokens`). Raises
    :class:`NoRecordsError` when not one record of all the files is usable. ``sheet``: each
    workbook's sheet to read (:func:`~.sheets.reading_sheet`); ``encoding``, each text file's
    (:func:`~.decoding.reading_encoding`).
    """
    with sheet_scope(sheet), encoding_scope(encoding):
        parts = [_tokenized(s, parse, encode, skip_bad, field_of, show_progress, tok) for s in sources(path)]
    examples = [ex for exs, _ in parts for ex in exs]
    report = LoadReport.merged(source_label(path), [r for _, r in parts])
    if not examples:
        why = f": {report.summary()}" if report.skipped else ""
        raise NoRecordsError(source_label(path), None, None, "no usable records" + why, report)
    return examples, report


def _tokenized(source, parse: Callable, encode: Callable, skip_bad: bool, field_of: Callable, show_progress: bool,
               tok: Tokenizer | None):
    records, report = _records(source, parse, skip_bad)
    examples = []
    report.n_kept = 0  # counted again: a record whose encoding fails is not kept
    name = source_name(source)
    for line, rec in progress(records, desc=f"tokenizing {Path(str(name)).name}", unit="record", delay=2,
                              leave=False, disable=not show_progress):
        try:
            if tok is not None:
                control_tokens(rec, tok)
            ex, cut = encode(rec)
        except ValueError as e:
            err = DataError(name, line, field_of(rec, getattr(e, "field", None)), str(e))
            if not skip_bad:
                raise err from None
            report.skipped.append(err)
            continue
        windows = ex if isinstance(ex, list) else [ex]  # a text's windows, or a conversation's turns: several examples
        shared = 0 if isinstance(ex, Turns) else len(windows) - 1  # a text's windows share a token each
        report.n_split += isinstance(ex, Turns)
        report.n_split_examples += len(ex) if isinstance(ex, Turns) else 0
        report.n_truncated += cut.tokens > 0
        report.n_response_cut += cut.response > 0
        report.n_tokens += sum(w.n_tokens for w in windows) - shared + cut.tokens
        report.n_tokens_cut += cut.tokens
        examples += windows
        report.kept_lines += [line] * len(windows)
        report.kept_records += [report.n_kept] * len(windows)
        report.n_kept += 1
    escapes = escape_counts((line, record_texts(rec)) for line, rec in records)
    for kind, (n, line, where) in escapes.items():  # (a field named: field_of needs no record)
        what, advice = ESCAPES[kind]
        warnings.warn(f"{name}: {n} of {len(records)} records hold {what} (the first: line {line}, field "
                      f"{field_of(None, where)!r}): {advice}", EscapedText, stacklevel=2)
    return examples, report
