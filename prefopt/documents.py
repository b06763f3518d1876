"""A document given as a prompt (``generate --prompt @note.docx``, chat's ``/file``) as its
text: a Word document (``.docx``) or a LibreOffice Writer one (``.odt``), read with the standard
library, their paragraphs a line each, a table's rows a line each with its cells between tabs,
a list's items a line each; headers, footers, comments, footnotes and text deleted or moved
away under tracked changes left out (a note's letterhead and a reviewer's remarks are not the
note). Other files are read as UTF-8 text; a format that is not text (``.pdf``, Word's old
``.doc``, ``.rtf``) is named with how to save it as one that is."""
from __future__ import annotations

import zipfile
from pathlib import Path
from xml.etree.ElementTree import ParseError, parse

W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"
TEXT_NS = "{urn:oasis:names:tc:opendocument:xmlns:text:1.0}"
TABLE_NS = "{urn:oasis:names:tc:opendocument:xmlns:table:1.0}"
OFFICE_NS = "{urn:oasis:names:tc:opendocument:xmlns:office:1.0}"
SAVE_AS_TEXT = "save it as .docx, .odt or plain text (.txt), or paste its text"
NOT_TEXT = {".pdf": "a PDF", ".doc": "a Word 97-2003 document", ".rtf": "a Rich Text document",
            ".pages": "a Pages document"}
DOCUMENTS = (".docx", ".docm", ".odt", *NOT_TEXT)  # the suffixes document_text reads (or names as not text)


def document_text(path: Path) -> str:
    """The text of the document at ``path`` (see the module's docstring); a ``.docx`` or ``.odt``
    that is not one, or is damaged, is a ValueError that says so."""
    suffix = path.suffix.lower()
    if suffix in NOT_TEXT:
        raise ValueError(f"{path}: {NOT_TEXT[suffix]}, not text a model reads; {SAVE_AS_TEXT}")
    try:
        with zipfile.ZipFile(path) as z:
            if suffix in (".docx", ".docm"):
                return _docx(z)
            return _odt(z)
    except (zipfile.BadZipFile, KeyError, ParseError) as e:
        raise ValueError(f"{path}: not a readable {suffix} document ({type(e).__name__}: {e}); {SAVE_AS_TEXT}") \
            from None


def _docx(z: zipfile.ZipFile) -> str:
    """``word/document.xml``'s body: paragraphs (their runs' text, tabs and breaks), tables' rows."""
    with z.open("word/document.xml") as f:
        root = _root(f)
    body = root.find(f"{W}body")
    return "\n".join(_docx_blocks(body)) if body is not None else ""


def _docx_blocks(el) -> list[str]:
    """The lines of a body, a table cell or a content control: each paragraph, each table row."""
    lines: list[str] = []
    for child in el:
        if child.tag == f"{W}p":
            lines.append(_docx_runs(child))
        elif child.tag == f"{W}tbl":
            for row in child.findall(f"{W}tr"):
                lines.append("\t".join(" ".join(_docx_blocks(cell)) for cell in row.findall(f"{W}tc")))
        elif child.tag in (f"{W}sdt", f"{W}sdtContent", f"{W}customXml"):  # a content control around blocks
            lines += _docx_blocks(child)
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


def _odt(z: zipfile.ZipFile) -> str:
    """``content.xml``'s text: headings, paragraphs, list items, tables' rows (as ``.docx``'s)."""
    with z.open("content.xml") as f:
        root = _root(f)
    body = root.find(f"{OFFICE_NS}body/{OFFICE_NS}text")
    return "\n".join(_odt_blocks(body)) if body is not None else ""


def _odt_blocks(el) -> list[str]:
    """The lines of a body, a list, a section or a table cell: as :func:`_docx_blocks`'."""
    from .data.ods import inline_text

    lines: list[str] = []
    for child in el:
        if child.tag in (f"{TEXT_NS}p", f"{TEXT_NS}h"):
            lines.append(inline_text(child))
        elif child.tag in (f"{TEXT_NS}list", f"{TEXT_NS}list-item", f"{TEXT_NS}section", f"{TEXT_NS}list-header"):
            lines += _odt_blocks(child)
        elif child.tag == f"{TABLE_NS}table":
            for row in child.iter(f"{TABLE_NS}table-row"):
                lines.append("\t".join(" ".join(_odt_blocks(cell)) for cell in row.findall(f"{TABLE_NS}table-cell")))
    return lines


def _root(f):
    """The root element of the XML file ``f``."""
    return parse(f).getroot()
