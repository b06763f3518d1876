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
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import chat_records, report_two_sft_runs, run_trainer_workers, trainer_bench_parser  # noqa: E402
from bench_sft import prefopt_worker  # noqa: E402


def main() -> None:
    ap = trainer_bench_parser(__doc__, steps=12, batch_size=8, max_length=256)
    a = ap.parse_args()
    if a.worker is not None:
        kind, a.model_dir, a.data, a.out = a.worker
        print(json.dumps(prefopt_worker(a, pack=kind == "packed")))
        return
    runs = run_trainer_workers(__file__, a, chat_records(a.batch_size * a.steps), ["padded", "packed"])
    report_two_sft_runs(a, runs, "batches", "packed / padded")


if __name__ == "__main__":
    main()
