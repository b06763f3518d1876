"""Shared helpers for the benchmarks: peak RSS, subprocess runs, benchmark data, and the options and
worker launch that the trainer benchmarks (bench_sft.py, bench_dpo.py) have in common."""
from __future__ import annotations

import argparse
import json
import random
import re
import subprocess
import sys
import tempfile
from pathlib import Path

MEQSUM = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "summarization" / "meqsum" / "meqsum.jsonl"
PROMPT = "Summarize this patient's question as one short question.\n\n{question}"


def rss(field: str = "VmHWM") -> int:
    """Bytes of this process's current (VmRSS) or peak (VmHWM) resident memory."""
    with open("/proc/self/status") as f:
        return int(re.search(rf"{field}:\s+(\d+)", f.read()).group(1)) * 1024


def step_summary(name: str, marks: list, warmup: int, rss_after_imports: int, *, cumulative: bool) -> dict:
    """Throughput over the timed steps from ``marks`` = [(time, tokens)], marks[0] the start.

    ``tokens`` is per step, or a running total when ``cumulative`` (TRL's num_input_tokens_seen).
    ``step_seconds``: each step's time (the warm-up's too), to show the spread behind the mean.
    """
    t = [m[0] for m in marks]
    toks = [m[1] for m in marks]
    per_step = [toks[i] - toks[i - 1] for i in range(1, len(toks))] if cumulative else toks[1:]
    timed = per_step[warmup:]
    seconds = t[-1] - t[warmup]
    return {"name": name, "tokens_per_s": sum(timed) / seconds, "s_per_step": seconds / len(timed),
            "tokens_per_step": sum(timed) / len(timed), "peak_rss": rss("VmHWM"),
            "rss_after_imports": rss_after_imports, "step_seconds": [b - a for a, b in zip(t, t[1:])]}


def run_trl(kind: str, a, targets: list[str], **config_kw) -> dict:
    """Train with TRL's ``SFTTrainer`` or ``DPOTrainer`` (``kind`` "sft"/"dpo") + a PEFT LoRA adapter,
    under the settings the benchmarks share, and summarise the timed steps."""
    import time

    import datasets
    import peft
    import transformers
    import trl

    base = rss("VmRSS")
    tok = transformers.AutoTokenizer.from_pretrained(a.model_dir)
    model = transformers.AutoModelForCausalLM.from_pretrained(a.model_dir, dtype="float32")
    ds = datasets.Dataset.from_list([json.loads(line) for line in open(a.data)])
    marks = []

    class Clock(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            marks.append((time.perf_counter(), state.num_input_tokens_seen))

    config_cls, trainer_cls = (trl.SFTConfig, trl.SFTTrainer) if kind == "sft" else (trl.DPOConfig, trl.DPOTrainer)
    args = config_cls(output_dir=a.out, per_device_train_batch_size=a.batch_size, gradient_accumulation_steps=1,
                      max_steps=a.steps, lr_scheduler_type="constant", max_length=a.max_length, logging_steps=1,
                      save_strategy="no", report_to=[], use_cpu=True, bf16=False, fp16=False, seed=0,
                      dataloader_num_workers=0, disable_tqdm=True, gradient_checkpointing=a.gradient_checkpointing,
                      include_num_input_tokens_seen="non_padding", **config_kw)
    lora = peft.LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules=targets, task_type="CAUSAL_LM",
                           use_dora=a.dora)
    trainer = trainer_cls(model=model, args=args, train_dataset=ds, processing_class=tok, peft_config=lora,
                          callbacks=[Clock()])
    marks.append((time.perf_counter(), 0))
    trainer.train()
    name = ("TRL SFTTrainer + PEFT" if kind == "sft" else "TRL DPOTrainer + PEFT") + (" DoRA" if a.dora else "")
    return step_summary(name, marks, a.warmup, base, cumulative=True)


TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]  # LoRA, in every trainer


def trainer_bench_parser(doc: str, *, steps: int, batch_size: int, max_length: int,
                         batch_help: str | None = None) -> argparse.ArgumentParser:
    """The options bench_sft.py and bench_dpo.py share; each adds its own."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--steps", type=int, default=steps)
    ap.add_argument("--warmup", type=int, default=2, help="first steps left out of the timing")
    ap.add_argument("--batch-size", type=int, default=batch_size, help=batch_help)
    ap.add_argument("--max-length", type=int, default=max_length)
    ap.add_argument("--gradient-checkpointing", action="store_true",
                    help="recompute activations in backward, in every trainer (TRL's own default is on)")
    ap.add_argument("--dora", action="store_true", help="DoRA adapters (PEFT's use_dora) in every trainer")
    ap.add_argument("--worker", nargs="*", help=argparse.SUPPRESS)
    ap.add_argument("--json", help="also write the results here")
    return ap


def run_trainer_workers(script: str, a: argparse.Namespace, records: list[dict], kinds: list[str]) -> dict:
    """Write ``records`` to a temporary JSONL and train each of ``kinds`` on it in a fresh process
    (``script --worker KIND MODEL_DIR DATA OUT`` with the shared settings); their results by kind."""
    from prefopt.model import resolve_model_dir

    model_dir = str(resolve_model_dir(a.model))
    common = ["--steps", str(a.steps), "--warmup", str(a.warmup), "--batch-size", str(a.batch_size),
              "--max-length", str(a.max_length)] + (["--gradient-checkpointing"] if a.gradient_checkpointing else []) \
        + (["--dora"] if a.dora else [])
    with tempfile.TemporaryDirectory(prefix=f"{Path(script).stem}_") as tmp:  # data and the workers' outputs
        data = Path(tmp) / "data.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in records))
        return {k: run_worker(script, *common, "--worker", k, model_dir, str(data), str(Path(tmp) / k))
                for k in kinds}


def run_worker(script: str, *args: str) -> dict:
    """Run ``script *args`` in a fresh process and return the JSON it prints last."""
    out = subprocess.run([sys.executable, script, *args], capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"worker {args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def chat_records(n: int, seed: int = 0) -> list[dict]:
    """``n`` prompt/completion records in chat form: real MeQSum when present, else synthetic."""
    if MEQSUM.is_file():
        rows = [json.loads(line) for line in MEQSUM.open()]
        # short questions only, so neither trainer truncates (TRL drops examples whose completion
        # is cut off entirely; prefopt keeps the prompt's end): both then see the same tokens
        pairs = [(r["CHQ"].strip(), r["Summary"].strip()) for r in rows if len(r["CHQ"]) <= 600]
    else:  # synthetic stand-in of similar length, so the benchmark runs anywhere
        rng = random.Random(seed)
        words = "patient pain fever cough medication dose daughter weeks doctor test blood pressure".split()
        pairs = [(" ".join(rng.choices(words, k=60)), " ".join(rng.choices(words, k=9)) + "?") for _ in range(n)]
    random.Random(seed).shuffle(pairs)
    return [{"prompt": [{"role": "user", "content": PROMPT.format(question=q)}],
             "completion": [{"role": "assistant", "content": a}]} for q, a in pairs[:n]]


MEDQA = MEQSUM.parents[1] / "clinical_reasoning" / "medqa" / "medqa_usmle_4options.jsonl"


def preference_records(n: int, seed: int = 0, max_chars: int = 700) -> list[dict]:
    """``n`` chat-form preference pairs: real MedQA (correct vs a wrong option) when present, else
    synthetic. Only short questions, so neither trainer truncates."""
    rng = random.Random(seed)
    if MEDQA.is_file():
        rows = [json.loads(line) for line in MEDQA.open()]
        rows = [r for r in rows if len(r["question"]) <= max_chars]
        rng.shuffle(rows)
        out = []
        for r in rows[:n]:
            opts = r["options"]
            wrong = rng.choice(sorted(k for k in opts if k != r["answer_idx"]))
            q = r["question"] + "\n" + "\n".join(f"{k}. {v}" for k, v in sorted(opts.items()))
            out.append((q, f"{r['answer_idx']}. {opts[r['answer_idx']]}", f"{wrong}. {opts[wrong]}"))
    else:
        words = "patient pain fever cough medication dose weeks doctor test blood pressure".split()
        out = [(" ".join(rng.choices(words, k=80)), " ".join(rng.choices(words, k=6)),
                " ".join(rng.choices(words, k=6))) for _ in range(n)]
    return [{"prompt": [{"role": "user", "content": q}], "chosen": [{"role": "assistant", "content": c}],
             "rejected": [{"role": "assistant", "content": r}]} for q, c, r in out]


def report_two_sft_runs(a: argparse.Namespace, runs: dict, column: str, ratio: str) -> None:
    """Print two prefopt SFT runs (bench_sft.py's worker, in ``runs`` by kind) as a markdown table,
    ``column`` heading the kinds, and the second's throughput and peak RSS over the first's, after
    ``ratio``; write them to ``a.json`` where given (bench_lora_layers.py, bench_pack.py)."""
    import platform

    mib = 1024**2
    print(f"model {a.model}, fp32 weights, CPU ({platform.machine()}), batch {a.batch_size}, max_length "
          f"{a.max_length}, {a.steps} steps ({a.warmup} untimed), LoRA r16/a32/d0.05 on {len(TARGETS)} projections")
    print(f"| {column} | tokens/s | s/step | peak RSS (MiB) | loss, last 3 steps |")
    print("|---|---|---|---|---|")
    for kind, r in runs.items():
        print(f"| {kind.replace('_', ' ')} | {r['tokens_per_s']:.0f} | {r['s_per_step']:.2f} | "
              f"{r['peak_rss'] / mib:.0f} | {r['last_loss']:.4f} |")
    first, second = runs.values()
    print(f"{ratio}: throughput {second['tokens_per_s'] / first['tokens_per_s']:.2f}x, "
          f"peak RSS {second['peak_rss'] / first['peak_rss']:.2f}x")
    if a.json:
        Path(a.json).write_text(json.dumps(runs, indent=2))
