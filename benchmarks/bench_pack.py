"""LoRA SFT with each micro-batch packed into one row (``--pack``) against padded batches, in one
run: throughput (real tokens a second), peak RSS and the loss.

Padded, a batch runs ``batch_size x its longest example`` positions, padding included; packed, it
runs its examples end to end, each attending to itself only, so only real tokens are computed,
and the loss and gradients are the padded batch's (tests/train/test_sft_packed.py). Both runs
are prefopt's SFT (bench_sft.py's worker and settings: SmolLM2-135M-Instruct fp32, MeQSum
questions -> summaries or synthetic ones, LoRA r16/a32/d0.05 on the seven projections, lr 2e-4),
each in a fresh process, the same records, steps and seed.

    .venv/bin/python benchmarks/bench_pack.py --steps 12 --batch-size 8 --max-length 256
"""
from __future__ import annotations

import json
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import TARGETS, chat_records, run_trainer_workers, trainer_bench_parser  # noqa: E402
from bench_sft import prefopt_worker  # noqa: E402


def main() -> None:
    ap = trainer_bench_parser(__doc__, steps=12, batch_size=8, max_length=256)
    a = ap.parse_args()
    if a.worker is not None:
        kind, a.model_dir, a.data, a.out = a.worker
        print(json.dumps(prefopt_worker(a, pack=kind == "packed")))
        return
    records = chat_records(a.batch_size * a.steps)
    runs = run_trainer_workers(__file__, a, records, ["padded", "packed"])
    mib = 1024**2
    print(f"model {a.model}, fp32 weights, CPU ({platform.machine()}), batch {a.batch_size}, max_length "
          f"{a.max_length}, {a.steps} steps ({a.warmup} untimed), LoRA r16/a32/d0.05 on {len(TARGETS)} projections")
    print("| batches | real tokens/s | s/step | peak RSS (MiB) | loss, last 3 steps |")
    print("|---|---|---|---|---|")
    for kind, r in runs.items():
        print(f"| {kind} | {r['tokens_per_s']:.0f} | {r['s_per_step']:.2f} | {r['peak_rss'] / mib:.0f} | "
              f"{r['last_loss']:.4f} |")
    padded, packed = runs.values()
    print(f"packed / padded: throughput {packed['tokens_per_s'] / padded['tokens_per_s']:.2f}x, "
          f"peak RSS {packed['peak_rss'] / padded['peak_rss']:.2f}x")
    if a.json:
        Path(a.json).write_text(json.dumps(runs, indent=2))


if __name__ == "__main__":
    main()
