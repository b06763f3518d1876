"""What the reference cache's own writing costs during a fill, apart from the reference's forward.

``RefCache.fill`` on synthetic pairs whose "reference forward" returns zeros at once (or sleeps
``--compute-ms`` a batch, as a GPU's forward would take): the time left is the cache's, writing
its shards and its index. Run it at two commits to compare them (``PYTHONPATH=OTHER_CHECKOUT``):
the script uses only ``fill``'s long-standing arguments.

    .venv/bin/python benchmarks/bench_refcache_writes.py --pairs 2000 20000 --batch-size 16
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import NamedTuple


class Pair(NamedTuple):
    key: str
    input_ids: list[int]


def fill_once(n: int, batch_size: int, compute_ms: float) -> dict:
    import torch

    from prefopt.refcache import RefCache

    pairs = [Pair(hashlib.sha256(str(i).encode()).hexdigest()[:32], [0] * (1 + i % 97)) for i in range(n)]

    def compute(chunk):
        if compute_ms:
            time.sleep(compute_ms / 1000)
        return torch.zeros(len(chunk)), torch.zeros(len(chunk))

    root = Path(tempfile.mkdtemp(prefix="refcache-bench-"))
    try:
        cache = RefCache(root, {"bench": 1}, log=lambda _: None)
        t0 = time.perf_counter()
        assert cache.fill(pairs, compute, batch_size=batch_size, show_progress=False) == n
        seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        reopened = RefCache(root, {"bench": 1}, log=lambda _: None)
        reopened.get([pairs[-1].key])
        load = time.perf_counter() - t0
        files = list(root.iterdir())
        return {"pairs": n, "seconds": seconds, "compute_seconds": compute_ms / 1000 * -(-n // batch_size),
                "load_seconds": load, "files": len(files), "bytes": sum(f.stat().st_size for f in files)}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, nargs="+", default=[2000, 20000])
    ap.add_argument("--batch-size", type=int, default=16, help="pairs per reference forward (a step's 4 x 4)")
    ap.add_argument("--compute-ms", type=float, default=0.0, help="each batch's reference forward, slept")
    ap.add_argument("--json", help="also write the rows here")
    a = ap.parse_args()
    import prefopt

    try:
        rev = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=Path(prefopt.__file__).parent,
                             capture_output=True, text=True).stdout.strip() or "?"
    except OSError:
        rev = "?"
    print(f"prefopt at {rev} ({Path(prefopt.__file__).parent}), batches of {a.batch_size}, "
          f"reference forward {a.compute_ms:g} ms a batch, date {time.strftime('%Y-%m-%d')}")
    print("| pairs | fill (s) | of which the forward (s) | cache writing (s) | per 1000 pairs (s) | files | "
          "on disk (MiB) | reopen and read (s) |\n|---|---|---|---|---|---|---|---|")
    rows = []
    for n in a.pairs:
        r = fill_once(n, a.batch_size, a.compute_ms)
        own = r["seconds"] - r["compute_seconds"]
        print(f"| {n} | {r['seconds']:.2f} | {r['compute_seconds']:.2f} | {own:.2f} | {1000 * own / n:.3f} | "
              f"{r['files']} | {r['bytes'] / 2**20:.2f} | {r['load_seconds']:.2f} |", flush=True)
        rows.append(r)
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
