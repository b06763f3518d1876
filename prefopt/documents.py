"""A document given as a prompt (``generate --prompt @note.docx``, chat's ``/file``) as its
text: a Word document (``.docx``) or a LibreOffice Writer one (``.odt``), read with the standard
library, their paragraphs a line each, a table's rows a line each with its cells between tabs,
a list's items a line each; headers, footers, comments, footnotes and text deleted or moved
away under tracked changes left out (a note's letterhead and a reviewer's remarks are not the
note). A PDF's text is read through pypdf (the ``pdf`` extra), page by page, as it stands on
the page (a letterhead or page number printed on each page is in it); one with no text (a scan)
or a password is named. Other files are read as UTF-8 text; a format that is not text (Word's
old ``.doc``, ``.rtf``) is named with how to save it as one that is."""
from __future__ import annotations

import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple
from xml.etree.ElementTree import ParseError, parse

from ._deps import require

W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"
TEXT_NS = "{urn:oasis:names:tc:opendocument:xmlns:text:1.0}"
TABLE_NS = "{urn:oasis:names:tc:opendocument:xmlns:table:1.0}"
OFFICE_NS = "{urn:oasis:names:tc:opendocument:xmlns:office:1.0}"
SAVE_AS_TEXT = "save it as .docx, .odt or plain text (.txt), or paste its text"
NOT_TEXT = {".doc": "a Word 97-2003 document", ".rtf": "a Rich Text document", ".pages": "a Pages document"}
DOCUMENTS = (".docx", ".docm", ".odt", ".pdf", *NOT_TEXT)  # the suffixes document_text reads (or names as not text)


class _Layout(NamedTuple):
    """Where a format keeps its text: the zip member and the body's path in it; the tags of
    paragraphs (read by ``text``), of elements that hold blocks (lists, content controls), of a
    table, and its rows (``rows(table)``) and cells."""

    part: str
    body: str
    paragraphs: tuple[str, ...]
    text: Callable
    containers: tuple[str, ...]
    table: str
    rows: Callable
    cell: str


def document_text(path: Path) -> str:
    """The text of the document at ``path`` (see the module's docstring); a ``.docx`` or ``.odt``
    that is not one, or is damaged, is a ValueError that says so."""
    suffix = path.suffix.lower()
    if suffix in NOT_TEXT:
        raise ValueError(f"{path}: {NOT_TEXT[suffix]}, not text a model reads; {SAVE_AS_TEXT}")
    if suffix == ".pdf":
        return _pdf_text(path)
    layout = _DOCX if suffix in (".docx", ".docm") else _odt()
    try:
        with zipfile.ZipFile(path) as z, z.open(layout.part) as f:
            body = parse(f).getroot().find(layout.body)
    except (zipfile.BadZipFile, KeyError, ParseError) as e:
        raise ValueError(f"{path}: not a readable {suffix} document ({type(e).__name__}: {e}); {SAVE_AS_TEXT}") \
            from None
    return "\n".join(_blocks(body, layout)) if body is not None else ""


def _pdf_text(path: Path) -> str:
    """The text of the PDF at ``path``, its pages' text in order (pypdf's reading of where each
    piece of text stands), a blank line between pages; a PDF pypdf cannot read, one locked by a
    password and one without text (a scanned letter: its pages are pictures) are ValueErrors
    that say what to do."""
    pypdf = require("pypdf", "reading a PDF's text")
    try:
        reader = pypdf.PdfReader(path)
        if reader.is_encrypted and not reader.decrypt(""):  # (a PDF may be locked against editing alone)
            raise ValueError(f"{path}: a PDF locked with a password; open it, print it to PDF or save a copy "
                             "without the password, or paste its text")
        pages = [page.extract_text() for page in reader.pages]
    except pypdf.errors.DependencyError as e:  # AES encryption needs the cryptography package
        raise ValueError(f"{path}: an encrypted PDF ({e}); save a copy without encryption, or paste its text") \
            from None
    except pypdf.errors.PyPdfError as e:
        raise ValueError(f"{path}: not a readable PDF ({type(e).__name__}: {e}); {SAVE_AS_TEXT}") from None
    text = "\n\n".join(page.strip("\n") for page in pages if page.strip())
    if not text:
        raise ValueError(f"{path}: a PDF with no text in it ({len(pages)} page{'s' if len(pages) != 1 else ''}: a "
                         "scan, whose pages are pictures?); run text recognition (OCR) on it and save the text, or "
                         "type the note")
    return text


def _blocks(el, layout: _Layout) -> list[str]:
    """The lines of a body, a table cell or a block's container: each paragraph, each table row
    (its cells' lines joined by spaces, the cells by tabs)."""
    lines: list[str] = []
    for child in el:
        if child.tag in layout.paragraphs:
            lines.append(layout.text(child))
        elif child.tag == layout.table:
            for row in layout.rows(child):
                lines.append("\t".join(" ".join(_blocks(cell, layout)) for cell in row.findall(layout.cell)))
        elif child.tag in layout.containers:
            lines += _blocks(child, layout)
    return lines


def _docx_runs(p) -> str:
    """A paragraph's text: ``w:t`` in runs (inserted ones, hyperlinks, fields' results too), tabs
    and breaks as characters; text deleted or moved away under tracked changes (``w:del``,
    ``w:moveFrom``) and field codes (``w:instrText``) not."""
    out: list[str] = []

    def walk(el) -> None:
        for child in el:
            tag = child.tag
            if tag in (f"{W}del", f"{W}moveFrom"):
                continue
            if tag == f"{W}t":
                out.append(child.text or "")
            elif tag == f"{W}tab":
                out.append("\t")
            elif tag in (f"{W}br", f"{W}cr"):
                out.append("\n")
            elif tag == f"{W}noBreakHyphen":
                out.append("-")
            else:
                walk(child)

    walk(p)
    return "".join(out)


_DOCX = _Layout("word/document.xml", f"{W}body", (f"{W}p",), _docx_runs,
                (f"{W}sdt", f"{W}sdtContent", f"{W}customXml"),  # content controls around blocks
                f"{W}tbl", lambda table: table.findall(f"{W}tr"), f"{W}tc")


def _odt() -> _Layout:
    """A Writer document's layout: headings, paragraphs, lists, sections, tables (their rows in
    groups too), its paragraphs read as a Calc cell's (:func:`prefopt.data.ods.inline_text`)."""
    from .data.ods import inline_text

    return _Layout("content.xml", f"{OFFICE_NS}body/{OFFICE_NS}text", (f"{TEXT_NS}p", f"{TEXT_NS}h"), inline_text,
                   (f"{TEXT_NS}list", f"{TEXT_NS}list-item", f"{TEXT_NS}section", f"{TEXT_NS}list-header"),
                   f"{TABLE_NS}table", _odt_rows, f"{TABLE_NS}table-cell")


def _odt_rows(table):
    """A Writer table's own rows, those in row groups (header rows, a group) too, not those of a
    table inside one of its cells."""
    for child in table:
        if child.tag == f"{TABLE_NS}table-row":
            yield child
        elif child.tag in (f"{TABLE_NS}table-header-rows", f"{TABLE_NS}table-rows", f"{TABLE_NS}table-row-group"):
            yield from _odt_rows(child)
