"""Which weights a model is, by their bytes: :func:`weights_sha256`. A calibration
(``calibration.json``) records it, so that the same weights in another folder (copied to the
machine that predicts) are told from other weights saved at the same path; so do predict.json,
make_pairs.json and an evaluation's ``evaluated`` (which weights made them), and an adapter's
weights file (the base it was trained on: :func:`~prefopt.lora_files.base_mismatch`).

Reading an 8B model's 16 GB takes some seconds, so each digest is kept in prefopt's cache
(``weights_sha256.json`` in :func:`~.hub.cache_dir`) under the model's path and its files' sizes
and modification times (:func:`~.hub.path_stamp`): a model is read once until one of its files
is saved again."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from .._deps import progress
from ..fileio import read_json, write_json_atomic
from .hub import cache_dir, is_gguf, local_model_path, path_stamp

CACHE = "weights_sha256.json"  # in cache_dir(): {absolute path: {"files": path_stamp, "sha256": digest}}
BAR_BYTES = 1 << 30  # a bar while hashing this much or more (SHA-256 reads about 1 GB a second)


def weights_sha256(name: str | os.PathLike | None, *, show_progress: bool = True) -> str | None:
    """The SHA-256 of a model's files on this machine (:func:`~.hub.path_stamp`'s: a folder's
    ``.safetensors`` and ``config.json``, each by name, size and bytes in name order; an alias's
    and a GGUF file's imported folder's, the weights they load from; a hub id's snapshot in the
    local hub cache), read from the cache where none of them changed since; None where its files
    are not here (a hub id not downloaded yet, an alias or GGUF file not imported yet), for a folder
    that holds neither weights nor ``config.json``, and for no model."""
    path = None if name is None else local_model_path(name)  # (found once: a hub id's is a lookup in its cache)
    if path is None:
        return None
    path = path.resolve()
    stamp = path_stamp(path)
    if not stamp:  # (a folder without weights or config.json: nothing to tell it by)
        return None
    cache = _read_cache()
    kept = cache.get(str(path))
    if isinstance(kept, dict) and kept.get("files") == stamp and isinstance(kept.get("sha256"), str):
        return kept["sha256"]
    digest = _digest([path] if path.is_file() else [path / f[0] for f in stamp], show_progress)
    if path_stamp(path) == stamp:  # (not saved again while it was read)
        cache = _read_cache()  # (another process may have added its own since)
        cache[str(path)] = {"files": stamp, "sha256": digest}
        try:
            cache_dir().mkdir(parents=True, exist_ok=True)
            write_json_atomic(cache_dir() / CACHE, cache)
        except OSError:  # a read-only cache: the digest is right, only not kept
            pass
    return digest


def gguf_file_sha256(name: str | os.PathLike | None) -> str | None:
    """:func:`weights_sha256` of a GGUF file as an earlier prefopt gave it: the file's own bytes,
    not its imported folder's, as a calibration.json of then records it (so that one, given the
    same file, still serves); None for any other name. Not kept in the cache (a GGUF model's
    cached digest is its folder's)."""
    if not is_gguf(name) or not Path(name).is_file():
        return None
    return _digest([Path(name)], show_progress=True)


def _digest(files: list[Path], show_progress: bool) -> str:
    """SHA-256 over ``files``: each one's name and size, then its bytes."""
    total = sum(p.stat().st_size for p in files)
    h = hashlib.sha256()
    bar = progress(total=total, unit="B", unit_scale=True, desc="hashing the model's weights",
                   disable=not show_progress or total < BAR_BYTES)
    try:
        for p in files:
            h.update(f"{p.name}\0{p.stat().st_size}\0".encode())
            with open(p, "rb") as f:
                for block in iter(lambda: f.read(1 << 24), b""):
                    h.update(block)
                    bar.update(len(block))
    finally:
        bar.close()
    return h.hexdigest()


def _read_cache() -> dict:
    """The cache's digests; {} where there is none yet, or it cannot be read (it is only a cache)."""
    path = cache_dir() / CACHE
    try:
        cache = read_json(path)
    except (OSError, ValueError):
        return {}
    return dict(cache)


__all__ = ["CACHE", "gguf_file_sha256", "weights_sha256"]
