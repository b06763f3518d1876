"""A folder of documents as a task's records (``prefopt predict --data letters/``): each file a
record whose text is the task's free-text column (a message, a note, a source to summarise), read
as ``generate --prompt @FILE`` reads a document (:func:`~prefopt.documents.document_text`: Word,
Writer, PDF; plain text in the task's ``encoding``), with the file's name in a ``file`` column.
Such records have no labels: predict answers them; eval and compare read a table."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from ..data.decoding import read_text
from ..data.records import DataError
from ..documents import DOCUMENTS, document_text

TEXTS = (".txt", ".md")
SUFFIXES = (*TEXTS, *DOCUMENTS)  # the files a folder of documents is read from (the others are left alone)
FILE_COLUMN = "file"


def document_files(folder: str | Path) -> list[Path]:
    """The documents in ``folder`` (not in its subfolders), in name order; Word's lock files
    (``~$note.docx``) and hidden files left out."""
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES
                  and not p.name.startswith((".", "~$")))


def document_rows(folder: str | Path, column: str, encoding: str = "utf-8") -> Iterator[tuple[int, dict]]:
    """``(n, {"file": its name, column: its text, stripped})`` for each of ``folder``'s documents
    (:func:`document_files`), ``n`` counting from 1. A folder with none, an empty document and one
    that cannot be read (a scan with no text, Word's old ``.doc``) stop the read, the file named."""
    files = document_files(folder)
    if not files:
        raise FileNotFoundError(f"{folder}: a folder with no documents (.txt, .md, .docx, .odt or .pdf files, one "
                                "record each) and not a data file: pass a CSV, JSONL or workbook of the records, or "
                                "a folder of their documents")
    for n, path in enumerate(files, 1):
        try:
            text = read_text(path, encoding) if path.suffix.lower() in TEXTS else document_text(path)
        except DataError:  # (a text file's bad byte, located: the task's encoding option is named above)
            raise
        except ValueError as e:
            raise DataError(path, None, None, str(e).removeprefix(f"{path}: ")) from None
        if not text.strip():
            raise DataError(path, None, None, "an empty document: no text to answer (a scan needs its text "
                                              "recognised first)")
        yield n, {FILE_COLUMN: path.name, column: text.strip()}


__all__ = ["FILE_COLUMN", "SUFFIXES", "document_files", "document_rows"]
