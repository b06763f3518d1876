"""Host time per 128-token pair of the one-pass DPO loss: closed-form pair gradients against autograd.

The one-pass loss (``prefopt/kernels/onepass.py``) works a stage of whole pairs at a time, a
block of logits after another, and per stage needs each pair's ``d loss / d sequence
log-prob``. On a GPU the host issues every small operation of that, and at 128-token chunks
(Llama 3's head, the default budget) it looked to be the bottleneck: about 1.5 ms a chunk where
the GPU work is an estimated 0.5 ms (docs/benchmarks.md, 2026-11-30). This measures the host's
share on the CPU, with shapes so small (D=16, V=64) that the arithmetic is negligible: forward +
backward time per pair (one 128-token block each), for the built-in loss's closed-form gradient
(``prefopt.losses.PAIR_GRADS``) and for the autograd call it replaces (the same loss with its
closed form removed), in one run, and the aten operations dispatched per pair (each one a
kernel launch or a view on a GPU, and the host's cost there: a count does not depend on this
machine's speed). ``--stage 4`` groups 4 pairs a stage, as CUDA's 512-token stages do at
V=128256; without it a stage is one block, the CPU's way.

    python benchmarks/bench_onepass_host.py            # sigmoid, 64 pairs of 128 tokens
    python benchmarks/bench_onepass_host.py --loss rpo --reps 20
    python benchmarks/bench_onepass_host.py --stage 4   # stages of 4 pairs (512 tokens), as on CUDA
    python benchmarks/bench_onepass_host.py --stage 4 --cuda-blocks   # and CUDA's row-kernel blocks

``--cuda-blocks`` arranges the blocks as CUDA does at Llama 3's head (docs/kernels.md): the
Triton row kernels' path, blocks of two pairs (256 tokens) in two vocabulary slabs, with the
kernels themselves replaced by stubs that only count their launches, so what is timed is the
host's Python and PyTorch work around them (the values are meaningless). On an H200 that work
was the bottleneck on 2026-12-04 (docs/benchmarks.md); each Triton launch costs the host more
there (its launcher, not counted here).
"""
from __future__ import annotations

import argparse
import statistics
import time

# every Triton kernel the row-kernel path can launch (the one-pass forward's and its backward's scaling)
KERNELS = ("_row_lse", "_row_lse_exp", "_row_join", "_row_dlogits", "_row_rescale", "_scale")


class _Stub:
    """A Triton kernel's stand-in: ``stub[grid](*args)`` counts the launch and does nothing."""
    launches = 0

    def __getitem__(self, grid):
        def launch(*args, **kw):
            _Stub.launches += 1
        return launch


def per_pair(loss: str, closed_form: bool, pairs: int, reps: int, stage: int = 0,
             cuda_blocks: bool = False) -> tuple[float, float, float]:
    """``(median seconds, aten operations, Triton launches)`` per pair of ``reps`` forward +
    backward runs (after two warm-ups; the operations counted in one more). ``stage``: pairs per
    stage of the staged gradient GEMMs (as on CUDA), or 0 for none (the CPU's way);
    ``cuda_blocks``: CUDA's row-kernel path, blocks of two pairs in two vocabulary slabs, the
    kernels stubbed."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        ops = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.ops += 1
            return func(*args, **(kwargs or {}))

    import prefopt.kernels._backward as backward
    import prefopt.kernels.onepass as onepass
    from prefopt.kernels import fused_preference_loss
    from prefopt.losses import PAIR_GRADS

    g = torch.Generator().manual_seed(0)
    T, D, V = 64, 16, 64
    h = torch.randn(2 * pairs, T, D, generator=g, requires_grad=True)
    w = torch.randn(V, D, generator=g, requires_grad=True)
    y = torch.randint(0, V, (2 * pairs, T), generator=g)
    ref = torch.zeros(pairs) - 100
    saved, budget = PAIR_GRADS.get(loss), backward.CHUNK_ELEMENTS
    staging = onepass.STAGE_DEVICES, onepass.GRAD_ELEMENTS
    backward.CHUNK_ELEMENTS = 2 * T * V  # one pair per chunk
    if stage:
        onepass.STAGE_DEVICES, onepass.GRAD_ELEMENTS = ("cpu",), stage * 2 * T * V
    if not closed_form:
        PAIR_GRADS.pop(loss, None)
    import prefopt.kernels._rows as rows

    kernels, rowwise, slab_rows = None, rows.ROWWISE, dict(onepass.SLAB_ROWS)
    if cuda_blocks:
        import prefopt.kernels._triton_kernels as k

        kernels = {n: getattr(k, n) for n in KERNELS}
        for n in KERNELS:
            setattr(k, n, _Stub())
        rows.ROWWISE, onepass.SLAB_ROWS["cpu"] = "triton", 4 * T  # two pairs a block, in two slabs of the budget's

    def step():
        h.grad = w.grad = None
        out, _ = fused_preference_loss(h, w, y, ref, ref, loss, reduction="sum", one_pass=True)
        out.losses.backward()
    try:
        times = []
        for i in range(reps + 2):
            t0 = time.perf_counter()
            step()
            if i >= 2:
                times.append((time.perf_counter() - t0) / pairs)
        _Stub.launches = 0
        with Count():
            step()
        return statistics.median(times), Count.ops / pairs, _Stub.launches / pairs
    finally:
        if kernels:
            for n, fn in kernels.items():
                setattr(k, n, fn)
        rows.ROWWISE = rowwise
        onepass.SLAB_ROWS.clear()
        onepass.SLAB_ROWS.update(slab_rows)
        backward.CHUNK_ELEMENTS = budget
        onepass.STAGE_DEVICES, onepass.GRAD_ELEMENTS = staging
        if saved is not None:
            PAIR_GRADS[loss] = saved


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--loss", default="sigmoid")
    ap.add_argument("--pairs", type=int, default=64, help="pairs of 128 tokens, one logits block each")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--stage", type=int, default=0,
                    help="pairs per stage of the gradient GEMMs, as on CUDA (4: 512 tokens); 0: none, the CPU's way")
    ap.add_argument("--cuda-blocks", action="store_true",
                    help="CUDA's row-kernel blocks at Llama 3's head: two pairs a block in two slabs, kernels stubbed")
    a = ap.parse_args()
    import torch

    torch.set_num_threads(2)
    rows = [(name, per_pair(a.loss, closed, a.pairs, a.reps, a.stage, a.cuda_blocks)) for name, closed in
            (("by autograd", False), ("in closed form", True))]
    staged = f", stages of {a.stage} pairs" if a.stage else ""
    blocks = ", CUDA's blocks (2 pairs, 2 slabs; row kernels stubbed)" if a.cuda_blocks else ""
    print(f"one-pass {a.loss} loss, {a.pairs} pairs of 128 tokens{staged}{blocks}, D=16 V=64, CPU, "
          f"torch {torch.__version__}, median of {a.reps}, date {time.strftime('%Y-%m-%d')}")
    print("| pair gradients | host ms per pair | vs autograd | aten ops per pair | Triton launches per pair |\n"
          "|---|---|---|---|---|")
    for name, (sec, ops, launches) in rows:
        print(f"| {name} | {sec * 1e3:.3f} | {sec / rows[0][1][0]:.2f}x | {ops:.1f} | {launches:.1f} |")


if __name__ == "__main__":
    main()
