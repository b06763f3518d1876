"""Writing a run's weights (``final/``, ``best/``) and keeping the best ones by an eval metric.

A LoRA model is written as its adapter (PEFT layout; after SFT, the SFT adapter's update too:
``prefopt.lora_stack``), a fully trained one as an HF-layout model folder, each with the
tokenizer where the trainer has one. The folder is built under ``NAME.tmp`` and renamed into
place, so a reader never sees half of it.
"""
from __future__ import annotations

import math
import shutil
from pathlib import Path

from ..fileio import replace_dir, write_json_atomic
from ..lora_stack import save_adapter
from ..model import save_model
from .distributed import gather_full


def save_weights(trainer, out: str | Path, notes: dict[str, dict] | None = None) -> Path | None:
    """Write ``trainer``'s model to ``out`` (and each of ``notes`` as a JSON file in it); every rank
    calls it (FSDP2 gathers one tensor at a time), rank 0 writes. Returns ``out`` on rank 0."""
    out = Path(out)
    fsdp = trainer.config.fsdp
    state = {k: gather_full(v, keep=trainer.dist.is_main) for k, v in trainer.model.state_dict().items()} if fsdp \
        else None
    if not trainer.dist.is_main:
        return None
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():  # left by a crash
        shutil.rmtree(tmp)
    if getattr(trainer.model, "lora_config", None) is not None:
        save_adapter(trainer.model, tmp, base_model=trainer.config.model)
        if trainer.tokenizer is not None:
            trainer.tokenizer.save(tmp)
    else:
        save_model(trainer.model, tmp, trainer.tokenizer, state_dict=state)
    for name, obj in (notes or {}).items():
        write_json_atomic(tmp / name, obj)
    replace_dir(tmp, out)
    return out


class BestWeights:
    """Keeps the weights of the evaluation that scores best on ``config.best_metric`` in
    ``output_dir/best`` (with ``best.json``: the metric, its value and the step). Ties keep the
    earlier step, as does any gain of at most ``config.best_min_delta``; a NaN never counts as
    best. Counts the evaluations since the best, for ``config.patience``."""

    def __init__(self, config, output_dir: Path):
        self.metric = config.best_metric
        self.order = config.best_order() if self.metric else None
        self.patience = config.patience
        self.min_delta = config.best_min_delta
        self.folder = output_dir / "best"
        self.record: dict | None = None  # {"metric", "order", "value", "step"} of the weights in folder
        self.stale = 0  # evaluations since the best

    def state(self) -> dict:
        """What a checkpoint keeps, so a resumed run judges and stops as an uninterrupted one."""
        return {"best": self.record, "best_stale": self.stale}

    def load_state(self, state: dict) -> None:
        self.record, self.stale = state.get("best"), state.get("best_stale", 0)

    @property
    def out_of_patience(self) -> bool:
        return bool(self.patience) and self.stale >= self.patience

    def better(self, value: float) -> bool:
        if math.isnan(value):
            return False
        if self.record is None:
            return True
        best, delta = self.record["value"], self.min_delta
        return value < best - delta if self.order == "min" else value > best + delta

    def consider(self, trainer, metrics: dict, step: int) -> bool:
        """After an evaluation (``metrics`` holds its ``eval_*`` entries): save the weights if they
        are the best so far. Every rank calls it (the metrics are all-reduced, so all agree)."""
        if not self.metric or not metrics:
            return False
        if self.metric not in metrics:
            known = sorted(k for k in metrics if k.startswith("eval_"))
            raise ValueError(f"best_metric {self.metric!r} is not among this run's eval metrics: {', '.join(known)}")
        value = float(metrics[self.metric])
        if not self.better(value):
            self.stale += 1
            return False
        self.stale = 0
        record = {"metric": self.metric, "order": self.order, "value": value, "step": step}
        save_weights(trainer, self.folder, notes={"best.json": record})
        self.record = record
        return True
