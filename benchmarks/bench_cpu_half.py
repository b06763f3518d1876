"""Square matmuls on this CPU in float32, bfloat16 and float16: is 16-bit arithmetic native here?

prefopt warns where bfloat16 or float16 is asked for on a CPU without native arithmetic for it
(``prefopt.devices.slow_half``: no AVX-512 BF16/FP16 or AMX, as PyTorch's oneDNN checks report).
This times what that warning is about: the median of ``--reps`` products of two ``n × n``
matrices per dtype and size, in one process, and each 16-bit time as a ratio to float32's.

    .venv/bin/python benchmarks/bench_cpu_half.py --sizes 256 512 1024 --reps 3
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def timed(n: int, dtype: torch.dtype, reps: int) -> float:
    """Median seconds of ``reps`` products of two random ``n × n`` matrices in ``dtype`` (one untimed first)."""
    g = torch.Generator().manual_seed(n)
    a, b = (torch.randn(n, n, generator=g).to(dtype) for _ in range(2))
    a @ b
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--json", help="also write the rows here")
    a = ap.parse_args()
    native = {"bfloat16": torch.ops.mkldnn._is_mkldnn_bf16_supported(),
              "float16": torch.ops.mkldnn._is_mkldnn_fp16_supported()}
    print(f"CPU capability {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads, torch "
          f"{torch.__version__}; native: " + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in native.items()))
    rows = []
    for n in a.sizes:
        s = {str(dt).removeprefix("torch."): timed(n, dt, a.reps) for dt in DTYPES}
        rows.append({"n": n, **s})
    print("| n | float32 (s) | bfloat16 (s) | float16 (s) | bfloat16 / float32 | float16 / float32 |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['n']} | {r['float32']:.4f} | {r['bfloat16']:.4f} | {r['float16']:.4f} | "
              f"{r['bfloat16'] / r['float32']:.1f}x | {r['float16'] / r['float32']:.1f}x |")
    if a.json:
        Path(a.json).write_text(json.dumps({"native": native, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
