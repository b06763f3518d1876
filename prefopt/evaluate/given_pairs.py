"""Preference pairs a user gives compare (``--strategy ranked --pairs FILE``), kept off the items
compare holds out: a pair whose prompt is a test item's message would train DPO on what the
comparison tests, and one on a validation item on what chooses the DPO weights. Such pairs are
left out, said so, and DPO trains on a copy of the file without them (``data/pairs.jsonl``)."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from ..data.columns import hinted, renamed, with_columns
from ..data.readers import read_rows
from ..data.records import DataError, parse_feedback, parse_preference
from ..data.sheets import naming_sheet_by
from ..fileio import jsonl_text, write_json_atomic, write_text_atomic


def _prompt_text(row: dict) -> str | None:
    """A pair's prompt as text, compared as :func:`_plain` writes it: its own, or a chat prompt's
    last user turn."""
    prompt = row.get("prompt")
    if isinstance(prompt, list):
        prompt = next((m.get("content") for m in reversed(prompt) if isinstance(m, dict) and m.get("role") == "user"),
                      None)
    return _plain(prompt) if isinstance(prompt, str) else None


def _plain(text: str) -> str:
    """``text`` as prompts are compared: its words, one space between, case folded."""
    return " ".join(text.split()).casefold()


SHARED = 40  # the fewest characters a pair's prompt and an item's message share for one within the other to count


def held_out(pairs: Path, splits: dict[str, list], encoding: str | None = None, sheet: str | None = None,
             columns: dict[str, str] | None = None, unpaired: bool = False
             ) -> tuple[list[dict], list[tuple[int, str, str]]]:
    """``(the rows to keep, (line, split, item id) of each left out)``: a pair is left out where its
    prompt is the message of an item of ``splits`` (``{"test": records, ...}``), word for word in
    any spacing or case, or where one holds the other whole, :data:`SHARED` characters or more (a
    pair's prompt that is the message without the task's instructions, or wraps it in its own;
    a short one, "Refill?", may stand in many a message by chance). The rows kept have their
    fields under their own names (``columns``: FIELD -> the file's column, ``--pairs-columns``).

    Every pair is read as DPO will read it (``unpaired``: as KTO's feedback, a preference record
    read as two), so a bad one stops the run now, before SFT trains,
    with its file, line and field (a row that does not parse, bytes not text in ``encoding``,
    None: UTF-8, a missing field or a column of another name, chosen equal to rejected, a
    workbook with several sheets of data and no ``sheet`` named); before 2026-12-06 only
    malformed rows were, and the rest stopped the DPO stage after SFT."""
    held = {_plain(r.prompt): (name, r.id) for name, records in splits.items() for r in records}
    long = [(text, item) for text, item in held.items() if len(text) >= SHARED]
    kept, left = [], []
    with naming_sheet_by("--pairs-sheet"):
        rows = list(read_rows(pairs, encoding=encoding, sheet=sheet))
    parse = with_columns(parse_feedback if unpaired else parse_preference, columns)
    for line, row in rows:
        if isinstance(row, DataError):
            raise row
        try:
            parse(row, pairs, line)
        except DataError as e:
            raise hinted(e, row, "--pairs-columns", "pairs_columns") from None
        row = renamed(row, columns) if columns else row
        prompt = _prompt_text(row) if isinstance(row, dict) else None
        item = None if prompt is None else held.get(prompt) or next(
            (item for text, item in long if text in prompt or (len(prompt) >= SHARED and prompt in text)), None)
        if item is None:
            kept.append(row)
        else:
            left.append((line, *item))
    if left and not kept:
        raise ValueError(f"--pairs {pairs}: every pair's prompt is the message of an item compare holds out (test or "
                         "validation): none is left for DPO to train on; give pairs on other messages")
    return kept, left


def left_out_line(pairs: Path, kept: list, left: list[tuple[int, str, str]]) -> str:
    """What was left out of ``pairs``, in words."""
    counts = Counter(split for _, split, _ in left)
    line, split, item = left[0]
    return (f"--pairs {pairs}: {len(left)} of {len(kept) + len(left)} pairs left out, their prompts the messages of "
            f"items held out ({', '.join(f'{n} {s}' for s, n in sorted(counts.items()))}; the first: line {line}, "
            f"{split} item {item!r}): DPO would train on what the comparison tests or what chooses its weights; it "
            f"trains on the other {len(kept)}")


def write_kept(out: Path, pairs: Path, kept: list, left: list[tuple[int, str, str]]) -> Path:
    """``out/data/pairs.jsonl``, the kept pairs (one JSON line each), and ``pairs_report.json``
    saying what was left out; returns the pairs' path."""
    path = out / "data" / "pairs.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, jsonl_text(kept))
    write_json_atomic(out / "data" / "pairs_report.json", {
        "strategy": "ranked", "source": str(pairs), "kept": len(kept),
        "left_out": [{"line": line, "split": split, "item": item} for line, split, item in left]})
    return path
