"""Scoring every possible answer of a classification task on CPU (compare's confidence, ``prefopt
eval --confidence``, ``prefopt predict``): seconds, peak RSS and the largest difference in the
answers' log-probs, each way in a fresh process, in one run.

For each record every combination of its fields' labels is scored as a whole assistant turn after
the record's prompt (``prefopt.evaluate.confidence.answer_logprobs``; the portal task: 12 answers of
10-11 tokens after a prompt of about 110). Four ways of laying the tokens out, the same model and
records, ``--batch-size`` records a forward pass:

- ``alone``: each answer in its own row after its own copy of the prompt (padded);
- ``flat``: one row per record, the prompt once and every answer's tokens end to end after it
  (prefopt until 2026-12-03);
- ``tree-rows``: the prompt once and the answers as a prefix tree, each token the answers share
  from their start once and no answer's last token (it is only predicted), and through the
  lm_head each (position, next token) once (prefopt until 2026-12-04);
- ``tree``: the same, and the start every prompt of a batch shares (the system prompt, the
  task's instructions: 79 of the portal prompts' ~110 tokens) run once for the batch into a KV
  cache the rows read: prefopt's way since.

``tree-bf16`` (not run unless named) is the tree with the model in bfloat16, ``--dtype bfloat16``'s
evaluation, against float32 (``auto`` on a CPU). The last kind named is the one the others are
measured against; a line per other kind says how far its scores moved from it.

    .venv/bin/python benchmarks/bench_label_scoring.py --records 64 --repeats 3 --kinds flat,tree-rows,tree
    .venv/bin/python benchmarks/bench_label_scoring.py --records 64   # also alone: ~10 min on 2 cores
    .venv/bin/python benchmarks/bench_label_scoring.py --records 64 --repeats 3 --kinds tree-bf16,tree
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import rss, run_worker  # noqa: E402

KINDS = {"alone": "each answer in its own row with its prompt",
         "flat": "prompt once, answers end to end (before 2026-12-03)",
         "tree-rows": "the tree, each prompt whole in its row (before 2026-12-04)",
         "tree-bf16": "the tree, the model in bfloat16 (--dtype bfloat16)",
         "tree": "prompt once, answers as a prefix tree, the batch's shared start once (default)"}
DEFAULT_KINDS = ("alone", "flat", "tree-rows", "tree")


def flat_pack(rows, pad_id, start=0):  # start: always 0 here (every prompt whole in its row)
    """``confidence._pack``'s layout before 2026-12-03: ``[prompt | answer 1 | answer 2 | ...]``, an
    answer seeing the prompt and itself, each answer's every token scored apart."""
    import torch

    B = len(rows)
    S = max(len(p) + sum(map(len, a)) for p, a in rows)
    ids, pos = torch.full((B, S), pad_id, dtype=torch.long), torch.zeros((B, S), dtype=torch.long)
    side = torch.full((B, S), -1, dtype=torch.long)  # 0 the prompt, k the k-th answer, -1 padding
    row, column, label, answer, k = [], [], [], [], 0
    for b, (prompt, ans) in enumerate(rows):
        p = start = len(prompt)
        ids[b, :p], pos[b, :p], side[b, :p] = torch.tensor(prompt), torch.arange(p), 0
        for j, a in enumerate(ans, 1):
            ids[b, start:start + len(a)] = torch.tensor(a)
            pos[b, start:start + len(a)], side[b, start:start + len(a)] = p + torch.arange(len(a)), j
            row += [b] * len(a)
            column += [p - 1] + list(range(start, start + len(a) - 1))
            label += a
            answer += [k] * len(a)
            start += len(a)
            k += 1
    col = torch.arange(S)
    mask = (col[None, :] <= col[:, None])[None] & (side >= 0)[:, None, :]
    mask &= (side[:, None, :] == 0) | (side[:, None, :] == side[:, :, None])
    diagonal = torch.arange(S)
    mask[:, diagonal, diagonal] = True  # padding sees itself (a row of only padding has no other key)
    return {"input_ids": ids, "position_ids": pos, "mask": mask[:, None], "row": torch.tensor(row),
            "column": torch.tensor(column), "label": torch.tensor(label), "answer": torch.tensor(answer),
            "term": torch.arange(len(row))}


def alone_pack(rows, pad_id, start=0):  # start: always 0 here
    """Each answer its own row, ``[prompt | answer | padding]``, causal."""
    return flat_pack([(prompt, [a]) for prompt, ans in rows for a in ans], pad_id)


def worker(kind: str, model: str, records: int, batch_size: int, repeats: int) -> dict:
    import torch

    from prefopt import load_model, load_tokenizer
    from prefopt.evaluate import confidence
    from prefopt.tasks import get_task

    base = rss("VmRSS")
    dtype = torch.bfloat16 if kind.endswith("-bf16") else torch.float32
    net, tok = load_model(model, dtype=dtype).eval(), load_tokenizer(model)
    task = get_task("portal")
    recs = task.read()[:records]
    confidence._pack = {"flat": flat_pack, "alone": alone_pack}.get(kind, confidence._pack)
    if kind in ("flat", "alone", "tree-rows"):  # every prompt whole in its own row
        confidence.shared_start = lambda *a: 0
    confidence.answer_logprobs(net, tok, task, recs[:2], batch_size=batch_size, show_progress=False)  # warm-up
    passes, out = [], None
    for _ in range(repeats):  # the fastest pass counts: this machine's neighbours come and go
        start = time.perf_counter()
        out = confidence.answer_logprobs(net, tok, task, recs, batch_size=batch_size, show_progress=False)
        passes.append(time.perf_counter() - start)
    return {"name": KINDS[kind], "seconds": min(passes), "passes": passes, "peak_rss": rss("VmHWM"),
            "rss_before_load": base, "logprobs": [[v for _, v in r] for r in out]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--records", type=int, default=64, help="portal records scored (12 answers each)")
    ap.add_argument("--batch-size", type=int, default=16, help="records a forward pass (compare's eval_batch_size)")
    ap.add_argument("--repeats", type=int, default=2, help="timed passes over the records; the fastest counts")
    ap.add_argument("--kinds", default=",".join(DEFAULT_KINDS), help=f"which workers, of {', '.join(KINDS)}; the "
                    "last is the one the others are measured against")
    ap.add_argument("--worker", nargs="*", help=argparse.SUPPRESS)
    ap.add_argument("--json", help="also write the results here")
    a = ap.parse_args()
    if a.worker is not None:
        kind, model = a.worker
        print(json.dumps(worker(kind, model, a.records, a.batch_size, a.repeats)))
        return
    from prefopt.model import resolve_model_dir

    model = str(resolve_model_dir(a.model))
    kinds = a.kinds.split(",")
    runs = {k: run_worker(__file__, "--records", str(a.records), "--batch-size", str(a.batch_size), "--repeats",
                          str(a.repeats), "--worker", k, model) for k in kinds}
    ref = runs[kinds[-1]]["logprobs"]
    mib = 1 << 20
    print(f"model {a.model}, fp32 (unless bf16 is named), CPU ({platform.machine()}), {a.records} portal records x 12 answers, "
          f"{a.batch_size} records a forward pass; fastest of {a.repeats} passes; each kind in a fresh process")
    print(f"| layout | s | records/s | × {kinds[-1]}'s time | peak RSS (MiB) | max |Δ log-prob| vs {kinds[-1]} |")
    print("|---|---|---|---|---|---|")
    last = runs[kinds[-1]]["seconds"]
    for k in kinds:
        r = runs[k]
        diff = max(abs(x - y) for row, ref_row in zip(r["logprobs"], ref) for x, y in zip(row, ref_row))
        print(f"| {k}: {r['name']} | {r['seconds']:.2f} | {a.records / r['seconds']:.2f} | "
              f"{r['seconds'] / last:.2f}x | {r['peak_rss'] / mib:.0f} | {diff:.1e} |")
    for k in kinds[:-1]:  # how far each answer's scores moved, as confidence figures read them
        print(differences(k, runs[k]["logprobs"], kinds[-1], ref))
    if a.json:
        Path(a.json).write_text(json.dumps(runs, indent=2))


def differences(kind: str, logprobs: list, ref_kind: str, ref: list) -> str:
    """A line on how ``kind``'s scores differ from ``ref_kind``'s: each answer's log-prob (mean
    and largest change), each record's likeliest answer and each answer's probability among the
    record's answers (the confidence figures' inputs)."""
    import torch

    a, b = torch.tensor(logprobs, dtype=torch.float64), torch.tensor(ref, dtype=torch.float64)
    same = int((a.argmax(1) == b.argmax(1)).sum())
    moved = (a.softmax(1) - b.softmax(1)).abs().max().item()
    return (f"{kind} against {ref_kind}: |Δ log-prob| {(a - b).abs().mean().item():.2g} on average, "
            f"{(a - b).abs().max().item():.2g} at most; the same likeliest answer for {same} of {len(a)} records; "
            f"an answer's probability among its record's moved by {moved:.2g} at most")


if __name__ == "__main__":
    main()
