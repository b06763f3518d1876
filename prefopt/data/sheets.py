"""An Excel workbook (``.xlsx``, ``.xlsm``) read as a CSV file of its one sheet would be: a header
row of column names, then a record a row, each cell as text, a row's "line" its row number in
Excel (``notes.xlsx:14`` is row 14 there). Needs openpyxl (``pip install 'prefopt[excel]'``).

A cell's text is what a "CSV UTF-8" export of the sheet would hold, near enough: numbers without
a trailing ``.0`` where whole (a label column of 1s and 0s), TRUE/FALSE, dates and times as ISO
text (a date alone where the time is midnight), an empty cell as empty text, a number to Excel's
15 significant digits, Excel's ``_xHHHH_`` escapes as their characters.

The sheet read is the one named (``sheet=``, ``--sheet``, :func:`reading_sheet`), else the one
in view that holds data: a workbook with data on several visible sheets is refused (which one is
the training data, and which the test set?), naming them, and sheets hidden in Excel are not
read, with a warning. What the sheet shows and its values may differ, and then the read says so:
rows hidden (by hand or by a filter) are read, as the CSV export writes them, with a warning; a
formula whose value was never saved (a workbook written by a program that does not calculate,
such as openpyxl) would read as an empty cell, and is refused; a value merged down over rows (a
label for a block of rows) is read in each row it covers, as the sheet shows it, and a table's
total row is not read, each with a warning.

Writing one: :mod:`prefopt.data.sheet_writer`."""
from __future__ import annotations

import datetime
import posixpath
import re
import zipfile
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from contextvars import ContextVar
from pathlib import Path
from typing import NamedTuple
from xml.etree.ElementTree import ParseError, iterparse

from .._context import holding
from .._deps import require
from ..hints import first_few
from .headers import column_name, one_name_each, past_titles, warn_once
from .records import DataError

SHEET: ContextVar[str | None] = ContextVar("sheet", default=None)  # see reading_sheet
SHEET_FLAG: ContextVar[str] = ContextVar("sheet_flag", default="--sheet")  # see naming_sheet_by
_ESCAPED = re.compile(r"_x([0-9A-Fa-f]{4})_")  # a character as Excel escapes it in a text (ST_Xstring)
UNHIDE = {"Excel": "in Excel, right-click a sheet's tab > Unhide", "LibreOffice": "in LibreOffice Calc, Sheet > Show "
          "Sheet"}  # how each application shows a hidden sheet again
OLE = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"  # a compound file's first bytes: Excel encrypts a workbook into one


def cell_text(v) -> str:
    """A cell's value as text (see the module's docstring). Text is read as Excel shows it: Excel
    writes a character XML cannot hold as ``_xHHHH_`` (a carriage return, from a note pasted with
    Windows line breaks, as ``_x000D_``) and a literal ``_x`` of that shape as ``_x005F_x...``;
    openpyxl hands both on, and "_x000D_" was trained on as text."""
    if isinstance(v, str):
        return _ESCAPED.sub(lambda m: chr(int(m[1], 16)), v) if "_x" in v else v
    if v is None:
        return ""
    if isinstance(v, bool):
        return "TRUE" if v else "FALSE"
    if isinstance(v, float):  # whole: no ".0"; else Excel's 15 significant digits (0.1*3 shows 0.3, not ...04)
        return str(int(v)) if v.is_integer() else f"{v:.15g}"
    if isinstance(v, datetime.datetime) and v.time() == datetime.time():  # Excel stores a date as a datetime
        return v.date().isoformat()
    if isinstance(v, (datetime.date, datetime.time)):
        return v.isoformat()
    return str(v)


def column_letters(column: int) -> str:
    """A column's letters, as spreadsheets name it (0: A, 25: Z, 26: AA)."""
    out = ""
    column += 1
    while column:
        column, r = divmod(column - 1, 26)
        out = chr(65 + r) + out
    return out


def _blank(values) -> bool:
    return all(v is None or (isinstance(v, str) and not v.strip()) for v in values)


def reading_sheet(name: str | None) -> AbstractContextManager[None]:
    """Within the block, each workbook read reads its sheet ``name`` (``--sheet``; the sheets of
    one workbook that hold training and test data, or records beside a codebook); None: its one
    sheet in view that holds data. A file that is not a workbook is then refused."""
    return holding(SHEET, name.strip() if isinstance(name, str) and name.strip() else None)


def naming_sheet_by(flag: str) -> AbstractContextManager[None]:
    """Within the block, a workbook with several sheets of data says to name one with ``flag``
    (compare's ``--pairs-sheet``, for its pairs; else ``--sheet``)."""
    return holding(SHEET_FLAG, flag)


def sheet_scope(name: str | None):
    """:func:`reading_sheet` where ``name`` is given; else nothing (the block reads the sheet an
    enclosing ``reading_sheet`` names, if any)."""
    return reading_sheet(name) if name else nullcontext()


def read_sheet(path: Path, sheet: str | None = None) -> Iterator[tuple[int, dict | DataError]]:
    """``(row number, record)`` for each row below the header of the workbook's sheet ``sheet``
    (None: the one :func:`reading_sheet` names, else its one sheet in view that holds data);
    rows of blank cells skipped; a header naming a column twice refused, as a CSV's."""
    openpyxl = require("openpyxl", "reading .xlsx data files")
    if _strict(path):
        raise DataError(path, None, None, "a workbook saved as \"Strict Open XML Spreadsheet\", which openpyxl reads "
                        "as one without sheets: in Excel, File > Save As > \"Excel Workbook (.xlsx)\"")
    try:
        book = openpyxl.load_workbook(path, read_only=True, data_only=True)  # data_only: formulas' saved values
    except (zipfile.BadZipFile, KeyError, OSError, ValueError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        from .xls import SNIFF, disguised

        with path.open("rb") as f:
            head = f.read(SNIFF)  # not the zip an .xlsx is: a password-protected workbook, an .xls renamed, a table
        if other := (None if head.startswith(OLE) else disguised(head, path.suffix.lower())):
            raise DataError(path, None, None, other) from None
        why = ("a password-protected workbook (or an Excel 97-2003 workbook renamed: name it .xls, which is read): in "
               "Excel, save a copy without the password as Excel Workbook (.xlsx)") if head.startswith(OLE) else \
            f"{type(e).__name__}: {e}"
        raise DataError(path, None, None, f"not a readable Excel workbook ({why})") from None
    try:
        for ws in book.worksheets:  # the rows the file has, not those its stated dimensions claim: read-only mode
            ws.reset_dimensions()   # trusts those, and a writer that states too few would lose the rest unsaid
        name = sheet or SHEET.get()
        sheet = _named_sheet(path, book.worksheets, name) if name else _the_sheet(path, book.worksheets)
        marks = _marks(path, getattr(sheet, "_worksheet_path", None))
        if marks.unsaved:
            raise unsaved_formulas(path, sheet.title, marks.unsaved, "a workbook written by a program that does not "
                                   "calculate, such as openpyxl", "Excel or LibreOffice")
        rows = enumerate(sheet.iter_rows(min_row=1, values_only=True), 1)  # (row 1 even where it is empty)
        line, header = next(((n, r) for n, r in rows if not _blank(r)), (1, ()))
        yield from _records(path, sheet.title, line, header, rows, marks)
    finally:
        book.close()


class Sheet:
    """A sheet another format's reader read whole (:mod:`.ods`, :mod:`.xls`), as much of openpyxl's
    worksheet as this module asks of one: ``title``, ``sheet_state`` and ``iter_rows(values_only=
    True)``; ``rows``: ``(row number, values)`` of the rows that are not blank, each value one
    :func:`cell_text` takes; ``marks``: what the file says beside the values."""

    def __init__(self, title: str, shown: bool):
        self.title, self.sheet_state = title, "visible" if shown else "hidden"
        self.rows: list[tuple[int, tuple]] = []
        self.marks = Marks([], [], [], [])

    def iter_rows(self, values_only: bool = True):
        return (values for _, values in self.rows)


def sheet_records(path: Path, sheets: list[Sheet], sheet: str | None, app: str, resave: str):
    """``(row number, record)`` for each row below the header of the sheet of ``sheets`` named
    ``sheet`` (None: the one :func:`reading_sheet` names, else the one sheet in view that holds
    data), as :func:`read_sheet` yields an Excel workbook's; ``app``: the application the sheets
    are shown in, ``resave``: where to open and save a file whose formulas have no saved value."""
    name = sheet or SHEET.get()
    found = _named_sheet(path, sheets, name) if name else _the_sheet(path, sheets, app)
    if found.marks.unsaved:
        raise unsaved_formulas(path, found.title, found.marks.unsaved, "a file written by a program that does not "
                               "calculate", resave)
    rows = iter(found.rows)
    line, header = next(rows, (1, ()))
    yield from _records(path, found.title, line, header, rows, found.marks, app)


def unsaved_formulas(path: Path, title: str, cells: list[str], writer: str, resave: str) -> DataError:
    """The error of a sheet whose formulas in ``cells`` have no saved value (each would read as
    empty): ``writer`` says what writes such a file, ``resave`` where to open and save it."""
    return DataError(path, None, None, f"sheet {title!r}, {_some(cells, 'cell')}: "
                     f"{'formulas' if len(cells) > 1 else 'a formula'} with no saved value, read as empty ({writer}); "
                     f"open it in {resave} and save it, which saves each formula's value")


def _strict(path: Path) -> bool:
    """Whether the workbook is Strict Open XML (ISO/IEC 29500 Strict, a choice in Excel's Save As):
    its parts name their kinds in namespaces of their own (``http://purl.oclc.org/ooxml/...``),
    which openpyxl does not know, so it finds no sheet. Not a zip: False (openpyxl says why)."""
    try:
        with zipfile.ZipFile(path) as z:
            for name in ("_rels/.rels", "xl/workbook.xml"):
                if name in z.namelist():
                    with z.open(name) as f:
                        if b"purl.oclc.org/ooxml/" in f.read(4096):
                            return True
    except (zipfile.BadZipFile, OSError):
        pass
    return False


def _named_sheet(path: Path, sheets: list, name: str):
    """The sheet of ``sheets`` called ``name`` (spelled as its tab is, else in any case and spacing)."""
    found = [ws for ws in sheets if ws.title == name] or [
        ws for ws in sheets if column_name(ws.title).casefold() == column_name(name).casefold()]
    if len(found) != 1:
        sheets = ", ".join(repr(ws.title) + ("" if ws.sheet_state == "visible" else " (hidden)")
                           for ws in sheets)
        raise DataError(path, None, None, f"no sheet {name!r} (its sheets: {sheets})" if not found else
                        f"sheet {name!r} is {len(found)} sheets in any case: spell it as its tab does")
    return found[0]


def _the_sheet(path: Path, sheets: list, app: str = "Excel"):
    """The one sheet of ``sheets`` that holds data, of those ``app`` shows; a hidden one that holds
    data is warned of (hidden sheets hold lookup lists and the like, and the sheet in view is the
    one meant)."""
    full = [ws for ws in sheets if any(not _blank(r) for r in ws.iter_rows(values_only=True))]
    shown = [ws for ws in full if ws.sheet_state == "visible"]
    hidden = ", ".join(repr(ws.title) for ws in full if ws.sheet_state != "visible")
    if not shown:
        raise DataError(path, None, None, f"no sheet in view holds data (hidden ones do: {hidden}); unhide the sheet "
                        f"of records ({UNHIDE[app]})" if hidden else
                        "no sheet holds any data")
    if len(shown) > 1:
        raise DataError(path, None, None, f"{len(shown)} sheets hold data ({', '.join(repr(ws.title) for ws in shown)}"
                        f"); name the one to read ({SHEET_FLAG.get()} NAME), "
                        + ("so that the test set is the sheet you mean" if SHEET_FLAG.get() == "--test-sheet"
                           else "so that no other sheet (a test set) is trained on"))
    if hidden:
        warn_once(f"{path}: read sheet {shown[0].title!r}; sheets hidden in {app} ({hidden}) hold data too and are not "
                  "read")
    return shown[0]


def _some(items: list, noun: str | None = None) -> str:
    """``items`` named, the first few of many: ``"cells B2, B3, B4 and 9 more"``."""
    head = first_few([str(i) for i in items], 3)
    return f"{noun}{'s' if len(items) > 1 else ''} {head}" if noun else head


class Marks(NamedTuple):
    """What a sheet's XML says that openpyxl's values do not (:func:`_marks`)."""

    hidden: list[int]  # rows hidden in Excel that hold data
    unsaved: list[str]  # cells whose formula has no saved value
    merged: list[tuple[str, int, int, int]]  # ranges merged over rows: (B2:B6, column index 1, first row 2, last 6)
    totals: list[int]  # a table's total rows


def _marks(path: Path, member: str | None) -> Marks:
    """:class:`Marks` from the sheet's XML (``member`` of the workbook's zip; not there or None:
    nothing found). A formula has no saved value where its ``<v>`` is empty or missing, but for a
    formula's empty text (``t="str"``); such a cell reads as empty. A table's total rows (Table
    Design > Total Row) are the last ``totalsRowCount`` rows of its range, as its definition, a
    part of its own, states them."""
    from openpyxl.utils.cell import range_boundaries

    marks, number, tables = Marks([], [], [], []), 0, []
    with zipfile.ZipFile(path) as z:
        if member not in z.namelist():  # openpyxl's private name for it changed: nothing known
            return marks
        with z.open(member) as f:
            for _, el in _parsed(path, f):
                tag = el.tag.rpartition("}")[2]
                if tag == "c":
                    parts = {k.tag.rpartition("}")[2]: k.text for k in el}
                    if "f" in parts and not parts.get("v") and el.get("t") != "str":
                        marks.unsaved.append(el.get("r") or "?")
                elif tag == "row":
                    number = int(el.get("r") or number + 1)
                    if el.get("hidden") in ("1", "true") and any(len(c) for c in el):
                        marks.hidden.append(number)
                    el.clear()
                elif tag == "tablePart":
                    tables += [v for k, v in el.attrib.items() if k.rpartition("}")[2] == "id"]
                elif tag == "mergeCell":
                    ref = el.get("ref", "")
                    first_column, first, _, last = range_boundaries(ref) if ":" in ref else (0, 0, 0, 0)
                    if last > first:
                        marks.merged.append((ref, first_column - 1, first, last))
        for ref, count in _tables(z, member, tables):
            last = range_boundaries(ref)[3]
            marks.totals.extend(range(last - count + 1, last + 1))
    marks.merged.sort(key=lambda m: (m[2], m[1]))  # in reading order
    return marks


def _tables(z: zipfile.ZipFile, member: str, ids: list[str]) -> list[tuple[str, int]]:
    """``(range, total rows)`` of each table of the sheet ``member`` (its ``tablePart`` ids, found
    through the sheet's relationships) that has total rows."""
    rels = posixpath.join(posixpath.dirname(member), "_rels", posixpath.basename(member) + ".rels")
    if not ids or rels not in z.namelist():
        return []
    out = []
    try:
        with z.open(rels) as f:
            targets = {el.get("Id"): el.get("Target", "") for _, el in iterparse(f) if el.tag.endswith("Relationship")}
        for rid in ids:
            target = targets.get(rid, "")
            name = target.lstrip("/") if target.startswith("/") else posixpath.normpath(
                posixpath.join(posixpath.dirname(member), target))
            if name in z.namelist():
                with z.open(name) as f:
                    table = next(iter(iterparse(f, events=("start",))))[1]  # its root element: the attributes needed
                count = int(table.get("totalsRowCount") or 0)
                if count > 0 and ":" in table.get("ref", ""):
                    out.append((table.get("ref"), count))
    except (ParseError, ValueError, StopIteration):  # a part that does not parse: its tables unknown, as openpyxl's
        return []
    return out


def _as_shown(path: Path, title: str, marks: Marks, line: int, rows, app: str = "Excel"):
    """``rows`` below the header (on row ``line``) as the sheet shows them, each difference from
    its CSV export warned of: a value merged down over rows read in each row it covers, a table's
    totals row left out; hidden rows read as the export writes them, and named."""
    hidden = [n for n in marks.hidden if n > line]
    if hidden:
        warn_once(f"{path}: sheet {title!r}: {_some(hidden, 'row')}, hidden in {app} (by hand or by a filter), read "
                  "like the others, as its CSV export would write them; delete them from the sheet to leave them out")
    merged = [m for m in marks.merged if m[2] > line]  # (a merge in the header, or above it, is left as it is)
    if merged:
        warn_once(f"{path}: sheet {title!r}: {_some([m[0] for m in merged], 'range')} merged over rows: each row it "
                  "covers read with its value, as the sheet shows it (its CSV export leaves all but the first empty)")
    totals = {n for n in marks.totals if n > line}
    if totals:
        warn_once(f"{path}: sheet {title!r}: {_some(sorted(totals), 'row')}, an Excel table's total row, not read")
    return ((n, values) for n, values in _filled_down(rows, merged) if n not in totals)


def _filled_down(rows, merged: list[tuple[str, int, int, int]]):
    """``rows`` (``(number, values)``) with each range ``merged`` over rows read as its first cell's
    value in each row it covers, in its first column (the value Excel shows there)."""
    starts: dict[int, list[tuple[int, int]]] = {}
    for _, column, first, last in merged:
        starts.setdefault(first, []).append((column, last))
    active: list[tuple[int, int, object]] = []  # (column, last row, value) of the ranges over this row
    for number, values in rows:
        active = [a for a in active if a[1] >= number]
        if active:
            values = list(values) + [None] * (1 + max(a[0] for a in active) - len(values))
            for column, _, value in active:
                values[column] = value
        for column, last in starts.get(number, ()):
            active.append((column, last, values[column] if column < len(values) else None))
        yield number, tuple(values)


def _parsed(path: Path, f):
    """``iterparse(f)``; XML that does not parse is a :class:`DataError` of ``path``."""
    try:
        yield from iterparse(f)
    except ParseError as e:
        raise DataError(path, None, None, f"not a readable Excel workbook (a sheet's XML: {e})") from None


def _texts(values) -> list[str]:
    """A row's cells as text (:func:`cell_text`)."""
    return [cell_text(v) for v in values]


def _records(path: Path, title: str, line: int, header, rows, marks: Marks, app: str = "Excel"):
    """The rows below the sheet's first row that is not blank (``header``, on row ``line``) as
    records of the columns it names, or the row below title rows above the column names
    (:func:`past_titles`), as the sheet shows them (:func:`_as_shown`)."""
    line, names, rows = past_titles(path, line, [column_name(text) for text in _texts(header)], rows, _texts)
    one_name_each(path, names, line)
    rows = _as_shown(path, title, marks, line, rows, app)
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
