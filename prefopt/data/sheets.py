"""An Excel workbook (``.xlsx``, ``.xlsm``) read as a CSV file of its one sheet would be: a header
row of column names, then a record a row, each cell as text, a row's "line" its row number in
Excel (``notes.xlsx:14`` is row 14 there). Needs openpyxl (``pip install 'prefopt[excel]'``).

A cell's text is what a "CSV UTF-8" export of the sheet would hold, near enough: numbers without
a trailing ``.0`` where whole (a label column of 1s and 0s), TRUE/FALSE, dates and times as ISO
text (a date alone where the time is midnight), an empty cell as empty text. A workbook with data on several sheets is refused (which one
is the training data, and which the test set?), naming them."""
from __future__ import annotations

import datetime
import zipfile
from collections.abc import Iterator
from pathlib import Path

from .._deps import require
from .readers import _one_name_each
from .records import DataError

OLE = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"  # a compound file's first bytes: Excel encrypts a workbook into one


def cell_text(v) -> str:
    """A cell's value as text (see the module's docstring)."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return "TRUE" if v else "FALSE"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    if isinstance(v, datetime.datetime) and v.time() == datetime.time():  # Excel stores a date as a datetime
        return v.date().isoformat()
    if isinstance(v, (datetime.date, datetime.time)):
        return v.isoformat()
    return str(v)


def _blank(values) -> bool:
    return all(v is None or (isinstance(v, str) and not v.strip()) for v in values)


def read_sheet(path: Path) -> Iterator[tuple[int, dict | DataError]]:
    """``(row number, record)`` for each row below the header of the workbook's one sheet that
    holds data; rows of blank cells skipped; a header naming a column twice refused, as a CSV's."""
    openpyxl = require("openpyxl", "reading .xlsx data files")
    try:
        book = openpyxl.load_workbook(path, read_only=True, data_only=True)  # data_only: formulas' saved values
    except (zipfile.BadZipFile, KeyError, OSError, ValueError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        with path.open("rb") as f:
            ole = f.read(8) == OLE  # not the zip an .xlsx is: a password-protected workbook (or an .xls renamed)
        why = ("a password-protected workbook (or an .xls file renamed): in Excel, save a copy without the password "
               "as Excel Workbook (.xlsx)") if ole else f"{type(e).__name__}: {e}"
        raise DataError(path, None, None, f"not a readable Excel workbook ({why})") from None
    try:
        for ws in book.worksheets:  # the rows the file has, not those its stated dimensions claim: read-only mode
            ws.reset_dimensions()   # trusts those, and a writer that states too few would lose the rest unsaid
        sheets = [ws for ws in book.worksheets if any(not _blank(r) for r in ws.iter_rows(values_only=True))]
        if len(sheets) != 1:
            names = ", ".join(repr(ws.title) for ws in sheets)
            raise DataError(path, None, None, "no sheet holds any data" if not sheets else
                            f"{len(sheets)} sheets hold data ({names}); prefopt reads a workbook of one, so that "
                            "no other sheet (a test set) is trained on: save each as its own file (in Excel or "
                            "LibreOffice, File > Save As > \"CSV UTF-8\" saves the sheet on view), or delete the "
                            "others")
        rows = enumerate(sheets[0].iter_rows(min_row=1, values_only=True), 1)  # (row 1 even where it is empty)
        line, header = next(((n, r) for n, r in rows if not _blank(r)), (1, ()))
        yield from _records(path, sheets[0].title, line, [cell_text(v).strip() for v in header], rows)
    finally:
        book.close()


def _records(path: Path, title: str, line: int, names: list[str], rows):
    """The rows below the header (on row ``line``) as records of the named columns."""
    _one_name_each(path, names, line)
    width = max((i + 1 for i, n in enumerate(names) if n), default=0)  # past the last named column: no column
    for number, values in rows:
        if _blank(values):
            continue
        extra = [v for v in values[width:] if v is not None and cell_text(v).strip()]
        if extra:
            yield number, DataError(path, number, None, f"a cell past the header's last column (sheet {title!r}): "
                                                        f"{cell_text(extra[0])!r}")
            continue
        values = tuple(values) + (None,) * (len(names) - len(values))  # a short row's missing cells: empty ones
        yield number, {n: cell_text(v) for n, v in zip(names, values) if n}
