"""A table written as an Excel workbook of one sheet (``prefopt predict``'s answers to a
workbook of records: :mod:`prefopt.data.sheets` reads one). Needs openpyxl."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

from .._deps import require
from ..fileio import atomic_path
from .sheets import _some

CELL_LIMIT = 32767  # characters an Excel cell holds


def write_sheet(path: Path, rows: list[dict], title: str = "Sheet1") -> None:
    """``rows`` as a workbook of one sheet at ``path``, written atomically: a header of every
    row's columns in first-seen order (frozen, so it stays in view), then a row each. Text stays
    text, numbers and TRUE/FALSE are Excel's own (a confidence column sorts as numbers), anything
    else is written as JSON text, as in a CSV. A control character XML forbids (a model's output
    may hold one) is written as U+FFFD, with a warning naming the cells; a text over the 32,767
    characters an Excel cell holds is a ValueError naming its row and column."""
    openpyxl = require("openpyxl", "writing .xlsx files")
    from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE
    from openpyxl.utils import get_column_letter

    columns = list(dict.fromkeys(k for r in rows for k in r))
    table = [[_cell(r.get(c)) for c in columns] for r in rows]
    replaced = []
    for n, values in enumerate(table, 2):  # each checked before the sheet is begun
        for i, v in enumerate(values):
            if not isinstance(v, str):
                continue
            where = f"{get_column_letter(i + 1)}{n}"
            if len(v) > CELL_LIMIT:
                raise ValueError(f"{path}: row {n}, column {columns[i]!r} ({where}): {len(v)} characters, over the "
                                 f"{CELL_LIMIT} an Excel cell holds; write the table as CSV or JSONL instead")
            if ILLEGAL_CHARACTERS_RE.search(v):
                values[i] = ILLEGAL_CHARACTERS_RE.sub("\ufffd", v)
                replaced.append(f"{where} ({columns[i]})")
    if replaced:
        warnings.warn(f"{path}: {_some(replaced, 'cell')}: control characters a workbook cannot hold, written as "
                      "U+FFFD; CSV and JSONL keep them", stacklevel=2)
    book = openpyxl.Workbook(write_only=True)
    sheet = book.create_sheet(title)
    sheet.freeze_panes = "A2"
    for values in [columns, *table]:
        sheet.append(values)
    with atomic_path(path) as tmp:
        book.save(tmp)


def _cell(v):
    """``v`` as a cell's value for :func:`write_sheet`."""
    if v is None or isinstance(v, (str, bool, int, float)):
        return v
    return json.dumps(v, ensure_ascii=False)
