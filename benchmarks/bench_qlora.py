"""LoRA SFT on a 4-bit base (``--quantize nf4``, QLoRA; and ``nf4-dq``, its scales in 8 bits too)
against the same run on the full-precision base, in one run: throughput, peak RSS, the model's own
bytes, and where the loss got to.

Both are prefopt's SFT (bench_sft.py's worker and settings: SmolLM2-135M-Instruct fp32, MeQSum
questions → summaries or synthetic ones, LoRA r16/a32/d0.05 on the seven projections, lr 2e-4),
each in a fresh process, the same records, steps and seed. TRL's QLoRA needs bitsandbytes'
CUDA kernels, so there is no TRL row on a CPU.

    .venv/bin/python benchmarks/bench_qlora.py --steps 12 --batch-size 4 --max-length 256
"""
from __future__ import annotations

import json
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import TARGETS, chat_records, run_trainer_workers, trainer_bench_parser  # noqa: E402
from bench_sft import prefopt_worker  # noqa: E402

KINDS = {"full precision": None, "nf4 (4-bit)": "nf4", "nf4-dq (4-bit, 8-bit scales)": "nf4-dq"}


def main() -> None:
    a = trainer_bench_parser(__doc__, steps=12, batch_size=4, max_length=256).parse_args()
    if a.worker is not None:
        kind, a.model_dir, a.data, a.out = a.worker
        print(json.dumps(prefopt_worker(a, quantize=KINDS[kind.replace("_", " ")])))
        return
    runs = run_trainer_workers(__file__, a, chat_records(a.batch_size * a.steps),
                               [k.replace(" ", "_") for k in KINDS])
    mib = 1024**2
    print(f"model {a.model}, fp32 weights, CPU ({platform.machine()}), batch {a.batch_size}, max_length "
          f"{a.max_length}, {a.steps} steps ({a.warmup} untimed), {'DoRA' if a.dora else 'LoRA'} r16/a32/d0.05 on "
          f"{len(TARGETS)} projections, gradient checkpointing {'on' if a.gradient_checkpointing else 'off'}")
    print("| base weights | tokens/s | s/step | peak RSS (MiB) | model's bytes (MiB) | loss, last 3 steps |")
    print("|---|---|---|---|---|---|")
    for kind, r in zip(KINDS, runs.values()):
        print(f"| {kind} | {r['tokens_per_s']:.0f} | {r['s_per_step']:.2f} | {r['peak_rss'] / mib:.0f} | "
              f"{r['model_bytes'] / mib:.0f} | {r['last_loss']:.4f} |")
    full, *quantized = runs.values()
    for kind, q in zip(list(KINDS.values())[1:], quantized):
        print(f"{kind} / full precision: throughput {q['tokens_per_s'] / full['tokens_per_s']:.2f}x, peak RSS "
              f"{q['peak_rss'] / full['peak_rss']:.2f}x, model bytes {q['model_bytes'] / full['model_bytes']:.2f}x")
    if a.json:
        Path(a.json).write_text(json.dumps(runs, indent=2))


if __name__ == "__main__":
    main()
