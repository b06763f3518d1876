"""A table written as a spreadsheet of one sheet: an Excel workbook (``.xlsx``, needs openpyxl)
or an OpenDocument spreadsheet (``.ods``, LibreOffice Calc's own; the standard library writes
it). ``prefopt predict``'s answers to a workbook of records are written as one of its kind;
:mod:`prefopt.data.sheets` and :mod:`prefopt.data.ods` read them."""
from __future__ import annotations

import json
import math
import re
import warnings
import zipfile
from pathlib import Path
from typing import NamedTuple
from xml.sax.saxutils import escape, quoteattr

from .._deps import require
from ..fileio import atomic_path
from .ods import MIMETYPE as ODS_MIMETYPE
from .ods import NAMESPACES as ODS_NAMESPACES
from .sheets import _some, column_letters

CELL_LIMIT = 32767  # characters an Excel cell holds
ILLEGAL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")  # characters XML 1.0, and so a workbook, cannot hold


def write_sheet(path: Path, rows: list[dict], title: str = "Sheet1", layout: Layout | None = None) -> None:
    """``rows`` as a workbook of one sheet at ``path`` (``.ods``: an OpenDocument spreadsheet,
    else an Excel workbook), written atomically: a header of every row's columns in first-seen
    order (frozen, so it stays in view), then a row each. Text stays text,
    numbers and TRUE/FALSE are the spreadsheet's own (a confidence column sorts as numbers),
    anything else is written as JSON text, as in a CSV. A control character XML forbids (a
    model's output may hold one) is written as U+FFFD, with a warning naming the cells; in an
    Excel workbook a text over the 32,767 characters a cell holds is a ValueError naming its row
    and column. ``layout``: an Excel workbook's column widths, wrapped columns and a column of
    whole numbers (:class:`Layout`; an OpenDocument one is written plain)."""
    ods = Path(path).suffix.lower() == ".ods"
    openpyxl = None if ods else require("openpyxl", "writing .xlsx files")
    columns = list(dict.fromkeys(k for r in rows for k in r))
    table = [[_cell(r.get(c)) for c in columns] for r in rows]
    replaced = []
    for n, values in enumerate(table, 2):  # each checked before the sheet is begun
        for i, v in enumerate(values):
            if not isinstance(v, str):
                continue
            where = f"{column_letters(i)}{n}"
            if len(v) > CELL_LIMIT and not ods:
                raise ValueError(f"{path}: row {n}, column {columns[i]!r} ({where}): {len(v)} characters, over the "
                                 f"{CELL_LIMIT} an Excel cell holds; write the table as CSV or JSONL instead")
            if ILLEGAL.search(v):
                values[i] = ILLEGAL.sub("\ufffd", v)
                replaced.append(f"{where} ({columns[i]})")
    if replaced:
        warnings.warn(f"{path}: {_some(replaced, 'cell')}: control characters a workbook cannot hold, written as "
                      "U+FFFD; CSV and JSONL keep them", stacklevel=2)
    if ods:
        _save_ods(path, title, [columns, *table])
        return
    book = openpyxl.Workbook(write_only=True)
    sheet = book.create_sheet(title)
    sheet.freeze_panes = "A2"
    if layout is not None:
        table = _laid_out(openpyxl, sheet, columns, table, layout)
    for values in [columns, *table]:
        sheet.append(values)
    with atomic_path(path) as tmp:
        book.save(tmp)


class Layout(NamedTuple):
    """How an Excel workbook's columns are shown, for people who fill it in (a rating sheet):
    ``widths`` in characters by column name, ``wrap``: the columns whose long texts wrap within
    their width (top-aligned), ``whole``: ``(column, lowest, highest)``, a column Excel accepts
    only whole numbers in, or blanks, saying so where one types anything else."""

    widths: dict[str, float]
    wrap: tuple[str, ...] = ()
    whole: tuple[str, int, int] | None = None


def _laid_out(openpyxl, sheet, columns: list[str], table: list[list], layout: Layout) -> list[list]:
    """``table``'s rows with ``layout``'s wrapped cells, its widths and its check of whole numbers
    set on the write-only ``sheet``."""
    from openpyxl.cell import WriteOnlyCell
    from openpyxl.styles import Alignment
    from openpyxl.worksheet.datavalidation import DataValidation

    for name, width in layout.widths.items():
        if name in columns:
            sheet.column_dimensions[column_letters(columns.index(name))].width = width
    if layout.whole and layout.whole[0] in columns and table:
        name, low, high = layout.whole
        letter = column_letters(columns.index(name))
        check = DataValidation(type="whole", operator="between", formula1=str(low), formula2=str(high),
                               allow_blank=True, showErrorMessage=True, errorTitle=name,
                               error=f"a whole number from {low} to {high}, or blank")
        check.add(f"{letter}2:{letter}{len(table) + 1}")
        sheet.data_validations.append(check)
    wrapped = [columns.index(c) for c in layout.wrap if c in columns]
    if not wrapped:
        return table
    top = Alignment(wrap_text=True, vertical="top")

    def cell(v):
        c = WriteOnlyCell(sheet, value=v)
        c.alignment = top
        return c

    return [[cell(v) if i in wrapped else v for i, v in enumerate(values)] for values in table]


def _cell(v):
    """``v`` as a cell's value for :func:`write_sheet`: a number that is not finite as its text."""
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if v is None or isinstance(v, (str, bool, int, float)):
        return v
    return json.dumps(v, ensure_ascii=False)


_MANIFEST = ('<?xml version="1.0" encoding="UTF-8"?>\n<manifest:manifest xmlns:manifest="urn:oasis:names:tc:'
             'opendocument:xmlns:manifest:1.0" manifest:version="1.3"><manifest:file-entry manifest:full-path="/" '
             f'manifest:media-type="{ODS_MIMETYPE}"/><manifest:file-entry manifest:full-path="content.xml" '
             'manifest:media-type="text/xml"/><manifest:file-entry manifest:full-path="settings.xml" '
             'manifest:media-type="text/xml"/></manifest:manifest>')
_CONFIG = "urn:oasis:names:tc:opendocument:xmlns:config:1.0"
# a sheet's view as Calc keeps it in settings.xml: its first row frozen (a split of the rows, "vertical" in Calc's
# terms, at one row; the pane below it active and scrolled to its top)
_FROZEN_HEADER = (("VerticalSplitMode", "short", 2), ("VerticalSplitPosition", "int", 1),
                  ("ActiveSplitRange", "short", 2), ("PositionTop", "int", 0), ("PositionBottom", "int", 1))


def _save_ods(path: Path, title: str, table: list[list]) -> None:
    """``table`` (the header row first) as the one sheet ``title`` of an OpenDocument spreadsheet
    at ``path``, written atomically: the ``mimetype`` member first and stored, as the format asks."""
    spaces = " ".join(f"xmlns:{k}={quoteattr(v)}" for k, v in ODS_NAMESPACES.items())
    rows = "".join("<table:table-row>" + "".join(_ods_cell(v) for v in values) + "</table:table-row>"
                   for values in table)
    content = (f'<?xml version="1.0" encoding="UTF-8"?>\n<office:document-content {spaces} office:version="1.3">'
               f"<office:body><office:spreadsheet><table:table table:name={quoteattr(title)}>"
               f'<table:table-column table:number-columns-repeated="{max(1, len(table[0]))}"/>{rows}'
               "</table:table></office:spreadsheet></office:body></office:document-content>")
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w") as z:
        z.writestr(zipfile.ZipInfo("mimetype"), ODS_MIMETYPE)  # (a ZipInfo's own: stored, not compressed)
        z.writestr("META-INF/manifest.xml", _MANIFEST, zipfile.ZIP_DEFLATED)
        z.writestr("content.xml", content, zipfile.ZIP_DEFLATED)
        z.writestr("settings.xml", _ods_settings(title), zipfile.ZIP_DEFLATED)


def _ods_settings(title: str) -> str:
    """The settings part of an OpenDocument spreadsheet whose sheet ``title`` has its header row
    frozen, so that it stays in view as Calc scrolls."""
    items = "".join(f'<config:config-item config:name="{name}" config:type="{kind}">{value}</config:config-item>'
                    for name, kind, value in _FROZEN_HEADER)
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<office:document-settings xmlns:office='
            f'{quoteattr(ODS_NAMESPACES["office"])} xmlns:config={quoteattr(_CONFIG)} office:version="1.3">'
            '<office:settings><config:config-item-set config:name="ooo:view-settings"><config:config-item-map-indexed '
            'config:name="Views"><config:config-item-map-entry><config:config-item-map-named config:name="Tables">'
            f"<config:config-item-map-entry config:name={quoteattr(title)}>{items}</config:config-item-map-entry>"
            "</config:config-item-map-named></config:config-item-map-entry></config:config-item-map-indexed>"
            "</config:config-item-set></office:settings></office:document-settings>")


def _ods_cell(v) -> str:
    """A ``table:table-cell`` holding ``v`` (:func:`_cell`'s value) as Calc writes one: the value
    in attributes, what the cell shows in its paragraphs."""
    if v is None or v == "":
        return "<table:table-cell/>"
    if isinstance(v, bool):
        return (f'<table:table-cell office:value-type="boolean" office:boolean-value="{str(v).lower()}" calcext:value-'
                f'type="boolean"><text:p>{str(v).upper()}</text:p></table:table-cell>')
    if isinstance(v, (int, float)):
        return (f'<table:table-cell office:value-type="float" office:value="{v!r}" calcext:value-type="float"><text:p>'
                f"{v!r}</text:p></table:table-cell>")
    return ('<table:table-cell office:value-type="string" calcext:value-type="string">'
            + "".join(f"<text:p>{_ods_line(line)}</text:p>" for line in v.split("\n")) + "</table:table-cell>")


def _ods_line(line: str) -> str:
    """A line of a text as a paragraph's content: a space that XML would fold into the one before
    (or a paragraph's first) as ``<text:s/>``, a tab as ``<text:tab/>``, a carriage return as a
    character reference (a reader's XML parser turns a bare one into a line feed)."""
    def spaces(m: re.Match) -> str:
        extra = len(m[0]) - (m.start() > 0)  # the first of a run within the line stays a plain space
        return (" " if m.start() > 0 else "") + (f'<text:s text:c="{extra}"/>' if extra > 1 else "<text:s/>" * extra)

    return re.sub(r" +", spaces, escape(line)).replace("\t", "<text:tab/>").replace("\r", "&#13;")
