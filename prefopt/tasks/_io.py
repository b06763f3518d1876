"""Reading task files: CSV (any delimiter and encoding), JSONL and JSON, with located errors."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from ..data.readers import read_rows
from ..data.records import DataError


def table(path: str | Path, *, delimiter: str = ",", encoding: str = "utf-8") -> Iterator[tuple[int, dict]]:
    """``(line, row)`` for each record of a CSV (any delimiter and encoding), JSONL or JSON file;
    a malformed record raises :class:`DataError` with its file and line."""
    for line, row in read_rows(path, delimiter=delimiter, encoding=encoding):
        if isinstance(row, DataError):
            raise row
        yield line, row


def need(row: dict, field: str, path, line: int) -> str:
    """The non-empty text of ``row[field]``, or a :class:`DataError` naming file, line and field."""
    if field not in row or row[field] is None:
        raise DataError(path, line, field, f"missing field (have: {', '.join(map(str, row))})")
    value = str(row[field]).strip()
    if not value:
        raise DataError(path, line, field, "empty")
    return value


def convert(fn, row: dict, field: str, path, line: int):
    """``fn`` applied to the non-empty ``row[field]``; its ``ValueError`` becomes a
    :class:`DataError` naming file, line and field."""
    value = need(row, field, path, line)
    try:
        return fn(value)
    except DataError:
        raise
    except ValueError as e:
        raise DataError(path, line, field, str(e)) from None


def clip(text: str, limit: int) -> str:
    """At most ``limit`` characters, cut at a word boundary, marked with an ellipsis."""
    if len(text) <= limit:
        return text
    return text[:limit].rsplit(" ", 1)[0] + " …"
