"""Loading and checking training data: prefopt's loaders against re-encoding everything, in one run.

Synthetic records (seeded; clinical words in random order, prompts about 380 tokens and responses
about 50 with SmolLM2's tokenizer and chat template), as a list of dicts, so file reading is left
out. Each line times one thing, best of ``--reps``:

- ``load sft`` / ``load pairs``: ``load_sft`` / ``load_preferences`` at ``--max-length``;
- ``pairs, prompt per response``: ``load_preferences`` encoding each prompt once for each
  response (as before 2026-11-30; ``Tokenizer.remembering`` switched off);
- ``check sft`` / ``check pairs``: ``check_data`` (two passes over the records, each text encoded once);
- ``two loads sft`` / ``two loads pairs``: what ``check_data`` did before: load untruncated, load again.

Then the memory the loaded pairs hold (``tracemalloc``, bytes a token) and the time to batch them
all, as int32 arrays (prefopt's examples) and as the Python lists of ints they were before
2026-11-30, rebuilt from the same pairs; and the peak memory of ``check pairs`` / ``check sft``
(which hold every text's ids between their two passes) and of two plain loads.

    python benchmarks/bench_data.py                    # 5,000 records, SmolLM2's tokenizer
    python benchmarks/bench_data.py --records 500 --model DIR
"""
from __future__ import annotations

import argparse
import contextlib
import json
import platform
import random
import time
import tracemalloc
from functools import partial

WORDS = ("patient presents with chest pain fever cough dyspnea history of hypertension diabetes nausea "
         "syncope headache abdominal tenderness tachycardia").split()


def records(n: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    rng = random.Random(seed)
    sft = [{"prompt": " ".join(rng.choices(WORDS, k=300)), "completion": " ".join(rng.choices(WORDS, k=40))}
           for _ in range(n)]
    pairs = [{"prompt": r["prompt"], "chosen": r["completion"], "rejected": " ".join(rng.choices(WORDS, k=40))}
             for r in sft]
    return sft, pairs


def best(f, reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return min(times)


def run(model: str, n: int, max_length: int, reps: int) -> list[dict]:
    from prefopt import load_tokenizer
    from prefopt.data import load_preferences, load_sft
    from prefopt.data.check import UNLIMITED, check_data

    tok = load_tokenizer(model)
    sft, pairs = records(n)

    def two_loads(loader, data):
        loader(data, tok, max_length=UNLIMITED, skip_bad=True)
        loader(data, tok, max_length=max_length, skip_bad=True)

    def prompt_per_response():
        real = tok.remembering
        tok.remembering = lambda: contextlib.nullcontext(tok)
        try:
            load_preferences(pairs, tok, max_length=max_length)
        finally:
            tok.remembering = real

    cases = {
        "load sft": lambda: load_sft(sft, tok, max_length=max_length),
        "load pairs": lambda: load_preferences(pairs, tok, max_length=max_length),
        "pairs, prompt per response": prompt_per_response,
        "check sft": lambda: check_data(sft, tok, kind="sft", max_length=max_length),
        "two loads sft": lambda: two_loads(load_sft, sft),
        "check pairs": lambda: check_data(pairs, tok, kind="preference", max_length=max_length),
        "two loads pairs": lambda: two_loads(load_preferences, pairs),
    }
    return [{"case": name, "seconds": best(f, reps)} for name, f in cases.items()]


def traced(build, peak: bool = False):
    """``(bytes still allocated after build(), or at most while it ran, its result)``."""
    tracemalloc.start()
    try:
        out = build()
        return tracemalloc.get_traced_memory()[1 if peak else 0], out
    finally:
        tracemalloc.stop()


def as_lists(examples):
    """The examples as they were kept before 2026-11-30: lists of ints, the labels sharing the ids'
    int objects where they train on them (as ``[IGNORE] * p + ids[p:]`` did)."""
    return [[ids, [i if x != -100 else -100 for i, x in zip(ids, e.labels)]]
            for e in examples for ids in [list(e.input_ids)]]


class ListExample:
    """An example as it was before 2026-11-30, for batching: ids and labels as lists."""

    def __init__(self, ids, labels):
        self.input_ids, self.labels = ids, labels


KIND = {"pairs": "preference", "sft": "sft"}  # check_data's name for each


def storage(model: str, n: int, max_length: int, reps: int) -> dict:
    """Bytes a token the loaded pairs hold and the time to batch them all (``pad_collate``, 8 pairs
    a batch), as int32 arrays and as lists; and the peak memory of ``check_data`` and of two plain
    loads, for the pairs and the SFT records."""
    from prefopt import load_tokenizer
    from prefopt.data import load_preferences, load_sft
    from prefopt.data.check import UNLIMITED, check_data
    from prefopt.data.collate import pad_collate

    tok = load_tokenizer(model)
    sft, pairs = records(n)

    def check(kind, data):
        return check_data(data, tok, kind=KIND[kind], max_length=max_length)

    def two_loads(loader, data):
        return [loader(data, tok, max_length=m, skip_bad=True) for m in (UNLIMITED, max_length)]

    peaks = {}
    for kind, data, loader in (("pairs", pairs, load_preferences), ("sft", sft, load_sft)):
        peaks[f"check_{kind}_peak_mib"] = traced(partial(check, kind, data), peak=True)[0] / 2**20
        peaks[f"two_loads_{kind}_peak_mib"] = traced(partial(two_loads, loader, data), peak=True)[0] / 2**20
    arrays, (loaded, _) = traced(lambda: load_preferences(pairs, tok, max_length=max_length))
    sides = [e for p in loaded for e in (p.chosen, p.rejected)]
    lists, rebuilt = traced(lambda: as_lists(sides))
    as_list = [ListExample(ids, labels) for ids, labels in rebuilt]

    def batches(xs):
        for s in range(0, len(xs), 16):
            pad_collate(xs[s:s + 16], 0)

    tokens = sum(len(e.input_ids) for e in sides)
    return {"tokens": tokens, "arrays_bytes_per_token": arrays / tokens, "lists_bytes_per_token": lists / tokens,
            "collate_arrays_seconds": best(lambda: batches(sides), reps),
            "collate_lists_seconds": best(lambda: batches(as_list), reps), **peaks}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m", help="whose tokenizer and chat template")
    ap.add_argument("--records", type=int, default=5000)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--json", help="also write the results here")
    a = ap.parse_args()
    rows = run(a.model, a.records, a.max_length, a.reps)
    t = {r["case"]: r["seconds"] for r in rows}
    ratios = {"load pairs": t["load pairs"] / t["pairs, prompt per response"],
              "check sft": t["check sft"] / t["two loads sft"],
              "check pairs": t["check pairs"] / t["two loads pairs"]}
    print(f"{a.records} records, max_length {a.max_length}, best of {a.reps}; {platform.processor() or platform.machine()}")
    for r in rows:
        ratio = ratios.get(r["case"])
        print(f"  {r['case']:<28} {r['seconds']:7.2f} s" + (f"   {ratio:.2f}x the line below" if ratio else ""))
    mem = storage(a.model, a.records, a.max_length, a.reps)
    print(f"  kept in memory, {mem['tokens']:,} tokens of pairs: {mem['arrays_bytes_per_token']:.1f} bytes a token as "
          f"int32 arrays, {mem['lists_bytes_per_token']:.1f} as Python lists "
          f"({mem['arrays_bytes_per_token'] / mem['lists_bytes_per_token']:.2f}x)")
    print(f"  batching them (8 pairs a batch): {mem['collate_arrays_seconds']:.2f} s from arrays, "
          f"{mem['collate_lists_seconds']:.2f} s from lists "
          f"({mem['collate_arrays_seconds'] / mem['collate_lists_seconds']:.2f}x)")
    for kind in ("pairs", "sft"):
        print(f"  peak memory (tracemalloc): check {kind} {mem[f'check_{kind}_peak_mib']:.0f} MiB, two loads {kind} "
              f"{mem[f'two_loads_{kind}_peak_mib']:.0f} MiB")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"records": a.records, "max_length": a.max_length, "rows": rows, "ratios": ratios,
                       "memory": mem}, f, indent=2)


if __name__ == "__main__":
    main()
