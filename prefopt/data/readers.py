"""Reading JSONL, JSON, CSV, Parquet and Excel files (the text formats also compressed:
``train.jsonl.gz``) as ``(line, row)`` pairs, with line numbers for errors."""
from __future__ import annotations

import contextlib
import csv
import datetime
import decimal
import io
import json
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from .._deps import require
from .decoding import COMPRESSIONS, NAMED_BY, EncodingError, compression, data_suffix, read_text
from .headers import column_name, one_name_each, past_titles
from .records import DataError

Row = dict[str, Any]


RECORDS = "<records>"  # how errors name an in-memory list of records (its "lines" count from 1)


# what to do with the spreadsheet formats prefopt does not read (it reads .xlsx and .xlsm: sheets.py; .xls: xls.py;
# .ods: ods.py)
_SHEET = " (in Excel or LibreOffice: File > Save As > \"Excel Workbook (.xlsx)\", or \"CSV UTF-8\")"
SAVE_AS = {".xlsb": _SHEET, ".fods": _SHEET,
           ".numbers": " (in Numbers: File > Export To > Excel, or CSV with Unicode (UTF-8) text encoding)",
           ".txt": " (a table Excel saved as \"Text (Tab delimited)\" or \"Unicode Text\" is a .tsv: rename it so)"}


class Records(list):
    """Record dicts in memory that errors and progress bars call ``name`` (``<eval_records>:3``,
    ``tokenizing ktas records``) rather than :data:`RECORDS`."""

    def __init__(self, rows, name: str = RECORDS):
        super().__init__(in_memory(rows, name))
        self.name = name


def source_name(source) -> str | Path:
    """What errors call ``source``: its path, :data:`RECORDS` for records in memory (a list of
    dicts, a DataFrame, a dataset), or a :class:`Records`' own name."""
    if isinstance(source, Records):
        return source.name
    return Path(source) if isinstance(source, (str, os.PathLike)) else RECORDS


def in_memory(source, name: str = RECORDS) -> list:
    """Records held in memory as a list of row dicts, read once: a list or tuple as it is; a pandas
    DataFrame (:func:`frame_rows`); a Hugging Face ``datasets.Dataset`` (what TRL's trainers take;
    its ``to_dict`` gives columns, not rows) or a polars DataFrame, by rows; any other iterable of
    dicts (a generator) as the list of what it yields. Refused with what to pass instead: a dict
    (one record, or columns; a ``DatasetDict`` of splits), a pandas Series (one column), an open file
    (iterated, it gives lines of text: its path is what to pass)."""
    if isinstance(source, (list, tuple)):
        return source
    kind = type(source).__name__
    if isinstance(source, dict):
        if source and all(hasattr(v, "column_names") for v in source.values()):
            raise TypeError(f"{name}: a {kind} of splits ({', '.join(map(repr, source))}): pass one, e.g. "
                            f"data[{next(iter(source))!r}]")
        raise TypeError(f"{name}: a dict, not a list of records: [record] for one record, pandas.DataFrame(data) "
                        "for a dict of columns")
    if isinstance(source, io.IOBase) or callable(getattr(source, "readline", None)):  # iterated, it gives lines
        where = getattr(source, "name", None)
        raise TypeError(f"{name}: an open file" + (f" ({where}): pass its path, {str(where)!r}, which also tells its "
                                                   "format" if isinstance(where, (str, os.PathLike)) else
                                                   ": pass a data file's path, or [json.loads(line) for line in f] "
                                                   "for JSON Lines"))
    if hasattr(source, "column_names"):  # a datasets.Dataset (or IterableDataset): iterated, it yields rows
        return [plain(row) for row in source]
    if callable(getattr(source, "to_dicts", None)):  # polars
        return [plain(row) for row in source.to_dicts()]
    if callable(getattr(source, "to_dict", None)):
        if hasattr(source, "dtype"):  # a pandas Series: one column (a DataFrame has dtypes, one a column)
            raise TypeError(f"{name}: a {kind} (one column): pass the whole table, its DataFrame")
        return frame_rows(source, name)
    if isinstance(source, Iterable) and not isinstance(source, (str, bytes)):
        return list(source)
    raise TypeError(f"{name}: expected a data file's path, a list of record dicts, a DataFrame or a "
                    f"datasets.Dataset; got {kind}")


def frame_rows(frame, name: str = RECORDS) -> list[Row]:
    """A DataFrame's rows as dicts of plain values (:func:`plain`): a list column read from
    Parquet (a Hugging Face dataset's messages) holds numpy arrays, given back as lists. Two
    columns of one name are refused (``to_dict`` keeps the last one's cells, with a warning)."""
    one_name_each(Path(name), [str(c) for c in getattr(frame, "columns", [])], line=None)
    return [plain(row) for row in frame.to_dict("records")]


def plain(v):
    """``v`` as JSON holds it, so that a row can go into predictions and digests as it came:
    numpy arrays and numbers as lists and numbers, dates and times (a timestamp column) as ISO
    text, decimals and durations as text; within lists and dicts alike."""
    if isinstance(v, dict):
        return {k: plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    if type(v).__module__ == "numpy" and hasattr(v, "tolist"):
        return plain(v.tolist())
    if isinstance(v, (datetime.date, datetime.time)) or callable(getattr(v, "isoformat", None)):
        return v.isoformat()  # (pandas' NaT too: 'NaT')
    if isinstance(v, (decimal.Decimal, datetime.timedelta)):
        return str(v)
    return v


FORMATS = (".jsonl", ".ndjson", ".json", ".csv", ".tsv", ".parquet", ".xlsx", ".xlsm", ".xls", ".ods")
TEXT_FORMATS = FORMATS[:5]  # read as text in an encoding (--encoding)
NAMES = ".jsonl, .json, .csv, .tsv, .parquet, .xlsx, .xls or .ods"
DELIMITERS = (",", ";", "\t", "|")  # what a .csv file's header is tried with, in order of preference
_SEP_LINE = re.compile(r"sep=(.)\r?\n")  # a first line that names the delimiter, which Excel reads
WORKBOOKS = (".xlsx", ".xlsm", ".xls", ".ods")  # spreadsheets of sheets: Excel's (sheets.py, xls.py), Calc's (ods.py)
BINARY = (".parquet", *WORKBOOKS)  # formats compressed within: never compressed again


def is_data_file_name(path: str | Path) -> bool:
    """Whether ``path``'s name is a data file's (a format of :data:`FORMATS`, a text one's maybe
    compressed)."""
    suffix = data_suffix(path)
    return suffix in FORMATS and not (suffix in BINARY and compression(path))


def beside_the_data(path: str | Path) -> bool:
    """Whether ``path`` is an application's file beside the data, with a data file's name: the
    lock file Excel keeps while a workbook is open (``~$notes.xlsx``), or the ``._notes.xlsx``
    macOS writes beside each file on a drive it did not format."""
    return Path(path).name.startswith(("~$", "._"))


def read_rows(path: str | Path | Sequence[Row], *, delimiter: str | None = None, encoding: str | None = None,
              sheet: str | None = None) -> Iterator[tuple[int, Row | DataError]]:
    """Yield ``(line, row)`` for each record of a ``.jsonl``, ``.json``, ``.csv``, ``.tsv``,
    ``.parquet`` (its "line" is its row, from 1) or ``.xlsx`` file (its row in Excel:
    ``sheets.py``), or of a list of dicts (numbered from 1, as :data:`RECORDS`) or a DataFrame.

    A ``.csv`` file's delimiter, unless given, is the one of :data:`DELIMITERS` that splits its
    header into the most columns (Excel writes ``;`` where the decimal mark is a comma); a
    ``.tsv`` file's is a tab. Rows whose every cell is blank (an export's trailing ``;;;``) are
    skipped, as blank lines are. A record that cannot be parsed is yielded as a
    :class:`DataError` in place of the row, so the caller decides whether to stop or skip;
    nothing after it is lost. Bytes that are not text in ``encoding`` (None: the one
    :func:`reading_encoding` names, else UTF-8) raise :class:`EncodingError`, naming their line
    and how to name the encoding (:func:`naming_encoding_by`). ``sheet``: a workbook's sheet to read (else the one
    :func:`~.sheets.reading_sheet` names, else its one sheet in view that holds data); a file that
    is not a workbook is then refused.
    """
    if not isinstance(path, (str, os.PathLike)):
        path = in_memory(path)
    if isinstance(path, (list, tuple)):
        for i, row in enumerate(path, 1):
            yield i, row if isinstance(row, dict) else DataError(source_name(path), i, None, f"expected a dict, "
                                                                                               f"got {type(row).__name__}")
        return
    path = Path(path)
    if path.is_dir():
        found = sorted(p.name for p in path.iterdir() if is_data_file_name(p))
        shards = [name for name in found if "-of-" in name]  # a Hugging Face dataset's train-00000-of-00002.parquet
        join = ("; a task's split saved in several files is one file to it: join them first (pandas: pd.concat(["
                "pd.read_parquet(f) for f in sorted(files)]).to_parquet('test.parquet')); sft, dpo and check-data "
                "read such a folder whole") if len(shards) > 1 else ""
        raise FileNotFoundError(f"{path}: a folder, not a data file; pass one of its files"
                                + (f" ({', '.join(found)})" if found else f" (it holds no {NAMES})") + join)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such data file")
    if beside_the_data(path):
        raise ValueError(f"{path}: " + ("the lock file Excel keeps while a workbook is open" if path.name[0] == "~" else
                                        "the file macOS writes beside each file on a drive it did not format")
                         + f", not data: pass {path.name[2:]}")
    suffix = data_suffix(path)
    from .sheets import SHEET

    if (named := sheet or SHEET.get()) and suffix not in WORKBOOKS:
        raise ValueError(f"{path}: not a workbook (.xlsx, .xlsm, .xls or .ods), and a sheet to read was named "
                         f"({named!r}); name one only where every data file is a workbook")
    if suffix in BINARY and compression(path):
        raise ValueError(f"{path}: a {suffix} file compressed again; it compresses itself: decompress it and pass the "
                         f"{suffix} file")
    if suffix in TEXT_FORMATS:
        try:
            yield from _text_rows(path, suffix, delimiter, encoding)
        except EncodingError as e:  # (said with the way to name the encoding: a prompt file, a config has none)
            if (flag := NAMED_BY.get()) is None:
                raise
            raise EncodingError(e.path, e.line, e.detail, flag, e.as_cp1252) from None
    elif suffix == ".parquet":
        yield from _parquet(path)
    elif suffix == ".ods":
        from .ods import read_ods

        yield from read_ods(path, sheet)
    elif suffix == ".xls":
        from .xls import read_xls

        yield from read_xls(path, sheet)
    elif suffix in WORKBOOKS:
        from .sheets import read_sheet

        yield from read_sheet(path, sheet)
    else:
        how = SAVE_AS.get(suffix, "")
        raise ValueError(f"{path}: unknown data format {suffix!r}; use {NAMES} (the text formats also compressed: "
                         f"{', '.join(COMPRESSIONS)})" + how)


def _text_rows(path: Path, suffix: str, delimiter: str | None, encoding: str | None):
    if suffix in (".jsonl", ".ndjson"):
        yield from _jsonl(path, encoding)
    elif suffix == ".json":
        yield from _json(path, encoding)
    else:
        yield from _csv(path, delimiter or ("\t" if suffix == ".tsv" else None), encoding)


class RepeatedKey(Exception):
    """A key given twice in one JSON object (``args[0]``): raised by :func:`one_of_each`."""


def one_of_each(pairs: list[tuple[str, Any]]) -> dict:
    """A JSON object's dict, refusing a key given twice: ``json`` keeps the last value and the
    other is lost without a word (an exporter's bug, or a hand edit that added a second
    ``"chosen"``: which answer was meant?)."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen = set()
        for key, _ in pairs:
            if key in seen:
                raise RepeatedKey(key)
            seen.add(key)
    return obj


_DECODER = json.JSONDecoder(object_pairs_hook=one_of_each)
REPEATED = "given twice in one JSON object of this record (JSON keeps only the last, so a value would be lost); " \
           "remove or rename one"


# A list of records where JSON lines were expected, or JSON lines where a list was: the file's
# format and its name disagree (``json.dump(records, f, indent=2)`` into train.jsonl).
AS_JSON = "name the file .json (read as a list of records), or write one JSON object a line"
AS_JSONL = "name the file .jsonl (read one object a line)"


def _jsonl(path: Path, encoding: str | None = None):
    seen = False
    for line_no, line in enumerate(read_text(path, encoding).split("\n"), 1):
        if not line.strip():
            continue
        opens_array, seen = not seen and line.lstrip().startswith("["), True
        try:
            row = _DECODER.decode(line)
        except json.JSONDecodeError as e:
            if opens_array:  # each line of the array would be malformed JSON: say it once, for the file
                raise DataError(path, line_no, None, f"a JSON array over several lines, not JSON lines (one object a "
                                                     f"line); {AS_JSON}") from None
            yield line_no, DataError(path, line_no, None, f"malformed JSON: {e.msg} (column {e.colno})")
            continue
        except RepeatedKey as e:
            yield line_no, DataError(path, line_no, e.args[0], REPEATED)
            continue
        if not isinstance(row, dict):
            if isinstance(row, list) and row and all(isinstance(r, dict) for r in row):
                got = f"a JSON array of {len(row)} record{'s' if len(row) > 1 else ''}: {AS_JSON}"
            else:
                got = type(row).__name__
            yield line_no, DataError(path, line_no, None, f"expected a JSON object, got {got}")
            continue
        yield line_no, row


def _json(path: Path, encoding: str | None = None):
    text = read_text(path, encoding)
    i = _skip_ws(text, 0)
    if i >= len(text) or text[i] != "[":
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            end = text.find("\n", i)  # a second object after the first: JSON lines
            if e.msg == "Extra data" and _an_object(text[i:end if end >= 0 else None]):
                why = f"one JSON object a line (JSON lines), not a list of records: {AS_JSONL}"
                raise DataError(path, e.lineno, None, why) from None
            raise DataError(path, e.lineno, None, f"malformed JSON: {e.msg}") from None
        if isinstance(obj, dict) and isinstance(obj.get("data"), list):
            raise DataError(path, 1, None, "a JSON file must be a list of records; this one wraps them in 'data'")
        raise DataError(path, 1, None, "a JSON file must be a list of records" + (
            f"; this one holds a single object: put [ ] around it, or {AS_JSONL}" if isinstance(obj, dict)
            else ""))
    i = _skip_ws(text, i + 1)
    line, counted = 1, 0  # the line of position ``counted``, carried forward (counting from 0 each time is quadratic)
    while i < len(text) and text[i] != "]":
        line, counted = line + text.count("\n", counted, i), i
        try:
            row, end = _record_at(text, i, path, line)
        except json.JSONDecodeError as e:
            raise DataError(path, e.lineno, None, f"malformed JSON: {e.msg}") from None
        yield line, row if isinstance(row, (dict, DataError)) else DataError(path, line, None, "expected a JSON object")
        i = _next_entry(text, end)


def _record_at(text: str, i: int, path: Path, line: int):
    """``(value, end)``: the JSON value at ``text[i:]``, or where it names a key twice a
    :class:`DataError` at ``line`` in its place (its end found as json would, without the hook)."""
    try:
        return _DECODER.raw_decode(text, i)
    except RepeatedKey as e:
        return DataError(path, line, e.args[0], REPEATED), json.JSONDecoder().raw_decode(text, i)[1]


def _next_entry(text: str, end: int) -> int:
    """Where the entry after the one ending at ``end`` starts: past the spaces and one comma."""
    i = _skip_ws(text, end)
    return _skip_ws(text, i + 1) if i < len(text) and text[i] == "," else i


def keyed_json(path: str | Path, encoding: str | None = None):
    """``(line, key, value)`` for each entry of a JSON file that is one object of records by key
    (PubMedQA's ``ori_pqal.json``: records by PubMed id), the line its key is on: read as
    :func:`_json` reads a list of records, so a bad record's error can name its line. A key given
    twice is a :class:`~.records.DataError` value at the second's line (``json`` keeps the last,
    losing a record); malformed JSON raises one at its line; a file that is not one object yields
    ``(1, None, value)`` once, for the caller to refuse."""
    path = Path(path)
    text = read_text(path, encoding)
    i = _skip_ws(text, 0)
    if i >= len(text) or text[i] != "{":
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(path, e.lineno, None, f"malformed JSON: {e.msg}") from None
        yield 1, None, value
        return
    i, seen = _skip_ws(text, i + 1), set()
    line, counted = 1, 0  # the line of position ``counted``, carried forward (as _json)
    try:
        while i < len(text) and text[i] != "}":
            line, counted = line + text.count("\n", counted, i), i
            key, end = _DECODER.raw_decode(text, i)
            colon = _skip_ws(text, end)
            if not isinstance(key, str) or text[colon:colon + 1] != ":":
                raise json.JSONDecodeError("Expecting a key and ':'", text, i)
            value, end = _record_at(text, _skip_ws(text, colon + 1), path, line)
            yield line, key, DataError(path, line, None, f"record {key} is given twice (JSON keeps only the last)") \
                if key in seen else value
            seen.add(key)
            i = _next_entry(text, end)
        if i >= len(text):
            raise json.JSONDecodeError("Expecting '}' (the file cut short?)", text, len(text))
    except json.JSONDecodeError as e:
        raise DataError(path, e.lineno, None, f"malformed JSON: {e.msg}") from None


def _parquet(path: Path, batch_rows: int = 1024):
    """A Parquet file (a Hugging Face dataset's own format), read a batch of rows at a time."""
    pq = require("pyarrow.parquet", "reading .parquet data files")
    with _unreadable_parquet(path):
        file = pq.ParquetFile(path)
        names = file.schema_arrow.names
    one_name_each(path, names, line=None)
    with _unreadable_parquet(path):
        row_no = 0
        for batch in file.iter_batches(batch_size=batch_rows):
            for row in batch.to_pylist():
                row_no += 1
                yield row_no, plain(row)


@contextlib.contextmanager
def _unreadable_parquet(path: Path):
    """pyarrow's errors (ArrowInvalid is a ValueError: not Parquet, or cut short) as a DataError."""
    try:
        yield
    except (OSError, ValueError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise DataError(path, None, None, f"not a readable Parquet file ({e})") from None


def _an_object(line: str) -> bool:
    """Whether ``line`` is one whole JSON object (a JSON lines file's first record)."""
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def _skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t\r\n":
        i += 1
    return i


def sniff_delimiter(text: str) -> str:
    """The one of :data:`DELIMITERS` that splits the first line of ``text`` that is not blank (a
    CSV header) into the most cells, a tie broken by the lines after it (a title row ``Triage log,
    ward 3;`` splits as two by ``,`` and ``;``, the column names below it by ``;`` alone); ``,``
    where none splits them."""
    lines = [line for line in text[:SNIFF_CHARACTERS].replace("\r", "\n").split("\n") if line.strip()][:SNIFF_LINES]
    counts = [tuple(_cells(line, d) for line in lines) for d in DELIMITERS]
    return DELIMITERS[counts.index(max(counts))]


def _cells(line: str, delimiter: str) -> int:
    """How many cells ``delimiter`` splits the CSV ``line`` into (0 where the csv module cannot
    read it: the file's read says why)."""
    try:
        return len(next(csv.reader([line], delimiter=delimiter), []))
    except csv.Error:
        return 0


SNIFF_LINES, SNIFF_CHARACTERS = 5, 1 << 16  # what sniff_delimiter reads of a file


def _sep_line(text: str) -> tuple[str | None, int, str]:
    """``(the delimiter, the header's line, the text from the header on)`` of a CSV's text: Excel's
    ``sep=;`` first line names the delimiter, on a line of its own before the header; else None,
    1 and the text."""
    given = _SEP_LINE.match(text)
    return (given[1], 2, text[given.end():]) if given is not None else (None, 1, text)


def csv_delimiter(path: Path, encoding: str | None = None) -> str:
    """The delimiter :func:`read_rows` reads the CSV file ``path`` with: the one an Excel ``sep=``
    first line names, else :func:`sniff_delimiter`'s from its header."""
    named, _, text = _sep_line(read_text(path, encoding))
    return named or sniff_delimiter(text)


def _csv(path: Path, delimiter: str | None = None, encoding: str | None = None):
    text = read_text(path, encoding)
    # csv refuses a cell over 131,072 characters unless told otherwise (a long clinical note): the
    # whole file is in memory already, so no cell of it is too long to read
    csv.field_size_limit(max(csv.field_size_limit(), min(len(text) + 1, 2**31 - 1)))  # (a C long on Windows)
    named, first_line, text = _sep_line(text)
    delimiter = delimiter or named or sniff_delimiter(text)
    with io.StringIO(text, newline="") as f:
        yield from _csv_rows(path, f, delimiter, first_line)


def _csv_rows(path: Path, f, delimiter: str, first_line: int = 1):
    """``_csv``'s rows of the text ``f``, from line ``first_line`` of the file: the header is the
    first row that is not blank; each record's line is the one it starts on, blank lines before
    it counted (a DictReader's count was one short after each); rows of blank cells skipped;
    title rows above the column names skipped, said so (:func:`past_titles`); what the csv module
    cannot read stops the file at its line, said so."""
    rows = _csv_lines(path, f, delimiter, first_line)
    line, header = next(((n, r) for n, r in rows if any(c.strip() for c in r[0])), (first_line, None))
    if header is None:
        return
    names = [column_name(name) for name in header[0]]  # "prompt, chosen": no space in the name
    line, names, rows = past_titles(path, line, names, rows, lambda cells: cells[0], narrow=True)
    one_name_each(path, names, line)
    for start, (cells, end) in rows:
        if not any(c.strip() for c in cells):
            continue  # a blank line, or a row of blank cells (an export's ";;;"): nothing to read
        if len(cells) > len(names):
            alone = f" (the header, line {line}, names one column, {names[0]!r}: a title above the column names, " \
                "another delimiter, or one in a cell left unquoted?)" if len(names) == 1 else ""
            yield start, DataError(path, start, None, f"more cells than the header has columns: "
                                                      f"{cells[len(names):]!r}{alone}")
        elif len(cells) < len(names):
            spans = f" (it runs from line {start} to {end}: a quote left open?)" \
                if end > start else ""  # a quoted cell goes on to the next closing quote
            yield start, DataError(path, start, names[len(cells)], "row has fewer cells than the header" + spans)
        else:
            yield start, dict(zip(names, cells))


def _csv_lines(path: Path, f, delimiter: str, first_line: int):
    """``(line, (cells, last line))`` of each row of the CSV text ``f`` whose first line is the
    file's ``first_line``: the line a row starts on and the one it ends on (a quoted cell may
    hold line breaks); what the csv module cannot read stops the file at its line, said so."""
    reader = csv.reader(f, delimiter=delimiter)
    before = first_line - 1  # the file's lines before the reader's first
    while True:
        start = before + reader.line_num + 1
        try:
            cells = next(reader, None)
        except csv.Error as e:
            raise DataError(path, start, None, f"not readable as CSV ({e})") from None
        if cells is None:
            return
        yield start, (cells, before + reader.line_num)
