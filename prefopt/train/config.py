"""Training configuration: one typed dataclass, validated before any work starts.

Load it from a YAML or JSON file with :meth:`TrainConfig.from_file`; the CLI builds its
flags from the same fields, so a file and the command line speak the same names.
"""
from __future__ import annotations

import glob
from collections.abc import Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..chat_template import parse_chat_date
from ..data.columns import column_map
from ..data.decoding import checked_encoding
from ..data.files import data_files
from ..devices import DTYPES as _DTYPES
from ..devices import resolve_device
from ..lora import parse_layers
from ..lora_experts import conflicts
from ..quant import QUANT_KINDS
from .config_file import read_config_file, typed_value

SCHEDULES = ("cosine", "linear", "constant")
BEST_MODES = ("auto", "min", "max")
DTYPES = tuple(_DTYPES)


def opt(default: Any = MISSING, help: str = "", *, factory: Any = MISSING):
    """A config field with its help text (``prefopt sft --help`` and ``prefopt dpo --help`` show it)."""
    return field(default=default, default_factory=factory, metadata={"help": help})


@dataclass
class TrainConfig:
    model: str = opt(help="model folder, alias (smollm2-135m), hub id or .gguf file (required)")
    output_dir: str = opt(help="run folder: final/, checkpoints/, metrics.jsonl, train_config.json (required)")
    data: str | list[str] | None = opt(None, "training data: JSONL, JSON, CSV, TSV (also .gz, .bz2, .xz), "
                                             "Parquet, Excel (.xlsx, .xls) or LibreOffice (.ods); several files, a "
                                             "folder of one split's shards, or a quoted pattern ('notes/*.jsonl') are "
                                             "read one after another (required, but by a Trainer built in Python, "
                                             "which takes its examples directly)")
    eval_data: str | list[str] | None = opt(None, "a separate eval file (or files, as data); else eval_fraction "
                                                  "of data")
    columns: dict[str, str] = opt(help="read a record's field from a column of another name (a CSV header, a "
                                       "JSON key): prompt=question 'chosen=good answer'", factory=dict)
    sheet: str | None = opt(None, "the sheet of an Excel workbook in data to read (else its one sheet in view "
                                  "that holds data)")
    eval_sheet: str | None = opt(None, "the sheet of an Excel workbook in eval_data to read (the eval records on "
                                       "another sheet of the training workbook)")
    encoding: str = opt("utf-8", "the text encoding of data and eval_data's CSV, TSV, JSON and JSONL files: "
                                 "cp1252 for Excel's CSV on Western-European Windows, latin-1, ... (utf-8 also reads "
                                 "a file that opens with a UTF-16 byte-order mark as UTF-16)")
    eval_fraction: float = opt(0.0, "hold out this fraction of data for eval (before and after training)")
    max_length: int = opt(1024, "tokens per example; the prompt is cut from its start first")
    max_prompt_length: int | None = opt(None, "cut every prompt to its last N tokens")
    text_windows: bool = opt(False, "SFT: split a {\"text\"} record longer than max_length into windows that "
                                    "together train every token once (else it is cut, its start kept)")
    skip_bad_records: bool = opt(False, "skip (and count) bad records instead of stopping at the first")
    batch_size: int = opt(4, "examples per process per micro-step")
    grad_accum: int = opt(1, "micro-steps per optimizer step")
    epochs: float = opt(1.0, "passes over the data (max_steps overrides)")
    max_steps: int | None = opt(None, "optimizer steps; overrides epochs")
    lr: float = opt(2e-4, "peak learning rate (AdamW)")
    weight_decay: float = opt(0.0, "AdamW weight decay")
    warmup_steps: int = opt(0, "linear warm-up steps")
    schedule: str = opt("cosine", f"learning-rate decay after warm-up: {', '.join(SCHEDULES)}")
    min_lr_ratio: float = opt(0.0, "the schedule ends at this fraction of lr")
    max_grad_norm: float | None = opt(1.0, "clip the gradient norm to this (none, or null in a --config file: "
                                           "no clipping)")
    adam_beta1: float = opt(0.9, "AdamW beta1")
    adam_beta2: float = opt(0.999, "AdamW beta2")
    adam_eps: float = opt(1e-8, "AdamW epsilon")
    lora: bool = opt(True, "train a LoRA adapter (default) or, with --no-lora, all weights")
    lora_r: int = opt(16, "LoRA rank")
    lora_alpha: float = opt(32.0, "LoRA alpha (the update is scaled by alpha / r)")
    lora_rslora: bool = opt(False, "rank-stabilised LoRA: scale the update by alpha / sqrt(r) instead (PEFT's "
                                   "use_rslora; steadier at high ranks)")
    lora_dora: bool = opt(False, "DoRA: also learn each output row's magnitude (PEFT's use_dora; Liu et al. 2024)")
    quantize: str | None = opt(None, "nf4: keep the base's projections in 4-bit NormalFloat while the adapter "
                                     "trains (QLoRA: about a quarter of bf16's memory for them; needs LoRA); "
                                     "nf4-dq: their block scales in 8 bits too (double quantization: 4.13 bits a "
                                     "weight, not 4.5)")
    lora_dropout: float = opt(0.05, "dropout on the LoRA input")
    lora_targets: list[str] = opt(help="module names that get an adapter (all-linear, PEFT's shorthand: every "
                                  "linear layer but lm_head)",
                                  factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                   "down_proj"])
    lora_experts: bool = opt(False, "also adapt a mixture of experts' routed experts: gate_up_proj and down_proj "
                                    "of every expert (PEFT's target_parameters; needs --lora-dropout 0)")
    lora_layers: str | None = opt(None, "adapt only these transformer layers, e.g. 16-31 or 0,2,4 (PEFT's "
                                        "layers_to_transform; default: all): the backward stops at the lowest, so "
                                        "the top layers alone train in less memory and time")
    gradient_checkpointing: bool = opt(False, "recompute each layer in the backward: less memory, more time")
    gradient_checkpointing_layers: int | None = opt(None, "with gradient_checkpointing: recompute only the lowest N "
                                                          "layers the backward reaches (with lora_layers, from the "
                                                          "lowest adapted one), the others keep their activations "
                                                          "(memory and time in between; default: all layers)")
    dtype: str = opt("float32", f"parameter dtype: {', '.join(DTYPES)}")
    bf16_autocast: bool = opt(True, "bf16 autocast (on CUDA only)")
    device: str = opt("auto", "auto (CUDA if there is one, else CPU), cpu, cuda or cuda:N")
    seed: int = opt(0, "seed for the data order, LoRA init and dropout")
    chat_date: str | None = opt(None, "YYYY-MM-DD: the date a chat template that prints today's date (Llama 3.1+) "
                                      "shows in every example; default: the day the run starts (a resumed run keeps "
                                      "its own)")
    chat_vars: dict[str, Any] | None = opt(None, "NAME=VALUE switches the model's chat template reads, as "
                                                 "transformers' apply_chat_template takes them (Qwen3: "
                                                 "enable_thinking=false); values are read as JSON; a resumed run "
                                                 "keeps its own")
    group_by_length: bool = opt(False, "batch examples of similar length (less padding)")
    pack: bool = opt(True, "SFT: lay each micro-batch's examples end to end in one row, each attending to itself "
                           "only: no padding is computed, and the loss is the padded batch's (--no-pack: padded "
                           "rows, as before 2026-12-02)")
    share_start: bool = opt(False, "SFT with pack: the prompt start every example of a micro-batch has (a system "
                                   "prompt, the task's instructions) runs once a micro-batch, each example seeing it "
                                   "(the same loss with fewer tokens; LoRA dropout then draws one mask for it)")
    log_every: int = opt(1, "write metrics every N steps")
    eval_every: int = opt(0, "evaluate every N steps (0: only before and after training)")
    save_every: int = opt(0, "checkpoint every N steps (0: no intermediate checkpoints)")
    save_total_limit: int = opt(2, "checkpoints to keep")
    best_metric: str | None = opt(None, "keep the weights that score best on this eval metric (eval_loss, "
                                        "eval_rewards/accuracies, ...) in output_dir/best, judged at every "
                                        "evaluation, the one before training included; needs an eval set (in Python, "
                                        "or a trainer's evaluators)")
    best_mode: str = opt("auto", "min or max: which way best_metric improves (auto: min for a loss or NLL, max for "
                                 "accuracies, margins and F1)")
    best_min_delta: float = opt(0.0, "an evaluation counts as better than the best so far only if it beats it by "
                                     "more than this (best_metric's units): small noisy gains keep the earlier "
                                     "weights")
    patience: int = opt(0, "stop early once best_metric has not improved for this many evaluations in a row "
                           "(0: never); needs best_metric and eval_every")
    resume: bool = opt(False, "continue from the newest checkpoint in output_dir")
    overwrite: bool = opt(False, "replace an earlier run in output_dir (else training into it is refused)")
    fsdp: bool = opt(False, "FSDP2 full fine-tuning under torchrun (needs --no-lora)")
    progress: bool = opt(True, "show a progress bar")

    def __post_init__(self) -> None:
        errors = []
        for f in fields(self):  # a value of the wrong kind would fail below with a bare TypeError
            try:
                setattr(self, f.name, typed_value(f.type, getattr(self, f.name)))
            except ValueError as e:
                errors.append(f"{f.name}: {e}")
        if errors:
            raise ValueError(f"invalid {self.KIND} config:\n  " + "\n  ".join(errors))
        for name in ("max_length", "batch_size", "grad_accum", "lora_r", "log_every", "save_total_limit"):
            if getattr(self, name) < 1:
                errors.append(f"{name} must be >= 1 (got {getattr(self, name)})")
        for name in ("warmup_steps", "eval_every", "save_every"):
            if getattr(self, name) < 0:
                errors.append(f"{name} must be >= 0 (got {getattr(self, name)})")
        if self.max_prompt_length is not None and not 0 < self.max_prompt_length < self.max_length:
            errors.append(f"max_prompt_length must be in (0, max_length={self.max_length})")
        if self.gradient_checkpointing_layers is not None and self.gradient_checkpointing_layers < 1:
            errors.append(f"gradient_checkpointing_layers must be >= 1, or none for all layers (got "
                          f"{self.gradient_checkpointing_layers})")
        elif self.gradient_checkpointing_layers and not self.gradient_checkpointing:
            errors.append(f"gradient_checkpointing_layers {self.gradient_checkpointing_layers} needs "
                          "gradient_checkpointing (--gradient-checkpointing)")
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
        if not 0 <= self.min_lr_ratio <= 1:
            errors.append(f"min_lr_ratio must be in [0, 1] (got {self.min_lr_ratio})")
        if self.weight_decay < 0:
            errors.append(f"weight_decay must be >= 0 (got {self.weight_decay})")
        if self.max_grad_norm is not None and self.max_grad_norm < 0:  # it would turn every gradient around
            errors.append(f"max_grad_norm must be > 0, or 0 / none for no clipping (got {self.max_grad_norm})")
        for name in ("adam_beta1", "adam_beta2"):
            if not 0 <= getattr(self, name) < 1:
                errors.append(f"{name} must be in [0, 1) (got {getattr(self, name)})")
        if self.adam_eps <= 0:
            errors.append(f"adam_eps must be > 0 (got {self.adam_eps})")
        if self.lora_alpha <= 0:  # 0: an adapter that neither changes the model nor trains
            errors.append(f"lora_alpha must be > 0 (got {self.lora_alpha})")
        if self.schedule not in SCHEDULES:
            errors.append(f"schedule must be one of {SCHEDULES} (got {self.schedule!r})")
        if self.dtype not in DTYPES:
            errors.append(f"dtype must be one of {DTYPES} (got {self.dtype!r})")
        try:
            resolve_device(self.device)
        except ValueError as e:
            errors.append(str(e))
        if self.chat_date is not None:
            try:  # a YAML file's unquoted 2026-11-30 arrives as a date: kept as its text
                self.chat_date = parse_chat_date(self.chat_date).isoformat()
            except ValueError as e:
                errors.append(str(e))
        errors += self._check_best()
        if not 0 <= self.lora_dropout < 1:
            errors.append("lora_dropout must be in [0, 1)")
        try:
            parse_layers(self.lora_layers)
        except ValueError as e:
            errors.append(f"lora_{e}")
        if self.lora_experts and not self.lora:
            errors.append("lora_experts needs LoRA (drop --no-lora)")
        elif self.lora_experts and (why := conflicts(self.lora_dropout, self.lora_dora, self.lora_layers)):
            errors.append(f"lora_experts: {why}")
        if self.fsdp and self.lora:
            errors.append("fsdp is for full fine-tuning: set lora=False (LoRA runs under plain DDP)")
        if self.quantize is not None and self.quantize not in QUANT_KINDS:
            errors.append(f"quantize must be one of {', '.join(QUANT_KINDS)} or none (got {self.quantize!r})")
        elif self.quantize and not self.lora:
            errors.append("quantize keeps frozen base weights in 4 bits for an adapter to train on: it needs LoRA "
                          "(drop --no-lora)")
        try:
            column_map(self.columns)
        except ValueError as e:
            errors.append(str(e))
        try:
            checked_encoding(self.encoding)
        except ValueError as e:
            errors.append(str(e))
        for name in ("data", "eval_data"):
            if getattr(self, name):
                try:
                    data_files(getattr(self, name))
                except (OSError, ValueError) as e:
                    errors.append(f"{name}: {e}")
        errors += self.kind_errors()
        if errors:
            raise ValueError(f"invalid {self.KIND} config:\n  " + "\n  ".join(errors))

    KIND = "training"  # what the error's first line calls the config

    def kind_errors(self) -> list[str]:
        """SFT's own checks; a subclass's (DPO's beta, loss, ...) in its place, listed with the rest:
        every problem at once."""
        return ["share_start runs the start once in a packed row: it needs pack"] if self.share_start and not self.pack \
            else []

    def _check_best(self) -> list[str]:
        """Validate ``best_metric``, ``best_mode`` and ``patience``; the metric's name gets its
        ``eval_`` prefix."""
        errors = []
        if self.best_mode not in BEST_MODES:
            errors.append(f"best_mode must be one of {BEST_MODES} (got {self.best_mode!r})")
        if not self.best_min_delta >= 0:  # NaN too
            errors.append(f"best_min_delta must be >= 0 (got {self.best_min_delta})")
        if self.patience < 0:
            errors.append(f"patience must be >= 0 (got {self.patience})")
        elif self.patience and self.best_metric is None:
            errors.append(f"patience {self.patience} needs best_metric (the eval metric it watches)")
        elif self.patience and not self.eval_every:
            errors.append(f"patience {self.patience} needs eval_every (evaluations during training to judge)")
        if self.best_metric is None:
            return errors
        if not self.best_metric.startswith("eval_"):
            self.best_metric = f"eval_{self.best_metric}"  # the name metrics.jsonl gives it
        if self.best_mode == "auto" and best_direction(self.best_metric) is None:
            errors.append(f"best_mode: say min or max for best_metric {self.best_metric!r} (auto knows losses, NLLs, "
                          f"accuracies, margins and F1)")
        return errors

    def check_eval_set(self, evaluators: Sequence = (), eval_records: bool = False) -> None:
        """Before anything loads: ``best_metric`` needs evaluations to judge, on an eval set
        (``eval_data``, ``eval_fraction``, ``eval_records`` given in memory) or from ``evaluators``
        (``run_sft``/``run_dpo`` call it; a trainer built by hand checks its loaded eval data the same way)."""
        if self.best_metric and not (self.eval_data or self.eval_fraction or eval_records or evaluators):
            raise ValueError(no_eval_set(self.best_metric))

    def checkpointing(self) -> bool | int:
        """What the model's ``gradient_checkpointing`` is set to: False, True (every layer) or how
        many layers recompute their activations, the lowest the backward reaches
        (``Transformer.checkpointed_layers``)."""
        return (self.gradient_checkpointing_layers or True) if self.gradient_checkpointing else False

    def best_order(self) -> str:
        """``"min"`` or ``"max"``: which way ``best_metric`` improves."""
        return best_direction(self.best_metric) if self.best_mode == "auto" else self.best_mode

    @classmethod
    def from_file(cls, path: str | Path, **overrides: Any) -> TrainConfig:
        """Read a YAML (``.yaml``/``.yml``, needs PyYAML) or JSON file; ``overrides`` that are
        not None win. Each problem the file has names its line and setting."""
        d = read_config_file(path, {f.name: f.type for f in fields(cls)})
        d.update({k: v for k, v in overrides.items() if v is not None})
        missing = [f"{name} (--{name.replace('_', '-')})" for name in required_fields(cls) if name not in d]
        if missing:
            raise ValueError(f"{path}: missing {', '.join(missing)}: set {'it' if len(missing) == 1 else 'them'} in the "
                             f"file or on the command line")
        try:
            return cls(**d)
        except ValueError as e:
            named = [p for k in ("data", "eval_data") if d.get(k)
                     for p in (d[k] if isinstance(d[k], (list, tuple)) else [d[k]])]
            lost = [p for p in named if not Path(p).is_absolute() and not glob.glob(str(p))]
            if not lost:
                raise
            raise ValueError(f"{e}\n  ({path}: its relative paths, such as {lost[0]}, are read from the current "
                             f"folder, {Path.cwd()}, not the file's)") from None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def run_kind(self) -> str:
        """``"sft"`` here; a preference run's config says ``"dpo"`` or ``"kto"``: which metrics the
        run logs and how its summary and model card speak of them."""
        return "sft"

    @classmethod
    def recorded_defaults(cls) -> dict[str, Any]:
        """What a checkpoint that does not record a setting ran with: its default, or for a setting
        whose default is not what runs did before it existed (:data:`BEFORE_RECORDED`), that."""
        defaults = cls.defaults()
        return {**defaults, **{k: v for k, v in BEFORE_RECORDED.items() if k in defaults}}

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Each setting's default (those with one), as ``to_dict`` writes them."""
        return {f.name: f.default if f.default is not MISSING else f.default_factory()
                for f in fields(cls) if f.default is not MISSING or f.default_factory is not MISSING}


# settings added with a default other than what runs did before them: a checkpoint written
# without one ran so (SFT batches were padded rows before pack)
BEFORE_RECORDED = {"pack": False}


def autocast_on(device, config) -> bool:
    """Whether a trainer on ``device`` (a ``torch.device``) runs under bf16 autocast (CUDA only,
    ``bf16_autocast``)."""
    return device.type == "cuda" and config.bf16_autocast


def no_eval_set(metric: str) -> str:
    """The error for a ``best_metric`` with nothing to judge it on."""
    return (f"best_metric {metric!r} needs an eval set (eval_data or eval_fraction; the CLI: --eval-data or "
            f"--eval-fraction) or evaluators")


def best_direction(metric: str) -> str | None:
    """Which way an eval metric improves, by its name: ``"min"`` for a loss or NLL, ``"max"`` for
    accuracies, margins and F1; None where the name does not say."""
    name = metric.removeprefix("eval_")
    if name.endswith(("loss", "nll")):
        return "min"
    if name.endswith(("accuracies", "accuracy", "margins", "f1")):
        return "max"
    return None  # e.g. a log-prob, a reward, a ROUGE variant: the run must say


def required_fields(cls: type = TrainConfig) -> list[str]:
    return [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
