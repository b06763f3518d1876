"""Batching prompts by length (``prefopt.model.length_batches``) against the batches before it:
seconds and peak RSS of answering (greedy, ``prefopt eval``/``predict``/``compare``'s test set)
and of scoring every label (their confidence), each way in a fresh process, in one run.

Before 2026-12-07 answering took ``--batch-size`` prompts at a time in length order, and scoring
``--batch-size`` records at a time in the records' own order; a batch runs every row to its
longest prompt's length, so a long letter made every row beside it as long. Now both sort by
length and close a batch early where its padding would pass what a batch more costs.

The prompts are the portal task's (the system prompt and instructions before each message), on
three sets of messages of made-up words:

- ``similar``: ``--records`` messages of 40-80 words (as the bundled portal messages: answered
  ``--batch-size`` at a time as before);
- ``spread``: ``--records`` messages whose lengths spread from 40 to 2000 words (a folder of letters);
- ``outlier``: 15 short messages and one of 2000 words.

    .venv/bin/python benchmarks/bench_length_batches.py                       # ~10 min on 2 cores
    .venv/bin/python benchmarks/bench_length_batches.py --sets outlier --jobs answer
    python benchmarks/bench_length_batches.py --device cuda --sets outlier,spread   # a GPU: STEP_TOKENS["cuda"]
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import rss, run_worker  # noqa: E402

SETS = ("similar", "spread", "outlier")
JOBS = ("answer", "score")
WORDS = ("pain fever cough chest arm leg since days weeks worse better medication dose refill doctor nurse "
         "blood pressure sugar breath tired dizzy rash swelling night morning").split()


def messages(kind: str, n: int, seed: int = 0) -> list[str]:
    """The set ``kind``'s message texts (``n`` of them; ``outlier``: 16)."""
    rng = random.Random(seed)

    def text(words: int) -> str:
        return " ".join(rng.choices(WORDS, k=words))

    if kind == "similar":
        return [text(rng.randint(40, 80)) for _ in range(n)]
    if kind == "spread":
        return [text(round(math.exp(rng.uniform(math.log(40), math.log(2000))))) for _ in range(n)]
    if kind == "outlier":
        return [text(rng.randint(40, 80)) for _ in range(15)] + [text(2000)]
    raise ValueError(kind)


def before(lengths, batch_size: int, *a, order: str = "length", **k) -> list[list[int]]:
    """The batches before 2026-12-07: ``batch_size`` prompts at a time, in length order (answering)
    or in the records' order (scoring)."""
    index = sorted(range(len(lengths)), key=lambda i: lengths[i]) if order == "length" else list(range(len(lengths)))
    return [index[s:s + batch_size] for s in range(0, len(index), batch_size)]


def worker(way: str, job: str, kind: str, model: str, records: int, batch_size: int, new_tokens: int,
           device: str) -> dict:
    import torch

    from prefopt import load_model, load_tokenizer
    from prefopt.evaluate import confidence, runner
    from prefopt.tasks import get_task

    torch.manual_seed(0)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32  # (what eval runs on each by default)
    net, tok = load_model(model, dtype=dtype, device=device).eval(), load_tokenizer(model)
    task = get_task("portal")
    with tempfile.TemporaryDirectory() as tmp:  # read as predict reads a team's file
        data = Path(tmp) / "messages.jsonl"
        data.write_text("".join(json.dumps({"message": m}) + "\n" for m in messages(kind, records)))
        recs = task.read(str(data), labelled=False)
    if way == "before":
        runner.length_batches = before
        confidence.length_batches = lambda lengths, size, **k: before(lengths, size, order="records")
    lengths = [len(tok.apply_chat_template(task.messages(r), add_generation_prompt=True)) for r in recs]
    start = time.perf_counter()
    if job == "answer":
        out = runner.predict(net, tok, task, recs, batch_size=batch_size, max_new_tokens=new_tokens,
                             show_progress=False)
    else:
        out = [[v for _, v in r] for r in confidence.answer_logprobs(net, tok, task, recs, batch_size=batch_size,
                                                                     show_progress=False)]
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else rss("VmHWM")
    return {"seconds": seconds, "peak": peak, "out": out, "prompt_tokens": lengths}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--records", type=int, default=32, help="messages in the similar and spread sets")
    ap.add_argument("--batch-size", type=int, default=16, help="prompts a batch at most (compare's eval_batch_size)")
    ap.add_argument("--new-tokens", type=int, default=16, help="tokens answered (the portal task's cap)")
    ap.add_argument("--sets", default=",".join(SETS), help=f"which of {', '.join(SETS)}")
    ap.add_argument("--jobs", default=",".join(JOBS), help=f"which of {', '.join(JOBS)}")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where the model runs (cuda: in "
                    "bfloat16, peak CUDA allocations instead of RSS)")
    ap.add_argument("--worker", nargs="*", help=argparse.SUPPRESS)
    ap.add_argument("--json", help="also write the results here")
    a = ap.parse_args()
    common = ["--records", str(a.records), "--batch-size", str(a.batch_size), "--new-tokens", str(a.new_tokens),
              "--device", a.device]
    if a.worker is not None:
        way, job, kind, model = a.worker
        print(json.dumps(worker(way, job, kind, model, a.records, a.batch_size, a.new_tokens, a.device)))
        return
    from prefopt.model import resolve_model_dir

    model = str(resolve_model_dir(a.model))
    results = {}
    mib = 1 << 20
    where = f"CPU ({platform.machine()}), fp32" if a.device == "cpu" else "CUDA, bf16"
    print(f"model {a.model}, {where}, portal prompts, at most {a.batch_size} a batch, {a.new_tokens} tokens "
          "answered (greedy); each way in a fresh process")
    peak = "peak RSS" if a.device == "cpu" else "peak CUDA allocations"
    print(f"| set | prompt tokens (min-median-max) | job | before: s | now: s | now / before | {peak} before → "
          "now (MiB) | the same output |")
    print("|---|---|---|---|---|---|---|---|")
    for kind in a.sets.split(","):
        for job in a.jobs.split(","):
            runs = {way: run_worker(__file__, *common, "--worker", way, job, kind, model) for way in ("before", "now")}
            results[f"{kind}/{job}"] = runs
            b, n = runs["before"], runs["now"]
            tokens = sorted(n["prompt_tokens"])
            spread = f"{tokens[0]}-{tokens[len(tokens) // 2]}-{tokens[-1]}"
            print(f"| {kind} ({len(tokens)}) | {spread} | {job} | {b['seconds']:.1f} | {n['seconds']:.1f} | "
                  f"{n['seconds'] / b['seconds']:.2f}x | {b['peak'] / mib:.0f} → {n['peak'] / mib:.0f} | "
                  f"{_same(job, b['out'], n['out'])} |", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2))


def _same(job: str, before_out: list, now_out: list) -> str:
    """How far the outputs agree: answers word for word, or the scores' largest difference."""
    if job == "answer":
        return f"{sum(x == y for x, y in zip(before_out, now_out))} of {len(now_out)} answers"
    diff = max(abs(x - y) for r, s in zip(before_out, now_out) for x, y in zip(r, s))
    return f"log-probs within {diff:.1e}"


if __name__ == "__main__":
    main()
