"""Host time per chunk of the one-pass DPO loss: closed-form pair gradients against autograd.

The one-pass loss (``prefopt/kernels/onepass.py``) works a chunk of whole pairs at a time and,
per chunk, needs each pair's ``d loss / d sequence log-prob`` before its logits can become
dlogits. On a GPU the host issues every small operation of that, and at 128-token chunks
(Llama 3's head, the default budget) it looked to be the bottleneck: about 1.5 ms a chunk where
the GPU work is an estimated 0.5 ms (docs/benchmarks.md, 2026-11-30). This measures the host's share on the
CPU, with shapes so small (D=16, V=64) that the arithmetic is negligible: forward + backward
time per chunk, for the built-in loss's closed-form gradient (``prefopt.losses.PAIR_GRADS``) and
for the autograd call it replaces (the same loss with its closed form removed), in one run.

    python benchmarks/bench_onepass_host.py            # sigmoid, 64 chunks of one 128-token pair
    python benchmarks/bench_onepass_host.py --loss rpo --reps 20
"""
from __future__ import annotations

import argparse
import statistics
import time


def per_chunk(loss: str, closed_form: bool, pairs: int, reps: int) -> float:
    """Median seconds per chunk of ``reps`` forward + backward runs (after two warm-ups)."""
    import torch

    import prefopt.kernels._backward as backward
    from prefopt.kernels import fused_preference_loss
    from prefopt.losses import PAIR_GRADS

    g = torch.Generator().manual_seed(0)
    T, D, V = 64, 16, 64
    h = torch.randn(2 * pairs, T, D, generator=g, requires_grad=True)
    w = torch.randn(V, D, generator=g, requires_grad=True)
    y = torch.randint(0, V, (2 * pairs, T), generator=g)
    ref = torch.zeros(pairs) - 100
    saved, budget = PAIR_GRADS.get(loss), backward.CHUNK_ELEMENTS
    backward.CHUNK_ELEMENTS = 2 * T * V  # one pair per chunk
    if not closed_form:
        PAIR_GRADS.pop(loss, None)
    try:
        times = []
        for i in range(reps + 2):
            h.grad = w.grad = None
            t0 = time.perf_counter()
            out, _ = fused_preference_loss(h, w, y, ref, ref, loss, reduction="sum", one_pass=True)
            out.losses.backward()
            if i >= 2:
                times.append((time.perf_counter() - t0) / pairs)
        return statistics.median(times)
    finally:
        backward.CHUNK_ELEMENTS = budget
        if saved is not None:
            PAIR_GRADS[loss] = saved


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--loss", default="sigmoid")
    ap.add_argument("--pairs", type=int, default=64, help="pairs, one chunk each")
    ap.add_argument("--reps", type=int, default=10)
    a = ap.parse_args()
    import torch

    torch.set_num_threads(2)
    rows = [(name, per_chunk(a.loss, closed, a.pairs, a.reps)) for name, closed in
            (("autograd per chunk", False), ("closed form", True))]
    print(f"one-pass {a.loss} loss, {a.pairs} chunks of one 128-token pair, D=16 V=64, CPU, torch {torch.__version__}, "
          f"median of {a.reps}, date {time.strftime('%Y-%m-%d')}")
    print("| pair gradients | host ms per chunk | vs autograd |\n|---|---|---|")
    for name, sec in rows:
        print(f"| {name} | {sec * 1e3:.3f} | {sec / rows[0][1]:.2f}x |")


if __name__ == "__main__":
    main()
