"""What a ``prefopt compare`` run is: its presets, :class:`CompareConfig` and its checked
settings, and whether an output folder's earlier run was made with the same ones
(:func:`same_run`: the settings that change no trained result may differ)."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..chat_template import parse_chat_date, parse_chat_vars
from ..devices import DTYPES
from ..fileio import read_json, write_json_atomic
from ..hints import did_you_mean
from ..lora_experts import conflicts
from ..model.repeats import check_repeat_options
from ..quant import QUANT_KINDS
from .runner import DECODING, decoding
from .selection import check_settings
from .validated_review import check_review_target

if TYPE_CHECKING:
    from ..train.diverged import Diverged
    from ..train.out_of_memory import OutOfMemory

# both stages' adapters, in every preset; quantize "nf4": their base weights in 4 bits while they train (QLoRA);
# train_dtype: the dtype of the base weights they train on ("bfloat16": half of float32's memory, the adapters
# still float32)
LORA = {"lora_r": 16, "lora_alpha": 32.0, "lora_dora": False, "lora_rslora": False, "lora_dropout": 0.05,
        "lora_targets": None, "lora_layers": None, "lora_experts": False, "quantize": None, "train_dtype": "float32"}
# DPO's variants, in every preset: LD-DPO's alpha (None: off), f-DPO's divergence and its alpha, WPO's pair
# weights (docs/dpo.md)
DPO_VARIANTS = {"ld_alpha": None, "f_divergence": "reverse_kl", "f_alpha": 0.5, "wpo": False}
PRESETS = {
    # small enough for 2 CPU cores in a few minutes (make demo)
    "quick": {"max_train": 160, "test": 60, "sft_steps": 60, "dpo_steps": 50, "batch_size": 4, "dpo_batch_size": 2,
              "max_length": 384, "sft_lr": 3e-4, "dpo_lr": 1e-4, "beta": 0.1, "eval_batch_size": 16,
              "max_new_tokens": None, "repetition_penalty": None, "no_repeat_ngram_size": None, "repeat_scope": None,
              "gradient_checkpointing": False, "gradient_checkpointing_layers": None, "val": None,
              "dpo_eval_every": None, "dpo_min_gain": None, "dpo_patience": None, "dpo_max_p": None, "confidence": True,
              "review_target": None, "pack": True, "share_start": True, "group_by": None,
              **LORA, **DPO_VARIANTS},
    "full": {"max_train": None, "test": 0.2, "sft_steps": None, "dpo_steps": None, "sft_epochs": 2.0,
             "dpo_epochs": 1.0, "batch_size": 8, "dpo_batch_size": 4, "max_length": 1024, "sft_lr": 2e-4,
             "dpo_lr": 5e-5, "beta": 0.1, "eval_batch_size": 16, "max_new_tokens": None,
             "repetition_penalty": None, "no_repeat_ngram_size": None, "repeat_scope": None,
             "gradient_checkpointing": False, "gradient_checkpointing_layers": None, "val": None,
             "dpo_eval_every": None, "dpo_min_gain": None, "dpo_patience": None, "dpo_max_p": None, "confidence": True,
             "review_target": None, "pack": True, "share_start": True, "group_by": None,
             **LORA, **DPO_VARIANTS},
    # val None: no validation set. A count (>= 1) or fraction (< 1) of the items is held out of both
    # training stages; DPO then answers them every dpo_eval_every steps (None: about ten times a run) and the
    # weights that score best on the task's primary metric are the "dpo" stage (step 0: the SFT model itself);
    # dpo_min_gain None (0): a step must beat the best before it by more than this to replace it;
    # dpo_patience None (0: never): DPO stops once this many evaluations in a row have not replaced the best;
    # dpo_max_p None (off): the chosen step stays only if it beats step 0 on the validation items at p < dpo_max_p
    # by a bootstrap that allows for its choice as the best step (stats.best_of_bootstrap), else the "dpo"
    # stage is the SFT model;
    # max_new_tokens None: the task's, raised where its reference answers are longer (runner.fit_max_new_tokens);
    # repetition_penalty, no_repeat_ngram_size None: none (greedy decoding as it is); repeat_scope None: "all";
    # gradient_checkpointing: less memory, more time; gradient_checkpointing_layers None (all) or N: only the lowest
    # N layers the backward reaches recompute their activations (memory and time in between);
    # pack True: SFT lays each batch's examples end to end in one row (no padding computed; the same loss; the
    # LoRA dropout draws alone differ), false: padded rows, as every run before 2026-12-02;
    # share_start True: the prompt start every example of an SFT batch has (system prompt, instructions) leads
    # its packed row once (with pack=false SFT runs without it), and DPO's pairs run in one row after the start
    # all pairs have (the same losses with fewer tokens; its LoRA dropout drawn once: results move slightly;
    # false: as every run before 2026-12-04);
    # lora_r, lora_alpha, lora_dora, lora_rslora, lora_dropout: each stage's adapter (rank; alpha: scaled by
    # alpha / r, or alpha / sqrt(r) with lora_rslora; DoRA or plain LoRA; dropout on its input);
    # lora_targets None (every attention and MLP projection) or the layers that get one ("q_proj,v_proj,lm_head");
    # lora_layers None (every transformer layer) or the ones adapted ("16-31": the backward stops at the lowest);
    # lora_experts True: a mixture of experts' routed experts adapted too (gate_up_proj, down_proj; lora_dropout 0);
    # ld_alpha None (DPO) or LD-DPO's weight in [0, 1] of the longer answer's tokens past the shorter one's length;
    # f_divergence "reverse_kl" (DPO), "forward_kl", "js_divergence" or "alpha_divergence" (f_alpha its alpha);
    # wpo False (DPO) or True: each pair's loss weighed by how likely the policy finds its answers (WPO);
    # quantize None, "nf4" or "nf4-dq": the base weights the adapters train on, and every stage is evaluated on;
    # group_by None or a column of the data (a patient's id): records with the same value go to one split, so no
    # patient is both trained and tested on (the same text always does); with test_data, training drops them;
    # confidence True: where the task's answers are labels, each stage also scores every possible answer after each
    # test prompt, for how sure it is of its answers and whether that tells right from wrong (stage_confidence);
    # review_target None or A in (0, 1), with val: each trained stage's review threshold, the calibrated
    # confidence down to which the validation items it answered alone were right at least A of the time (the exact
    # 95% CI's lower end, tried downward from the one that keeps a quarter of them until one falls short), checked
    # on the test items (validated_review; report.md only)
}


def _stage_hint(name: str, known: list[str]) -> str:
    """`` (lr: sft_lr or dpo_lr, each stage's own)`` for a training setting that compare sets per stage."""
    stages = [k for k in (f"sft_{name}", f"dpo_{name}") if k in known]
    return f" ({name}: {' or '.join(stages)}, each stage's own)" if stages else ""


@dataclass
class CompareConfig:
    task: str
    model: str
    output: str
    data: str | None = None  # None: the task's bundled data (portal)
    # labelled records of the same task to test on, as they are (a later period's, another site's); data then makes
    # the training (and validation) records alone. None: a seeded share of data is the test set
    test_data: str | None = None
    # the sheet of test_data where it is a workbook (None: its one sheet of data; the sheet task option names data's)
    test_sheet: str | None = None
    preset: str = "quick"
    task_options: dict = field(default_factory=dict)
    strategy: str = "wrong_label"  # or wrong_label_hardest, model_errors, ranked (needs pairs)
    pairs: str | None = None  # ranked: a JSONL of {"prompt", "chosen", "rejected"} to train DPO on
    pairs_encoding: str | None = None  # pairs' text encoding where it is a CSV, TSV, JSON or JSONL file (None: UTF-8)
    pairs_sheet: str | None = None  # the sheet of pairs where they are a workbook (None: its one sheet of data)
    # pairs' fields read from columns of other names: {"chosen": "better", ...} (or ["chosen=better", ...], made a
    # dict by settings())
    pairs_columns: dict | list | None = None
    loss: str = "sigmoid"
    seed: int = 0
    judge: str | None = None  # a local model that rates answers 1-5
    n_resamples: int = 2000
    overrides: dict = field(default_factory=dict)  # any preset key
    device: str = "auto"  # training and evaluation: auto (a CUDA GPU if one is visible), cpu, cuda, cuda:N
    eval_dtype: str = "auto"  # evaluations' weights: auto is bfloat16 on CUDA, float32 on a CPU
    # YYYY-MM-DD: the date a chat template that prints today's (Llama 3.1+) shows in every prompt, training
    # and evaluation alike; None: the day the run starts (a resumed run keeps its own, from compare_config.json)
    chat_date: str | None = None
    # switches the model's chat template reads (Qwen3's {"enable_thinking": False}), in every prompt of training
    # and evaluation (not the judge's); None: none (a resumed run keeps its own, from compare_config.json)
    chat_vars: dict | None = None
    # an earlier compare run of the same settings but DPO's, whose base and SFT stages this one starts from
    # (copied into output; prefopt.evaluate.start_from); None: this run makes them
    start_from: str | None = None

    def device_and_dtype(self) -> tuple[torch.device, torch.dtype]:
        """The device and the evaluations' dtype, checked (a device this machine lacks is an error)."""
        from ..devices import resolve

        return resolve(self.device, self.eval_dtype)

    def settings(self) -> dict:
        from ..tasks import STRATEGIES

        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown pair strategy {self.strategy!r}; choose {', '.join(STRATEGIES[:-1])} "
                             f"or {STRATEGIES[-1]}")
        if self.strategy == "ranked" and not (self.pairs and Path(self.pairs).is_file()):
            raise ValueError(f"strategy 'ranked' needs --pairs FILE with prompt/chosen/rejected records "
                             f"(got {self.pairs!r})")
        for name, value in (("pairs_encoding", self.pairs_encoding), ("pairs_sheet", self.pairs_sheet),
                            ("pairs_columns", self.pairs_columns)):
            if value is not None and self.strategy != "ranked":
                raise ValueError(f"{name} {value!r}: the {name[6:]} of --pairs, which only strategy 'ranked' reads")
        if self.pairs_columns is not None:
            from ..data.columns import column_map

            try:
                self.pairs_columns = column_map(self.pairs_columns)
            except ValueError as e:
                raise ValueError(f"pairs_{e}") from None
        if self.pairs_encoding is not None:
            from ..data.decoding import checked_encoding

            checked_encoding(self.pairs_encoding)
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; choose from {sorted(PRESETS)}")
        unknown = set(self.overrides) - set(PRESETS["full"]) - set(PRESETS["quick"])
        if unknown:
            where = sorted(unknown & {"device", "eval_dtype"})
            known = sorted({*PRESETS["full"], *PRESETS["quick"]})
            hints = "".join(_stage_hint(u, known) or did_you_mean(u, known) for u in sorted(unknown) if u not in where)
            raise ValueError(f"unknown compare settings {sorted(unknown)}{hints}"
                             + (f"; {', '.join(where)} {'is' if len(where) == 1 else 'are'} not a preset setting: "
                                f"pass {' and '.join('--' + w.replace('_', '-') for w in where)}" if where
                                else f"; the settings: {', '.join(known)}"))
        if self.test_data is not None and "test" in self.overrides:
            raise ValueError(f"--set test={self.overrides['test']}: the test set is --test-data {self.test_data}'s "
                             "records, all of them; leave test out (or --test-data, to test on a share of --data)")
        if self.test_sheet is not None and self.test_data is None:
            raise ValueError(f"--test-sheet {self.test_sheet}: the sheet of --test-data, which is not given")
        if self.test_data is not None and not Path(self.test_data).exists():
            raise FileNotFoundError(f"--test-data {self.test_data}: no such file")
        s = {"sft_epochs": 1.0, "dpo_epochs": 1.0, **PRESETS[self.preset], **self.overrides}
        check_numbers(s)
        check_settings(s)
        check_review_target(s)
        for name in ("confidence", "lora_dora", "lora_rslora", "lora_experts", "pack", "share_start",
                     "gradient_checkpointing"):
            if not isinstance(s[name], bool):
                raise ValueError(f"{name}: true or false (got {s[name]!r})")
        if s["group_by"] is not None and not (isinstance(s["group_by"], str) and s["group_by"].strip()):
            raise ValueError(f"group_by: a column of the data, such as a patient's id (got {s['group_by']!r})")
        if s["gradient_checkpointing_layers"] and not s["gradient_checkpointing"]:
            raise ValueError(f"gradient_checkpointing_layers {s['gradient_checkpointing_layers']} needs "
                             "gradient_checkpointing=true")
        if s["share_start"] and not s["pack"] and self.overrides.get("share_start"):  # (the presets': SFT's is off)
            raise ValueError("share_start runs the start once in SFT's packed row: it needs pack=true")
        check_lora_targets(s)
        check_lora_layers(s)
        check_dpo_variants(s, self.loss)
        if s["quantize"] is not None and s["quantize"] not in QUANT_KINDS:
            raise ValueError(f"quantize: null or one of {', '.join(QUANT_KINDS)} (got {s['quantize']!r})")
        if s["train_dtype"] not in DTYPES:
            raise ValueError(f"train_dtype: one of {', '.join(DTYPES)} (got {s['train_dtype']!r})")
        if s["lora_experts"] and (why := conflicts(s["lora_dropout"], s["lora_dora"], s["lora_layers"])):
            raise ValueError(f"lora_experts: {why}")
        if s["quantize"] and s["lora_dora"]:
            raise ValueError("lora_dora with quantize: DPO trains on the SFT model, and a DoRA SFT adapter cannot be "
                             "merged into 4-bit weights; use one or the other")
        self.device_and_dtype()
        if self.chat_date is not None:
            parse_chat_date(self.chat_date)
        if self.chat_vars is not None:
            try:
                self.chat_vars = parse_chat_vars(self.chat_vars)
            except ValueError as e:
                raise ValueError(f"chat_vars: {e}") from None
        d = decoding(s)  # checked before the run claims its folder
        check_repeat_options(d["repetition_penalty"], d["no_repeat_ngram_size"], d["repeat_scope"])
        return s


WHOLE = ("batch_size", "dpo_batch_size", "eval_batch_size", "max_length", "lora_r")  # whole numbers >= 1
# the same, or None (the preset's way; for gradient_checkpointing_layers, every layer)
WHOLE_OR_NONE = ("max_train", "sft_steps", "dpo_steps", "max_new_tokens", "gradient_checkpointing_layers")
POSITIVE = ("sft_lr", "dpo_lr", "beta", "sft_epochs", "dpo_epochs", "lora_alpha")  # numbers > 0
FRACTIONS = ("lora_dropout",)  # numbers in [0, 1)


def check_dpo_variants(s: dict, loss: str) -> None:
    """``ld_alpha``, ``f_divergence``, ``f_alpha``, ``wpo`` (``--set ld_alpha=0.5``), with ``loss``: DPOConfig's
    checks, before the run claims its folder."""
    from ..train.dpo import variant_errors

    ld, fd, fa, wpo = s["ld_alpha"], s["f_divergence"], s["f_alpha"], s["wpo"]
    errors = []
    if ld is not None and (isinstance(ld, bool) or not isinstance(ld, (int, float))):
        errors.append(f"ld_alpha: null or a number in [0, 1] (got {ld!r})")
    if isinstance(fa, bool) or not isinstance(fa, (int, float)):
        errors.append(f"f_alpha: a number (got {fa!r})")
    if not isinstance(wpo, bool):
        errors.append(f"wpo: true or false (got {wpo!r})")
    if errors:
        raise ValueError("compare settings: " + "; ".join(errors))
    errors = variant_errors(loss, ld, fd, fa, wpo)
    if errors:
        raise ValueError("compare settings: " + "; ".join(errors))


def check_lora_targets(s: dict) -> None:
    """``lora_targets``: None, or layer names as a list or one comma-separated string (``--set
    lora_targets=q_proj,v_proj``), stored as a list; each one a layer of every Llama-family model."""
    from ..quant import PROJECTIONS

    v = s["lora_targets"]
    if v is None:
        return
    names = [n.strip() for n in v.split(",")] if isinstance(v, str) else v
    known = (*PROJECTIONS, "lm_head", "all-linear")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"lora_targets: null or layer names, comma-separated ({','.join(known)}); got {v!r}")
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"lora_targets: no layer named {unknown}{did_you_mean(unknown[0], known)}; the layers: "
                         f"{', '.join(known)}")
    s["lora_targets"] = list(dict.fromkeys(names))


def check_lora_layers(s: dict) -> None:
    """``lora_layers``: None, or layer numbers (``--set lora_layers=16-31``, or one number), kept as text."""
    from ..lora import parse_layers

    v = s["lora_layers"]
    if v is None:
        return
    if isinstance(v, bool) or not isinstance(v, (int, str)):
        raise ValueError(f"lora_layers: null or layer numbers such as 16-31 or 0,2,4 (got {v!r})")
    try:
        parse_layers(str(v))
    except ValueError as e:  # "layers: '1-' is not layer numbers ..."
        raise ValueError(f"lora_{e}") from None
    s["lora_layers"] = str(v)


def check_numbers(s: dict) -> None:
    """The preset settings that are counts or rates, checked before the run claims its folder
    (``--set sft_steps=0`` used to fail after the base model's evaluation, naming ``max_steps``);
    a whole number given as ``1e3`` becomes 1000. Every problem is listed at once."""
    problems = []
    for name in WHOLE + WHOLE_OR_NONE:
        v = s[name]
        if v is None and name in WHOLE_OR_NONE:
            continue
        if isinstance(v, float) and v.is_integer():
            s[name] = v = int(v)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            problems.append(f"{name}: a whole number >= 1{' or null' if name in WHOLE_OR_NONE else ''} (got {v!r})")
    for name in POSITIVE:
        v = s[name]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
            problems.append(f"{name}: a number > 0 (got {v!r})")
    for name in FRACTIONS:
        v = s[name]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
            problems.append(f"{name}: a number in [0, 1) (got {v!r})")
    t = s["test"]
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not (0 < t < 1 or (t >= 1 and float(t).is_integer())):
        problems.append(f"test: a fraction in (0, 1) or a whole count of test items (got {t!r})")
    elif isinstance(t, float) and t >= 1:
        s["test"] = int(t)
    if problems:
        raise ValueError("compare settings: " + "; ".join(problems))


# settings that change no stage's result: a resumed run may differ in these
_REPORT_ONLY = ("output", "n_resamples", "start_from")
# where it runs: a run started on a CPU may finish on a GPU (metrics.json says where each evaluation ran)
_MACHINE_ONLY = ("device", "eval_dtype")
# change memory and time, not results (pack, share_start: only through LoRA dropout's draws and float
# rounding, an equally likely path;
# eval_batch_size: greedy answers only through rounding, as another device or eval_dtype may, and each
# metrics.json records it): a run may resume with another value, so an evaluation that ran out of memory
# is rerun into the same --output with a smaller batch, its trained stages kept
_MEMORY_ONLY = ("gradient_checkpointing", "gradient_checkpointing_layers", "pack", "share_start", "eval_batch_size")
# decide only which trained weights the "dpo" stage is (selection.require_gain): a finished run may be given
# another value; the decision is made again, and the stage evaluated again only if its weights changed
_DECISION_ONLY = ("dpo_max_p",)
# adds to the evaluations without changing their answers: a finished stage is scored when it is turned on
_SCORING_ONLY = ("confidence",)
# what the report reads off the evaluations: a finished run's report is made again with another value
_READING_ONLY = ("review_target",)
# settings added after runs were made, with the values those runs used
_ADDED_SETTINGS = {"max_new_tokens": None, "repetition_penalty": None, "no_repeat_ngram_size": None,
                   "repeat_scope": None, "gradient_checkpointing": False, "gradient_checkpointing_layers": None,
                   "val": None, "dpo_eval_every": None, "dpo_min_gain": None, "dpo_patience": None, "dpo_max_p": None,
                   "pack": False, "share_start": False, "group_by": None, **LORA, **DPO_VARIANTS}


def _eval_only(config: dict) -> tuple[str, ...]:
    """Settings that change only the evaluations: decoding, unless the SFT model's answers to the
    training prompts (made with it) become DPO's pairs. A stage evaluated with other values is
    evaluated again (:func:`_evaluate`); nothing is retrained."""
    return () if config.get("strategy") == "model_errors" else tuple(DECODING)


def _flat(config: dict) -> dict:
    """``config`` as ``{"loss": ..., "settings.beta": ..., "overrides.test": ...}`` for comparing,
    with settings that change no training result left out and settings added since filled in."""
    out, skip = {}, (*_MEMORY_ONLY, *_DECISION_ONLY, *_SCORING_ONLY, *_READING_ONLY, *_eval_only(config))
    for k, v in config.items():
        if k in _REPORT_ONLY or k in _MACHINE_ONLY:
            continue
        if k in ("settings", "overrides") and isinstance(v, dict):
            v = {**_ADDED_SETTINGS, **v} if k == "settings" else v
            out.update({f"{k}.{kk}": vv for kk, vv in v.items() if kk not in skip})
        else:
            out[k] = v
    return out


# settings that name a file or folder: two spellings of one path (relative and absolute, a link) are the same
_PATHS = ("model", "data", "test_data", "pairs", "judge")


def same_path(a, b) -> bool:
    """Whether ``a`` and ``b`` are equal, or two names of one existing file or folder (seen from
    the working directory: a relative path recorded by a run started elsewhere may name another
    file here, and so differs)."""
    if a == b:
        return True
    if not isinstance(a, str) or not isinstance(b, str):
        return False
    try:
        return os.path.samefile(a, b)
    except OSError:  # either does not exist here (a hub name, a moved file)
        return False


def differences(earlier: dict, config: dict, ignore: tuple[str, ...] = ()) -> list[str]:
    """The settings that change a trained result in which ``config`` differs from ``earlier`` (as
    ``compare_config.json`` records them), each ``"settings.beta: 0.1 -> 0.2"``, leaving out the
    flattened keys in ``ignore``."""
    old, new = _flat(earlier), _flat(json.loads(json.dumps(config)))  # as stored (tuples become lists)
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
            if old.get(k) != new.get(k) and not (k in _PATHS and same_path(old.get(k), new.get(k))) and k not in ignore]


def other_settings(out: Path, config: dict) -> None:
    """Refuse ``out`` where it holds a run whose finished stages used other settings than
    ``config`` (they would be reused as if they were this run's)."""
    path = out / "compare_config.json"
    if path.is_file():
        diff = differences(read_json(path), config)
        if diff:
            free = [*_eval_only(config), *_DECISION_ONLY, *_SCORING_ONLY, *_MEMORY_ONLY]
            raise ValueError(f"{out} holds a run made with other settings ({'; '.join(diff)}); its finished "
                             "stages would be reused as if they were this run's. Use a new --output, or delete it. "
                             f"(A finished run may be rerun with another {', '.join(free)}, --n-resamples, --device "
                             "or --eval-dtype: they train nothing.)")


def same_run(out: Path, config: dict) -> None:
    """Record the run's settings, or refuse a folder whose finished stages used others
    (:func:`other_settings`)."""
    other_settings(out, config)
    write_json_atomic(out / "compare_config.json", config)


def runs_in(folder: str | Path, pattern: str = "*") -> list[str]:
    """The names of ``folder``'s sub-folders matching ``pattern`` that hold a compare run (its
    ``compare_config.json``), sorted: a study's tasks, a ``--seeds`` folder's ``seed-S``. Errors
    that meet such a folder where one run belongs name them."""
    return sorted(d.name for d in Path(folder).glob(f"{pattern}/") if (d / "compare_config.json").is_file())


def memory_advice(stage: str, training: bool, s: dict, e: BaseException) -> OutOfMemory:
    """Running out of memory in ``stage`` (training it, else evaluating it), said in compare's
    settings (``--set KEY=VALUE``): ``prefopt.train.OutOfMemory``."""
    from ..train.out_of_memory import OutOfMemory, more_layers, torch_words

    what = e.what if isinstance(e, OutOfMemory) else torch_words(e)
    when = e.when if isinstance(e, OutOfMemory) and e.when else ""
    weights = getattr(e, "weights", False)  # the model's weights alone did not fit: no batch setting helps
    if weights:
        where = f"moving the {stage} stage's model to the device, before its first step"
    elif training:
        where = f"training the {stage} stage{' ' + when if when else ''}"
    else:
        where = f"evaluating the {stage} stage"
    kept = []  # change memory and time only (_MEMORY_ONLY): the same --output takes them (same_run)
    changed = []  # change what is trained or answered: a new --output
    if training and not weights:
        batch = "dpo_batch_size" if stage == "dpo" else "batch_size"
        if not s["gradient_checkpointing"]:
            kept.append("--set gradient_checkpointing=true")
        elif (n := s["gradient_checkpointing_layers"]) and (more := more_layers(n, getattr(e, "layers", None))):
            kept.append(f"--set gradient_checkpointing_layers={more} (now {n}; null: all layers)")
        if s[batch] > 1:
            changed.append(f"{batch}={s[batch] // 2} (fewer examples a step)")
        changed.append(f"a smaller max_length (now {s['max_length']})")
    if training and not s["quantize"]:
        if s["train_dtype"] == "float32":
            changed.append("train_dtype=bfloat16 (the base in 16 bits; the adapters stay float32)")
        changed.append("quantize=nf4 (the base in 4 bits)")
    if (not training or (stage == "dpo" and s["val"])) and s["eval_batch_size"] > 1 and not weights:
        kept.append(f"--set eval_batch_size={s['eval_batch_size'] // 2}" + (" for the validation answers" * training))
    fixes = []
    if kept:
        rounding = ", up to rounding in the answers" if "eval_batch_size" in kept[-1] else ""
        fixes.append(f"{' or '.join(kept)} (the results are the same{rounding}: a rerun into this --output keeps its "
                     "finished stages)")
    if changed:
        fixes.append(f"{'or, ' if kept else ''}into a new --output, --set {', '.join(changed)}")
    estimate = ""
    if training and not s["lora_experts"] and "lm_head" not in (s["lora_targets"] or ()):  # (what the estimate covers)
        estimate = (". The command with --estimate-memory added says what a training step of each stage holds under "
                    "the new settings, without loading anything")
    if weights:
        fixes.append(f"{'or ' if fixes else ''}a smaller model")
    return OutOfMemory(f"out of memory {where} ({what}). To fit, try {'; '.join(fixes) or 'a smaller model'}{estimate}",
                       what, when, weights=weights)


def diverged_advice(stage: str, s: dict, e: Diverged) -> Diverged:
    """A stage's training that diverged (NaN or infinite gradients), said in compare's settings: a
    lower learning rate, which changes what is trained, so into a new --output (:func:`same_run`).
    The trainer's own advice (--lr, --overwrite) names flags compare does not have."""
    from ..train.diverged import Diverged

    lr = s[f"{stage}_lr"]
    return Diverged(f"training the {stage} stage diverged {e.what or '(its gradients are not finite)'}. Try a lower "
                    f"learning rate, into a new --output: --set {stage}_lr={lr / 2:g} (now {lr:g})", e.what)
