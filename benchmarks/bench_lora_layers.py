"""LoRA SFT on the top layers only (``--lora-layers``) against every layer, in one run:
throughput, peak RSS and where the loss got to.

With adapters only in the top layers, nothing below the lowest of them takes a gradient, so the
backward pass stops there and keeps none of their activations. Both runs are prefopt's SFT
(bench_sft.py's worker and settings: SmolLM2-135M-Instruct fp32, MeQSum questions -> summaries
or synthetic ones, LoRA r16/a32/d0.05 on the seven projections, lr 2e-4), each in a fresh
process, the same records, steps and seed.

    .venv/bin/python benchmarks/bench_lora_layers.py --steps 12 --batch-size 4 --max-length 256 --layers 22-29
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import chat_records, report_two_sft_runs, run_trainer_workers, trainer_bench_parser  # noqa: E402
from bench_sft import prefopt_worker  # noqa: E402


def main() -> None:
    ap = trainer_bench_parser(__doc__, steps=12, batch_size=4, max_length=256)
    ap.add_argument("--layers", default="22-29", help="the layers adapted in the second run (SmolLM2 has 0-29)")
    a = ap.parse_args()
    if a.worker is not None:
        kind, a.model_dir, a.data, a.out = a.worker
        print(json.dumps(prefopt_worker(a, lora_layers=None if kind == "every_layer" else kind)))
        return
    runs = run_trainer_workers(__file__, a, chat_records(a.batch_size * a.steps), ["every_layer", a.layers])
    report_two_sft_runs(a, runs, "layers adapted", f"layers {a.layers} / every layer")


if __name__ == "__main__":
    main()
