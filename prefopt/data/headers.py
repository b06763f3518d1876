"""A table's header, as CSV files and spreadsheets give it: each header cell's text as a
column's name, a name given twice refused, and title rows above the column names (a report's
title, its run date) told from them; data-file warnings given once a process."""
from __future__ import annotations

import itertools
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .records import DataError


def one_name_each(path: Path, names: Sequence[str], line: int | None = 1) -> None:
    """Refuse a header that names a column twice: a row would keep only the last column's cell
    (a CSV row made a dict, and pyarrow alike), losing the other without a word. Blank names (an
    export's trailing delimiters) may repeat."""
    for i, name in enumerate(names):
        if name and name.strip() and name in names[:i]:
            first = names.index(name) + 1
            raise DataError(path, line, name, f"two columns have this name (columns {first} and {i + 1}); a record "
                                              "would keep only the last one's cell: rename one")


def column_name(header_cell: str) -> str:
    """A header cell's text as a column's name: without spaces around it ("prompt, chosen": no
    space in "chosen") and each run of spaces or line breaks within it one space (a spreadsheet's
    "Patient⏎message", its header wrapped by Alt+Enter, is ``Patient message``, a name one can pass
    to ``--columns``)."""
    return " ".join(header_cell.split())


def warn_once(message: str, key: Any = None) -> None:
    """``message`` as a warning, once a process however often the file is read (a task reads its
    file more than once; Python's own once-only registry is reset whenever a filter is added).
    ``key``: what makes it the same warning, where the message names more (the first line of many:
    once a file, not once a line); by default the message itself."""
    seen = message if key is None else key
    if seen not in _SAID:
        _SAID.add(seen)
        warnings.warn(message, stacklevel=3)


_SAID: set = set()  # the warnings given, by key (see warn_once)


def past_titles(path: Path, line: int, names: list[str], rows: Iterator[tuple[int, Any]], texts,
                narrow: bool = False) -> tuple[int, list[str], Iterator[tuple[int, Any]]]:
    """``(line, names, rows)`` of a table whose first row that is not blank (on ``line``) reads as
    the column ``names``, and ``rows`` the ``(line, values)`` after it: where that row is a title
    above the column names ("Triage log, ward 3" in its first cell alone, a report's export), the
    column names are the first row below it that fills more than its first cell, the title and
    the rows of one cell between (a run date, up to :data:`TITLES` in all) warned of, not read.
    ``texts(values)`` is a row's cells as text; ``narrow``: only the title row's columns count (a
    CSV: the title row Excel exports is as wide as the sheet, and a cell past a one-column header
    is rather a delimiter left unquoted). A title-like row right over one that cannot be column
    names (a number in it) is refused, named: a header of one column over rows that fill others
    (pandas' unnamed index before a named column is no title)."""
    if not (names and names[0].strip() and not any(n.strip() for n in names[1:])):
        return line, names, rows
    ahead = []  # the rows read ahead, of one cell each
    for number, values in rows:
        cells = texts(values)
        if not any(c.strip() for c in cells):
            continue
        ahead.append((number, values))
        if not any(c.strip() for c in cells[1:len(names) if narrow else None]):
            if len(ahead) < TITLES:
                continue  # a title's next line, or a table of one column
        elif sum(bool(c.strip()) for c in cells) >= 2 and not any(_number(c) for c in cells):
            titles = [repr(names[0])] + [repr(texts(v)[0].strip()) for _, v in ahead[:-1]]
            warn_once(f"{path}:{line}: {', '.join(titles)} read as {'a title' if len(titles) == 1 else 'titles'} "
                      f"above the column names, which are on line {number}; not read as a record")
            return number, [column_name(c) for c in cells], rows
        elif len(ahead) == 1:
            raise DataError(path, line, None, f"the header, the first row that is not blank, names one column "
                                              f"({names[0]!r}) and the row below holds text in others: a title above "
                                              "the column names? Delete the rows above them")
        break
    return line, names, itertools.chain(ahead, rows)


TITLES = 6  # the most rows of one cell read as a title above a table's column names


def _number(text: str) -> bool:
    """Whether a cell's ``text`` is a number (a record's value, no column's name)."""
    try:
        float(text.replace(",", ""))
    except ValueError:
        return False
    return True
