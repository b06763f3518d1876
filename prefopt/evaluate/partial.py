"""A long job's rows kept on disk as they are made, so that the same command after a stop goes
on from them (``prefopt predict``, ``prefopt make-pairs``: ``job``), and the folder held against
a second run meanwhile. A finished predict keeps its rows too (:func:`keep_answers`): the same
command again, with only another review threshold or table format, answers nothing again."""
from __future__ import annotations

import hashlib
import json
import os
from contextlib import ExitStack, contextmanager
from pathlib import Path

from ..fileio import Held, file_lock, jsonl_text, write_text_atomic


def _files(job: str) -> tuple[str, str]:
    """A job's lock file (locked by the run writing into the folder, its pid inside) and partial
    file (the rows answered so far, a block at a time: a stopped run goes on from them)."""
    return f".{job}.lock", f".{job}-partial.jsonl"


def partial_file(job: str) -> str:
    """A job's partial file name."""
    return _files(job)[1]


def answers_file(job: str) -> str:
    """A finished job's rows, kept under this name (:func:`keep_answers`)."""
    return f".{job}-answers.jsonl"


LOCK, PARTIAL = _files("predict")


@contextmanager
def claimed(out_dir: str | Path, job: str = "predict"):
    """Hold ``out_dir`` for this process while predicting into it: a second run into the same
    folder would interleave its rows with this one's in the partial file, so it is refused while
    the first holds the folder's lock (``flock``: a run that died, or a machine that restarted,
    holds nothing)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lock = out / _files(job)[0]
    held = ExitStack()
    try:
        held.enter_context(file_lock(lock, wait=False, note=str(os.getpid())))
    except Held:
        pid = lock.read_text().strip() or "?"
        raise ValueError(f"{out}: another prefopt {job} (pid {pid}) is writing into this folder; wait for it, or "
                         "stop it and run this again (it goes on from the records answered)") from None
    with held:
        yield out


def fingerprint(records, settings: dict) -> dict:
    """What a run's answers depend on: ``settings`` (task, model, adapter, decoding, device...) and
    the records' ids and prompts (a digest), for :func:`resume` to tell the same run."""
    h = hashlib.sha256()
    for r in records:
        h.update(json.dumps([r.id, r.prompt], ensure_ascii=False).encode() + b"\n")
    return {**settings, "records": len(records), "prompts_sha256": h.hexdigest()}


def resume(out_dir: str | Path, stamp: dict, job: str = "predict") -> list[dict]:
    """The rows that a run with the same :func:`fingerprint` left in ``out_dir``: a stopped one's
    in the partial file (all but a last line cut by the stop), or a finished one's, kept
    (:func:`keep_answers`), whichever holds more; [] where there is none, or only another run's."""
    found = [_rows(Path(out_dir) / name, stamp) for name in (partial_file(job), answers_file(job))]
    return max(found, key=len)


def _rows(path: Path, stamp: dict) -> list[dict]:
    """``path``'s rows where its first line is ``stamp``'s, up to a line cut short; else []."""
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").split("\n")
    try:
        if json.loads(lines[0]) != {"fingerprint": stamp}:
            return []
    except json.JSONDecodeError:
        return []
    rows = []
    for line in lines[1:]:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows


def keep_answers(out_dir: str | Path, job: str = "predict") -> None:
    """A finished run's partial file kept as its answers (:func:`answers_file`, in place of an
    earlier run's), for :func:`resume` to read should the same run come again."""
    partial = Path(out_dir) / partial_file(job)
    if partial.is_file():
        partial.replace(Path(out_dir) / answers_file(job))


def start_partial(out_dir: str | Path, stamp: dict, rows: list[dict], job: str = "predict") -> None:
    """``out_dir``'s partial file, written afresh (atomically) with ``stamp`` and the ``rows`` so far."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    write_text_atomic(Path(out_dir) / partial_file(job), jsonl_text([{"fingerprint": stamp}, *rows]))


def append_partial(out_dir: str | Path, rows: list[dict], job: str = "predict") -> None:
    """Add ``rows`` to ``out_dir``'s partial file, on disk before this returns."""
    with open(Path(out_dir) / partial_file(job), "a", encoding="utf-8") as f:
        f.write(jsonl_text(rows))
        f.flush()
        os.fsync(f.fileno())
