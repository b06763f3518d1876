"""Where a log-prob method's GPU time goes: one forward + backward under ``torch.profiler``.

Prints, for each method, the forward alone and forward + backward (medians of CUDA-event timed
runs) and the CUDA kernels of one profiled forward + backward, by their own time, so a method's
distance from the bare-GEMM limit of ``bench_logprobs.py`` can be placed (the forward kernel,
the dlogits recompute, the gradient GEMMs, copies and casts).

    python benchmarks/profile_logprobs.py                         # triton and onepass, D=4096 V=128256 N=16384
    python benchmarks/profile_logprobs.py --methods triton --frozen-weight --budget 67108864
    python benchmarks/profile_logprobs.py --methods onepass --frozen-weight --cpu-ops   # the host's side too
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_logprobs as bl  # noqa: E402


def _forward_only(name: str, a):
    """``fn(h, w, y)`` running the method's forward alone (None for the one-pass/Liger losses)."""
    from prefopt.kernels import chunked_logprobs, naive_logprobs, triton_logprobs

    blocks = json.loads(a.blocks) if a.blocks else None
    return {"naive": lambda h, w, y: naive_logprobs(h, w, y),
            "chunked": lambda h, w, y: chunked_logprobs(h, w, y, budget=a.budget),
            "triton": lambda h, w, y: triton_logprobs(h, w, y, blocks=blocks, budget=a.budget)}.get(name)


def profile(name: str, N: int, D: int, V: int, a) -> None:
    import torch
    from torch.profiler import ProfilerActivity

    dtype = getattr(torch, a.dtype)
    h, w, y, up = bl._inputs(N, D, V, dtype, bl.DEVICE, frozen_weight=a.frozen_weight)
    fn = bl._method(name, a.seq_len, json.loads(a.blocks) if a.blocks else None, a.budget)

    def step():
        h.grad = w.grad = None
        fn(h, w, y, up)
    line = f"\n## {name}  D={D} V={V} N={N}  weight {'frozen' if a.frozen_weight else 'trainable'}"
    fwd = _forward_only(name, a)
    if fwd is not None:
        with torch.no_grad():
            line += f"  forward {bl._cuda_time(lambda: fwd(h, w, y), a.reps) * 1e3:.2f} ms"
    line += f"  fwd+bwd {bl._cuda_time(step, a.reps) * 1e3:.2f} ms"
    print(line)
    activities = [ProfilerActivity.CUDA] + ([ProfilerActivity.CPU] if a.cpu_ops else [])
    with torch.profiler.profile(activities=activities) as prof:
        step()
        torch.cuda.synchronize()
    events = prof.key_averages()
    print(events.table(sort_by="self_device_time_total", row_limit=a.rows, max_name_column_width=70))
    if a.cpu_ops:  # the host side: where a method that launches many small operations spends its time
        print(events.table(sort_by="self_cpu_time_total", row_limit=a.rows, max_name_column_width=70))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", nargs="+", default=["triton", "onepass"])
    ap.add_argument("--shape", default="4096x128256", help="DxV")
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--rows", type=int, default=12, help="kernels listed per method")
    ap.add_argument("--frozen-weight", action="store_true")
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--blocks")
    ap.add_argument("--budget", type=int)
    ap.add_argument("--cpu-ops", action="store_true", help="also profile the host: PyTorch ops by CPU time")
    return ap.parse_args(argv)


def main() -> None:
    a = parse_args()
    import torch

    if not torch.cuda.is_available():
        sys.exit("profile_logprobs.py needs a CUDA GPU")
    D, V = map(int, a.shape.split("x"))
    print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}  dtype {a.dtype}  "
          f"budget {a.budget or 'default'}  blocks {a.blocks or 'default'}")
    for m in a.methods:
        profile(m, a.tokens, D, V, a)


if __name__ == "__main__":
    main()
