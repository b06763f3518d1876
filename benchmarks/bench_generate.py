"""Batched greedy generation on CPU: prefopt's ``generate`` against transformers' ``generate``, in
one run: new tokens a second, seconds, peak RSS, and whether the two wrote the same tokens.

Every evaluation (``prefopt eval``, ``compare``, ``predict``, ``make-pairs``) answers its prompts
with ``generate``, batched by prompt length. Three workers, each in a fresh process, answer the
same prompts (MeQSum patient questions to summarise, in SmolLM2's chat template, or synthetic
ones where ../shared/data is absent; or a prefopt task's, ``--task portal``) with the same token
ids, greedily, up to ``--max-new-tokens``, stopping a row at the end-of-turn token:

- transformers ``AutoModelForCausalLM.generate`` (left padding, its own KV cache);
- prefopt as before 2026-12-02: every row to the end (``compact=False``), each prompt's start
  run in full in every row (``MIN_SHARED`` set out of reach);
- prefopt, finished rows dropped from the batch and the KV cache (``compact=True``) only;
- prefopt as it is (default): also the start every prompt has (the chat template's system
  prompt and the instruction) run once and copied into each row.

    .venv/bin/python benchmarks/bench_generate.py --prompts 32 --batch-size 16 --max-new-tokens 96
    .venv/bin/python benchmarks/bench_generate.py --task portal --prompts 64 --batch-size 16 --max-new-tokens 32
    .venv/bin/python benchmarks/bench_generate.py --chat 8 --max-new-tokens 48

``--chat TURNS`` times a conversation instead, as ``prefopt chat`` holds it: each turn's prompt is
the whole conversation so far, run in full every turn or with the keys and values of the turns
before kept (``PromptCache``), in one process.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import chat_records, rss, run_worker  # noqa: E402

KINDS = {"transformers": "transformers generate", "before": "prefopt, every row to the end, no shared start",
         "compact": "prefopt, finished rows dropped", "default": "prefopt, rows dropped + shared start (default)"}


def prompt_ids(model_dir: str, n: int, task: str | None = None, data: str | None = None
               ) -> tuple[list[list[int]], list[int]]:
    """``n`` chat prompts as token ids (prefopt's tokenizer and chat template) and the end tokens:
    MeQSum questions to summarise, or the first ``n`` records of a prefopt task (its bundled data
    or ``data``) as its evaluation asks them."""
    from prefopt import load_tokenizer

    tok = load_tokenizer(model_dir)
    if task is None:
        messages = [r["prompt"] for r in chat_records(n)]
    else:
        from prefopt.tasks import get_task

        t = get_task(task)
        messages = [t.messages(r) for r in t.read(data)[:n]]
    return [tok.apply_chat_template(m, add_generation_prompt=True) for m in messages], list(tok.eos_token_ids)


def worker(kind: str, model_dir: str, prompts_file: str, batch_size: int, max_new_tokens: int, repeats: int) -> dict:
    import torch

    spec = json.loads(Path(prompts_file).read_text())
    prompts, eos = spec["prompts"], spec["eos"]
    base = rss("VmRSS")
    if kind == "transformers":
        import transformers

        model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()

        def answer(batch):
            T = max(map(len, batch))
            ids = torch.tensor([[0] * (T - len(p)) + p for p in batch])
            mask = torch.tensor([[0] * (T - len(p)) + [1] * len(p) for p in batch])
            with torch.no_grad():
                out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                     do_sample=False, pad_token_id=0, eos_token_id=eos)
            rows = []
            for row in out[:, T:].tolist():  # cut at the first end token, as prefopt returns them
                end = next((i + 1 for i, t in enumerate(row) if t in eos), len(row))
                rows.append(row[:end])
            return rows
    else:
        import importlib

        from prefopt import load_model

        gen = importlib.import_module("prefopt.model.generate")  # the module (prefopt.model.generate is the function)

        model = load_model(model_dir).eval()
        if kind != "default":
            gen.MIN_SHARED = 1 << 30  # no prompt start is shared

        def answer(batch):
            return gen.generate(model, batch, max_new_tokens=max_new_tokens, eos_token_ids=eos, pad_token_id=0,
                                compact=kind != "before")
    answer(prompts[:2])  # warm-up, untimed
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # batched by length, as answer_prompts
    outs: dict[int, list[int]] = {}
    passes = []
    for _ in range(repeats):  # the fastest pass counts: this machine's neighbours come and go
        start = time.perf_counter()
        for s in range(0, len(order), batch_size):
            chunk = order[s:s + batch_size]
            outs.update(zip(chunk, answer([prompts[i] for i in chunk])))
        passes.append(time.perf_counter() - start)
    seconds = min(passes)
    rows = [outs[i] for i in range(len(prompts))]
    new = sum(map(len, rows))
    return {"name": KINDS[kind], "seconds": seconds, "passes": passes, "new_tokens": new, "tokens_per_s": new / seconds,
            "peak_rss": rss("VmHWM"), "rss_before_load": base, "rows": rows}


def chat_turns(model_dir: str, turns: int, max_new_tokens: int) -> dict:
    """A conversation of ``turns`` MeQSum messages (or synthetic ones), greedy, each turn's prompt the
    whole conversation so far, as ``prefopt chat`` builds it: seconds per turn with the
    conversation's keys and values kept between turns (``PromptCache``) and without."""
    from prefopt import generate, load_model, load_tokenizer
    from prefopt.model.kv_cache import PromptCache

    model, tok = load_model(model_dir).eval(), load_tokenizer(model_dir)
    messages = [r["prompt"][0]["content"] for r in chat_records(turns)]
    generate(model, [tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True)],
             max_new_tokens=2)  # warm-up, untimed
    runs = {}
    for kind in ("without", "with"):
        kept = PromptCache() if kind == "with" else None
        conversation, seconds, lengths, answers = [], [], [], []
        for text in messages:
            conversation.append({"role": "user", "content": text})
            ids = tok.apply_chat_template(conversation, add_generation_prompt=True)
            start = time.perf_counter()
            new = generate(model, [ids], max_new_tokens=max_new_tokens, eos_token_ids=tok.eos_token_ids,
                           prompt_cache=kept)[0]
            seconds.append(time.perf_counter() - start)
            lengths.append(len(ids))
            answers.append(new)
            conversation.append({"role": "assistant", "content": tok.decode(new).strip()})
        runs[kind] = {"seconds": seconds, "prompt_tokens": lengths, "answers": answers}
    return runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--task", help="a prefopt task's prompts (e.g. portal, make demo's) instead of MeQSum's")
    ap.add_argument("--data", help="with --task: its data file (default: the task's bundled data)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--repeats", type=int, default=2, help="timed passes over the prompts; the fastest counts")
    ap.add_argument("--kinds", default=",".join(KINDS), help=f"which workers, of {', '.join(KINDS)}")
    ap.add_argument("--chat", type=int, metavar="TURNS",
                    help="instead: a conversation of TURNS messages, each turn timed with and without the "
                         "conversation's keys and values kept (prefopt chat)")
    ap.add_argument("--worker", nargs="*", help=argparse.SUPPRESS)
    ap.add_argument("--json", help="also write the results here")
    a = ap.parse_args()
    if a.worker is not None:
        kind, model_dir, prompts_file = a.worker
        print(json.dumps(worker(kind, model_dir, prompts_file, a.batch_size, a.max_new_tokens, a.repeats)))
        return
    from prefopt.model import resolve_model_dir

    model_dir = str(resolve_model_dir(a.model))
    if a.chat:
        runs = chat_turns(model_dir, a.chat, a.max_new_tokens)
        without, with_ = runs["without"], runs["with"]
        print(f"model {a.model}, fp32, CPU ({platform.machine()}), a conversation of {a.chat} messages, greedy, up to "
              f"{a.max_new_tokens} new tokens a turn; same answers with and without: "
              f"{without['answers'] == with_['answers']}")
        print("| turn | prompt tokens | s, every turn runs the whole conversation | s, kept between turns | ratio |")
        print("|---|---|---|---|---|")
        for i, (n, x, y) in enumerate(zip(without["prompt_tokens"], without["seconds"], with_["seconds"]), 1):
            print(f"| {i} | {n} | {x:.2f} | {y:.2f} | {y / x:.2f}x |")
        print(f"| all | | {sum(without['seconds']):.2f} | {sum(with_['seconds']):.2f} | "
              f"{sum(with_['seconds']) / sum(without['seconds']):.2f}x |")
        if a.json:
            Path(a.json).write_text(json.dumps(runs, indent=2))
        return
    prompts, eos = prompt_ids(model_dir, a.prompts, a.task, a.data)
    kinds = a.kinds.split(",")
    with tempfile.TemporaryDirectory(prefix="bench_generate_") as tmp:
        spec = Path(tmp) / "prompts.json"
        spec.write_text(json.dumps({"prompts": prompts, "eos": eos}))
        runs = {k: run_worker(__file__, "--worker", k, model_dir, str(spec), "--batch-size", str(a.batch_size),
                              "--max-new-tokens", str(a.max_new_tokens), "--repeats", str(a.repeats)) for k in kinds}
    mib = 1024**2
    lengths = [len(p) for p in prompts]
    source = f"{a.task} task" if a.task else "MeQSum"
    print(f"model {a.model}, fp32, CPU ({platform.machine()}), {len(prompts)} {source} prompts of {min(lengths)}-"
          f"{max(lengths)} tokens, batch {a.batch_size} (by length), greedy, up to {a.max_new_tokens} new tokens")
    base = runs.get("transformers") or next(iter(runs.values()))
    print(f"| generation | new tokens/s | s (fastest of {a.repeats}) | peak RSS (MiB) | vs {base['name']}: time | "
          "peak RSS | same tokens |")
    print("|---|---|---|---|---|---|---|")
    for r in runs.values():
        same = sum(x == y for x, y in zip(r["rows"], base["rows"]))
        print(f"| {r['name']} | {r['tokens_per_s']:.1f} | {r['seconds']:.2f} | {r['peak_rss'] / mib:.0f} | "
              f"{r['seconds'] / base['seconds']:.2f}x | {r['peak_rss'] / base['peak_rss']:.2f}x | "
              f"{same}/{len(prompts)} rows |")
    answer_lengths = sorted(len(row) for row in base["rows"])
    from prefopt import load_model
    from prefopt.model.generate import shared_start

    batches = [sorted(prompts, key=len)[s:s + a.batch_size] for s in range(0, len(prompts), a.batch_size)]
    config = load_model(model_dir).config
    shared = [shared_start(b, config, max(map(len, b)) + a.max_new_tokens) for b in batches]
    print(f"shared start of each batch (default): {shared} tokens; ", end="")
    print(f"answer lengths: min {answer_lengths[0]}, median {answer_lengths[len(answer_lengths) // 2]}, "
          f"max {answer_lengths[-1]} tokens")
    if a.json:
        Path(a.json).write_text(json.dumps(runs, indent=2))


if __name__ == "__main__":
    main()
