"""LoRA SFT with the prompt start every example of a batch shares run once (``--share-start``)
against the packed row that runs it in every example, in one run: throughput (the examples'
tokens a second), seconds a step, peak RSS and the loss.

A task's prompts begin alike: the chat template's system prompt and the task's instructions
(here bench_sft.py's records: "Summarize this patient's question as one short question." and
SmolLM2's default system prompt before each MeQSum question; the portal task's 79 of ~110
tokens). With ``share_start`` those tokens lead the packed row once and every example sees them
(``prefopt.train.sft.start_layout``): the same loss and gradients (tests/train/test_sft_packed.py)
from fewer tokens. Both runs are prefopt's SFT with ``pack`` (bench_sft.py's worker and
settings: SmolLM2-135M-Instruct fp32, LoRA r16/a32/d0.05 on the seven projections, lr 2e-4),
each in a fresh process, the same records, steps and seed; LoRA dropout draws one mask for the
shared start, so the losses differ a little.

    .venv/bin/python benchmarks/bench_share_start.py --steps 12 --batch-size 4 --max-length 256
    .venv/bin/python benchmarks/bench_share_start.py --steps 12 --batch-size 4 --max-length 384 --portal
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
    ap.add_argument("--portal", action="store_true", help="the bundled synthetic portal messages, as make demo's "
                    "SFT stage trains on them, in place of MeQSum")
    a = ap.parse_args()
    if a.worker is not None:
        kind, a.model_dir, a.data, a.out = a.worker
        print(json.dumps(prefopt_worker(a, pack=True, share_start=kind == "shared_start")))
        return
    runs = run_trainer_workers(__file__, a, portal_records(a.batch_size * a.steps) if a.portal
                               else chat_records(a.batch_size * a.steps), ["packed", "shared_start"])
    report_two_sft_runs(a, runs, "batches", "shared start / packed")


def portal_records(n: int) -> list[dict]:
    """``n`` of the bundled synthetic portal messages as compare's SFT stage writes them."""
    from prefopt.tasks import get_task

    task = get_task("portal")
    return [{"prompt": task.messages(r), "completion": r.target} for r in task.read()[:n]]


if __name__ == "__main__":
    main()
