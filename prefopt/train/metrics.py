"""Metrics: one JSON line per logged step in ``metrics.jsonl``, TensorBoard when installed."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..fileio import json_records, json_text


class MetricsLog:
    def __init__(self, output_dir: Path, *, resume_step: int | None = None, tensorboard: bool = True):
        self.path = Path(output_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            self.path.write_text("")
        elif self.path.exists():  # drop lines written after the checkpoint we resume from
            kept = [r for r in json_records(self.path) if r.get("step", 0) <= resume_step]
            self.path.write_text("".join(json_text(r, ensure_ascii=True) + "\n" for r in kept))
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(Path(output_dir) / "tensorboard"))
            except ImportError:
                pass

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json_text(record, ensure_ascii=True) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.tb.add_scalar(k, v, record["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def read_metrics(output_dir: str | Path) -> list[dict[str, Any]]:
    return json_records(Path(output_dir) / "metrics.jsonl")


def first_and_last(output_dir: str | Path, keys: tuple[str, ...], window: float = 0.25) -> dict | None:
    """``{"steps", "logged", "window", "first": {key: mean}, "last": {key: mean}}`` over the first
    and last ``window`` of the ``logged`` training steps (eval lines left out; a key never logged is
    None; ``steps``: the last one logged, which is more than ``logged`` under ``log_every`` > 1);
    None without a log."""
    if not (Path(output_dir) / "metrics.jsonl").is_file():
        return None
    rows = [r for r in read_metrics(output_dir) if "loss" in r]
    if not rows:
        return None
    k = max(1, round(len(rows) * window))

    def mean(part: list[dict], key: str) -> float | None:
        vals = [r[key] for r in part if isinstance(r.get(key), (int, float))]
        return sum(vals) / len(vals) if vals else None

    return {"steps": rows[-1]["step"], "logged": len(rows), "window": k,
            "first": {key: mean(rows[:k], key) for key in keys}, "last": {key: mean(rows[-k:], key) for key in keys}}


def first_to_last(d: dict, key: str, fmt: str) -> str | None:
    """``"a → b"`` for ``key`` in a ``first_and_last`` result, each formatted with ``fmt``; None
    where the key was not logged."""
    a, b = d["first"].get(key), d["last"].get(key)
    return None if a is None or b is None else f"{a:{fmt}} → {b:{fmt}}"
