"""An OpenDocument spreadsheet (``.ods``: LibreOffice Calc's own format) read as
:mod:`.sheets` reads an Excel workbook: a header row of column names, then a record a row, each
cell as text, a row's "line" its row number in Calc. The standard library reads it (its
``content.xml``); nothing more to install.

A cell's text is as an Excel workbook's (:func:`.sheets.cell_text`): a number without a trailing
``.0`` where whole and to 15 significant digits otherwise (a percentage or an amount of money
as the number it is: 25% is 0.25), TRUE/FALSE, a date as ISO text (a date alone at midnight), a
time as ``HH:MM:SS``, a text as it is shown, its paragraphs joined by line breaks (a cell's
comment is not its text). A formula's value is the one Calc saved; a failed one's is its error
(``#DIV/0!``, ``Err:502``), which the loaders refuse as a text or a label; a formula whose value
was never saved (a file written by a program that does not calculate) is refused.

The sheet read is chosen as a workbook's is (``--sheet``, else the one sheet in view that holds
data; sheets hidden in Calc are not read, with a warning); rows hidden (by hand, grouped and
collapsed, or filtered out) are read, with a warning; a value merged down over rows is read in
each row it covers, as the sheet shows it, with a warning."""
from __future__ import annotations

import datetime
import re
import zipfile
from pathlib import Path
from xml.etree.ElementTree import ParseError, iterparse

from .records import SPREADSHEET_ERRORS, DataError
from .sheets import Sheet, _blank, column_letters, sheet_records

APP = "LibreOffice"
MIMETYPE = "application/vnd.oasis.opendocument.spreadsheet"
MAX_ROWS, MAX_COLUMNS = 1 << 20, 1 << 14  # Calc's own limits: a repeat past them is cut there
MAX_SPACES = 1 << 16  # a run of spaces, at most
NAMESPACES = {"office": "urn:oasis:names:tc:opendocument:xmlns:office:1.0",
              "table": "urn:oasis:names:tc:opendocument:xmlns:table:1.0",
              "text": "urn:oasis:names:tc:opendocument:xmlns:text:1.0",
              "style": "urn:oasis:names:tc:opendocument:xmlns:style:1.0",
              "calcext": "urn:org:documentfoundation:names:experimental:calc:xmlns:calcext:1.0"}
_DURATION = re.compile(r"-?P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d*)?)S)?)?")


def _q(name: str) -> str:
    """``"table:table-row"`` as ElementTree names it: ``{urn:...table:1.0}table-row``."""
    prefix, _, local = name.partition(":")
    return f"{{{NAMESPACES[prefix]}}}{local}"


TABLE, ROW, CELL, COVERED = _q("table:table"), _q("table:table-row"), _q("table:table-cell"), \
    _q("table:covered-table-cell")
PARAGRAPHS = (_q("text:p"), _q("text:h"))
SPACE, TAB, BREAK = _q("text:s"), _q("text:tab"), _q("text:line-break")


def read_ods(path: Path, sheet: str | None = None):
    """``(row number, record)`` for each row below the header of the spreadsheet's sheet
    ``sheet`` (None: the one :func:`.sheets.reading_sheet` names, else its one sheet in view that
    holds data), as :func:`.sheets.read_sheet` yields an Excel workbook's."""
    return sheet_records(path, _sheets(path), sheet, APP, "LibreOffice Calc")


def _sheets(path: Path) -> list[Sheet]:
    """Every sheet of the spreadsheet at ``path``, read whole."""
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
            if "META-INF/manifest.xml" in names and b"encryption-data" in z.read("META-INF/manifest.xml"):
                raise DataError(path, None, None, "a password-protected spreadsheet: in LibreOffice Calc, save a copy "
                                "without the password (File > Save As, \"Save with password\" unticked)")
            if "content.xml" not in names:
                kind = z.read("mimetype").decode("ascii", "replace").strip() if "mimetype" in names else ""
                raise DataError(path, None, None, "not a readable OpenDocument spreadsheet (no content.xml"
                                + (f"; a file of {kind}" if kind and kind != MIMETYPE else "") + ")")
            with z.open("content.xml") as f:
                return _read(path, f)
    except (zipfile.BadZipFile, OSError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise DataError(path, None, None,
                        f"not a readable OpenDocument spreadsheet ({type(e).__name__}: {e})") from None


def _read(path: Path, f) -> list[Sheet]:
    """The sheets of ``content.xml`` (the open file ``f``), each row's cells as values."""
    hidden_styles: set[str] = set()
    sheets: list[Sheet] = []
    current: Sheet | None = None
    depth, number, cells = 0, 0, _Runs()  # tables open (1: in a sheet), the row number so far, the row's cells
    try:
        for event, el in iterparse(f, events=("start", "end")):
            if el.tag == TABLE:
                depth += 1 if event == "start" else -1
                if event == "start" and depth == 1:
                    current = Sheet(el.get(_q("table:name"), f"Sheet{len(sheets) + 1}"),
                                    el.get(_q("table:style-name")) not in hidden_styles)
                    number = 0
                elif event == "end" and depth == 0:
                    sheets.append(current)
                    current = None
                    el.clear()
            elif event == "start" or depth > 1:  # (a table within a cell: read as that cell's nothing)
                if el.tag == ROW and depth == 1:
                    cells = _Runs()
            elif current is None:
                if el.tag == _q("style:style") and el.get(_q("style:family")) == "table":
                    props = el.find(_q("style:table-properties"))
                    if props is not None and props.get(_q("table:display")) == "false":
                        hidden_styles.add(el.get(_q("style:name")))
            elif el.tag in (CELL, COVERED):
                _cell(current, el, number + 1, cells)
                el.clear()
            elif el.tag == ROW:
                number = _row(current, el, number, cells)
                el.clear()
    except (ParseError, ValueError) as e:  # (ValueError: a count that is not a number)
        raise DataError(path, None, None, f"not a readable OpenDocument spreadsheet (its content.xml: {e})") from None
    return sheets


def _cell(sheet: Sheet, el, number: int, cells: _Runs) -> None:
    """The cell ``el`` of row ``number`` appended to ``cells`` as a ``(value, count)`` run; a
    formula without a saved value, or a value merged down over rows, noted in ``sheet.marks``."""
    column = cells.width
    count = max(0, min(int(el.get(_q("table:number-columns-repeated")) or 1), MAX_COLUMNS - column))
    value = None if el.tag == COVERED else _value(el)
    if value is _UNSAVED:
        sheet.marks.unsaved.append(f"{column_letters(column)}{number}")
        value = None
    rows = int(el.get(_q("table:number-rows-spanned")) or 1)
    if rows > 1 and el.tag == CELL:
        columns = int(el.get(_q("table:number-columns-spanned")) or 1)
        ref = f"{column_letters(column)}{number}:{column_letters(column + columns - 1)}{number + rows - 1}"
        sheet.marks.merged.append((ref, column, number, number + rows - 1))
    cells.append((value, count))
    cells.width += count


class _Runs(list):
    """A row's cells as ``(value, count)`` runs, as Calc writes equal neighbours once; ``width``:
    the columns they cover so far."""

    width = 0


_UNSAVED = object()  # a formula cell that holds no value


def _value(el):
    """The cell ``el``'s value: a float, bool, date, time or text as :func:`.sheets.cell_text`
    takes them, None where empty, :data:`_UNSAVED` for a formula without a saved value."""
    kind = el.get(_q("office:value-type"))
    text = _text(el)
    formula = el.get(_q("table:formula"))
    if el.get(_q("calcext:value-type")) == "error" or (formula and text and SPREADSHEET_ERRORS.fullmatch(text)):
        return text  # what Calc shows for a failed formula, #DIV/0! or Err:502
    if kind is None:
        return _UNSAVED if formula and not text else text
    if kind in ("float", "percentage", "currency"):
        try:
            return float(el.get(_q("office:value")))
        except (TypeError, ValueError):
            return text
    if kind == "boolean":
        return el.get(_q("office:boolean-value"), "").lower() == "true"
    if kind == "date":
        return _date(el.get(_q("office:date-value"), ""), text)
    if kind == "time":
        return _time(el.get(_q("office:time-value"), ""), text)
    given = el.get(_q("office:string-value"))  # a formula's text result, and a text Calc chose to store so
    return given if given is not None else text or ""


def _date(value: str, text: str | None):
    """``office:date-value`` as a date, or a datetime where it has a time; the cell's text where
    it does not parse (a year before 1)."""
    try:
        return datetime.date.fromisoformat(value) if "T" not in value else datetime.datetime.fromisoformat(value)
    except ValueError:
        return text or value


def _time(value: str, text: str | None):
    """``office:time-value`` (an ISO 8601 duration, ``PT08H30M00S``) as a time of day, or as
    ``HH:MM:SS`` text where it is a day or more (36 hours: ``36:00:00``)."""
    m = _DURATION.fullmatch(value.strip())
    if not m or value.startswith("-"):
        return text or value
    days, hours, minutes, seconds = (float(g or 0) for g in m.groups())
    total = round(((days * 24 + hours) * 60 + minutes) * 60 + seconds, 6)
    if total < 86400:
        return (datetime.datetime.min + datetime.timedelta(seconds=total)).time()
    whole = int(total)
    return f"{whole // 3600:02d}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def _text(el) -> str | None:
    """The text a cell shows: its paragraphs joined by line breaks, Calc's runs of spaces
    (``<text:s text:c="3"/>``), tabs and line breaks within a paragraph as themselves; its
    comment (``office:annotation``) left out. None where it has no paragraph."""
    paragraphs = [inline_text(p) for p in el if p.tag in PARAGRAPHS]
    return "\n".join(paragraphs) if paragraphs else None


def inline_text(el) -> str:
    """A paragraph's (or a span's) text, its spaces, tabs and breaks as the characters they are
    (an OpenDocument spreadsheet's cell, a Writer document's paragraph: :mod:`prefopt.documents`)."""
    out = [el.text or ""]
    for child in el:
        if child.tag == SPACE:  # (a count past any cell's text, a damaged file's, cut)
            out.append(" " * min(int(child.get(_q("text:c")) or 1), MAX_SPACES))
        elif child.tag == TAB:
            out.append("\t")
        elif child.tag == BREAK:
            out.append("\n")
        elif child.tag not in (_q("office:annotation"), _q("text:note")):  # (a comment; a footnote's own text)
            out.append(inline_text(child))  # a span of other formatting, a link
        out.append(child.tail or "")
    return "".join(out)


def _row(sheet: Sheet, el, number: int, cells: _Runs) -> int:
    """The row ``el`` (its cells read into ``cells``), repeated as it says, into ``sheet``: each
    copy numbered on from ``number``; blank ones only counted. Returns the last row's number."""
    repeat = int(el.get(_q("table:number-rows-repeated")) or 1)
    repeat = max(0, min(repeat, MAX_ROWS - number))
    while cells and _blank((cells[-1][0],)):  # the blank cells to the row's end (a thousand, often): no cells
        cells.pop()
    values = tuple(v for v, count in cells for _ in range(count))
    if not values:
        return number + repeat
    hidden = el.get(_q("table:visibility"), "visible") != "visible"  # collapse (hidden, grouped) or filter
    for n in range(number + 1, number + repeat + 1):
        sheet.rows.append((n, values))
        if hidden:
            sheet.marks.hidden.append(n)
    return number + repeat
