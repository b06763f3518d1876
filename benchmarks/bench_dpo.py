"""LoRA DPO throughput and peak memory: prefopt (three reference modes) against TRL's
DPOTrainer + PEFT, in one run.

Same model (SmolLM2-135M-Instruct, fp32, CPU), same preference pairs (MedQA: correct vs a
wrong option, chat-formatted; synthetic when ../shared/data is absent), same max length,
batch size (pairs per step), beta, learning rate, LoRA settings and gradient-checkpointing
setting (off unless ``--gradient-checkpointing``; TRL's own default is on, and its bf16
default is turned off). Each trainer runs in a fresh process. Throughput = pairs per second
over the timed steps (every trainer sees the same pairs per step); "tokens/step" counts the
non-padding tokens a trainer ran through the model, so a prompt run once for both answers
counts once. Peak RSS = ``VmHWM`` at the end.

prefopt's modes: ``adapter`` (reference = the same model with LoRA disabled, one extra
no-grad forward per step), ``cache`` (reference log-probs precomputed once into the on-disk
cache, so no reference forward while training; the precompute time is reported apart), and
``frozen`` (a separate frozen copy of the model as reference). By default prefopt packs each
pair into one row so its prompt runs once (``DPOConfig.share_prompt``); a ``-stacked`` suffix
(``cache-stacked``, ...) runs the same mode with the chosen and rejected sequences stacked. A
``+wpo`` suffix (``cache+wpo``, ``trl+wpo``) trains with WPO's pair weights (``DPOConfig.wpo``;
TRL's ``use_weighting``): what their extra no-grad pass through the head costs.

    .venv/bin/pip install -c constraints.txt trl     # TRL is a benchmark-only extra
    .venv/bin/python benchmarks/bench_dpo.py --steps 10 --batch-size 2 --max-length 320
    .venv/bin/python benchmarks/bench_dpo.py --modes cache cache-stacked adapter adapter-stacked
    .venv/bin/python benchmarks/bench_dpo.py --modes trl trl+wpo cache cache+wpo
"""
from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    TARGETS,
    preference_records,
    rss,
    run_trainer_workers,
    run_trl,
    step_summary,
    trainer_bench_parser,
)

BETA, LR = 0.1, 1e-4


def prefopt_worker(a, name: str) -> dict:
    from prefopt import load_model, load_tokenizer
    from prefopt.data import load_preferences
    from prefopt.model import resolve_model_dir
    from prefopt.train import DPOConfig, DPOTrainer
    from prefopt.train.reference import reference_cache_for
    from prefopt.train.run import prepare_model

    base = rss("VmRSS")
    name, _, variant = name.partition("+")
    if variant not in ("", "wpo"):
        raise SystemExit(f"unknown variant +{variant} (+wpo)")
    mode, _, layout = name.partition("-")
    cfg = DPOConfig(model=a.model_dir, data=a.data, output_dir=a.out, batch_size=a.batch_size, max_steps=a.steps,
                    lr=LR, beta=BETA, lora_r=16, lora_alpha=32, lora_dropout=0.05, lora_dora=a.dora,
                    lora_targets=TARGETS, max_length=a.max_length, schedule="constant", progress=False, seed=0,
                    gradient_checkpointing=a.gradient_checkpointing,
                    ref_cache=str(Path(a.out) / "cache") if mode == "cache" else None,
                    share_prompt=layout != "stacked", wpo=variant == "wpo")
    tok = load_tokenizer(cfg.model)
    pairs, _ = load_preferences(cfg.data, tok, max_length=cfg.max_length)
    model = prepare_model(cfg)
    ref = load_model(cfg.model) if mode == "frozen" else None
    t_cache = time.perf_counter()
    cache = reference_cache_for(cfg, model, None, resolve_model_dir(cfg.model)) if mode == "cache" else None
    marks = []
    trainer = DPOTrainer(model, cfg, pairs, pad_id=tok.pad_token_id, ref_model=ref, ref_cache=cache,
                         callbacks=[lambda t, s, m: marks.append((time.perf_counter(), m["tokens"]))])
    precompute = time.perf_counter() - t_cache if mode == "cache" else 0.0
    marks.append((time.perf_counter(), 0))
    trainer.train()
    label = f"prefopt, reference: {mode}, " + ("pairs stacked" if layout == "stacked" else "each prompt once") \
        + (", WPO" if cfg.wpo else "")
    out = step_summary(label, marks, a.warmup, base, cumulative=False)
    out.update(precompute_s=precompute, reference_forwards=trainer.ref_forwards)
    return out


def trl_worker(a, wpo: bool = False) -> dict:
    out = run_trl("dpo", a, TARGETS, learning_rate=LR, beta=BETA, use_weighting=wpo)
    if wpo:
        out["name"] += ", WPO"
    return out


def main() -> None:
    ap = trainer_bench_parser(__doc__, steps=10, batch_size=2, max_length=320, batch_help="pairs per step")
    ap.add_argument("--modes", nargs="+", default=["trl", "adapter", "cache", "frozen"])
    a = ap.parse_args()
    if a.worker is not None:
        kind, a.model_dir, a.data, a.out = a.worker
        print(json.dumps(trl_worker(a, kind == "trl+wpo") if kind.startswith("trl") else prefopt_worker(a, kind)))
        return
    rows = run_trainer_workers(__file__, a, preference_records(a.batch_size * a.steps), a.modes)
    mib = 1024**2
    print(f"model {a.model}, fp32, CPU ({platform.machine()}), {a.batch_size} pairs/step, max_length {a.max_length}, "
          f"beta {BETA}, {a.steps} steps ({a.warmup} untimed), {'DoRA' if a.dora else 'LoRA'} r16/a32/d0.05, gradient checkpointing "
          f"{'on' if a.gradient_checkpointing else 'off'} in all")
    print("| trainer | pairs/s | s/step | tokens/step | peak RSS (MiB) | vs TRL: pairs/s | vs TRL: peak RSS |")
    print("|---|---|---|---|---|---|---|")
    for r in rows.values():
        r["pairs_per_s"] = a.batch_size / r["s_per_step"]
    trl_row = rows.get("trl")
    for r in rows.values():
        rel = (f"{r['pairs_per_s'] / trl_row['pairs_per_s']:.2f}x | {r['peak_rss'] / trl_row['peak_rss']:.2f}x"
               if trl_row else "- | -")
        print(f"| {r['name']} | {r['pairs_per_s']:.2f} | {r['s_per_step']:.2f} | {r['tokens_per_step']:.0f} | "
              f"{r['peak_rss'] / mib:.0f} | {rel} |")
    if "cache" in rows:
        print(f"cache: precompute {rows['cache']['precompute_s']:.1f} s for {a.batch_size * a.steps} pairs (once), "
              f"reference forwards while training: {rows['cache']['reference_forwards']}")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
