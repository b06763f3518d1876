"""Gradient checkpointing on some layers (``--gradient-checkpointing-layers N``) against none and
all, in one run: step time and peak RSS of prefopt's LoRA SFT for each count of layers.

A checkpointed layer keeps only its input for the backward pass and recomputes the rest, so both
the memory saved and the time added grow with the layers recomputed (the saving stops growing
where the step's peak comes from elsewhere). Each count trains in a fresh process with bench_sft.py's worker and settings
(SmolLM2-135M-Instruct fp32, MeQSum questions -> summaries or synthetic ones, LoRA r16/a32/d0.05
on the seven projections, lr 2e-4), the same records, steps and seed; ``--repeats`` runs the
whole sweep again, the counts interleaved, and the table gives medians (this machine's speed
drifts by a fifth within minutes).

    .venv/bin/python benchmarks/bench_checkpointing.py --steps 12 --batch-size 4 --max-length 256 \\
        --layers 0 10 20 30 --repeats 3
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import chat_records, run_trainer_workers, trainer_bench_parser  # noqa: E402
from bench_sft import prefopt_worker  # noqa: E402


def main() -> None:
    ap = trainer_bench_parser(__doc__, steps=12, batch_size=4, max_length=256)
    ap.add_argument("--layers", type=int, nargs="+", default=[0, 10, 20, 30],
                    help="how many layers recompute their activations in each run (0: no checkpointing; "
                         "SmolLM2 has 30)")
    ap.add_argument("--repeats", type=int, default=3, help="times the whole sweep runs")
    a = ap.parse_args()
    if a.worker is not None:
        kind, a.model_dir, a.data, a.out = a.worker
        n = int(kind)
        a.gradient_checkpointing = n > 0
        print(json.dumps(prefopt_worker(a, checkpoint_layers=n or None)))
        return
    kinds = [str(n) for n in a.layers]
    records = chat_records(a.batch_size * a.steps)
    runs = [run_trainer_workers(__file__, a, records, kinds) for _ in range(a.repeats)]
    mib = 1024**2
    rows = {k: {"s_per_step": statistics.median(r[k]["s_per_step"] for r in runs),
                "peak_rss": statistics.median(r[k]["peak_rss"] for r in runs) / mib,
                "each_s_per_step": [r[k]["s_per_step"] for r in runs],
                "last_loss": runs[0][k]["last_loss"]} for k in kinds}
    none = rows[kinds[0]]
    print(f"model {a.model}, fp32, CPU, batch {a.batch_size}, max_length {a.max_length}, {a.steps} steps "
          f"({a.warmup} untimed), LoRA r16/a32/d0.05, medians of {a.repeats} runs; ratios against {kinds[0]} layers")
    print("| layers recomputed | s/step | peak RSS (MiB) | time | peak RSS | each run's s/step | last loss |")
    print("|---|---|---|---|---|---|---|")
    for k, r in rows.items():
        each = ", ".join(f"{x:.2f}" for x in r["each_s_per_step"])
        print(f"| {k} | {r['s_per_step']:.2f} | {r['peak_rss']:.0f} | {r['s_per_step'] / none['s_per_step']:.2f}x | "
              f"{r['peak_rss'] / none['peak_rss']:.2f}x | {each} | {r['last_loss']:.4f} |")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
