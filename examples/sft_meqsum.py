"""LoRA SFT of SmolLM2-135M-Instruct on MeQSum (consumer health question → short question).

Reads the real MeQSum file from ../shared/data (CC BY 4.0, Ben Abacha & Demner-Fushman,
ACL 2019) with prefopt's ``meqsum`` task, turns it into prompt/completion records, holds out
a seeded eval set, trains a LoRA adapter on CPU and prints the eval loss before and after.
A malformed MeQSum row stops it with the file, line and field.

    .venv/bin/python examples/sft_meqsum.py                    # defaults below
    .venv/bin/python examples/sft_meqsum.py --max-steps 300 --output runs/meqsum
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from prefopt.cli import run_script
from prefopt.tasks import MeQSum, split_records
from prefopt.train import TrainConfig, run_sft

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "summarization" / "meqsum"


def write_records(src: Path, out_dir: Path, n_eval: int, seed: int) -> tuple[Path, Path]:
    """``train.jsonl`` and ``eval.jsonl`` SFT records (chat prompt, reference question)."""
    task = MeQSum()
    parts = split_records(task.load(src), test=n_eval, seed=seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = out_dir / "train.jsonl", out_dir / "eval.jsonl"
    for path, part in zip(paths, (parts["train"], parts["test"])):
        path.write_text("".join(json.dumps({"prompt": task.messages(r), "completion": r.target}, ensure_ascii=False)
                                + "\n" for r in part))
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--output", type=Path, default=Path("runs/meqsum-sft"))
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--max-steps", type=int, default=150)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--n-eval", type=int, default=100)
    ap.add_argument("--max-length", type=int, default=384)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--overwrite", action="store_true", help="replace an earlier run in --output")
    args = ap.parse_args()
    src = args.data_dir / "meqsum.jsonl"
    if not src.is_file():
        raise FileNotFoundError(f"MeQSum not found at {src}; pass --data-dir")
    train, evals = write_records(src, args.output / "data", args.n_eval, args.seed)
    cfg = TrainConfig(model=args.model, data=str(train), eval_data=str(evals), output_dir=str(args.output),
                      max_steps=args.max_steps, batch_size=args.batch_size, lr=3e-4,
                      warmup_steps=min(10, args.max_steps // 2), lora_r=16, lora_alpha=32, lora_dropout=0.05,
                      max_length=args.max_length, eval_every=min(50, args.max_steps), seed=args.seed,
                      overwrite=args.overwrite)
    summary = run_sft(cfg)
    before, after = summary["eval_before"]["eval_loss"], summary["eval_after"]["eval_loss"]
    n_eval = sum(1 for _ in evals.open())
    print(f"MeQSum eval loss (per response token, {n_eval} held-out questions): "
          f"before {before:.4f} -> after {after:.4f}")


if __name__ == "__main__":
    run_script(main, "sft_meqsum")  # bad input: one line, no traceback; Ctrl-C: exit 130
