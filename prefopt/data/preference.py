"""Preference pairs: load and validate, tokenize both responses behind one shared prompt, batch."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..tokenizer import Tokenizer
from .collate import pad_collate
from .columns import column_of, with_columns
from .records import PreferenceRecord, parse_preference, with_system
from .sft import IGNORE, Cut, LoadReport, TokenizedExample, load_tokenized, prompt_len, truncate


@dataclass(frozen=True)
class PairExample:
    chosen: TokenizedExample
    rejected: TokenizedExample

    @property
    def key(self) -> str:
        """A hash of exactly what the model sees: both token sequences and their prompt lengths."""
        payload = json.dumps([self.chosen.input_ids.tolist(), prompt_len(self.chosen.labels),
                              self.rejected.input_ids.tolist(), prompt_len(self.rejected.labels)])
        return hashlib.sha256(payload.encode()).hexdigest()[:32]

    @property
    def n_tokens(self) -> int:
        return self.chosen.n_tokens + self.rejected.n_tokens

    @property
    def input_ids(self) -> list[int]:  # for length-grouped batching: the longer side
        return max(self.chosen.input_ids, self.rejected.input_ids, key=len)


def tokenize_pair(rec: PreferenceRecord, tok: Tokenizer, *, max_length: int,
                  max_prompt_length: int | None = None) -> tuple[PairExample, Cut]:
    """Encode prompt+chosen and prompt+rejected; both keep the same (possibly truncated) prompt.

    Returns the pair and what truncation dropped from its two sequences (:class:`Cut`). A pair
    that truncation makes identical (the responses differ only past ``max_length``) is an
    error: it would carry no preference at all.
    """
    prompt = with_system(rec.prompt, rec.system, tok)
    with tok.remembering():  # the prompt is encoded once for both
        c = tok.encode_prompt_response(prompt, rec.chosen)
        r = tok.encode_prompt_response(prompt, rec.rejected)
    if c.ids[:c.prompt_len] != r.ids[:r.prompt_len]:
        raise ValueError("the prompt encodes differently in front of chosen and rejected")
    longest = max(len(c.ids) - c.prompt_len, len(r.ids) - r.prompt_len)
    out = []
    for enc in (c, r):
        labels = [IGNORE] * enc.prompt_len + enc.ids[enc.prompt_len:]
        out.append(truncate(enc.ids, labels, max_length=max_length, max_prompt_length=max_prompt_length,
                            budget_for=longest))
    (ce, c_cut), (re_, r_cut) = out
    if ce.input_ids == re_.input_ids:
        first = next((i for i, (a, b) in enumerate(zip(c.ids, r.ids)) if a != b), min(len(c.ids), len(r.ids)))
        first -= c.prompt_len
        raise ValueError(f"chosen and rejected are identical once cut to max_length={max_length}: they differ "
                         f"only from response token {first + 1}, and {ce.n_label_tokens} response tokens fit; "
                         "raise max_length or cut the prompt with max_prompt_length")
    return PairExample(ce, re_), c_cut + r_cut


def load_preferences(path: str | Path | list[dict], tok: Tokenizer, *, max_length: int = 1024,
                     max_prompt_length: int | None = None, skip_bad: bool = False, show_progress: bool = True,
                     columns: dict[str, str] | None = None, sheet: str | None = None, encoding: str | None = None
                     ) -> tuple[list[PairExample], LoadReport]:
    """Read, validate and tokenize a preference file (TRL or OpenAI format; JSONL, JSON, CSV or
    Parquet, .xlsx), or a list of record dicts; errors, ``show_progress``, ``columns``,
    ``sheet`` and ``encoding`` as :func:`~prefopt.data.load_sft`."""
    def encode(rec):
        return tokenize_pair(rec, tok, max_length=max_length, max_prompt_length=max_prompt_length)

    pairs, report = load_tokenized(path, with_columns(parse_preference, columns), encode, skip_bad=skip_bad,
                                   show_progress=show_progress, sheet=sheet, encoding=encoding, tok=tok,
                                   field_of=lambda rec, field=None: column_of(field or "chosen", columns))
    report.max_length = max_length
    return pairs, report


def pair_collate(pairs, pad_id: int) -> dict[str, torch.Tensor]:
    """``(2B, T)`` tensors: the B chosen sequences first, then the B rejected ones."""
    return pad_collate([p.chosen for p in pairs] + [p.rejected for p in pairs], pad_id)
