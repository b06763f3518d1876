"""Which files a training data setting names: one file, several, a folder of shards, or a pattern.

``data`` may be a path, a list of paths, a folder holding one split saved in shards (a Hugging
Face dataset's ``train-00000-of-00003.parquet`` ...) or a pattern (``notes/*.jsonl``). Each file
keeps its own line numbers, so an error still names the file and line it comes from.
"""
from __future__ import annotations

import glob
import os
import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from ..hints import first_few
from .decoding import COMPRESSIONS
from .readers import NAMES, beside_the_data, is_data_file_name

_PATTERN = re.compile(r"[*?\[]")
_SHARD = re.compile(r"^(?P<split>.+)-(?P<i>\d+)-of-(?P<n>\d+)(?P<ext>\.[^.]+("  # train-00000-of-00002.jsonl(.gz)
                    + "|".join(map(re.escape, COMPRESSIONS)) + r")?)$")


def is_paths(source) -> bool:
    """``source`` names files (a path, or a list of paths), rather than holding records (a list
    of dicts, a DataFrame). A list's text items are paths when each looks like one: a data file's
    name, a pattern, or a file or folder that exists; else they are records (each then a bad one:
    not a dict)."""
    if isinstance(source, (str, os.PathLike)):
        return True
    return isinstance(source, (list, tuple)) and bool(source) and all(_looks_like_path(s) for s in source)


def _looks_like_path(item) -> bool:
    if isinstance(item, os.PathLike):
        return True
    return isinstance(item, str) and (is_data_file_name(item) or bool(_PATTERN.search(item))
                                      or Path(item).exists())


def given_paths(values: Sequence[str]) -> Path | list[Path]:
    """A command line's ``--data PATH [PATH ...]``: one path as itself, several as a list; as paths
    whatever their names (``notes.txt`` beside ``a.jsonl`` is a file of an unknown format, not a record)."""
    paths = [Path(v) for v in values]
    return paths[0] if len(paths) == 1 else paths


def data_files(source: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """The files ``source`` names, in reading order: a list in its own order, a folder's shards
    and a pattern's matches sorted by name.

    Refused, each naming what to pass instead: a missing file, a pattern that matches nothing,
    a folder that is not one split's shards (``train.jsonl`` beside ``test.jsonl`` would train
    on the test set), a folder or pattern that lacks a shard of its set (a download cut short; a
    shard named on its own is read), and a file named twice.
    """
    items = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    files: list[Path] = []
    for item in items:
        found = _expand(Path(item))
        if not Path(item).is_file():  # a folder or a pattern: all of a shard set, or a part may be missing
            _check_shards(found)
        files += found
    seen: dict[Path, Path] = {}
    for f in files:
        key = f.resolve()
        if key in seen:
            raise ValueError(f"{f}: named twice in the data ({seen[key]} already): each record would be trained on "
                             "twice")
        seen[key] = f
    return files


def describe(source) -> str:
    """How reports name ``source``: the path or pattern as given, or the files of a list."""
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    names = [str(s) for s in source]
    return ", ".join(names) if len(names) <= 3 else f"{names[0]} ... {names[-1]}"


def _expand(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        return _folder(path)
    if _PATTERN.search(str(path)):
        found = sorted(Path(p) for p in glob.glob(str(path), recursive=True)
                       if Path(p).is_file() and not beside_the_data(p))
        if not found:
            raise FileNotFoundError(f"{path}: the pattern matches no file")
        return found
    raise FileNotFoundError(f"{path}: no such data file")


def _folder(path: Path) -> list[Path]:
    """A folder's data files, when they are the shards of one split."""
    found = sorted(p for p in path.iterdir() if p.is_file() and is_data_file_name(p) and not beside_the_data(p))
    if not found:
        raise FileNotFoundError(f"{path}: a folder holding no data file ({NAMES})")
    names = first_few([p.name for p in found], 6)
    splits = sorted({m["split"] for m in map(_SHARD.match, (p.name for p in found)) if m})
    if len(found) > 1 and (len(splits) != 1 or not all(_SHARD.match(p.name) for p in found)):
        example = f"{path / splits[0]}-*" if splits else str(path / "*.jsonl")
        raise ValueError(f"{path}: a folder is read whole only when it holds one split's shards "
                         f"(train-00000-of-00002.parquet ...); it holds {names}. Name the files, or a pattern "
                         f"such as '{example}'")
    return found


def _check_shards(files: list[Path]) -> None:
    """Every shard of each set the files (a folder's, a pattern's) draw from is there."""
    sets: dict[tuple, set[int]] = defaultdict(set)
    for f in files:
        m = _SHARD.match(f.name)
        if m:
            sets[(f.parent, m["split"], m["n"], m["ext"])].add(int(m["i"]))
    for (parent, split, n, ext), have in sets.items():
        base = 1 if 0 not in have and int(n) in have else 0  # numbered from 0 (Hugging Face) or from 1
        missing = [i for i in range(base, int(n) + base) if i not in have]
        if missing:
            width = len(n)
            first = f"{split}-{missing[0]:0{width}d}-of-{n}{ext}"
            more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
            raise FileNotFoundError(f"{parent / first}{more} missing: the data holds {len(have)} of the {int(n)} "
                                    f"shards of {split!r} (a download cut short?)")
