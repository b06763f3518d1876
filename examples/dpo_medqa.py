"""LoRA DPO of SmolLM2-135M-Instruct on real MedQA preference pairs (CPU).

Pairs come from the MedQA USMLE 4-option test set in ../shared/data (MIT; Jin et al. 2021):
the prompt is the question with its options, the chosen answer is the correct option
("B. <text>"), the rejected answer a wrong option drawn at random (seeded). Held-out pairs
come from questions never trained on. The script reports DPO's held-out metrics
(``rewards/accuracies``, margins, loss) before and after training. The reference log-probs
are computed once into an on-disk cache, so training runs no reference forward.

    .venv/bin/python examples/dpo_medqa.py                       # defaults below
    .venv/bin/python examples/dpo_medqa.py --n-train 400 --max-steps 100
"""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from prefopt.train import DPOConfig, run_dpo

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "clinical_reasoning" / "medqa"
INSTRUCTION = "Answer this medical exam question with the letter and text of the best option.\n\n"


def pairs_from_medqa(rows: list[dict], rng: random.Random) -> list[dict]:
    out = []
    for r in rows:
        opts = r["options"]
        prompt = INSTRUCTION + r["question"].strip() + "\n\n" + "\n".join(f"{k}. {v}" for k, v in sorted(opts.items()))
        wrong = rng.choice(sorted(k for k in opts if k != r["answer_idx"]))
        out.append({"prompt": prompt, "chosen": f"{r['answer_idx']}. {opts[r['answer_idx']]}",
                    "rejected": f"{wrong}. {opts[wrong]}"})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--output", type=Path, default=Path("runs/medqa-dpo"))
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--n-train", type=int, default=240)
    ap.add_argument("--n-eval", type=int, default=100)
    ap.add_argument("--max-steps", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--max-length", type=int, default=320)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--overwrite", action="store_true", help="replace an earlier run in --output")
    args = ap.parse_args()
    src = args.data_dir / "medqa_usmle_4options.jsonl"
    if not src.is_file():
        raise SystemExit(f"MedQA not found at {src}; pass --data-dir")
    rng = random.Random(args.seed)
    rows = [json.loads(line) for line in src.open()]
    rng.shuffle(rows)
    pairs = pairs_from_medqa(rows[: args.n_train + args.n_eval], rng)
    data = args.output / "data"
    data.mkdir(parents=True, exist_ok=True)
    for name, part in (("train", pairs[args.n_eval:]), ("heldout", pairs[: args.n_eval])):
        with (data / f"{name}.jsonl").open("w") as f:
            for p in part:
                f.write(json.dumps(p) + "\n")
    cfg = DPOConfig(model=args.model, data=str(data / "train.jsonl"), eval_data=str(data / "heldout.jsonl"),
                    output_dir=str(args.output), ref_cache=str(args.output / "ref_cache"), loss="sigmoid",
                    beta=args.beta, lr=args.lr, max_steps=args.max_steps, batch_size=args.batch_size,
                    warmup_steps=5, max_length=args.max_length, max_prompt_length=args.max_length - 64,
                    lora_r=16, lora_alpha=32, lora_dropout=0.05, eval_every=max(1, args.max_steps // 2),
                    seed=args.seed, overwrite=args.overwrite)
    s = run_dpo(cfg)
    b, a = s["eval_before"], s["eval_after"]
    print(f"held-out MedQA pairs ({args.n_eval}): rewards/accuracies {b['eval_rewards/accuracies']:.3f} -> "
          f"{a['eval_rewards/accuracies']:.3f}, margins {b['eval_rewards/margins']:.3f} -> "
          f"{a['eval_rewards/margins']:.3f}, loss {b['eval_loss']:.4f} -> {a['eval_loss']:.4f}; "
          f"reference forwards during training: {s['reference_forwards']}")


if __name__ == "__main__":
    main()
