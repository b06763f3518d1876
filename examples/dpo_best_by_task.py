"""DPO after SFT, keeping the step whose greedy answers score best on validation messages.

Takes a finished ``prefopt compare`` run (``make demo`` writes one to ``runs/triage-demo``) and
reruns its DPO stage with the same settings, but holds out ``--val`` of its training records:
their pairs are not trained on, and every ``--eval-every`` steps the model answers them greedily
and the task scores the answers (``prefopt.evaluate.runner.task_evaluator``). The weights with the
best validation score go to ``OUTPUT/dpo/best`` (``best_metric``; the evaluation before training
counts, so "best" may be the SFT model itself). Then the SFT model, the compare run's SFT+DPO,
and this run's best and final weights are scored on the compare run's test messages, each
against SFT with a paired bootstrap.

    .venv/bin/python examples/dpo_best_by_task.py --run runs/triage-demo --output runs/triage-best

For a new run, ``prefopt compare --set val=N`` (or ``examples/run_triage.py --set val=N``) does
this inside the run, with the validation items held out of SFT as well (docs/evaluation.md).
"""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from prefopt.cli import run_script


def main() -> None:
    from prefopt import load_model, load_tokenizer
    from prefopt.data import load_preferences
    from prefopt.evaluate.runner import predict, score, task_evaluator
    from prefopt.evaluate.selection import dpo_weights
    from prefopt.evaluate.stats import paired_bootstrap
    from prefopt.fileio import write_json_atomic
    from prefopt.tasks import get_task
    from prefopt.tokenizer import set_chat_date, set_chat_vars
    from prefopt.train import DPOConfig
    from prefopt.train.dpo import DPOTrainer
    from prefopt.train.run import prepare_model
    from prefopt.train.saving import save_weights

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True, help="a finished prefopt compare run (make demo's)")
    ap.add_argument("--output", type=Path, required=True)
    ap.add_argument("--val", type=int, default=32, help="training records held out for validation")
    ap.add_argument("--eval-every", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--overwrite", action="store_true")
    a = ap.parse_args()

    compare = json.loads((a.run / "compare_config.json").read_text())
    trained = json.loads((a.run / "dpo" / "train" / "train_config.json").read_text())
    split = json.loads((a.run / "split.json").read_text())
    task = get_task(compare["task"], **compare.get("task_options", {}))
    by_id = {r.id: r for r in task.read(compare.get("data"))}
    tested = {r.id: r for r in task.read(compare["test_data"])} if compare.get("test_data") else by_id
    test = [tested[i] for i in split["test"]]
    val_ids = set(random.Random(a.seed).sample(sorted(split["train"]), a.val))
    val = [by_id[i] for i in sorted(val_ids)]
    pairs = [json.loads(line) for line in (a.run / "data" / "pairs.jsonl").read_text().splitlines() if line]
    if not all("id" in p for p in pairs):  # given pairs (strategy "ranked") need not name their record
        raise ValueError(f"{a.run / 'data' / 'pairs.jsonl'}: pairs without an 'id' cannot be matched to the "
                         f"held-out records; use a run whose pairs prefopt made (wrong_label, model_errors)")
    kept = [p for p in pairs if p["id"] not in val_ids]

    tok = load_tokenizer(trained["model"])
    fields = {k: v for k, v in trained.items() if k in DPOConfig.__dataclass_fields__}
    cfg = DPOConfig(**{**fields, "output_dir": str(a.output / "dpo"), "data": None, "eval_fraction": 0.0,
                       "ref_cache": str(a.output / "ref_cache"), "eval_every": a.eval_every,
                       "best_metric": f"val_{task.primary}", "overwrite": a.overwrite, "resume": False})
    set_chat_date([tok], cfg.chat_date, "example")
    set_chat_vars(tok, cfg.chat_vars, cfg.model, "example")  # the compare run's, as its stages trained with them
    examples, _ = load_preferences(kept, tok, max_length=cfg.max_length)
    print(f"{len(kept)} of {len(pairs)} pairs trained on; {len(val)} training messages held out for validation, "
          f"scored every {a.eval_every} steps by {task.primary}", flush=True)
    trainer = DPOTrainer(prepare_model(cfg), cfg, examples, pad_id=tok.pad_token_id or 0, tokenizer=tok,
                         ref_cache=cfg.ref_cache, evaluators=[task_evaluator(task, val, batch_size=16)])
    summary = trainer.train()
    final = a.output / "dpo" / "final"
    save_weights(trainer, final)
    best = summary["best"]
    print(f"best validation {best['metric']} {best['value']:.3f} at step {best['step']} of {summary['total_steps']}",
          flush=True)

    def answers(name, adapter):
        model = load_model(compare["model"], adapter=adapter, merge=True)
        return score(task, test, predict(model, tok, task, test, batch_size=16, desc=f"test: {name}"))

    stages = {"SFT": a.run / "sft" / "train" / "final", "SFT+DPO (compare run)": dpo_weights(a.run),
              "SFT+DPO, best validation step": a.output / "dpo" / "best", "SFT+DPO, this run's last step": final}
    scored = {name: answers(name, path) for name, path in stages.items()}
    sft_preds = scored["SFT"][0]
    rows = []
    for name, (preds, metrics) in scored.items():
        line = f"{name}: {task.primary} {metrics[task.primary]:.3f}"
        if name != "SFT":
            b = paired_bootstrap(task.primary_on(test, sft_preds), task.primary_on(test, preds), len(test), seed=a.seed)
            (lo, hi), d = b["ci"], b["delta"]
            line += f"; vs SFT {d:+.3f} [{lo:+.3f}, {hi:+.3f}], bootstrap p = {b['p_value']:.3f}"
            rows.append({"stage": name, task.primary: metrics[task.primary], **b})
        else:
            rows.append({"stage": name, task.primary: metrics[task.primary]})
        print(line, flush=True)
    write_json_atomic(a.output / "summary.json", {"best": best, "test": rows, "val": len(val), "pairs": len(kept)})


if __name__ == "__main__":
    run_script(main, "dpo_best_by_task")
