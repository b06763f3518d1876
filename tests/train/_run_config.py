"""Run SFT (or DPO, with ``"kind": "dpo"`` in the config) from a JSON config in a subprocess;
optionally SIGKILL (or SIGTERM) itself after a given step. ``"evaluators": true`` adds :func:`rank_and_norm`."""
import json
import os
import signal
import sys

from prefopt.train import DPOConfig, TrainConfig, run_dpo, run_sft
from prefopt.train.distributed import run_worker


def rank_and_norm(trainer):
    """The process's rank (so the logged value is the ranks' mean) and the lora_B norm (the same on
    every rank under DDP: zero before training, so best_metric min picks step 0)."""
    norm = sum(float(p.norm() ** 2) for n, p in trainer.model.named_parameters() if "lora_B" in n) ** 0.5
    return {"rank": float(trainer.dist.rank), "lora_b_norm": norm}


def main():
    fields = json.loads(open(sys.argv[1]).read())
    evaluators = [rank_and_norm] if fields.pop("evaluators", False) else []
    if fields.pop("kind", "sft") == "dpo":
        cfg, run = DPOConfig(**fields), run_dpo
    else:
        cfg, run = TrainConfig(**fields), run_sft
    # "7": SIGKILL after step 7; "4:TERM:1": SIGTERM after step 4, on rank 1 only
    kill_at, name, only_rank = (sys.argv[2].split(":") + ["KILL", ""])[:3] if len(sys.argv) > 2 else (None, "", "")

    def killer(trainer, step, metrics):
        if kill_at is not None and step == int(kill_at) and only_rank in ("", str(trainer.dist.rank)):
            os.kill(os.getpid(), getattr(signal, f"SIG{name}"))

    run_worker(lambda: run(cfg, callbacks=[killer], evaluators=evaluators))  # the CLI's own ending


if __name__ == "__main__":
    main()
