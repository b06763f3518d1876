"""Small file helpers: atomic writes (write to a temporary name, then rename)."""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def sha256_of(path: str | Path) -> str:
    """The SHA-256 of a file's bytes, read a MiB at a time."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary name beside ``path`` for the block to write. After the block the file's data is
    flushed to the disk, then it is renamed onto ``path`` and the rename itself flushed (the
    folder's entry), so a crash or a power cut leaves the old file or the whole new one, never a
    renamed file whose data was still in the page cache. An error removes the temporary file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        sync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    sync_folder(path.parent)


def sync_file(path: str | Path) -> None:
    """Flush a written file's data to the disk (``fsync``)."""
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def sync_folder(path: str | Path) -> None:
    """Flush a folder's entries (a rename into it) to the disk; nothing where the system cannot
    open a folder for it (Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)


def json_text(obj: Any, **options: Any) -> str:
    """``json.dumps(obj, **options)``, text as written (not escaped), as strict JSON: a figure that
    is NaN or infinite (a kappa where a rater gave one rating throughout, a mean of nothing) is
    written ``null``, where Python's default ``NaN`` token stops other readers (JavaScript's
    ``JSON.parse``, jq, R's jsonlite, a hospital's dashboard)."""
    options.setdefault("ensure_ascii", False)
    try:
        return json.dumps(obj, allow_nan=False, **options)
    except ValueError:  # not finite somewhere (rare): those figures become null
        return json.dumps(_finite(obj), allow_nan=False, **options)


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def write_json_atomic(path: str | Path, obj: Any) -> None:
    write_text_atomic(path, json_text(obj, indent=2) + "\n")


def jsonl_text(rows: Iterable[Any]) -> str:
    """``rows`` as JSON Lines, one object a line, text as written (not escaped); strict JSON
    (:func:`json_text`)."""
    return "".join(json_text(r) + "\n" for r in rows)


def replace_dir(tmp: str | Path, final: str | Path) -> None:
    """Put the folder ``tmp`` (complete) in place of ``final`` by renames: an earlier ``final`` moves
    to ``final.old`` first and is removed after, so a crash leaves a whole folder under one of the
    two names, never a half-written one."""
    tmp, final = Path(tmp), Path(final)
    old = final.with_name(final.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    sync_folder(final.parent)
    if old.exists():
        shutil.rmtree(old)


def check_writable(out: str | Path) -> None:
    """Before any long work: the folder ``out`` (made later, perhaps) can be made and written in;
    ValueError naming it where not (a file in the way, a read-only or missing mount)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: is a file, not a folder")
    base = nearest_existing(out)
    if not base.is_dir():
        raise ValueError(f"{out}: cannot be made: {base} is a file")
    try:
        tempfile.TemporaryDirectory(dir=base, prefix=".prefopt-probe-").cleanup()
    except OSError as e:
        raise ValueError(f"{out}: cannot write in {base} ({e.strerror or e})") from None


def nearest_existing(path: str | Path) -> Path:
    """``path`` (absolute), or where it is not made yet, the nearest folder above it that is."""
    base = Path(path).absolute()
    while not base.exists():
        base = base.parent
    return base


_KINDS = {dict: "an object", list: "a list", str: "a string", bool: "true or false", int: "a number",
          float: "a number", type(None): "null"}


class MissingField(KeyError, ValueError):
    """A field that a JSON file prefopt reads back lacks (a run's record edited by hand, a config
    written by another program). A KeyError, as a plain dict's would be, and a ValueError, so that
    commands say it on one line (:data:`prefopt.cli.USER_ERRORS`) rather than as a traceback."""

    def __str__(self) -> str:
        return str(self.args[0])


class Fields(dict):
    """A JSON object read from a file: a dict whose missing key raises :class:`MissingField`
    naming the file and the field's place in it (``"decoding" -> "max_new_tokens"``), where a
    plain dict's KeyError says only ``'max_new_tokens'``. ``get`` and ``in`` are a dict's."""

    where = "a JSON file"  # the file (and line, for JSON Lines); the object's place, set by _place

    def __missing__(self, key: Any) -> Any:
        raise MissingField(f"{self.where}: no {_quoted(key)} field{getattr(self, 'inside', '')}: edited by hand, "
                           "or written by another program or version?")


def _quoted(key: Any) -> str:
    return json.dumps(key) if isinstance(key, str) else repr(key)


def _place(value: Any, where: str, inside: str = "") -> Any:
    """Label each object in ``value`` with its file and its place in it, for :class:`Fields`."""
    if isinstance(value, Fields):
        value.where = where
        if inside:
            value.inside = f" in {inside}"
        for key, item in value.items():
            if isinstance(item, (dict, list)):
                _place(item, where, f"{inside} -> {_quoted(key)}" if inside else _quoted(key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            if isinstance(item, (dict, list)):
                _place(item, where, f"{inside}[{i}]" if inside else f"item {i}")
    return value


def read_json(path: str | Path, kind: type | None = dict) -> Any:
    """The value of the JSON file ``path`` (a run's record, a model's config). Where it is not JSON
    (cut short by a crash or a full disk, damaged, edited by hand) a ValueError names the file, the
    line and the column, where ``json``'s own error names no file; likewise where the value is not
    a ``kind`` (an object by default; None: any value). Its objects are :class:`Fields`: a field
    the code needs and the file lacks is named with the file."""
    path = Path(path)
    try:
        value = _place(json.loads(path.read_text(encoding="utf-8"), object_hook=Fields), str(path))
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not JSON (byte {e.start} is not UTF-8 text): the file is damaged, or another "
                         "kind of file") from None
    except json.JSONDecodeError as e:
        where = "the file is empty" if not e.doc.strip() else f"{e.msg}: line {e.lineno}, column {e.colno}"
        raise ValueError(f"{path}: not valid JSON ({where}): cut short by a crash or a full disk, or mistyped "
                         "in an edit?") from None
    if kind is not None and not isinstance(value, kind):
        raise ValueError(f"{path}: holds {_KINDS.get(type(value), type(value).__name__)} where "
                         f"{_KINDS.get(kind, kind.__name__)} was expected")
    return value


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The objects of a JSON Lines file written whole (a run's ``predictions.jsonl``), blank lines
    passed over; a line that is not a JSON object raises a ValueError naming the file and the line,
    as does a field the code needs and a line lacks (:class:`Fields`).
    (:func:`json_records` reads the files prefopt appends to, where a cut line is expected.)"""
    path, out = Path(path), []
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line, object_hook=Fields)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: line {n}: not valid JSON ({e.msg}: column {e.colno})") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}: line {n}: holds {_KINDS.get(type(record), 'a value')}, not an object")
        out.append(_place(record, f"{path}: line {n}"))
    return out


def json_records(path: str | Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSONL file that prefopt appends to (a run's ``metrics.jsonl``, the
    validation answers). A line that is not a JSON object is passed over: the end of a line a
    crash cut short (or the zeros a power cut leaves), which once stopped ``--resume`` with a
    JSONDecodeError; or the line a run is writing as another command reads the file."""
    out = []
    for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            out.append(record)
    return out


def free_space(path: str | Path) -> int:
    """Bytes free on the disk that holds ``path`` (:func:`nearest_existing`)."""
    return shutil.disk_usage(nearest_existing(path)).free


def size_text(n: float) -> str:
    """``1.2 GB``, ``35 MB``: a size as people read it (decimal units, as disks are sold)."""
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB" if n >= 1e6 else f"{n / 1e3:.0f} kB"


def check_new_dir(out: str | Path, inputs: Sequence[str | Path], overwrite: bool, flag: str = "--overwrite") -> None:
    """Refuse to write the folder ``out`` where that would lose something: where it is, or holds,
    one of the ``inputs`` (always), or already holds files (unless ``overwrite``); or where it
    cannot be written (:func:`check_writable`)."""
    out = Path(out).resolve()
    for src in inputs:
        src = Path(src).resolve()
        if src == out or out in src.parents:
            raise ValueError(f"{out}: the output would replace {src}, which this command reads; choose another folder")
    check_writable(out)
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ValueError(f"{out}: holds files already; pass {flag} to replace the folder, or choose another")


@contextmanager
def new_dir(out: str | Path) -> Iterator[Path]:
    """A temporary folder beside ``out`` to write into; on success it replaces ``out`` whole
    (:func:`replace_dir`), on an error it is removed: ``out`` is never left half-written."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, out)


class Held(Exception):
    """The lock is held by another process (:func:`file_lock` with ``wait=False``)."""


@contextmanager
def file_lock(path: str | Path, *, wait: bool = True, note: str = "") -> Iterator[None]:
    """Hold an exclusive lock on the file ``path`` (created; ``note``, such as this pid, written
    into it): released when the block ends or the process dies, whatever the file says after a
    crash or a restart. ``wait=False``: :class:`Held` at once where another process holds it. The
    file stays (removing it would let a waiter lock the old file while a newcomer locks a new
    one). ``flock`` on Linux and macOS; on Windows, ``msvcrt.locking`` of the file's first byte."""
    try:
        import fcntl
    except ImportError:  # Windows
        with _windows_lock(path, wait=wait, note=note):
            yield
        return
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise Held(path) from None
        try:
            _write_note(f, note)
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _write_note(f, note: str) -> None:
    if note:
        f.truncate(0)
        f.write(note)
        f.flush()


@contextmanager
def _windows_lock(path: str | Path, *, wait: bool, note: str) -> Iterator[None]:
    """:func:`file_lock` with ``msvcrt``: a lock on the file's first byte (Windows releases it when
    the process dies), tried again every 0.2 s while ``wait``; no lock where ``msvcrt`` is missing."""
    try:
        import msvcrt
    except ImportError:
        yield
        return
    import time

    with open(path, "a+") as f:
        while True:
            f.seek(0)
            try:
                msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)
                break
            except OSError:
                if not wait:
                    raise Held(path) from None
                time.sleep(0.2)
        try:
            _write_note(f, note)
            yield
        finally:
            f.seek(0)
            msvcrt.locking(f.fileno(), msvcrt.LK_UNLCK, 1)
