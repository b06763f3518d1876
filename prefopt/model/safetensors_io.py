"""Reading and writing safetensors files, tensor by tensor.

Reading goes through plain ``readinto`` into the destination tensor rather than a
memory map, so a file's pages are not counted twice (once mapped, once copied):
loading a model costs about one copy of its weights. Only safetensors is read;
pickle-based checkpoints (``*.bin``, ``*.pt``) are refused elsewhere.
"""
from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import torch

_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
_MAX_HEADER = 100 * 1024 * 1024


def read_header(path: str | Path) -> dict:
    """The JSON header of a safetensors file: ``{name: {dtype, shape, data_offsets}}``."""
    with open(path, "rb") as f:
        return _header(f, path)[0]


def read_metadata(path: str | Path) -> dict:
    """The ``__metadata__`` of a safetensors file's header (string keys and values): {} where it has none."""
    with open(path, "rb") as f:
        return _header(f, path, keep_metadata=True)[0].get("__metadata__") or {}


def _header(f, path, keep_metadata: bool = False) -> tuple[dict, int]:
    raw = f.read(8)
    if len(raw) != 8:
        raise ValueError(f"{path}: not a safetensors file (shorter than 8 bytes)")
    (n,) = struct.unpack("<Q", raw)
    if n > _MAX_HEADER:
        raise ValueError(f"{path}: not a safetensors file (header length {n})")
    try:
        header = json.loads(f.read(n))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ValueError(f"{path}: not a safetensors file (unreadable header)") from None
    if not keep_metadata:
        header.pop("__metadata__", None)
    return header, 8 + n


def file_problem(path: str | Path) -> str | None:
    """Why the safetensors file at ``path`` is not whole (missing, empty, cut short, longer than
    its header says, an unreadable header), or None; reads its header only."""
    path = Path(path)
    if not path.is_file():
        return f"{path.name} is missing"
    size = path.stat().st_size
    if size == 0:
        return f"{path.name} is empty"
    try:
        with open(path, "rb") as f:
            header, base = _header(f, path)
        end = max((info["data_offsets"][1] for info in header.values()), default=0)
    except (ValueError, TypeError, KeyError, IndexError) as e:
        return f"{path.name}: {str(e).removeprefix(f'{path}: ')}"
    if size != base + end:
        return f"{path.name} is {'cut short' if size < base + end else 'longer than its header says'}: " \
               f"{size} bytes of {base + end}"
    return None


def iter_tensors(
    path: str | Path, names: set[str] | None = None
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, tensor)`` from one file in storage order, each in its stored dtype."""
    with open(path, "rb") as f:
        header, base = _header(f, path)
        items = sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0])
        for name, info in items:
            if names is not None and name not in names:
                continue
            if info["dtype"] not in _DTYPES:
                raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {info['dtype']}")
            start, end = info["data_offsets"]
            t = torch.empty(info["shape"], dtype=_DTYPES[info["dtype"]])
            if t.numel() * t.element_size() != end - start:
                raise ValueError(f"{path}: tensor {name!r}: shape {info['shape']} does not match its byte size")
            if end > start:
                f.seek(base + start)
                buf = memoryview(t.reshape(-1).view(torch.uint8).numpy())
                if f.readinto(buf) != end - start:
                    raise ValueError(f"{path}: truncated file while reading {name!r}")
            yield name, t


def save_file_atomic(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict | None = None) -> None:
    """Write a safetensors file to a temporary name, then rename it into place, its data on the
    disk first (:func:`prefopt.fileio.atomic_path`)."""
    from safetensors.torch import save_file

    from ..fileio import atomic_path

    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)


class ShardWriter:
    """Write tensors into ``model.safetensors``, or into shards of at most ``max_bytes``.

    Tensors are handed over one at a time and written once a shard is full, so a
    converter never holds more than one shard in memory. :meth:`close` gives the shards
    their final names (``model-00001-of-0000N.safetensors``), writes the index when
    there is more than one, and removes weight files left by an earlier save.
    """

    def __init__(self, out_dir: str | Path, max_bytes: int = 5 * 1024**3):
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self._pending: dict[str, torch.Tensor] = {}
        self._pending_bytes = 0
        self._written: list[tuple[Path, list[str]]] = []
        self.total_bytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        n = tensor.numel() * tensor.element_size()
        if self._pending and self._pending_bytes + n > self.max_bytes:
            self._flush()
        self._pending[name] = tensor
        self._pending_bytes += n
        self.total_bytes += n

    def _flush(self) -> None:
        tmp = self.out / f".shard-{len(self._written):05d}.tmp-{os.getpid()}"
        save_file_atomic(self._pending, tmp, metadata={"format": "pt"})
        self._written.append((tmp, list(self._pending)))
        self._pending, self._pending_bytes = {}, 0

    def close(self) -> list[Path]:
        from ..fileio import sync_folder, write_json_atomic

        if self._pending or not self._written:
            self._flush()
        n = len(self._written)
        names = ["model.safetensors"] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        final = []
        for (tmp, _), name in zip(self._written, names):
            os.replace(tmp, self.out / name)
            final.append(self.out / name)
        sync_folder(self.out)
        index = self.out / "model.safetensors.index.json"
        if n > 1:
            weight_map = {k: name for (_, keys), name in zip(self._written, names) for k in keys}
            write_json_atomic(index, {"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map})
        keep = set(final) | ({index} if n > 1 else set())
        for stale in self.out.glob("model*.safetensors*"):
            if stale not in keep:
                stale.unlink()
        return final
