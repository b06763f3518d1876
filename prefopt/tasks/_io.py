"""Reading task files: CSV (any delimiter and encoding), JSONL and JSON, with located errors."""
from __future__ import annotations

import inspect
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

from ..data.decoding import EncodingError, checked_encoding
from ..data.readers import read_rows
from ..data.records import DataError, spreadsheet_error, unicode_problem
from ._documents import document_rows, documents_folder

DELIMITER_NAMES = {"tab": "\t", "\\t": "\t", "comma": ",", "semicolon": ";", "pipe": "|"}
_SET_ASIDE: ContextVar[frozenset] = ContextVar("set_aside", default=frozenset())  # (path, line) table() passes over
_COLLECTING: ContextVar[_BadRows | None] = ContextVar("collecting", default=None)  # check-data's bad rows, while read


class _BadRows(list):
    """The bad rows one check-data read has set aside, in the order met; past ``limit`` the read stops."""

    def __init__(self, limit: int | None):
        super().__init__()
        self.limit = limit


class _TooMany(Exception):  # noqa: N818 (not an error: the read has found enough bad rows)
    """Stops a check-data read once it has more bad rows than it lists."""


def set_aside(e: DataError) -> bool:
    """True where check-data is reading past bad rows and has taken ``e`` (one row's error) to list
    it, so the read goes on past the row; False (raise it) otherwise: eval, compare and training
    stop at the first bad row, and an error that names no line is never a row's."""
    bad = _COLLECTING.get()
    if bad is None or e.line is None:
        return False
    if (str(e.path), e.line) in _SET_ASIDE.get():
        return True  # listed on an earlier read (a reader that does not go through table())
    bad.append(e)
    if bad.limit is not None and len(bad) > bad.limit:
        raise _TooMany
    return True


@contextmanager
def one_row():
    """Around the reading of one row of a task's file: a bad row's :class:`DataError` goes to
    :func:`set_aside`, and propagates where it is not taken."""
    try:
        yield
    except DataError as e:
        if not set_aside(e):
            raise


class NotALabel(DataError):
    """A label cell that is none of the task's labels (``labels``, as the message lists them) nor a
    word its map names: the message names the option that maps it (``option``: ``label_map``,
    ``urgency_map``), and check-data gathers a file's such words into one (:func:`~.check.unmapped_lines`)."""

    def __init__(self, path, line: int, column: str, word: str, labels: str, option: str, words=()):
        self.word, self.option = word, option
        spelt = getattr(words, "spelt", {})  # a WordMap's words as its option wrote them
        known = f" nor of {option}'s words ({', '.join(spelt.get(w, w) for w in words)})" if words else ""
        super().__init__(path, line, column, f"{word!r} is not one of {labels}{known}; --task-option "
                                             f"{option}=\"{word}=LABEL\" reads a word of your file's as a label")


def file_options(task, delimiter: str | None = None, encoding: str = "utf-8", sheet: str | None = None,
                 documents: str | None = None) -> dict:
    """A task's ``delimiter``, ``encoding`` and ``sheet`` options (the generic tasks' and portal's),
    checked, as :func:`table`'s keywords. ``delimiter`` may be a character or a name (``tab``,
    ``\\t``, ``semicolon``, ...); None reads it off a CSV's header. ``sheet``: an Excel workbook's
    sheet to read (None: its one sheet in view that holds data). A bad byte's error names the
    options where ``task``'s class takes them (a dataset's own task, such as ``medical_abstracts``,
    has its format fixed). ``documents``: the column a folder of documents fills, one record a file
    (:mod:`._documents`), for a task whose records are one free text."""
    delimiter = DELIMITER_NAMES.get(delimiter, delimiter)
    if delimiter is not None and (not isinstance(delimiter, str) or len(delimiter) != 1):
        raise ValueError(f"delimiter must be one character or one of {', '.join(DELIMITER_NAMES)}, got {delimiter!r}")
    return {"delimiter": delimiter, "encoding": checked_encoding(encoding),
            "sheet": sheet.strip() if sheet and sheet.strip() else None,
            "task_options": "encoding" in inspect.signature(type(task)).parameters, "documents": documents}


def table(path: str | Path, *, delimiter: str | None = None, encoding: str = "utf-8", sheet: str | None = None,
          task_options: bool = False, documents: str | None = None) -> Iterator[tuple[int, dict]]:
    """``(line, row)`` for each record of a CSV/TSV (any delimiter and encoding), JSONL or JSON
    file; a malformed record raises :class:`DataError` with its file and line. A CSV's delimiter,
    unless given, is read off its header (:func:`prefopt.data.readers.read_rows`); ``sheet``, a
    workbook's sheet to read.
    ``task_options``: the task takes :func:`file_options`, so a bad byte's error names them.
    ``documents``: a folder of documents (:func:`~._documents.documents_folder`) is read as one
    record a document, its text in this column."""
    passed_over = _SET_ASIDE.get()
    rows = document_rows(path, documents, encoding) if documents and documents_folder(path) else \
        read_rows(path, delimiter=delimiter, encoding=encoding, sheet=sheet)
    try:
        for line, row in rows:
            if (str(Path(path)), line) in passed_over:
                continue
            if isinstance(row, DataError):
                if set_aside(row):
                    continue
                raise row
            yield line, row
    except EncodingError as e:  # (read_rows names --encoding, a training command's flag: a task's option, or none)
        raise DataError(e.path, e.line, None, e.naming("--task-option encoding=cp1252") if task_options
                        else e.detail) from None


def read_past_bad_rows(task, path: str | None, *, limit: int | None = None
                       ) -> tuple[list | None, list[DataError]]:
    """``task.read(path)`` that goes on past bad rows. Returns the good records and the bad rows'
    errors, in the order met; past ``limit`` bad rows it stops looking and returns ``(None,
    errors)``. The tasks' own loops read each row inside :func:`one_row`, so one read of the file
    finds every bad row; a row error raised outside one (a task written without it) is set aside
    and the file read again without that row. A failure that is not a row of a table (a missing
    file, a header, a file a task reads by itself) is raised as it is."""
    bad = _BadRows(limit)
    while True:
        tokens = _SET_ASIDE.set(frozenset((str(e.path), e.line) for e in bad)), _COLLECTING.set(bad)
        try:
            return task.read(path), list(bad)
        except _TooMany:
            return None, list(bad)
        except DataError as e:
            if e.line is None or (str(e.path), e.line) in _SET_ASIDE.get():
                raise
            bad.append(e)
            if limit is not None and len(bad) > limit:
                return None, list(bad)
        finally:
            _SET_ASIDE.reset(tokens[0])
            _COLLECTING.reset(tokens[1])


def need(row: dict, field: str, path, line: int) -> str:
    """The non-empty text of ``row[field]``, or a :class:`DataError` naming file, line and field."""
    if field not in row or row[field] is None:
        raise DataError(path, line, field, f"missing field (have: {', '.join(map(str, row))})")
    value = str(row[field]).strip()
    if not value:
        raise DataError(path, line, field, "empty")
    problem = unicode_problem(value) or spreadsheet_error(value)
    if problem:
        raise DataError(path, line, field, problem)
    return value


def column_cell(task, row: dict, option: str, path, line: int,
                likely: Callable[[dict], dict[str, str]] | None = None) -> str:
    """``row``'s cell in the column ``task``'s ``option`` names (its attribute of that name, such as
    ``text_column``), as :func:`need`. Where the row lacks that column and the task takes the
    option, the error says how to name the file's own, with the columns ``likely(row)`` suggests
    (``{option: column}``) for each option whose column the row lacks."""
    column = getattr(task, option)
    if column not in row and option in inspect.signature(type(task)).parameters:
        guess = " ".join(f"--task-option {k}={v}" for k, v in (likely(row) if likely else {}).items()
                         if getattr(task, k) not in row)
        raise DataError(path, line, column, f"missing field (have: {', '.join(map(str, row))}); --task-option "
                        f"{option}=COLUMN reads another column as the {option.removesuffix('_column')}"
                        + (f" (here likely: {guess})" if guess else ""))
    return need(row, column, path, line)


def likely_columns(row: dict, longest: str | None, labels: dict[str, Collection[str]] | None = None,
                   other: str | None = None) -> dict[str, str]:
    """The columns of ``row`` that look like a task's fields, by option: each of ``labels``' (an
    option and the values its column holds), the one column whose cell is one of them; ``longest``,
    the longest text of the rest; ``other``, the one filled column then left, where one is."""
    cells = {c: v.strip() for c, v in row.items() if isinstance(v, str) and v.strip()}
    guess = {}
    for option, values in (labels or {}).items():
        hits = [c for c, v in cells.items() if v.lower() in values]
        if len(hits) == 1:
            guess[option] = hits[0]
    rest = [c for c in cells if c not in guess.values()]
    if rest and longest:
        guess[longest] = max(rest, key=lambda c: len(cells[c]))
        rest.remove(guess[longest])
    if other and other not in guess and len(rest) == 1:
        guess[other] = rest[0]
    return {k: guess[k] for k in sorted(guess, key=lambda k: k != longest)}  # the longest's first


def convert(fn, value: str, field: str, path, line: int):
    """``fn`` applied to ``value``, a cell already read (:func:`column_cell`, :func:`need`); its
    ``ValueError`` becomes a :class:`DataError` naming file, line and field."""
    try:
        return fn(value)
    except DataError:
        raise
    except ValueError as e:
        raise DataError(path, line, field, str(e)) from None


def clip(text: str, limit: int) -> str:
    """At most ``limit`` characters, cut at a word boundary, marked with an ellipsis."""
    if len(text) <= limit:
        return text
    return text[:limit].rsplit(" ", 1)[0] + " …"
