"""Forward + backward of per-token log-probs through the lm_head: time and peak memory, one run.

Every method computes ``logp[i] = log_softmax(h[i] @ Wᵀ)[y[i]]`` for N tokens and back-propagates
a random upstream gradient into ``h`` (N, D) and ``W`` (V, D).

GPU (CUDA, bf16 by default) -- shapes Llama-3-8B (D=4096, V=128256) and SmolLM2 (D=576,
V=49152), N in {4096, 16384}:
- ``naive``: full logits, ``log_softmax``, gather; ``compile``: the same under ``torch.compile``
- ``chunked``: prefopt's PyTorch path; ``triton``: prefopt's fused Triton kernel
- ``onepass``: prefopt's ``fused_preference_loss(reduction="sum")`` with the lm_head gradients
  formed in the forward (a sigmoid DPO loss over ``--seq-len``-token answers, stacked
  ``[chosen; rejected]``; the default 64 is a short medical answer, and a pair fits one
  2^24-logit chunk at V=128256)
- ``liger``: Liger-Kernel's ``LigerFusedLinearDPOLoss`` (no reference model; the same
  ``--seq-len``-token sequences, one pair per chunk, its default), where installed
- ``cce``: Apple's cut-cross-entropy ``linear_cross_entropy(reduction="none")``, where installed;
  ``cce-exact``: the same with ``filter_eps=None`` (its default skips negligible gradient tiles)
- ``gemm limit``: the three bare GEMMs the work needs (``h·Wᵀ``, ``dlogits·W``, ``dlogitsᵀ·h``);
  each method is also reported as a multiple of that time.
"Extra peak" is the CUDA peak allocated minus the inputs and the gradients' own size; times are
medians of ``--reps`` runs. ``--frozen-weight`` drops the weight gradient (the LoRA case: the
limit is then two GEMMs). ``benchmarks/gpu_session.sh`` runs the checks, the tables and a tile sweep on a lent GPU.

CPU (fp32): ``naive`` against ``chunked`` (and ``onepass`` with a trainable head) at N=4096,
D=576, V=49152, each in a fresh process; "extra peak" is the peak RSS beyond the process after
allocating inputs, minus the gradients.
With ``--frozen-weight`` also ``chunked-recompute``: the frozen-head backward that recomputes
the logits instead of using the hidden-state gradient formed in the forward.

    python benchmarks/bench_logprobs.py                  # CPU comparison (what CI machines can run)
    python benchmarks/bench_logprobs.py --frozen-weight --cpu-reps 3   # the same, frozen head (LoRA)
    python benchmarks/bench_logprobs.py --gpu            # the GPU table (needs CUDA)
    python benchmarks/bench_logprobs.py --gpu --shapes 576x49152 --tokens 4096
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import rss  # noqa: E402

MiB = 1024**2
DEVICE = "cuda"  # the GPU table's device (tests run its code on CPU with stand-in timers)


def _inputs(N, D, V, dtype, device, seed=0, frozen_weight=False):
    import torch

    g = torch.Generator(device="cpu").manual_seed(seed)
    h = (torch.randn(N, D, generator=g)).to(device, dtype).requires_grad_()
    w = (torch.randn(V, D, generator=g) * D**-0.5).to(device, dtype).requires_grad_(not frozen_weight)
    y = torch.randint(0, V, (N,), generator=g).to(device)
    up = torch.randn(N, generator=g).to(device)
    return h, w, y, up


def _method(name: str, seq_len: int = 64, blocks: dict | None = None, budget: int | None = None):
    """``fn(h, w, y, up)`` running forward + backward for method ``name``."""
    import torch

    from prefopt.kernels import chunked_logprobs, naive_logprobs, triton_logprobs

    if name == "naive":
        return lambda h, w, y, up: (naive_logprobs(h, w, y) * up).sum().backward()
    if name == "chunked":
        return lambda h, w, y, up: (chunked_logprobs(h, w, y, budget=budget) * up).sum().backward()
    if name == "chunked-recompute":  # the frozen-head backward as it was: recompute the logits
        return lambda h, w, y, up: (chunked_logprobs(h, w, y, budget=budget, grad_in_forward=False)
                                    * up).sum().backward()
    if name == "onepass":
        from prefopt.kernels import fused_preference_loss

        def run(h, w, y, up):  # a DPO loss, like liger's: the upstream per-token gradient is its own
            hs, ys = h.reshape(-1, seq_len, h.shape[-1]), y.reshape(-1, seq_len)
            ref = torch.zeros(hs.shape[0] // 2, device=h.device)
            out, _ = fused_preference_loss(hs, w, ys, ref, ref, "sigmoid", beta=0.1, reduction="sum",
                                           one_pass=True, budget=budget)
            out.losses.backward()
        return run
    if name == "triton":
        return lambda h, w, y, up: (triton_logprobs(h, w, y, blocks=blocks, budget=budget) * up).sum().backward()
    if name == "compile":
        fn = torch.compile(naive_logprobs)
        return lambda h, w, y, up: (fn(h, w, y) * up).sum().backward()
    if name == "liger":
        from liger_kernel.chunked_loss import LigerFusedLinearDPOLoss

        loss = LigerFusedLinearDPOLoss(beta=0.1, compute_nll_loss=False, use_ref_model=False)

        def run(h, w, y, up):  # stacked [chosen; rejected] sequences of seq_len tokens; one pair per chunk
            out = loss(w, h.reshape(-1, seq_len, h.shape[-1]), y.reshape(-1, seq_len))
            (out[0] if isinstance(out, tuple) else out).backward()
        return run
    if name in ("cce", "cce-exact"):
        from cut_cross_entropy import linear_cross_entropy

        # CCE's default (filter_eps="high") skips backward blocks whose gradient entries are all
        # below the dtype's eps / 32; "cce-exact" turns that off, to compare like with like
        kw = {"filter_eps": None} if name == "cce-exact" else {}
        return lambda h, w, y, up: (-linear_cross_entropy(h, w, y, reduction="none", **kw) * up).sum().backward()
    raise ValueError(name)


def _gemms(N, D, V, dtype, frozen_weight=False):
    """The bare GEMMs as a function to time: ``h·Wᵀ``, ``dlogits·W`` and (unless the weight is
    frozen) ``dlogitsᵀ·h``."""
    import torch

    h = torch.randn(N, D, device=DEVICE, dtype=dtype)
    w = torch.randn(V, D, device=DEVICE, dtype=dtype) * D**-0.5
    dl = torch.empty(N, V, device=DEVICE, dtype=dtype)

    def run():
        torch.mm(h, w.T, out=dl)
        torch.mm(dl, w)
        if not frozen_weight:
            torch.mm(dl.T, h)
    return run


def _event_seconds(fn) -> float:
    """Seconds of one ``fn()`` on the GPU, from CUDA events."""
    import torch

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1000


def _cuda_time(fn, reps):
    """Median seconds of ``reps`` runs after one warm-up, each timed with CUDA events."""
    import statistics

    import torch

    fn()
    torch.cuda.synchronize()
    return statistics.median(_event_seconds(fn) for _ in range(reps))


def _paired_times(fn, gemms, reps) -> tuple[float, float]:
    """``(median seconds of fn, median seconds of gemms)`` over ``reps`` rounds that time the bare
    GEMMs and then ``fn``, back to back, after a warm-up of each: the ratio is taken against GEMMs
    run on the GPU in the same state (its clocks; between separate runs the same GEMMs took from
    74.0 to 76.9 ms on an H200, 2026-12-04)."""
    import statistics

    import torch

    gemms()
    fn()
    torch.cuda.synchronize()
    pairs = [(_event_seconds(gemms), _event_seconds(fn)) for _ in range(reps)]
    return statistics.median(t for _, t in pairs), statistics.median(g for g, _ in pairs)


def gpu_row(name, N, D, V, dtype, a, gemms) -> dict:
    """One method's forward + backward: its median time and that of the bare GEMMs (``gemms``)
    timed in the same rounds (``_paired_times``), and its peak memory beyond inputs and gradients."""
    import torch

    h, w, y, up = _inputs(N, D, V, dtype, DEVICE, frozen_weight=a.frozen_weight)
    grads = (h.numel() + w.numel() * w.requires_grad) * h.element_size()
    try:
        fn = _method(name, a.seq_len, json.loads(a.blocks) if a.blocks else None, a.budget)

        def step():
            h.grad = w.grad = None
            fn(h, w, y, up)
        step()  # warm-up / compile
        torch.cuda.synchronize()
        h.grad = w.grad = None
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        extra = torch.cuda.max_memory_allocated() - base - grads
        seconds, limit = _paired_times(step, gemms, a.reps)
        return {"method": name, "seconds": seconds, "extra_peak": extra, "gemm_limit": limit}
    except Exception as e:  # noqa: BLE001  (an optional baseline may be missing or fail: say so)
        return {"method": name, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"}
    finally:
        h.grad = w.grad = None


def run_gpu(a) -> None:
    import torch

    from prefopt.kernels import _rows, _slabs, onepass

    dtype = getattr(torch, a.dtype)
    if a.slab_rows is not None:  # the one-pass loss's least block (0: 128-token blocks, no vocabulary slabs)
        onepass.SLAB_ROWS["cuda"] = a.slab_rows
    if a.row_splits is not None:
        _rows.SPLITS = a.row_splits
    if a.row_blocks:  # the row kernels' elements a program takes at a time (_rows.BLOCKS)
        _rows.BLOCKS.update(json.loads(a.row_blocks))
    if a.fused_slabs:
        _slabs.FUSED_PARTS = True
    if a.stage_elements is not None:  # the one-pass loss's stage: onehot − softmax kept for its gradient GEMMs
        onepass.GRAD_ELEMENTS = a.stage_elements
    print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}  dtype {a.dtype}  "
          f"date {time.strftime('%Y-%m-%d')}  weight {'frozen' if a.frozen_weight else 'trainable'}  "
          f"blocks {a.blocks or 'default'}  budget {a.budget or 'default'}  "
          f"slab rows {onepass.SLAB_ROWS['cuda']}  row splits {_rows.SPLITS}  stage {onepass.GRAD_ELEMENTS}  "
          f"row blocks {_rows.BLOCKS}  fused slabs {_slabs.FUSED_PARTS}")
    rows = []
    for shape in a.shapes:
        D, V = map(int, shape.split("x"))
        for N in a.tokens:
            gemms = _gemms(N, D, V, dtype, a.frozen_weight)
            limit = _cuda_time(gemms, a.reps)
            print(f"\nD={D} V={V} N={N}: {2 if a.frozen_weight else 3} bare GEMMs {limit * 1e3:.2f} ms "
                  "(each row: against the GEMMs timed in the same rounds)")
            print("| method | fwd+bwd (ms) | × GEMM limit | extra peak (MiB) | GEMMs, same rounds (ms) |\n"
                  "|---|---|---|---|---|")
            for m in a.methods:
                if m == "naive" and N * V * 4 * 3 > torch.cuda.mem_get_info()[0]:
                    r = {"method": m, "error": "skipped: full logits would not fit"}
                else:
                    r = gpu_row(m, N, D, V, dtype, a, gemms)
                    torch.cuda.empty_cache()
                r = {"gemm_limit": limit, **r, "D": D, "V": V, "N": N}  # an error row: the first GEMM timing
                rows.append(r)
                if "error" in r:
                    print(f"| {m} | {r['error']} | | | |")
                else:
                    print(f"| {m} | {r['seconds'] * 1e3:.2f} | {r['seconds'] / r['gemm_limit']:.2f} | "
                          f"{r['extra_peak'] / MiB:.0f} | {r['gemm_limit'] * 1e3:.2f} |", flush=True)
                if a.json:  # after every row: a run stopped at a time limit keeps what it measured
                    Path(a.json).write_text(json.dumps(rows, indent=2))


def cpu_worker(name: str, N: int, D: int, V: int, frozen: int = 0, reps: int = 1, seq_len: int = 64) -> dict:
    """Peak RSS of the first forward + backward; time: the median of ``reps`` runs (the first included)."""
    import statistics

    import torch

    torch.set_num_threads(2)
    h, w, y, up = _inputs(N, D, V, torch.float32, "cpu", frozen_weight=bool(frozen))
    fn = _method(name, seq_len)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak-RSS counter
    base = rss("VmRSS")
    times = []
    for i in range(reps):
        h.grad = w.grad = None
        t0 = time.perf_counter()
        fn(h, w, y, up)
        times.append(time.perf_counter() - t0)
        if i == 0:
            peak = rss("VmHWM")
    grads = (h.numel() + w.numel() * w.requires_grad) * 4
    return {"method": name, "seconds": statistics.median(times), "extra_peak": peak - base - grads, "grads": grads}


def run_cpu(a) -> None:
    N, D, V = a.cpu_shape
    rows = []
    methods = ("naive", "chunked", "chunked-recompute") if a.frozen_weight else ("naive", "chunked", "onepass")
    for m in methods:
        out = subprocess.run([sys.executable, __file__, "--cpu-worker", m, str(N), str(D), str(V),
                              str(int(a.frozen_weight)), str(a.cpu_reps), str(a.seq_len)], capture_output=True, text=True)
        if out.returncode:
            sys.exit(f"{m} failed:\n{out.stderr[-2000:]}")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"CPU ({platform.machine()}, 2 threads) fp32, N={N} D={D} V={V}, "
          f"weight {'frozen' if a.frozen_weight else 'trainable'}, median of {a.cpu_reps}, "
          f"date {time.strftime('%Y-%m-%d')}")
    print("| method | fwd+bwd (s) | extra peak RSS (MiB) | vs naive: time | vs naive: extra peak |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['seconds']:.2f} | {r['extra_peak'] / MiB:.0f} | "
              f"{r['seconds'] / rows[0]['seconds']:.2f}x | {r['extra_peak'] / rows[0]['extra_peak']:.1%} |")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpu", action="store_true", help="run the CUDA table instead of the CPU comparison")
    ap.add_argument("--shapes", nargs="+", default=["4096x128256", "576x49152"], help="DxV head shapes")
    ap.add_argument("--tokens", nargs="+", type=int, default=[4096, 16384])
    ap.add_argument("--methods", nargs="+",
                    default=["naive", "compile", "chunked", "triton", "onepass", "liger", "cce", "cce-exact"])
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--frozen-weight", action="store_true", help="no weight gradient (the LoRA case)")
    ap.add_argument("--seq-len", type=int, default=64, help="tokens per answer for the DPO losses (onepass, liger)")
    ap.add_argument("--blocks", help='Triton options as JSON, e.g. \'{"BLOCK_N": 128, "num_warps": 8}\'')
    ap.add_argument("--budget", type=int, help="logits per block (chunked and triton backward, onepass chunks), elements")
    ap.add_argument("--slab-rows", type=int, help="onepass on CUDA: least tokens a logits block (0: no vocabulary slabs)")
    ap.add_argument("--row-splits", type=int, choices=(2, 4, 8, 16),
                    help="programs a row for the row kernels' logsumexp, at most")
    ap.add_argument("--row-blocks", help='row kernels\' blocks as JSON, e.g. \'{"lse": 8192}\' (_rows.BLOCKS)')
    ap.add_argument("--fused-slabs", action="store_true",
                    help="onepass on CUDA: earlier slabs' softmax written in their logsumexp's read (_slabs.FUSED_PARTS)")
    ap.add_argument("--stage-elements", type=int,
                    help="onepass on CUDA: onehot − softmax a stage keeps for its gradient GEMMs, elements")
    ap.add_argument("--cpu-shape", nargs=3, type=int, default=[4096, 576, 49152], metavar=("N", "D", "V"))
    ap.add_argument("--json", help="also write the rows here")
    ap.add_argument("--cpu-reps", type=int, default=1, help="CPU: forward+backward runs per method (median)")
    ap.add_argument("--cpu-worker", nargs=7, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main() -> None:
    a = parse_args()
    if a.cpu_worker:
        name, *dims = a.cpu_worker
        print(json.dumps(cpu_worker(name, *map(int, dims))))
    elif a.gpu:
        run_gpu(a)
    else:
        run_cpu(a)


if __name__ == "__main__":
    main()
