"""Run SFT from a JSON config in a subprocess; optionally SIGKILL itself after a given step."""
import json
import os
import signal
import sys

from prefopt.train import TrainConfig, run_sft
from prefopt.train.distributed import run_worker


def main():
    cfg = TrainConfig(**json.loads(open(sys.argv[1]).read()))
    kill_at = int(sys.argv[2]) if len(sys.argv) > 2 else None

    def killer(trainer, step, metrics):
        if step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    run_worker(lambda: run_sft(cfg, callbacks=[killer]))  # the CLI's own ending


if __name__ == "__main__":
    main()
