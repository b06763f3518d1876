"""An on-disk cache of reference log-probs, so DPO needs no reference forward while training.

Layout of a cache folder::

    index.json               {"fingerprint": {...}, "entries": {example_key: [shard, row]}}
    shard-00000.safetensors  "chosen" (n,), "rejected" (n,) float32 sequence log-prob sums

- An example's key hashes exactly what the model sees (both token sequences and the prompt
  length), so a changed record, tokenizer or truncation gives a new key.
- The fingerprint describes the reference: its config, a digest of its weights (so a merged
  SFT adapter counts), dtype, and the tokenizer and truncation settings. A different
  fingerprint makes the whole cache stale: it is cleared and rebuilt, never reused.
- New examples extend the cache. A fill keeps the batches it has computed in memory and writes
  them as one shard, then the index, every ``FLUSH_SECONDS`` (30 s) and when it ends or is
  interrupted by an exception (Ctrl-C, running out of memory); both are written atomically, so
  an interrupted precompute resumes where it stopped, and a process killed outright (SIGKILL)
  computes at most the last 30 s again. (Writing every batch rewrote the whole index each time:
  with 20,000 pairs in batches of 16, 61 s of writing on a 2-core CPU against 0.7 s now, growing
  with the square of the pairs; ``benchmarks/bench_refcache_writes.py``, docs/benchmarks.md.)
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file

from ._deps import progress
from .fileio import read_json, write_text_atomic
from .model.safetensors_io import save_file_atomic

VERSION = 1
FLUSH_SECONDS = 30.0  # a fill writes what it has computed this often (and at its end)


def weights_digest(named_tensors) -> str:
    """blake2b over every tensor's name, dtype, shape and bytes, in order. A sharded tensor (an
    FSDP2 model's DTensor) is gathered whole first, so every rank must call it together, and the
    digest is the unsharded model's."""
    h = hashlib.blake2b(digest_size=16)
    for name, t in named_tensors:
        if hasattr(t, "full_tensor"):  # a DTensor: this rank holds a shard
            t = t.full_tensor()
        t = t.detach().contiguous().cpu()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def reference_fingerprint(*, config: dict, named_tensors, dtype: str, tokenizer_files: Sequence[Path],
                          max_length: int, max_prompt_length: int | None, extra: dict | None = None) -> dict:
    """What the cached numbers depend on, besides each example's own tokens."""
    tok = hashlib.blake2b(digest_size=16)
    for p in tokenizer_files:
        if Path(p).is_file():
            tok.update(Path(p).read_bytes())
    return {"version": VERSION, "config": config, "weights": weights_digest(named_tensors), "dtype": dtype,
            "tokenizer": tok.hexdigest(), "max_length": max_length, "max_prompt_length": max_prompt_length,
            **(extra or {})}


class RefCache:
    """Reference log-probs by example key; see the module docstring."""

    def __init__(self, root: str | Path, fingerprint: dict, *, log: Callable[[str], None] = print):
        self.root = Path(root)
        self.fingerprint = json.loads(json.dumps(fingerprint))  # normalised as stored
        self.log = log
        self.reload()

    def reload(self) -> None:
        """(Re-)read the index. Nothing is written or deleted here: a stale cache is only
        noted (``stale_reason``) and wiped by the first :meth:`add`, so ranks other than
        the one that fills the cache can open it read-only and ``reload()`` after it is done."""
        self.entries: dict[str, tuple[int, int]] = {}
        self._values: dict[str, tuple[float, float]] = {}
        self.stale_reason: str | None = None
        index = self.root / "index.json"
        if index.is_file():
            try:
                d = read_json(index)
                if d.get("fingerprint") == self.fingerprint:
                    self.entries = {k: tuple(v) for k, v in d["entries"].items()}
            except ValueError as e:  # cut short by a crash, or edited by hand: rebuilt, not a traceback
                d = {"unreadable": f"index.json{str(e).removeprefix(str(index))}"}  # (the cache's folder said below)
            if d.get("fingerprint") != self.fingerprint or "unreadable" in d:
                self.stale_reason = d.get("unreadable") or _diff(d.get("fingerprint") or {}, self.fingerprint)
                self.log(f"prefopt: reference cache {self.root} is stale ({self.stale_reason}); it will be rebuilt")
        self._wipe = self.stale_reason is not None
        self._n_shards = len({s for s, _ in self.entries.values()})

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def missing(self, keys: Sequence[str]) -> list[str]:
        return [k for k in dict.fromkeys(keys) if k not in self.entries]

    def add(self, keys: Sequence[str], chosen: torch.Tensor, rejected: torch.Tensor) -> None:
        """Write one shard for these examples, then the index (both atomically)."""
        if self._wipe:  # a stale cache: its shards belong to another reference
            shutil.rmtree(self.root)
            self._wipe = False
        self.root.mkdir(parents=True, exist_ok=True)
        shard = self._n_shards
        save_file_atomic({"chosen": chosen.float().cpu(), "rejected": rejected.float().cpu()},
                         self.root / f"shard-{shard:05d}.safetensors")
        for row, k in enumerate(keys):
            self.entries[k] = (shard, row)
        self._n_shards += 1
        index = {"fingerprint": self.fingerprint, "entries": self.entries}  # one line: it is rewritten with each shard
        write_text_atomic(self.root / "index.json", json.dumps(index, ensure_ascii=False, separators=(",", ":")) + "\n")

    def get(self, keys: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(chosen, rejected)`` float32 ``(len(keys),)``; KeyError for a key not cached."""
        if not self._values:
            self._load_all()
        vals = [self._values[k] for k in keys]
        return torch.tensor([v[0] for v in vals]), torch.tensor([v[1] for v in vals])

    def _load_all(self) -> None:
        by_shard: dict[int, list[tuple[str, int]]] = {}
        for k, (s, r) in self.entries.items():
            by_shard.setdefault(s, []).append((k, r))
        for s, rows in by_shard.items():
            t = load_file(self.root / f"shard-{s:05d}.safetensors")
            chosen, rejected = t["chosen"].tolist(), t["rejected"].tolist()  # (a tensor's items one by one: µs each)
            for k, r in rows:
                self._values[k] = (chosen[r], rejected[r])

    def fill(self, pairs: Sequence, compute: Callable[[list], tuple[torch.Tensor, torch.Tensor]], *,
             batch_size: int, show_progress: bool = True, unit: str = "pair",
             flush_seconds: float | None = None, write: bool = True) -> int:
        """Compute and store the reference log-probs of every pair not cached yet (``unit``:
        what the progress bar counts them as; KTO's examples are pairs too).

        ``compute(pairs) -> (chosen, rejected)`` runs the reference on one batch. The batches
        computed are written as one shard every ``flush_seconds`` (default :data:`FLUSH_SECONDS`),
        at the end, and when an exception stops the fill, so an interrupted fill resumes. Pairs
        (anything with ``key`` and ``input_ids``) are batched longest first. ``write=False``:
        compute only (a torchrun rank other than 0, whose ``compute`` shares the work; rank 0
        writes). Returns how many were computed.
        """
        every = FLUSH_SECONDS if flush_seconds is None else flush_seconds
        todo = {p.key: p for p in pairs if p.key not in self.entries}
        # longest first: batches of similar length pad little, and a batch too big fails at once
        items = sorted(todo.values(), key=lambda p: len(p.input_ids), reverse=True)
        bar = progress(total=len(items), desc="reference log-probs", unit=unit, disable=not show_progress)
        keys: list[str] = []
        chosen: list[torch.Tensor] = []
        rejected: list[torch.Tensor] = []

        def flush() -> None:
            if keys:
                self.add(keys, torch.cat(chosen), torch.cat(rejected))
                keys.clear()
                chosen.clear()
                rejected.clear()

        written = time.monotonic()
        try:
            for s in range(0, len(items), batch_size):
                chunk = items[s:s + batch_size]
                with torch.no_grad():
                    c, r = compute(chunk)
                if write:
                    keys.extend(p.key for p in chunk)
                    chosen.append(c.detach().float().cpu().reshape(-1))
                    rejected.append(r.detach().float().cpu().reshape(-1))
                bar.update(len(chunk))
                if time.monotonic() - written >= every:
                    flush()
                    written = time.monotonic()
        finally:  # the batches done, also when an exception (Ctrl-C, out of memory) ends the fill
            bar.close()
            flush()
            self._values = {}
        return len(items)


def _diff(old: dict, new: dict) -> str:
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return "changed: " + ", ".join(changed) if changed else "unreadable index"
