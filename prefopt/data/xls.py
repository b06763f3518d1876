"""A legacy Excel workbook (``.xls``: Excel 97-2003's binary format, which many hospital systems
still export) read as :mod:`.sheets` reads an ``.xlsx`` one: a header row of column names, then
a record a row, each cell as text (the same text for the same sheet), a row's "line" its row
number in Excel. Needs xlrd (``pip install 'prefopt[excel]'``).

A formula reads as the value Excel saved with it (the format keeps no formula without one); a
failed one's is its error (``#DIV/0!``), which the loaders refuse as a text or a label. The sheet
read is chosen as an ``.xlsx`` workbook's (``--sheet``, else the one sheet in view that holds
data; hidden sheets are not read, with a warning); hidden rows are read, with a warning; a
value merged down over rows is read in each row it covers, with a warning.

Many systems' "Export to Excel" writes a file named ``.xls`` that is no workbook: an HTML table,
Excel 2003's XML Spreadsheet, tab-separated text, an ``.xlsx`` renamed. Each is named, with what
to do, before xlrd is needed."""
from __future__ import annotations

import datetime
from pathlib import Path

from .._deps import require
from .records import DataError
from .sheets import OLE, Sheet, _blank, column_letters, sheet_records

SNIFF = 4096  # bytes looked at to tell what a file named .xls holds
_SAVE = "open it in Excel and save it as Excel Workbook (.xlsx)"


def read_xls(path: Path, sheet: str | None = None):
    """``(row number, record)`` for each row below the header of the workbook's sheet ``sheet``
    (None: the one :func:`.sheets.reading_sheet` names, else its one sheet in view that holds
    data), as :func:`.sheets.read_sheet` yields an ``.xlsx`` workbook's."""
    return sheet_records(path, _sheets(path), sheet, "Excel", "Excel")


def not_a_workbook(path: Path) -> str | None:
    """What a file named ``.xls`` holds where that is not an Excel 97-2003 workbook, with what to
    do; None where it is one (a compound file, as Excel writes one)."""
    with path.open("rb") as f:
        head = f.read(SNIFF)
    if head.startswith(OLE):
        return None
    if head.startswith(b"PK"):
        return "an .xlsx workbook (a zip) named .xls: rename it .xlsx"
    return disguised(head, ".xls") or "not an Excel 97-2003 workbook (nor a file that an \"Export to Excel\" names so)"


def disguised(head: bytes, suffix: str) -> str | None:
    """What a file named as a workbook (``suffix``) whose first bytes are ``head`` holds where it
    is a table of another kind, as systems' "Export to Excel" write them, with what to do; else None."""
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):  # UTF-16 text: its ASCII is enough to tell
        head = head[2:].replace(b"\x00", b"")
    text = head.removeprefix(b"\xef\xbb\xbf").lstrip().lower()
    if b"urn:schemas-microsoft-com:office:spreadsheet" in text or b"progid=\"excel.sheet\"" in text:
        return f"an XML Spreadsheet 2003 file named {suffix}, not a workbook: {_SAVE}"
    if text.startswith((b"<html", b"<!doctype", b"<table", b"<meta", b"<?xml", b"<head", b"<body")) \
            or b"<table" in text:
        return (f"an HTML table named {suffix} (as many systems' \"Export to Excel\" write one), not a workbook: "
                f"{_SAVE}, or export the table as CSV")
    first = text.split(b"\n", 1)[0]
    if b"\t" in first:
        return f"tab-separated text named {suffix}, not a workbook: rename it .tsv"
    if b"," in first or b";" in first:
        return f"comma- or semicolon-separated text named {suffix}, not a workbook: rename it .csv"
    return None


def _sheets(path: Path) -> list[Sheet]:
    """Every sheet of the workbook at ``path``, read whole."""
    if why := not_a_workbook(path):
        raise DataError(path, None, None, why)
    xlrd = require("xlrd", "reading .xls data files")
    try:
        book = xlrd.open_workbook(str(path), formatting_info=True)  # formatting: hidden rows, merged ranges
    except Exception as e:  # xlrd's own errors, and what a damaged compound file makes it raise
        if "encrypted" in str(e).lower():
            raise DataError(path, None, None, "a password-protected workbook: in Excel, save a copy without the "
                            "password as Excel Workbook (.xlsx)") from None
        raise DataError(path, None, None, f"not a readable Excel 97-2003 workbook ({type(e).__name__}: {e})") from None
    try:
        return [_sheet(xlrd, book, ws) for ws in book.sheets()]
    finally:
        book.release_resources()


def _sheet(xlrd, book, ws) -> Sheet:
    """One sheet's rows that are not blank, the rows hidden and the ranges merged over rows."""
    out = Sheet(ws.name, ws.visibility == 0)  # 1: hidden, 2: "very hidden" (only a macro shows it)
    for r in range(ws.nrows):
        values = [_value(xlrd, book, cell) for cell in ws.row(r)]
        while values and _blank(values[-1:]):
            values.pop()
        if values and not _blank(values):
            out.rows.append((r + 1, tuple(values)))
            info = ws.rowinfo_map.get(r)
            if info is not None and info.hidden:
                out.marks.hidden.append(r + 1)
    for first, end, column, column_end in sorted(ws.merged_cells, key=lambda m: (m[0], m[2])):
        if end - first > 1:  # over rows (xlrd's ranges stop before their end row and column)
            ref = f"{column_letters(column)}{first + 1}:{column_letters(column_end - 1)}{end}"
            out.marks.merged.append((ref, column, first + 1, end))
    return out


def _value(xlrd, book, cell):
    """A cell's value as :func:`.sheets.cell_text` takes it: a date or time where Excel's format
    shows one, an error value as Excel shows it."""
    kind, value = cell.ctype, cell.value
    if kind in (xlrd.XL_CELL_EMPTY, xlrd.XL_CELL_BLANK):
        return None
    if kind == xlrd.XL_CELL_BOOLEAN:
        return bool(value)
    if kind == xlrd.XL_CELL_ERROR:
        return xlrd.error_text_from_code.get(value, "#ERROR!")
    if kind == xlrd.XL_CELL_DATE:
        try:
            y, m, d, hh, mm, ss = xlrd.xldate_as_tuple(value, book.datemode)
        except xlrd.xldate.XLDateError:  # (a negative date, or one before 1900's March in Excel's count)
            return value
        return datetime.time(hh, mm, ss) if y == 0 else datetime.datetime(y, m, d, hh, mm, ss)
    return value
