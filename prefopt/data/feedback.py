"""Unpaired feedback for KTO: load and validate, tokenize, and give each example the mismatched
completion its reference point is estimated from.

A record is one completion of a prompt and whether it is desirable (TRL's ``{"prompt",
"completion", "label"}``); a preference pair counts as two records. KTO's reference point z0 is
the batch's mean log-ratio of completions written for *other* prompts. As in TRL, which pairs
each example with its neighbour's completion when it prepares the data, the pairing is fixed
once at load time, here along a cycle in the order of each example's hash, skipping completions
of the same prompt (stable: a record added or changed gives new partners only to its
neighbours on the cycle, so the reference cache recomputes those alone). Each example is then a
:class:`~prefopt.data.preference.PairExample` whose ``rejected`` sequence is ``[its prompt |
another example's completion]``: both share the prompt (one packed row, as a DPO pair) and the
reference cache holds both log-probs under one key.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .._errors import Pickled
from ..tokenizer import Tokenizer
from .columns import column_of, with_columns
from .preference import PairExample, tokenize_pair
from .records import DataError, FeedbackRecord, PreferenceRecord, SFTRecord, parse_feedback
from .sft import IGNORE, Cut, LoadReport, TokenizedExample, load_tokenized, prompt_len, token_digest, tokenize_sft


@dataclass(frozen=True)
class FeedbackExample(PairExample):
    """``chosen``: the prompt and its completion; ``rejected``: the same prompt and another
    example's completion (KTO's KL sample); ``desirable``: the completion's label."""

    desirable: bool = True


class NoMismatch(Pickled, ValueError):
    """No mismatched completion for example ``index`` (None: too few examples)."""

    def __init__(self, message: str, index: int | None = None):
        super().__init__(message)
        self.index = index


@dataclass(frozen=True)
class _Encoded:
    """One record's completions, tokenized (two for a preference record)."""

    examples: tuple[TokenizedExample, ...]
    desirable: tuple[bool, ...]

    @property
    def n_tokens(self) -> int:
        return sum(x.n_tokens for x in self.examples)


def _encode(records: tuple[FeedbackRecord, ...], tok: Tokenizer, max_length: int,
            max_prompt_length: int | None) -> tuple[_Encoded, Cut]:
    if len(records) == 2:  # a pair: one prompt cut for both, as DPO cuts it
        c, r = records
        pair, cut = tokenize_pair(PreferenceRecord(c.prompt, c.completion, r.completion, c.system), tok,
                                  max_length=max_length, max_prompt_length=max_prompt_length)
        return _Encoded((pair.chosen, pair.rejected), (True, False)), cut
    (rec,) = records
    ex, cut = tokenize_sft(SFTRecord(prompt=rec.prompt, completion=rec.completion, system=rec.system), tok,
                           max_length=max_length, max_prompt_length=max_prompt_length)
    return _Encoded((ex,), (rec.desirable,)), cut


def _spread(report: LoadReport, encoded: list[_Encoded]) -> None:
    """The report's per-example lists, for examples where a record gave two."""
    sizes = [len(e.examples) for e in encoded]
    for name in ("kept_lines", "kept_records", "kept_files"):
        values = getattr(report, name)
        if values:
            setattr(report, name, [v for v, n in zip(values, sizes, strict=True) for _ in range(n)])


def mismatched(examples: list[TokenizedExample], max_length: int) -> list[TokenizedExample]:
    """For each example, its prompt followed by another example's completion (cut to
    ``max_length``): the next one, along the cycle of the examples in the order of their hashes,
    whose prompt and completion both differ, or, where every example has the same prompt, whose
    completion differs."""
    n = len(examples)
    if n < 2:
        raise NoMismatch(f"KTO needs at least 2 examples to estimate its reference point from mismatched "
                         f"completions; got {n}")
    cut = [prompt_len(x.labels) for x in examples]
    prompts = [token_digest(x.input_ids[:k]) for x, k in zip(examples, cut)]
    answers = [token_digest(x.input_ids[k:]) for x, k in zip(examples, cut)]
    cycle = sorted(range(n), key=lambda i: (token_digest(examples[i].input_ids, examples[i].labels), i))
    place = {i: p for p, i in enumerate(cycle)}
    one_prompt = len(set(prompts)) == 1
    out = []
    for i in range(n):
        after = (cycle[(place[i] + step) % n] for step in range(1, n))
        partner = next((j for j in after if answers[j] != answers[i] and (one_prompt or prompts[j] != prompts[i])),
                       None)
        if partner is None:
            other = "completion" if one_prompt else "prompt and completion"
            raise NoMismatch(f"KTO estimates its reference point from mismatched completions, and no other example "
                             f"than this one has another {other}", i)
        own, other = examples[i].input_ids, examples[partner].input_ids
        ids = own[:cut[i]] + other[cut[partner]:][:max_length - cut[i]]
        out.append(TokenizedExample(ids, [IGNORE] * cut[i] + ids[cut[i]:].tolist()))
    return out


def load_feedback(path: str | Path | list[dict], tok: Tokenizer, *, max_length: int = 1024,
                  max_prompt_length: int | None = None, skip_bad: bool = False, show_progress: bool = True,
                  columns: dict[str, str] | None = None, sheet: str | None = None, encoding: str | None = None
                  ) -> tuple[list[FeedbackExample], LoadReport]:
    """Read, validate and tokenize KTO's records (unpaired, or preference pairs read as two);
    errors, ``show_progress``, ``columns``, ``sheet`` and ``encoding`` as
    :func:`~prefopt.data.load_sft`. Each example carries its mismatched completion
    (:func:`mismatched`); the report counts records (a pair is one record, two examples)."""
    def encode(records):
        return _encode(records, tok, max_length, max_prompt_length)

    encoded, report = load_tokenized(path, with_columns(parse_feedback, columns), encode, skip_bad=skip_bad,
                                     show_progress=show_progress, sheet=sheet, encoding=encoding, tok=tok,
                                     field_of=lambda recs, field=None: column_of(
                                         field or ("completion" if len(recs) == 1 else "chosen"), columns))
    _spread(report, encoded)
    own = [x for e in encoded for x in e.examples]
    labels = [d for e in encoded for d in e.desirable]
    report.max_length = max_length
    try:
        kl = mismatched(own, max_length)
    except NoMismatch as e:
        file, line = report.kept_places[e.index] if e.index is not None else (None, None)
        raise DataError(file or report.path, line, None if line is None else "completion", str(e)) from None
    return [FeedbackExample(x, k, d) for x, k, d in zip(own, kl, labels)], report


def label_counts(examples: list[FeedbackExample]) -> tuple[int, int]:
    """How many examples are desirable and how many undesirable."""
    good = sum(1 for x in examples if x.desirable)
    return good, len(examples) - good
