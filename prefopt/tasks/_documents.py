"""A folder of documents as a task's records (``prefopt predict --data letters/``): each file a
record whose text is the task's free-text column (a message, a note, a source to summarise), read
as ``generate --prompt @FILE`` reads a document (:func:`~prefopt.documents.document_text`: Word,
Writer, PDF; plain text in the task's ``encoding``), with the file's name in a ``file`` column.
Such records have no labels: predict answers them; eval and compare read a table."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from ..data.decoding import read_text
from ..data.readers import is_data_file_name
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


def documents_folder(path: str | Path) -> bool:
    """Whether ``path`` is a folder of documents: one that holds documents (:func:`document_files`)
    and no data file (a folder of CSVs or shards is refused as before, its files named)."""
    path = Path(path)
    return path.is_dir() and bool(document_files(path)) and not any(is_data_file_name(p) for p in path.iterdir())


def document_rows(folder: str | Path, column: str, encoding: str = "utf-8") -> Iterator[tuple[int, dict]]:
    """``(n, {"file": its name, column: its text, stripped})`` for each of ``folder``'s documents
    (:func:`document_files`), ``n`` counting from 1. An empty document and one that cannot be read
    (a scan with no text, Word's old ``.doc``) stop the read, the file named."""
    for n, path in enumerate(document_files(folder), 1):
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


__all__ = ["FILE_COLUMN", "SUFFIXES", "document_files", "document_rows", "documents_folder"]
