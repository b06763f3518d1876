"""LoRA SFT throughput and peak memory: prefopt against TRL's SFTTrainer + PEFT, in one run.

Both train the same model (SmolLM2-135M-Instruct, fp32, CPU) on the same records
(MeQSum questions → summaries, chat-formatted; synthetic when ../shared/data is absent),
with the same max length, batch size, learning rate, LoRA rank/alpha/dropout/targets,
completion-only loss, fp32 (TRL's bf16 default is turned off) and gradient checkpointing
setting (TRL's default is on; ``--gradient-checkpointing`` turns it on for both), for the
same number of optimizer steps. Each runs in its own fresh
process. Throughput = non-padding tokens / wall time over the timed steps (the first
``--warmup`` steps are excluded); peak RSS is the process's ``VmHWM`` at the end.

    .venv/bin/pip install -c constraints.txt trl     # TRL is a benchmark-only extra
    .venv/bin/python benchmarks/bench_sft.py --steps 12 --batch-size 4 --max-length 256
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
    chat_records,
    rss,
    run_trainer_workers,
    run_trl,
    step_summary,
    trainer_bench_parser,
)


def prefopt_worker(a, quantize: str | None = None, lora_layers: str | None = None, pack: bool = False,
                   share_start: bool = False, checkpoint_layers: int | None = None) -> dict:
    """prefopt's run (``quantize``: its base in 4 bits, for bench_qlora.py; ``lora_layers``: the
    layers adapted, for bench_lora_layers.py; ``pack``: each batch in one row, for bench_pack.py;
    ``share_start``: with it, the prompts' shared start once, for bench_share_start.py;
    ``checkpoint_layers``: with ``--gradient-checkpointing``, how many layers recompute their
    activations, for bench_checkpointing.py); also the model's own bytes (parameters and buffers)
    and the mean loss of the last three steps."""
    from prefopt import load_tokenizer
    from prefopt.train import SFTTrainer, TrainConfig
    from prefopt.train.run import prepare_model
    from prefopt.train.sft import load_train_eval

    base = rss("VmRSS")
    cfg = TrainConfig(model=a.model_dir, data=a.data, output_dir=a.out, batch_size=a.batch_size,
                      max_steps=a.steps, lr=2e-4, lora_r=16, lora_alpha=32, lora_dropout=0.05, lora_dora=a.dora,
                      lora_targets=TARGETS, max_length=a.max_length, schedule="constant", progress=False,
                      seed=0, gradient_checkpointing=a.gradient_checkpointing,
                      gradient_checkpointing_layers=checkpoint_layers, quantize=quantize,
                      lora_layers=lora_layers, pack=pack, share_start=share_start)
    tok = load_tokenizer(cfg.model)
    train, _, _ = load_train_eval(cfg, tok)
    marks, losses = [], []
    model = prepare_model(cfg)
    model_bytes = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    trainer = SFTTrainer(model, cfg, train, pad_id=tok.pad_token_id,
                         callbacks=[lambda t, s, m: marks.append((time.perf_counter(), m["tokens"])) or
                                    losses.append(m["loss"])])
    t0 = time.perf_counter()
    marks.append((t0, 0))
    trainer.train()
    return {**step_summary("prefopt", marks, a.warmup, base, cumulative=False), "model_bytes": model_bytes,
            "last_loss": sum(losses[-3:]) / len(losses[-3:])}


def trl_worker(a) -> dict:
    return run_trl("sft", a, TARGETS, learning_rate=2e-4, completion_only_loss=True, packing=False)


def main() -> None:
    a = trainer_bench_parser(__doc__, steps=12, batch_size=4, max_length=256).parse_args()
    if a.worker is not None:
        kind, a.model_dir, a.data, a.out = a.worker
        print(json.dumps(prefopt_worker(a) if kind == "prefopt" else trl_worker(a)))
        return
    rows = list(run_trainer_workers(__file__, a, chat_records(a.batch_size * a.steps), ["trl", "prefopt"]).values())
    trl_row, ours = rows
    mib = 1024**2
    print(f"model {a.model}, fp32, CPU ({platform.machine()}), batch {a.batch_size}, max_length {a.max_length}, "
          f"{a.steps} steps ({a.warmup} untimed), {'DoRA' if a.dora else 'LoRA'} r16/a32/d0.05 on {len(TARGETS)} projections, "
          f"gradient checkpointing {'on' if a.gradient_checkpointing else 'off'} in both")
    print("| trainer | tokens/s | s/step | tokens/step | peak RSS (MiB) | RSS after imports (MiB) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['name']} | {r['tokens_per_s']:.0f} | {r['s_per_step']:.2f} | {r['tokens_per_step']:.0f} | "
              f"{r['peak_rss'] / mib:.0f} | {r['rss_after_imports'] / mib:.0f} |")
    print(f"prefopt / TRL: throughput {ours['tokens_per_s'] / trl_row['tokens_per_s']:.2f}x, "
          f"peak RSS {ours['peak_rss'] / trl_row['peak_rss']:.2f}x")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
