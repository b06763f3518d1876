"""A data file's bytes as text: its compression (``train.jsonl.gz``), a byte-order mark, the
encoding named (``--encoding``, :func:`reading_encoding`), and the error that places a byte that
is not text in it by line and column, with how to name the encoding instead."""
from __future__ import annotations

import bz2
import codecs
import contextlib
import gzip
import lzma
from contextlib import AbstractContextManager
from contextvars import ContextVar
from pathlib import Path

from .._context import holding
from .records import DataError

# A text format's file compressed as a whole (``train.jsonl.gz``, ``notes.csv.xz``): read through
# the standard library's decompressors.
COMPRESSIONS = {".gz": gzip, ".bz2": bz2, ".xz": lzma}


def compression(path: str | Path):
    """The decompressor a data file's name asks for (``train.jsonl.gz``: gzip), or None."""
    return COMPRESSIONS.get(Path(path).suffix.lower())


def data_suffix(path: str | Path) -> str:
    """The suffix that names a data file's format, lower case: ``.jsonl`` for ``train.jsonl`` and
    for ``train.jsonl.gz``; a compressed file's is the one before its compression's."""
    suffixes = [s.lower() for s in Path(path).suffixes]
    if len(suffixes) > 1 and suffixes[-1] in COMPRESSIONS:
        return suffixes[-2]
    return suffixes[-1] if suffixes else ""


BYTE_ORDER_MARKS = {b"\xef\xbb\xbf": "utf-8", b"\xff\xfe": "utf-16-le", b"\xfe\xff": "utf-16-be"}


class EncodingError(DataError):
    """A file whose bytes are not text in the encoding it was read with (at ``line``): ``detail``
    says where, and how to save it as UTF-8; with ``flag``, the reason also says how to name the
    encoding instead (:meth:`naming`), and ``as_cp1252``, what the line reads as cp1252."""

    def __init__(self, path, line: int, detail: str, flag: str | None = None, as_cp1252: str = ""):
        self.detail, self.as_cp1252, self.line = detail, as_cp1252, line
        super().__init__(path, line, None, self.naming(flag) if flag else detail)

    def naming(self, flag: str) -> str:
        """The reason, with ``flag`` as the way to name the file's encoding."""
        seen = f"; as cp1252, line {self.line} reads {self.as_cp1252}" if self.as_cp1252 else ""
        return (f"{self.detail}, or name the encoding it was saved in ({flag} for Excel's CSV on Western-European "
                f"Windows{seen})")


ENCODING: ContextVar[str] = ContextVar("encoding", default="utf-8")  # see reading_encoding
# how the caller names a data file's encoding, for read_rows' errors (see naming_encoding_by)
NAMED_BY: ContextVar[str | None] = ContextVar("named_by", default="encoding='cp1252'")


def checked_encoding(name: str) -> str:
    """``name``, where it is an encoding Python knows (``utf-8``, ``cp1252``, ``latin-1``); else a
    ValueError that says so."""
    try:
        codecs.lookup(name)
    except (LookupError, TypeError):
        raise ValueError(f"encoding {name!r}: not one Python knows (utf-8, cp1252, latin-1, utf-16, ...: "
                         "https://docs.python.org/3/library/codecs.html#standard-encodings)") from None
    return name


def is_utf8(name: str) -> bool:
    """Whether the encoding ``name`` (an encoding Python knows) is UTF-8, by any of its names
    (``utf8``, ``UTF_8``); ``utf-8-sig``, which reads a byte-order mark itself, is not."""
    return codecs.lookup(name).name == "utf-8"


def reading_encoding(name: str) -> AbstractContextManager[None]:
    """Within the block, each text data file (CSV, TSV, JSON, JSONL) read without an encoding of
    its own is read as ``name`` (``--encoding``: Excel's CSV on Windows is in the machine's code
    page, cp1252 in Western Europe); else UTF-8."""
    return holding(ENCODING, checked_encoding(name))


def naming_encoding_by(flag: str | None) -> AbstractContextManager[None]:
    """Within the block, a data file's encoding error (:func:`~.readers.read_rows`) says to name the
    encoding as ``flag`` does (``--encoding cp1252``; Python's ``encoding='cp1252'`` outside any
    block); None: the program has no way to, and the error says to save the file as UTF-8 alone."""
    return holding(NAMED_BY, flag)


def encoding_scope(name: str | None):
    """:func:`reading_encoding` where ``name`` is given; else nothing (an enclosing one's, if any)."""
    return reading_encoding(name) if name else contextlib.nullcontext()


def read_text(path: Path, encoding: str | None = None) -> str:
    """The file's text in ``encoding`` (None: the one :func:`reading_encoding` names, else UTF-8).
    A UTF-8 byte-order mark (Excel's "CSV UTF-8") is dropped, a UTF-16 one read as UTF-16 where
    UTF-8 was asked for, and bytes that are not valid in ``encoding`` are an
    :class:`EncodingError` at their line and column (with the line as cp1252 reads it, where
    UTF-8 was asked for). A file compressed as a whole (:data:`COMPRESSIONS`) is decompressed first."""
    data = read_bytes(path)
    encoding = encoding or ENCODING.get()
    if is_utf8(encoding):
        # the mark dropped here, not by the codec (whose error positions would then be off by its bytes);
        # UTF-16 with its byte-order mark: Excel's "Unicode Text", PowerShell's Out-File; unmistakable
        mark = next((m for m in BYTE_ORDER_MARKS if data.startswith(m)), b"")
        data, encoding = data[len(mark):], BYTE_ORDER_MARKS.get(mark, "utf-8")
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as e:
        before = data[:e.start].decode(encoding, errors="replace")  # (in characters: UTF-16's are two bytes)
        before = before.replace("\r\n", "\n").replace("\r", "\n")  # a lone CR ends a line too
        line, column = before.count("\n") + 1, len(before) - before.rfind("\n")
        sheet = ' (in Excel: Save As "CSV UTF-8"; or pass the .xlsx workbook itself)' \
            if data_suffix(path) in (".csv", ".tsv") else ""  # Excel's plain "CSV" is the machine's code page
        name = encoding.removesuffix("-le").removesuffix("-be")
        raise EncodingError(path, line, f"not {name} text (byte {data[e.start]:#04x} at column {column}); save the "
                                        f"file as UTF-8{sheet}",
                            as_cp1252=_as_cp1252(data, e.start) if name == "utf-8" else "") from None


def _as_cp1252(data: bytes, at: int) -> str:
    """``data``'s text about byte ``at`` (30 bytes either side, within its line) as cp1252 reads it,
    where it does (Excel's CSV on a Western-European Windows machine: é is 0xe9, ° 0xb0): what
    ``--encoding cp1252`` would read; else ''."""
    line_start, line_end = data.rfind(b"\n", 0, at) + 1, data.find(b"\n", at)
    line_end = line_end if line_end >= 0 else len(data)
    start, end = max(line_start, at - 30), min(line_end, at + 30)
    try:
        text = data[start:end].decode("cp1252").strip()
    except UnicodeDecodeError:
        return ""
    return f"{'...' * (start > line_start)}{text!r}{'...' * (end < line_end)}"


def read_bytes(path: Path) -> bytes:
    """The file's bytes, decompressed where its name ends in one of :data:`COMPRESSIONS`; a file
    that does not decompress is a :class:`DataError` that says so."""
    how = compression(path)
    if how is None:
        return path.read_bytes()
    try:
        return how.decompress(path.read_bytes())
    except (OSError, EOFError, ValueError, lzma.LZMAError) as e:
        raise DataError(path, None, None, f"not a readable {path.suffix} file ({e})") from None
