"""LoRA SFT with the prompt start every example of a batch shares run once (``--share-start``)
against the packed row that runs it in every example, in one run: throughput (the examples'
tokens a second), seconds a step, peak RSS and the loss.

A task's prompts begin alike: the chat template's system prompt and the task's instructions
(here bench_sft.py's records: "Summarize this patient's question as one short question." and
SmolLM2's default system prompt before each MeQSum question; the portal task's 79 of ~110
tokens). With ``share_start`` those tokens lead the packed row once and every example sees them
(``Transformer.forward(..., packed_start=n)``): the same loss and gradients (tests/train/test_sft_packed.py)
from fewer tokens. Both runs are prefopt's SFT with ``pack`` (bench_sft.py's worker and
settings: SmolLM2-135M-Instruct fp32, LoRA r16/a32/d0.05 on the seven projections, lr 2e-4),
each in a fresh process, the same records, steps and seed; LoRA dropout draws one mask for the
shared start, so the losses differ a little.

    .venv/bin/python benchmarks/bench_share_start.py --steps 12 --batch-size 4 --max-length 256
    .venv/bin/python benchmarks/bench_share_start.py --steps 12 --batch-size 4 --max-length 384 --portal

Whole runs in separate processes drift with this machine's neighbours (the same command's
packed row took 2.13 to 2.62 s a step within an hour). ``--alternate`` times one micro-batch's
forward and backward instead (LoRA without dropout), the layouts taking turns in one process,
``--repeats`` times each, on a batch of the portal messages and one of MeQSum's: the packed row,
the shared start with each rest's attention over the start's keys and its own (prefopt's), and
the same row under one explicit ``(L, L)`` mask (the first form tried).

    .venv/bin/python benchmarks/bench_share_start.py --alternate --batch-size 4 --repeats 5

``--dpo`` does the same for DPO (``DPOConfig.share_start``) on the portal messages' pairs as
``make demo`` makes them (a wrong label against the right one): a training micro-batch of
``--batch-size`` pairs forward and backward, one packed row a pair against all of them in one row
after the start the pairs share, and the reference cache's fill (no gradient, four micro-batches'
pairs at once, as the trainer fills it).

    .venv/bin/python benchmarks/bench_share_start.py --dpo --batch-size 2 --repeats 5
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
    ap.add_argument("--alternate", action="store_true", help="one micro-batch's forward and backward, the layouts "
                    "taking turns in one process (see above)")
    ap.add_argument("--repeats", type=int, default=5, help="with --alternate: timed turns of each layout")
    ap.add_argument("--dpo", action="store_true", help="DPO's layouts, on the portal pairs (see above)")
    a = ap.parse_args()
    if a.dpo:
        alternate_dpo(a)
        return
    if a.alternate:
        alternate(a)
        return
    if a.worker is not None:
        kind, a.model_dir, a.data, a.out = a.worker
        print(json.dumps(prefopt_worker(a, pack=True, share_start=kind == "shared_start")))
        return
    runs = run_trainer_workers(__file__, a, portal_records(a.batch_size * a.steps) if a.portal
                               else chat_records(a.batch_size * a.steps), ["packed", "shared_start"])
    report_two_sft_runs(a, runs, "batches", "shared start / packed")


def alternate(a) -> None:
    """Print one micro-batch's forward + backward seconds (median of ``a.repeats``) per layout."""
    import statistics
    import tempfile
    import time

    import torch

    from prefopt import apply_lora, load_model, load_tokenizer
    from prefopt.data import load_sft, packed_collate
    from prefopt.data.sft import IGNORE
    from prefopt.kernels import nll_sum
    from prefopt.train.sft import examples_start

    torch.manual_seed(0)
    tok = load_tokenizer(a.model)
    model = apply_lora(load_model(a.model, dtype=torch.float32), r=16, alpha=32, dropout=0.0)
    print(f"model {a.model}, fp32, LoRA r16/a32 on every projection, no dropout; a micro-batch of {a.batch_size}; "
          f"forward + backward, median of {a.repeats}, the layouts taking turns in one process")
    print("| data | shared start (tokens) | row: packed -> shared | packed s | shared start s (spans) | "
          "shared start s (one L x L mask) | spans / packed |\n|---|---|---|---|---|---|---|")
    for name, records in (("portal", portal_records(2 * a.batch_size)), ("MeQSum", chat_records(2 * a.batch_size))):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "d.jsonl"
            path.write_text("".join(json.dumps(r) + "\n" for r in records))
            examples = load_sft(str(path), tok, max_length=a.max_length)[0][:a.batch_size]
        n = examples_start(examples)
        plain, shared = packed_collate(examples), packed_collate(examples, n)
        lengths = shared["lengths"].tolist()
        segment = torch.cat([torch.full((n,), -1)] + [torch.full((m,), k) for k, m in enumerate(lengths)])
        col = torch.arange(len(segment))
        mask = ((col[None] <= col[:, None]) & ((segment[None] == -1) | (segment[None] == segment[:, None])))[None, None]
        positions = torch.cat([torch.arange(n)] + [n + torch.arange(m) for m in lengths])[None]
        runs = {"packed": (plain, {"packed": plain["lengths"].tolist()}),
                "spans": (shared, {"packed": lengths, "packed_start": n}),
                "mask": (shared, {"attention_mask": mask, "position_ids": positions})}
        times = {k: [] for k in runs}
        for turn in range(a.repeats + 1):  # the first turn warms up, untimed
            for k, (b, how) in runs.items():
                model.zero_grad()
                t0 = time.perf_counter()
                h, w = model.head(model(b["input_ids"], return_hidden=True, **how)[:, :-1])
                nll_sum(h, w, b["labels"][:, 1:], ignore_index=IGNORE).backward()
                if turn:
                    times[k].append(time.perf_counter() - t0)
        s = {k: statistics.median(v) for k, v in times.items()}
        print(f"| {name} | {n} | {plain['input_ids'].shape[1]} -> {shared['input_ids'].shape[1]} | {s['packed']:.3f} "
              f"| {s['spans']:.3f} | {s['mask']:.3f} | {s['spans'] / s['packed']:.2f}x |")


def alternate_dpo(a) -> None:
    """Print a DPO micro-batch's forward + backward and the fill's no-grad forward (medians of
    ``a.repeats``), one packed row a pair against the pairs after their shared start."""
    import statistics
    import tempfile
    import time

    import torch

    from prefopt import apply_lora, load_model, load_tokenizer
    from prefopt.data import load_preferences
    from prefopt.tasks import get_task, wrong_label_pairs
    from prefopt.train.shared_prompt import pack_pairs, pack_pairs_after, pair_logp_sums, pairs_start

    torch.manual_seed(0)
    tok = load_tokenizer(a.model)
    model = apply_lora(load_model(a.model, dtype=torch.float32), r=16, alpha=32, dropout=0.0)
    task = get_task("portal")
    records = task.read()[:160]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pairs.jsonl"
        path.write_text("".join(json.dumps(p) + "\n" for p in wrong_label_pairs(task, records)))
        pairs = load_preferences(str(path), tok, max_length=a.max_length)[0]
    n = pairs_start(pairs)
    print(f"model {a.model}, fp32, LoRA r16/a32 on every projection, no dropout; {len(pairs)} portal pairs, "
          f"a shared start of {n} tokens; medians of {a.repeats}, the layouts taking turns in one process")
    print("| work | pairs | tokens run: packed -> after the start | packed s | after the start s | ratio |\n"
          "|---|---|---|---|---|---|")
    for work, k, grad in (("training micro-batch, fwd + bwd", a.batch_size, True),
                          ("reference fill, no grad", 4 * a.batch_size, False)):
        chunk = pairs[:k]
        layouts = {"packed": pack_pairs(chunk, tok.pad_token_id), "after": pack_pairs_after(chunk, n)}
        times = {key: [] for key in layouts}
        for turn in range(a.repeats + 1):  # the first turn warms up, untimed
            for key, b in layouts.items():
                model.zero_grad()
                t0 = time.perf_counter()
                with torch.set_grad_enabled(grad):
                    sums = pair_logp_sums(model, b)
                    if grad:
                        sums.sum().backward()
                if turn:
                    times[key].append(time.perf_counter() - t0)
        s = {key: statistics.median(v) for key, v in times.items()}
        rows = layouts["packed"]["input_ids"].numel(), layouts["after"]["input_ids"].numel()  # run, padding too
        print(f"| {work} | {k} | {rows[0]} -> {rows[1]} | {s['packed']:.3f} | {s['after']:.3f} | "
              f"{s['after'] / s['packed']:.2f}x |")


def portal_records(n: int) -> list[dict]:
    """``n`` of the bundled synthetic portal messages as compare's SFT stage writes them."""
    from prefopt.tasks import get_task

    task = get_task("portal")
    return [{"prompt": task.messages(r), "completion": r.target} for r in task.read()[:n]]


if __name__ == "__main__":
    main()
