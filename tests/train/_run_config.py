"""Run SFT (or DPO, with ``"kind": "dpo"`` in the config) from a JSON config in a subprocess;
optionally SIGKILL (or SIGTERM) itself after a given step, or inside it. ``"evaluators": true`` adds
:func:`rank_and_norm`, ``"reference_share"`` :func:`reference_share`;
``"ref_cache_per_rank": true`` gives each rank its own ``ref_cache`` folder (``-rank0``, ``-rank1``)."""
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


def reference_share(trainer):
    """The share of the reference model's weights this rank holds between its forwards (1: all of
    it; 1/world: sharded; 0: none, let go once its cache was filled), so the logged value is the
    ranks' mean."""
    if trainer.ref_model is None:
        return {"reference_share": 0.0}
    params = list(trainer.ref_model.parameters())
    held = sum((p.to_local() if hasattr(p, "to_local") else p).numel() for p in params)
    return {"reference_share": held / sum(p.numel() for p in params)}


EVALUATORS = {True: [rank_and_norm], "reference_share": [reference_share]}


def config_and_run(path):
    """The config the JSON file at ``path`` describes, the run function it goes to, and its evaluators."""
    fields = json.loads(open(path).read())
    evaluators = EVALUATORS.get(fields.pop("evaluators", False), [])
    if fields.pop("ref_cache_per_rank", False):  # each rank its own folder: as nodes that share no filesystem
        fields["ref_cache"] += f"-rank{os.environ.get('RANK', '0')}"
    if fields.pop("kind", "sft") == "dpo":
        return DPOConfig(**fields), run_dpo, evaluators
    return TrainConfig(**fields), run_sft, evaluators


def main():
    cfg, run, evaluators = config_and_run(sys.argv[1])
    # "7": SIGKILL after step 7; "4:TERM:1": SIGTERM after step 4, on rank 1 only; "4:TERM:1:in": during step 4
    given = sys.argv[2].split(":") if len(sys.argv) > 2 else []
    kill_at, name, only_rank, when = given + [None, "KILL", "", "after"][len(given):]

    def signal_at(trainer, step):
        if kill_at is not None and step == int(kill_at) and only_rank in ("", str(trainer.dist.rank)):
            os.kill(os.getpid(), getattr(signal, f"SIG{name}"))

    callbacks = [lambda trainer, step, metrics: signal_at(trainer, step)]
    if when == "in":  # the signal lands inside the step, before anything after it (an evaluation) runs
        from prefopt.train.loop import Trainer

        train_step = Trainer.train_step

        def signalled_step(trainer, i):
            signal_at(trainer, i + 1)
            return train_step(trainer, i)

        Trainer.train_step, callbacks = signalled_step, []

    run_worker(lambda: run(cfg, callbacks=callbacks, evaluators=evaluators))  # the CLI's own ending


if __name__ == "__main__":
    main()
