"""Run SFT (or DPO, with ``"kind": "dpo"`` in the config) from a JSON config in a subprocess;
optionally SIGKILL itself after a given step."""
import json
import os
import signal
import sys

from prefopt.train import DPOConfig, TrainConfig, run_dpo, run_sft
from prefopt.train.distributed import run_worker


def main():
    fields = json.loads(open(sys.argv[1]).read())
    if fields.pop("kind", "sft") == "dpo":
        cfg, run = DPOConfig(**fields), run_dpo
    else:
        cfg, run = TrainConfig(**fields), run_sft
    kill_at = int(sys.argv[2]) if len(sys.argv) > 2 else None

    def killer(trainer, step, metrics):
        if step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    run_worker(lambda: run(cfg, callbacks=[killer]))  # the CLI's own ending


if __name__ == "__main__":
    main()
