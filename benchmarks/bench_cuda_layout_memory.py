"""Extra peak memory of the CUDA paths' block and stage arrangement, emulated on the CPU.

Issue 5's memory goal (extra peak ≤ 256 MB at D=4096, V=128256, N=16384, bf16) depends on the
sizes of the blocks and stages the CUDA paths allocate, not on the GPU. This runs them on the CPU
at that shape in bf16 with CUDA's arrangement switched on: 128-token logits blocks and whole-tile
vocabulary slabs (``_backward.GEMM_ROWS``), and the one-pass loss's 512-token bf16 stages
(``onepass.STAGE_DEVICES``). Each method runs once in a fresh process; "extra peak" is the peak
RSS beyond the process before the run, less the gradients' own size, as ``bench_logprobs.py``
counts on CPU and (with the allocator's peak) on CUDA.

Where the CPU differs from CUDA, so read the figures as close estimates:
- a half-precision GEMM's fp32 result passes through a bf16 tensor on the CPU (``mm_acc``; CUDA
  writes fp32 directly): one more bf16 block (32 MiB at 128 tokens) at the forward's peak;
- the elementwise work is PyTorch's in-place ops, not the Triton row kernels (which allocate
  nothing more);
- RSS counts pages glibc keeps, the CUDA allocator counts tensors' blocks. The bf16 blocks at
  Llama's head are 31 MiB, just under glibc's 32 MiB mmap ceiling, so freed ones can stay
  resident in the heap (the frozen chunked row: 690 MiB of RSS, 128 MiB of tensors). ``--tensors``
  counts the tensors' storage instead (what ``torch.cuda.max_memory_allocated`` counts) and lists
  what is alive at the peak: the figure to compare with the goal.
- with a small head (V × D ≤ ``SUM_ELEMENTS``) the weight gradient is summed in fp32, and the
  CPU (no ``out_dtype``) converts the stage to fp32 for that GEMM; CUDA does not, and Llama's
  head sums in bf16.

    python benchmarks/bench_cuda_layout_memory.py --tensors            # the goal shape, about 3 min
    python benchmarks/bench_cuda_layout_memory.py --shape 2048 4096 128256 --methods onepass
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_logprobs as bl  # noqa: E402
from _common import rss  # noqa: E402

MiB = 1 << 20
METHODS = {  # name: (bench_logprobs method, frozen head)
    "onepass": ("onepass", False),  # the one-pass DPO loss, trainable head (sigmoid, 64-token answers)
    "onepass-frozen": ("onepass", True),
    "chunked-frozen": ("chunked", True),  # per-token log-probs, frozen head: the gradient formed in the forward
}


def cuda_layout() -> dict:
    """Switch on CUDA's arrangement for CPU tensors; return the sizes it gives (for the record)."""
    import torch

    import prefopt.kernels._backward as backward
    import prefopt.kernels.onepass as onepass

    backward.GEMM_ROWS = {**backward.GEMM_ROWS, "cpu": backward.GEMM_ROWS["cuda"]}
    onepass.STAGE_DEVICES = (*onepass.STAGE_DEVICES, "cpu")
    return {"gemm_rows": backward.gemm_rows(torch.device("cpu"))}


def live_tensors(inputs):
    """A dispatch mode that tracks the storage of every tensor an operation returns while any
    tensor on it is alive: the peak of their sum is what a caching allocator would count (the
    storage of ``inputs``, views of them included, excluded), and what was alive at that peak,
    largest first (``at_peak``: (bytes, shape, dtype))."""
    import weakref

    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    class LiveTensors(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.refs, self.sizes, self.peak, self.at_peak = {}, {}, 0, []
            self.inputs = {t.untyped_storage().data_ptr() for t in inputs}

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor) and t.device.type == "cpu" and t.untyped_storage().nbytes():
                    key = t.untyped_storage().data_ptr()
                    if key in self.inputs:
                        continue
                    self.refs.setdefault(key, []).append((weakref.ref(t), tuple(t.shape), str(t.dtype)))
                    self.sizes[key] = t.untyped_storage().nbytes()
            self.refs = {k: v for k, v in self.refs.items() if any(r() is not None for r, _, _ in v)}
            total = sum(self.sizes[k] for k in self.refs)
            if total > self.peak:
                self.peak = total
                self.at_peak = sorted(((self.sizes[k], v[0][1], v[0][2]) for k, v in self.refs.items()), reverse=True)
            return out
    return LiveTensors()


def worker(name: str, N: int, D: int, V: int, seq_len: int, tensors: int = 0) -> dict:
    import torch

    import prefopt.kernels.onepass as onepass

    torch.set_num_threads(2)
    sizes = cuda_layout()
    method, frozen = METHODS[name]
    rows = onepass.chunk_rows(None, V, torch.device("cpu"))
    sizes.update(block_tokens=rows, stage_tokens=onepass.stage_rows(rows, V, torch.device("cpu")))
    h, w, y, up = bl._inputs(N, D, V, torch.bfloat16, "cpu", frozen_weight=frozen)
    fn = bl._method(method, seq_len)
    grads = (h.numel() + w.numel() * w.requires_grad) * h.element_size()
    if tensors:  # the tensors' own count, slower (every operation checks what is alive)
        with live_tensors((h, w, y, up)) as mode:
            t0 = time.perf_counter()
            fn(h, w, y, up)
            seconds = time.perf_counter() - t0
        top = [f"{n / MiB:.0f} MiB {list(shape)} {dtype.removeprefix('torch.')}" for n, shape, dtype in mode.at_peak[:8]]
        return {"method": name, "extra_peak": mode.peak - grads, "grads": grads, "seconds": seconds,
                "at_peak": top, **sizes}
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak-RSS counter
    base = rss("VmRSS")
    t0 = time.perf_counter()
    fn(h, w, y, up)
    seconds = time.perf_counter() - t0
    peak = rss("VmHWM")
    return {"method": name, "extra_peak": peak - base - grads, "grads": grads, "seconds": seconds, **sizes}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", nargs=3, type=int, default=[16384, 4096, 128256], metavar=("N", "D", "V"))
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--seq-len", type=int, default=64, help="tokens per answer for the one-pass DPO loss")
    ap.add_argument("--json", help="also write the rows here")
    ap.add_argument("--tensors", action="store_true",
                    help="count the tensors' storage (what a caching allocator counts) instead of the RSS, and list "
                         "what is alive at the peak")
    ap.add_argument("--worker", nargs=6, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        name, *dims = a.worker
        print(json.dumps(worker(name, *map(int, dims))))
        return
    N, D, V = a.shape
    rows = []
    for m in a.methods:
        out = subprocess.run([sys.executable, __file__, "--worker", m, str(N), str(D), str(V), str(a.seq_len),
                              str(int(a.tensors))], capture_output=True, text=True)
        if out.returncode:
            sys.exit(f"{m} failed:\n{out.stderr[-2000:]}")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    what = "tensors' storage" if a.tensors else "RSS"
    print(f"CUDA arrangement emulated on the CPU, bf16, N={N} D={D} V={V}, extra peak by {what}, "
          f"date {time.strftime('%Y-%m-%d')}")
    print(f"| method | block / stage (tokens) | extra peak, {what} (MiB) | within 256 MB | fwd+bwd on this CPU (s) |")
    print("|---|---|---|---|---|")
    for r in rows:
        stage = r["stage_tokens"] if r["method"].startswith("onepass") else "-"
        print(f"| {r['method']} | {r['block_tokens']} / {stage} | {r['extra_peak'] / MiB:.0f} | "
              f"{'yes' if r['extra_peak'] <= 256e6 else 'no'} | {r['seconds']:.1f} |")
    for r in rows:
        if r.get("at_peak"):
            print(f"{r['method']}, alive at the peak (inputs excluded): " + "; ".join(r["at_peak"]))
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
