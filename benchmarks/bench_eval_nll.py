"""``prefopt eval-nll``'s scoring (``evaluate.nll_eval.example_nll``) against the layout it used
before 2026-12-04, in one run: each batch as padded rows (sorted by length, so little padding)
against its examples end to end in one row with the prompt start they all have run once (as SFT
trains with ``pack`` and ``share_start``). Both take turns in one process; the first turn warms
up, untimed. Prints the median seconds of each and how far the two NLLs differ.

The records are the bundled synthetic portal messages as compare's SFT stage writes them (their
prompts begin with the same 79 tokens of ~110 in SmolLM2's tokenizer).

    .venv/bin/python benchmarks/bench_eval_nll.py --records 64 --batch-size 8 --repeats 3
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_share_start import portal_records  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--records", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=384)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()

    import numpy as np
    import torch

    from prefopt import load_model, load_tokenizer
    from prefopt.data import load_sft
    from prefopt.evaluate.nll_eval import example_nll

    tok = load_tokenizer(a.model)
    model = load_model(a.model, dtype=torch.float32).eval()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "records.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in portal_records(a.records)))
        examples = load_sft(str(path), tok, max_length=a.max_length)[0]
    pad = tok.pad_token_id or 0
    ways = {"padded rows (before)": lambda: padded_nll(model, examples, pad, a.batch_size),
            "one row, the start once (now)": lambda: example_nll(model, examples, batch_size=a.batch_size)[0]}
    times, out = {k: [] for k in ways}, {}
    for turn in range(a.repeats + 1):
        for k, run in ways.items():
            t0 = time.perf_counter()
            out[k] = run()
            if turn:
                times[k].append(time.perf_counter() - t0)
    before, now = out.values()
    base = statistics.median(next(iter(times.values())))
    print(f"model {a.model}, fp32; {len(examples)} portal records, batches of {a.batch_size}; median of {a.repeats}")
    print("| layout | s | ratio |\n|---|---|---|")
    for k, v in times.items():
        print(f"| {k} | {statistics.median(v):.3f} | {statistics.median(v) / base:.2f}x |")
    print(f"max relative difference of the NLLs: {float(np.max(np.abs(now - before) / np.abs(before))):.1e}")


def padded_nll(model, examples, pad_id: int, batch_size: int):
    """Each example's summed NLL as ``example_nll`` computed it before: padded rows sorted by length."""
    import numpy as np
    import torch

    from prefopt.data.collate import pad_collate
    from prefopt.data.sft import IGNORE
    from prefopt.kernels import sequence_logprobs
    from prefopt.train.distributed import head_operands

    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    nll = np.zeros(len(examples))
    with torch.no_grad():
        for s in range(0, len(order), batch_size):
            chunk = order[s:s + batch_size]
            batch = pad_collate([examples[i] for i in chunk], pad_id)
            hidden = model(batch["input_ids"], batch["attention_mask"], return_hidden=True)
            labels = batch["labels"][:, 1:]
            logp = sequence_logprobs(*head_operands(model, hidden[:, :-1]), labels, ignore_index=IGNORE)
            nll[chunk] = (-logp.float().sum(-1)).numpy()
    return nll


if __name__ == "__main__":
    main()
