"""Looking at a data file before training on it: which records are bad, how long the rest are
in tokens, what a ``max_length`` would cut, and which repeat (``prefopt check-data``)."""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..tokenizer import Tokenizer
from .columns import near_columns, renamed, spaced_keys, with_columns
from .feedback import FeedbackExample, load_feedback
from .preference import PairExample, load_preferences
from .readers import read_rows
from .records import SFTRecord, parse_feedback, parse_preference, parse_sft
from .sft import (
    WINDOWS_ARE_SFT,
    LoadReport,
    NoRecordsError,
    TokenizedExample,
    load_records,
    load_sft,
    prompt_len,
    sources,
    token_digest,
)

KINDS = ("sft", "preference", "feedback")
LOADERS = {"sft": load_sft, "preference": load_preferences, "feedback": load_feedback}
TITLES = {"sft": "SFT records", "preference": "preference pairs", "feedback": "unpaired feedback (KTO)"}
SHOW_BAD = 10  # bad records listed by default (``lines(show_bad=None)``: every one)
LABELS = 12  # a side with at most this many distinct answers is shown as labels: each with its count
UNLIMITED = 1 << 30  # a max_length nothing reaches: lengths before any truncation


def detect_kind(path, columns: dict[str, str] | None = None) -> str:
    """``"preference"`` when the first readable record has chosen/rejected (TRL) or
    preferred_output (OpenAI) fields (read through ``columns``), ``"feedback"`` when it has a
    completion and a label (KTO), else ``"sft"``."""
    for source in sources(path):
        for _, row in read_rows(source):
            if isinstance(row, dict):
                fields = set(renamed(row, columns)) if columns else {*row, *near_columns(row), *spaced_keys(row)}
                if {"chosen", "rejected", "preferred_output"} & fields:
                    return "preference"
                return "feedback" if {"completion", "label"} <= fields else "sft"
    return "sft"


@dataclass
class DataCheck:
    kind: str
    report: LoadReport  # at the max_length asked for
    total: list[int]  # tokens per kept record before truncation (a pair: its longer sequence)
    prompt: list[int]
    response: list[int]  # a pair: its longer response
    duplicates: int  # kept records that repeat an earlier one token for token
    answers: dict[str, Counter]  # per side ("completion"; "chosen", "rejected"): how often each answer is given
    title: str | None = None  # what the first line calls the records; None: "SFT records" or "preference pairs"
    windows: int | None = None  # with text_windows: the examples training would make (long texts split)

    def lines(self, show_bad: int | None = SHOW_BAD) -> list[str]:
        """The check as console lines: what was kept and why not (the first ``show_bad`` bad records
        by file, line and field; None: all), lengths, truncation, repeats."""
        r = self.report
        kind = self.title or TITLES[self.kind]
        out = [f"{r.name}: {kind}; {r.summary().removeprefix(r.name + ': ')}"]
        if r.per_file:
            names = [f.name for f, _, _ in r.per_file]
            shown = names if len(set(names)) == len(names) else [str(f) for f, _, _ in r.per_file]
            counts = [f"{name} {kept} of {read}" for name, (_, read, kept) in zip(shown, r.per_file)]
            more = f", and {len(counts) - 12} more" if len(counts) > 12 else ""
            out.append(f"  kept per file: {', '.join(counts[:12])}{more}")
        out += bad_lines(r.skipped, show_bad)
        if not r.n_read:
            out.append("  the file holds no records")
        if self.total:
            out.append(f"  tokens per record: {_spread(self.total)}")
            out.append(f"    prompt: {_spread(self.prompt)}; response: {_spread(self.response)}")
            longest = max(self.total)
            long_texts = sum(1 for t, p in zip(self.total, self.prompt) if p == 0 and t > (r.max_length or t))
            if self.windows is not None and long_texts:
                out.append(f"  {self.windows} training examples: {long_texts} text record"
                           f"{'s' * (long_texts != 1)} longer than max_length={r.max_length} in windows")
            out.append(f"  max_length={longest} would fit every record" if r.n_truncated else
                       f"  every record fits max_length={r.max_length} (the longest has {longest} tokens)"
                       if longest <= (r.max_length or longest) else
                       f"  nothing is cut at max_length={r.max_length} (the longest record has {longest} tokens)")
            if self.windows is None and self.kind == "sft" and long_texts:  # a text record trains every token
                out.append(f"  {long_texts} text record{'s lose their end' if long_texts != 1 else ' loses its end'} "
                           f"past max_length: --text-windows trains on all of each, in windows")
        out += [answer_line(side, counts) for side, counts in self.answers.items() if counts]
        if self.kind == "preference":
            out += lopsided_lines(self.answers.get("chosen", Counter()), self.answers.get("rejected", Counter()))
        if self.duplicates:
            n = self.duplicates
            out.append(f"  {n} record{'s repeat' if n != 1 else ' repeats'} an earlier one token for token"
                       + (" (the same prompt, chosen and rejected)" if self.kind == "preference" else ""))
        return out


def bad_lines(errors: list, show_bad: int | None = SHOW_BAD) -> list[str]:
    """Console lines for bad records: ``None``, one a record; else the records bad for the same
    reason in the same field of one file on one line (``meqsum.jsonl:1-800 (800 records): field
    'prompt': missing field ...``), the first ``show_bad`` such lines, and how many records the
    rest hold."""
    if show_bad is None:
        return [f"  bad: {e}" for e in errors]
    groups: dict[tuple, list] = {}
    for e in errors:
        line = getattr(e, "line", None)
        key = (str(e.path), e.field, e.reason) if line is not None else (id(e),)
        groups.setdefault(key, []).append(e)
    kinds, out = list(groups.values()), []
    for same in kinds[:show_bad]:
        first = same[0]
        if len(same) == 1:
            out.append(f"  bad: {first}")
            continue
        field = f"field {first.field!r}: " if first.field else ""
        out.append(f"  bad: {first.path}:{_places([e.line for e in same])}: {field}{first.reason}")
    rest = sum(len(same) for same in kinds[show_bad:])
    if rest:
        out.append(f"  ... and {rest} more bad record{'s' * (rest != 1)} (--all-bad lists them all)")
    return out


def _places(lines: list[int], most: int = 6) -> str:
    """``1-800 (800 records)``, ``2, 5, 8, 11, 14, 17, ... (10 records)``: the lines, runs joined."""
    runs: list[list[int]] = []
    for n in sorted(set(lines)):
        if runs and n == runs[-1][1] + 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    text = [f"{a}-{b}" if b > a else str(a) for a, b in runs]
    more = ", ..." if len(text) > most else ""
    return f"{', '.join(text[:most])}{more} ({len(lines)} records)"


def _spread(xs: list[int]) -> str:
    s = sorted(xs)

    def pct(q: float) -> int:
        return s[min(len(s) - 1, int(q * len(s)))]

    return f"median {pct(0.5)}, 90% {pct(0.9)}, 99% {pct(0.99)}, max {s[-1]}"


def check_data(path: str | Path | list[dict], tok: Tokenizer, *, kind: str | None = None, max_length: int = 1024,
               max_prompt_length: int | None = None, columns: dict[str, str] | None = None,
               text_windows: bool = False) -> DataCheck:
    """Load ``path`` as training would (every bad record counted, none fatal; ``columns`` and
    ``text_windows`` as :func:`~prefopt.data.load_sft` takes them) and measure it."""
    kind = kind or detect_kind(path, columns)
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS} (got {kind!r})")
    if text_windows and kind != "sft":
        raise ValueError(WINDOWS_ARE_SFT)
    loader: Callable = LOADERS[kind]
    windows = {"text_windows": True} if text_windows else {}
    with tok.remembering():  # the second pass re-encodes nothing (half the time)
        full, report = _load(loader, path, tok, max_length=UNLIMITED, columns=columns)
        if full:
            trained, report = _load(loader, path, tok, max_length=max_length, max_prompt_length=max_prompt_length,
                                    columns=columns, **windows)
    sides = [_sides(x) for x in full]
    seen: set = set()
    duplicates = 0
    for x in full:
        # a digest, not the tokens (token_digest)
        if isinstance(x, FeedbackExample):  # its completion and label; the mismatched completion is not data
            key = (x.desirable, token_digest(x.chosen.input_ids))
        else:
            key = x.key if isinstance(x, PairExample) else token_digest(x.input_ids, x.labels)
        duplicates += key in seen
        seen.add(key)
    return DataCheck(kind, report, [t for t, _, _ in sides], [p for _, p, _ in sides], [r for _, _, r in sides],
                     duplicates, _answers(path, kind, columns), windows=len(trained) if text_windows and full else None)


def _answers(path, kind: str, columns: dict[str, str] | None = None) -> dict[str, Counter]:
    """How often each answer (stripped) is given, per side, over the records that parse."""
    if kind == "feedback":
        rows, _ = load_records(path, with_columns(parse_feedback, columns), skip_bad=True)
        records = [r for _, recs in rows for r in recs]
        return {side: Counter(r.completion.strip() for r in records if r.desirable == good)
                for side, good in (("desirable", True), ("undesirable", False))}
    if kind == "preference":
        rows, _ = load_records(path, with_columns(parse_preference, columns), skip_bad=True)
        return {"chosen": Counter(r.chosen.strip() for _, r in rows),
                "rejected": Counter(r.rejected.strip() for _, r in rows)}
    rows, _ = load_records(path, with_columns(parse_sft, columns), skip_bad=True)
    return {"completion": Counter(_answer(r).strip() for _, r in rows if r.text is None)}


def _answer(r: SFTRecord) -> str:
    """The completion, or a chat's last assistant turn (a text record has none)."""
    if r.messages is None:
        return r.completion
    return next(m["content"] for m in reversed(r.messages) if m["role"] == "assistant")


def answer_line(side: str, counts: Counter, limit: int = LABELS, noun: str = "distinct") -> str:
    """``completion: 3 distinct: 'routine' 12 (60%), ...`` where the answers are few (at most
    ``limit``: labels), else how many distinct of how many."""
    n = sum(counts.values())
    if len(counts) > limit:
        return f"  {side}: {len(counts):,} distinct of {n:,}"
    return f"  {side}: {len(counts)} {noun}: " + ", ".join(
        f"{_short(a)} {k} ({k / max(n, 1):.0%})" for a, k in counts.most_common())


def _short(text: str) -> str:
    """An answer as the check shows it: quoted, at most 40 characters."""
    return repr(text if len(text) <= 40 else text[:37] + "...")


def lopsided_lines(chosen: Counter, rejected: Counter, limit: int = LABELS) -> list[str]:
    """Where pairs answer with labels (at most ``limit`` distinct per side): each answer rejected
    at least twice as often as it is chosen, in at least a tenth of the pairs (and 5). DPO then learns to
    avoid that answer whatever the prompt, a prior rather than item knowledge (docs/dpo.md:
    on-policy negatives made a triage model call nearly everything urgent)."""
    n = sum(rejected.values())
    if not n or len(chosen) > limit or len(rejected) > limit:
        return []
    out = []
    for answer, k in rejected.most_common():
        if k >= max(5, 0.1 * n) and k >= 2 * chosen.get(answer, 0):
            out.append(f"  lopsided: {_short(answer)} is rejected in {k} pairs and chosen in {chosen.get(answer, 0)}: DPO "
                       "may learn to avoid it whatever the prompt; balance the pairs (docs/dpo.md)")
    return out


def pair_lopsided_lines(pairs: list[dict]) -> list[str]:
    """:func:`lopsided_lines` of preference pairs' chosen and rejected answers (each stripped), a
    line each without its indent: what make-pairs and reviewed-pairs warn of once they are made."""
    return [line.strip() for line in lopsided_lines(Counter(p["chosen"].strip() for p in pairs),
                                                     Counter(p["rejected"].strip() for p in pairs))]


def _load(loader: Callable, path, tok: Tokenizer, **kw) -> tuple[list, LoadReport]:
    """Every usable record and the report; none usable (every record bad, or none at all) is a
    finding here, not an error."""
    try:
        return loader(path, tok, skip_bad=True, **kw)
    except NoRecordsError as e:
        return [], e.report


def _sides(x: TokenizedExample | PairExample) -> tuple[int, int, int]:
    """(tokens, prompt tokens, response tokens) of a record; a pair's longer side; KTO's completion."""
    if isinstance(x, FeedbackExample):
        x = x.chosen
    if isinstance(x, PairExample):
        p = prompt_len(x.chosen.labels)
        return len(x.input_ids), p, max(len(x.chosen.input_ids), len(x.rejected.input_ids)) - p
    p = prompt_len(x.labels)
    return len(x.input_ids), p, len(x.input_ids) - p
