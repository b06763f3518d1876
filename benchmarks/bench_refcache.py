"""Reference precompute for the DPO cache: each prompt once (prefopt's default) against the
full chosen and rejected sequences, in one run on the same pairs and model.

Pairs: ``--task portal`` builds one wrong-label pair per bundled synthetic portal message (what
``make demo`` trains on); ``--task medqa`` one per MedQA question from ../shared/data (the
correct option against a random wrong one, as examples/dpo_medqa.py does). Chunks are what
``DPOTrainer.fill_cache`` uses: ``2 × --batch-size`` pairs for the full sequences, ``4 ×`` with
each prompt once. Each method runs twice, alternating; the faster run counts. The sums of both
are compared (they differ only by float rounding).

    .venv/bin/python benchmarks/bench_refcache.py                       # portal, 160 pairs
    .venv/bin/python benchmarks/bench_refcache.py --task medqa --pairs 96 --batch-size 4 --max-length 320
"""
from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import rss  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MEDQA = ROOT.parent / "shared" / "data" / "clinical_reasoning" / "medqa" / "medqa_usmle_4options.jsonl"


def pair_records(task: str, n: int) -> list[dict]:
    if task == "portal":
        from prefopt.tasks import get_task
        from prefopt.tasks.pairs import wrong_label_pairs

        t = get_task("portal")
        return wrong_label_pairs(t, t.read())[:n]
    if not MEDQA.is_file():
        sys.exit(f"MedQA not found at {MEDQA} (../shared/data is not shipped with prefopt)")
    sys.path.insert(0, str(ROOT / "examples"))
    from dpo_medqa import pairs_from_medqa

    with MEDQA.open() as f:
        rows = [json.loads(line) for _, line in zip(range(n), f)]
    return pairs_from_medqa(rows, random.Random(0))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--task", choices=["portal", "medqa"], default="portal")
    ap.add_argument("--pairs", type=int, default=160)
    ap.add_argument("--batch-size", type=int, default=2, help="the DPO run's pairs per step")
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--json", help="also write the results here")
    a = ap.parse_args()

    import tempfile

    import torch

    from prefopt import load_model, load_tokenizer
    from prefopt.data import load_preferences
    from prefopt.data.preference import pair_collate
    from prefopt.train.shared_prompt import pair_logp_sums, shared_prompt_logps

    torch.set_num_threads(2)
    tok = load_tokenizer(a.model)
    model = load_model(a.model, dtype=torch.float32).eval()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pairs.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in pair_records(a.task, a.pairs)))
        pairs, _ = load_preferences(path, tok, max_length=a.max_length)
    pairs.sort(key=lambda p: len(p.input_ids), reverse=True)  # as the cache fill batches them
    device = torch.device("cpu")

    def full(chunk):
        s = pair_logp_sums(model, pair_collate(chunk, tok.pad_token_id))
        return s[:len(chunk)], s[len(chunk):]

    def once(chunk):
        return shared_prompt_logps(model, chunk, tok.pad_token_id, device)

    def run(fn, per_chunk):
        t0, out = time.perf_counter(), []
        with torch.no_grad():
            for i in range(0, len(pairs), per_chunk):
                out.append(torch.stack(fn(pairs[i:i + per_chunk]), 1))
        return time.perf_counter() - t0, torch.cat(out)

    methods = {"full sequences": (full, 2 * a.batch_size), "each prompt once": (once, 4 * a.batch_size)}
    times = {m: [] for m in methods}
    sums = {}
    for _ in range(2):
        for m, (fn, per_chunk) in methods.items():
            seconds, sums[m] = run(fn, per_chunk)
            times[m].append(seconds)
    best = {m: min(t) for m, t in times.items()}
    diff = (sums["full sequences"] - sums["each prompt once"]).abs()
    rel = (diff / sums["full sequences"].abs()).max().item()
    prompt = sum(len(p.chosen.input_ids) - p.chosen.n_label_tokens for p in pairs) / len(pairs)
    answer = sum(p.chosen.n_label_tokens + p.rejected.n_label_tokens for p in pairs) / (2 * len(pairs))
    print(f"model {a.model}, fp32, CPU ({platform.machine()}, 2 threads), task {a.task}, {len(pairs)} pairs, "
          f"mean prompt {prompt:.0f} tokens, mean answer {answer:.1f} tokens, max_length {a.max_length}, "
          f"date {time.strftime('%Y-%m-%d')}")
    print("| reference precompute | pairs per chunk | seconds | pairs/s | vs full sequences |\n|---|---|---|---|---|")
    for m, (_, per_chunk) in methods.items():
        print(f"| {m} | {per_chunk} | {best[m]:.1f} | {len(pairs) / best[m]:.2f} | "
              f"{best['full sequences'] / best[m]:.2f}x |")
    print(f"sums: max |difference| {diff.max().item():.1e}, max relative {rel:.1e}; peak RSS {rss() / 2**20:.0f} MiB")
    if a.json:
        Path(a.json).write_text(json.dumps({"times": times, "max_abs_diff": diff.max().item(), "max_rel_diff": rel}))


if __name__ == "__main__":
    main()
