"""The training settings of ``prefopt compare``'s two trained stages, and what a step of each holds.

:func:`sft_config` and :func:`dpo_config` are the ``TrainConfig`` and ``DPOConfig`` the SFT and
DPO stages train with, from compare's settings (``--set``); :func:`stage_configs` gives both
without data. :func:`estimate_stages` runs ``prefopt.train.memory_estimate`` on them (``prefopt
compare ... --estimate-memory``; ``study.estimate_study`` for every task): what a training step
of each will hold, from the model's ``config.json`` alone, with no data read and nothing written.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .compare_config import CompareConfig


def task_length(cfg: CompareConfig, task, s: dict, say: Callable[[str], None]) -> None:
    """Raise ``s["max_length"]`` to what the task's examples need (``task.train_length``) unless
    ``--set max_length`` chose it, saying so."""
    if task.train_length and s["max_length"] < task.train_length and "max_length" not in cfg.overrides:
        say(f"max_length {task.train_length}, not the {cfg.preset} preset's {s['max_length']}: {task.name} "
            "examples need it (--set max_length=N to choose)")
        s["max_length"] = task.train_length


def stage_config(cls, cfg: CompareConfig, s: dict, stage: str, data: Path | None, out: Path, **kw):
    """A stage's training settings. It trains only where its ``final/`` is missing, so whatever an
    interrupted attempt left in its folder is replaced (``overwrite``), unless compare resumes it
    from its checkpoint. ``data`` None: settings that are only estimated (``estimate_stages``)."""
    steps, epochs = s[f"{stage}_steps"], s[f"{stage}_epochs"]
    return cls(model=cfg.model, data=None if data is None else str(data), output_dir=str(out), max_length=s["max_length"],
               batch_size=s["dpo_batch_size" if stage == "dpo" else "batch_size"], lr=s[f"{stage}_lr"],
               max_steps=steps, epochs=epochs, seed=cfg.seed, warmup_steps=min(5, (steps or 10) // 10),
               gradient_checkpointing=s["gradient_checkpointing"],
               gradient_checkpointing_layers=s["gradient_checkpointing_layers"], device=cfg.device,
               chat_date=cfg.chat_date, chat_vars=cfg.chat_vars, lora_r=s["lora_r"], lora_alpha=s["lora_alpha"],
               lora_dora=s["lora_dora"], lora_rslora=s["lora_rslora"], lora_dropout=s["lora_dropout"],
               lora_layers=s["lora_layers"], lora_experts=s["lora_experts"], quantize=s["quantize"],
               dtype=s["train_dtype"], overwrite=True,
               **({"lora_targets": s["lora_targets"]} if s["lora_targets"] else {}), **kw)


def sft_config(cfg: CompareConfig, s: dict, data: Path | None, out: Path):
    """The SFT stage's ``TrainConfig``: ``data`` its records, ``out`` the run's folder."""
    from ..train import TrainConfig

    return stage_config(TrainConfig, cfg, s, "sft", data, out / "sft" / "train", save_every=0, pack=s["pack"],
                        share_start=s["share_start"] and s["pack"])


def dpo_config(cfg: CompareConfig, s: dict, pairs: Path | None, out: Path, chosen: dict | None = None):
    """The DPO stage's ``DPOConfig``: ``pairs`` its data, ``out`` the run's folder, ``chosen`` the
    settings that keep its best weights by a validation score (``selection.trainer_settings``). It
    reads the user's ``--pairs`` in their encoding (or from their sheet, by their columns); the pairs
    compare writes (made, or the user's less those left out: ``data/pairs.jsonl``) are UTF-8 JSONL
    with the fields' own names."""
    from ..train import DPOConfig

    given = pairs is not None and cfg.pairs is not None and Path(pairs) == Path(cfg.pairs)
    encoding = cfg.pairs_encoding if given and cfg.pairs_encoding else "utf-8"
    sheet = cfg.pairs_sheet if given else None
    columns = (cfg.pairs_columns or {}) if given else {}
    return stage_config(DPOConfig, cfg, s, "dpo", pairs, out / "dpo" / "train", loss=cfg.loss, beta=s["beta"],
                        ld_alpha=s["ld_alpha"], f_divergence=s["f_divergence"], f_alpha=s["f_alpha"], wpo=s["wpo"],
                        sft_adapter=str(out / "sft" / "train" / "final"), ref_cache=str(out / "dpo" / "ref_cache"),
                        share_start=s["share_start"], encoding=encoding, sheet=sheet, columns=columns,
                        **(chosen or {}))


def stage_configs(cfg: CompareConfig, say: Callable[[str], None] = lambda line: None) -> list[tuple[str, object]]:
    """``[("SFT", TrainConfig), ("DPO", DPOConfig)]``: what ``cfg``'s run would train, its settings
    checked as the run checks them and the task's ``max_length`` applied (said by ``say``), with
    no data: for estimates."""
    from ..tasks import get_task

    s = cfg.settings()
    task_length(cfg, get_task(cfg.task, **cfg.task_options), s, say)
    out = Path(cfg.output)
    return [("SFT", sft_config(cfg, s, None, out)), ("DPO", dpo_config(cfg, s, None, out))]


NOT_COUNTED = ("Not counted: before DPO's first step, its reference pass (no gradients: less than a training "
               "step); scoring the labels (a forward of each batch's prompts and its labels' few tokens, no cache of "
               "answers: less than answering them); a judge model (--judge), loaded beside the stage's while it rates")


def estimate_stages(cfg: CompareConfig, device: str | None = None) -> list[str]:
    """What a training step of the SFT and of the DPO stage of ``cfg``'s run will hold on
    ``device`` (``"cpu"`` or ``"cuda"``; default the run's device on this machine), and what
    answering the test set (and DPO's validation items, where ``val`` holds some out) will, in
    words (``prefopt compare ... --estimate-memory``): from the settings and the model's
    ``config.json`` alone (no data, no weights, no folder). DPO's step takes its reference
    log-probs from the cache, as compare's does."""
    from ..train.memory_estimate import estimate_memory

    lines: list[str] = []
    configs = stage_configs(cfg, lines.append)
    for name, config in configs:
        est = estimate_memory(config, device).lines()
        lines += [f"{name} stage: {est[0]}", *est[1:]]
    for name, est in estimate_answering(cfg, dict(configs), device):
        lines += [f"{name}: {est.lines()[0]}", *est.lines()[1:]]
    return [*lines, NOT_COUNTED]


def estimate_answering(cfg: CompareConfig, configs: dict, device: str | None = None) -> list[tuple[str, object]]:
    """``[(what, AnswerEstimate)]``: the memory of answering ``eval_batch_size`` test prompts at
    once, as each stage's evaluation loads its model (``eval_dtype``; a 4-bit base keeps the
    adapter on top), and where ``val`` holds items out, of DPO's validation answers during its
    training (the training model, AdamW's moments beside). Prompts of ``max_length`` tokens, as
    long as a training example may be, and answers of the task's ``max_new_tokens`` (a run
    raises it where its reference answers are longer). ``configs``: :func:`stage_configs`'s."""
    from ..devices import dtype_on
    from ..tasks import get_task
    from ..train.answer_estimate import estimate_answers
    from ..train.memory_estimate import device_kind
    from .runner import decoding

    s = cfg.settings()
    kind = device_kind(device or cfg.device)
    sft, dpo = configs["SFT"], configs["DPO"]
    size = dict(prompts=s["eval_batch_size"], prompt_tokens=sft.max_length,
                new_tokens=decoding(s, get_task(cfg.task, **cfg.task_options))["max_new_tokens"], device=kind)
    out = [("Test-set answers (each stage)", estimate_answers(sft, dtype=dtype_on(cfg.eval_dtype, kind), **size))]
    if s["val"]:
        out.append(("DPO's validation answers (during its training)", estimate_answers(dpo, training=True, **size)))
    return out
