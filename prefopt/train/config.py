"""Training configuration: one typed dataclass, validated before any work starts.

Load it from a YAML or JSON file with :meth:`TrainConfig.from_file`; the CLI builds its
flags from the same fields, so a file and the command line speak the same names.
"""
from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

SCHEDULES = ("cosine", "linear", "constant")
DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class TrainConfig:
    model: str  # folder, alias (smollm2-135m) or hub id
    data: str  # JSONL, JSON or CSV
    output_dir: str
    eval_data: str | None = None  # a separate eval file; else eval_fraction of data
    eval_fraction: float = 0.0
    max_length: int = 1024
    max_prompt_length: int | None = None
    skip_bad_records: bool = False  # skip (and report) bad records instead of stopping
    batch_size: int = 4  # per process, per micro-step
    grad_accum: int = 1
    epochs: float = 1.0
    max_steps: int | None = None  # overrides epochs
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup_steps: int = 0
    schedule: str = "cosine"
    min_lr_ratio: float = 0.0
    max_grad_norm: float | None = 1.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    lora: bool = True  # train a LoRA adapter (default) or all weights
    lora_r: int = 16
    lora_alpha: float = 32.0
    lora_dropout: float = 0.05
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj",
                                                             "gate_proj", "up_proj", "down_proj"])
    gradient_checkpointing: bool = False
    dtype: str = "float32"  # parameter dtype
    bf16_autocast: bool = True  # on CUDA only
    device: str = "auto"
    seed: int = 0
    group_by_length: bool = False
    log_every: int = 1
    eval_every: int = 0  # 0: evaluate only before and after training
    save_every: int = 0  # 0: no intermediate checkpoints
    save_total_limit: int = 2
    resume: bool = False  # continue from the newest checkpoint in output_dir
    overwrite: bool = False  # replace an earlier run in output_dir (else training into it is refused)
    fsdp: bool = False  # FSDP2 full fine-tuning under torchrun (needs lora=False)
    progress: bool = True

    def __post_init__(self) -> None:
        errors = []
        for name in ("max_length", "batch_size", "grad_accum", "lora_r", "log_every", "save_total_limit"):
            if getattr(self, name) < 1:
                errors.append(f"{name} must be >= 1 (got {getattr(self, name)})")
        for name in ("warmup_steps", "eval_every", "save_every"):
            if getattr(self, name) < 0:
                errors.append(f"{name} must be >= 0 (got {getattr(self, name)})")
        if self.max_prompt_length is not None and not 0 < self.max_prompt_length < self.max_length:
            errors.append(f"max_prompt_length must be in (0, max_length={self.max_length})")
        if self.max_steps is not None and self.max_steps < 1:
            errors.append("max_steps must be >= 1")
        if self.epochs <= 0:
            errors.append("epochs must be > 0")
        if not 0 <= self.eval_fraction < 1:
            errors.append("eval_fraction must be in [0, 1)")
        if self.eval_data and self.eval_fraction:
            errors.append("give eval_data or eval_fraction, not both")
        if self.lr <= 0:
            errors.append("lr must be > 0")
        if self.schedule not in SCHEDULES:
            errors.append(f"schedule must be one of {SCHEDULES} (got {self.schedule!r})")
        if self.dtype not in DTYPES:
            errors.append(f"dtype must be one of {DTYPES} (got {self.dtype!r})")
        if not 0 <= self.lora_dropout < 1:
            errors.append("lora_dropout must be in [0, 1)")
        if self.fsdp and self.lora:
            errors.append("fsdp is for full fine-tuning: set lora=False (LoRA runs under plain DDP)")
        for name in ("data", "eval_data"):
            p = getattr(self, name)
            if p and not Path(p).is_file():
                errors.append(f"{name}: no such file {p}")
        if errors:
            raise ValueError("invalid training config:\n  " + "\n  ".join(errors))

    @classmethod
    def from_file(cls, path: str | Path, **overrides: Any) -> TrainConfig:
        """Read a YAML (``.yaml``/``.yml``, needs PyYAML) or JSON file; ``overrides`` win."""
        path = Path(path)
        text = path.read_text()
        if path.suffix in (".yaml", ".yml"):
            from .._deps import require

            d = require("yaml", "reading a YAML config").safe_load(text) or {}
        else:
            d = json.loads(text)
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"{path}: unknown config keys {sorted(unknown)}")
        return cls(**{**d, **{k: v for k, v in overrides.items() if v is not None}})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def required_fields() -> list[str]:
    return [f.name for f in fields(TrainConfig) if f.default is MISSING and f.default_factory is MISSING]
