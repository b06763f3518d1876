"""Building a run from a :class:`TrainConfig`: model, adapter, data, trainer, final save."""
from __future__ import annotations

import signal
import sys
from dataclasses import replace
from pathlib import Path

import torch

from ..chat_template import run_chat_date, run_chat_vars
from ..devices import DTYPES, resolve_device
from ..fileio import write_json_atomic
from ..lora import apply_lora, parse_layers
from ..lora_experts import EXPERT_PARTS
from ..model.checkpoint import empty_model
from ..pretrained import load_model
from ..tokenizer import Tokenizer, load_tokenizer, set_chat_date, set_chat_vars
from . import state as ckpt_io
from .card import FILE, write_cards
from .config import TrainConfig
from .cost import cost_line
from .curves import curves_line
from .diagnosis import WARNING_KEYS, dpo_warnings
from .distributed import init_distributed, receives_weights
from .metrics import first_and_last, first_to_last
from .saving import save_weights
from .sft import SFTTrainer, load_train_eval
from .stop_signal import Terminated, stop_requests


def pin_chat(config: TrainConfig, tok: Tokenizer) -> tuple[TrainConfig, list[str]]:
    """Fix what ``tok``'s chat template is given for the whole run: the date it shows
    (``config.chat_date``, else the resumed checkpoint's, else today) and its switches
    (``config.chat_vars``, else the resumed checkpoint's, else none). Returns the config with them
    set (it goes into the checkpoints, so a resume on another day renders the same text) and the
    lines that say so (where the template prints a date; where there are switches)."""
    saved = ckpt_io.checkpoint_config(config.output_dir) if config.resume else None
    config = replace(config, chat_date=run_chat_date(config.chat_date, saved),
                     chat_vars=run_chat_vars(config.chat_vars, saved))
    lines = [set_chat_date([tok], config.chat_date, "example"),
             set_chat_vars(tok, config.chat_vars, config.model, "example")]
    return config, [line for line in lines if line]


def prepare_model(config: TrainConfig):
    """The base model (its projections in 4 bits where ``config.quantize`` says so), with
    ``config.sft_adapter`` merged in for DPO after SFT (beside the 4-bit codes, after quantizing),
    and a fresh LoRA adapter, or all weights trainable; seeded."""
    torch.manual_seed(config.seed)
    if receives_weights(init_distributed(resolve_device(config.device)), config.fsdp):
        # an FSDP2 rank other than 0: no weight read here; its share of rank 0's (the SFT adapter merged
        # in, for DPO after SFT) comes as the trainer shards the model
        return adapt(empty_model(config.model, DTYPES[config.dtype]), config)
    adapter = getattr(config, "sft_adapter", None)
    # with quantize: 4 bits first (layer by layer onto the training device), then the SFT adapter merged
    # beside the codes, not rounded in; the adapter trained next needs no other layer in 4 bits (the lm_head
    # stays precise, quant.quantized_layers)
    model = load_model(config.model, dtype=DTYPES[config.dtype], adapter=adapter, merge=adapter is not None,
                       quantize=config.quantize, device=resolve_device(config.device) if config.quantize else "cpu")
    return adapt(model, config)


def reference_model(config) -> torch.nn.Module | None:
    """DPO's separate reference model, ``config.ref`` (None without one), with the SFT adapter
    merged in as the policy has it; under ``--fsdp`` a rank other than 0 builds it empty and
    receives its share of rank 0's as the trainer shards it (``DPOTrainer._placed``). A loss with
    no reference (simpo, orpo) loads none: said once, where one was given."""
    from ..losses import REFERENCE_FREE

    if not config.ref:
        return None
    dist = init_distributed(resolve_device(config.device))
    if config.loss in REFERENCE_FREE:
        if dist.is_main:
            print(f"prefopt: note: {config.loss} needs no reference model: --ref {config.ref} is not loaded",
                  file=sys.stderr, flush=True)
        return None
    if receives_weights(dist, config.fsdp):
        return empty_model(config.ref, DTYPES[config.dtype])
    return load_model(config.ref, dtype=DTYPES[config.dtype], adapter=config.sft_adapter,
                      merge=config.sft_adapter is not None, quantize=config.quantize)  # as the policy's


def adapt(model, config: TrainConfig):
    """``model`` with what ``config`` trains on it: a fresh LoRA adapter, or all weights trainable."""
    if config.lora:
        apply_lora(model, r=config.lora_r, alpha=config.lora_alpha, dropout=config.lora_dropout,
                   target_modules=config.lora_targets, rslora=config.lora_rslora,
                   dora=config.lora_dora, layers=parse_layers(config.lora_layers),
                   target_parameters=EXPERT_PARTS if config.lora_experts else ())
    else:
        for p in model.parameters():
            p.requires_grad_(True)
    return model


def save_result(trainer, config: TrainConfig) -> Path | None:
    """Write the adapter (PEFT layout) or the full model, with the tokenizer, to
    ``output_dir/final``; every rank calls it, rank 0 writes (``saving.save_weights``). After SFT
    (``sft_adapter``) the adapter holds the SFT adapter's update too, so it loads on the base
    model like any other (``prefopt.lora_stack``)."""
    return save_weights(trainer, Path(config.output_dir) / "final")


def claim_output_dir(config: TrainConfig) -> None:
    """Before any loading: refuse an output folder that holds an earlier run. An ``overwrite``
    clears it later, in the trainer, once the data and model have loaded: bad data keeps the
    earlier run."""
    ckpt_io.claim_output_dir(config.output_dir, resume=config.resume, overwrite=config.overwrite,
                             is_main=init_distributed(resolve_device(config.device)).is_main, clear=False)


def check_experts(model: str, lora_experts: bool) -> None:
    """``lora_experts`` on a model with no mixture of experts, refused from its config.json before a
    run claims its folder (a model that cannot be read here is left to the load to name)."""
    if not lora_experts:
        return
    from ..model.config import ModelConfig
    from ..model.hub import resolve_model_dir

    try:
        cfg = ModelConfig.from_hf(resolve_model_dir(model))
    except (OSError, ValueError):
        return
    if not any(cfg.sparse(i) for i in range(cfg.num_hidden_layers)):
        raise ValueError(f"lora_experts: {model} ({cfg.model_type}) has no mixture of experts to adapt")


def _start(config: TrainConfig, evaluators, records, eval_records, *loader) -> tuple:
    """What both runs do before the model loads: check the evaluators, claim the output folder,
    load the tokenizer, pin the chat date and variables, and read and check the data (``loader``:
    the records' reader, SFT's by default; ``records``, ``eval_records``: in place of the files);
    then print, on the main process, the chat lines and the data reports. Returns ``(config, tok,
    train, evals)``."""
    config.check_eval_set(evaluators, eval_records is not None)
    check_experts(config.model, config.lora and config.lora_experts)
    claim_output_dir(config)
    tok = load_tokenizer(config.model)
    config, chat_lines = pin_chat(config, tok)
    train, evals, reports = load_train_eval(config, tok, *loader, records=records, eval_records=eval_records)
    if init_distributed(resolve_device(config.device)).is_main:  # the trainer joins the same group
        for line in chat_lines + [r.summary() for r in reports]:
            print("prefopt:", line, flush=True)
    return config, tok, train, evals


def _train_and_save(trainer, config: TrainConfig) -> dict:
    """Record the run's settings (``train_config.json``: after the trainer, which clears an
    overwritten folder), train, save ``final/`` and the summary (a DPO run's with how many
    reference forwards training made: 0 on a cache), and print what the run did; returns the summary."""
    ckpt = ckpt_io.latest_checkpoint(config.output_dir) if config.resume else None
    if ckpt is not None:  # a refused resume must leave the run's train_config.json as it was
        trainer.check_resume(ckpt)
    if trainer.dist.is_main:
        Path(config.output_dir).mkdir(parents=True, exist_ok=True)
        write_json_atomic(Path(config.output_dir) / "train_config.json", config.to_dict())
    summary = trainer.train()
    if hasattr(trainer, "ref_forwards"):  # counted during training: read after it
        summary["reference_forwards"] = trainer.ref_forwards
    with stop_requests(ctrl_c="once final/ is saved") as asked:  # a signal waits for final/ to be whole
        out = save_result(trainer, config)
        if out is not None:
            summary["saved"] = str(out)
            write_json_atomic(Path(config.output_dir) / "train_summary.json", summary)
            folders = {out: "the last step's"}
            best = summary.get("best")
            if best and Path(best["saved"]).is_dir():  # the weights of the best evaluation: their own card
                folders[best["saved"]] = (f"the best evaluation's ({best['metric']} {best['value']:.4f} at step "
                                          f"{best['step']})")
            outcome = outcome_lines(summary, config)
            write_cards(folders, config, summary, len(trainer.train_data), len(trainer.eval_data or ()), outcome,
                        str(trainer.device))
            print_outcome(summary, config, outcome)
        signum = asked()  # each rank's own: the others would wait in a collective for the whole save
    if signum:
        _stopped_after_saving(signum, config, trainer.dist.is_main)
    return summary


def _stopped_after_saving(signum: int, config: TrainConfig, is_main: bool) -> None:
    """A signal that came while ``final/`` was written: the run is whole, and the caller (the CLI,
    ``compare`` between its stages) stops as it asked, with :class:`Terminated` for SIGTERM (the
    CLI's 143) and KeyboardInterrupt for Ctrl-C (130). Under torchrun each rank stops on its own
    signal: a rank that ends early ends the job, and the main rank, signalled in turn, finishes
    the save first."""
    how = "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C"
    said = f"{how} came while the run was saved: it is complete, in {Path(config.output_dir) / 'final'}"
    if is_main:
        print(f"\nprefopt: {said}", file=sys.stderr, flush=True)
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Terminated(said)


def run_sft(config: TrainConfig, callbacks=(), evaluators=(), *, records=None, eval_records=None) -> dict:
    """Fine-tune ``config.model`` on ``config.data``; returns the training summary.
    ``callbacks`` and ``evaluators``: as :class:`~prefopt.train.loop.Trainer` takes them.
    ``records`` and ``eval_records`` (lists of dicts, DataFrames, a ``datasets.Dataset``) take the place of the
    ``data`` and ``eval_data`` files: a notebook's records get the whole run, model card and
    curves included."""
    config, tok, train, evals = _start(config, evaluators, records, eval_records)
    model = prepare_model(config)
    trainer = SFTTrainer(model, config, train, evals, pad_id=tok.pad_token_id or 0, callbacks=callbacks,
                         tokenizer=tok, evaluators=evaluators)
    return _train_and_save(trainer, config)


EVAL_LINES = {"eval_loss": "eval loss", "eval_rewards/accuracies": "eval pair accuracy",
              "eval_rewards/margins": "eval reward margin", "eval_kto/accuracies": "eval share on the label's side"}


TRAIN_LINES = {"loss": ("training loss", ".4f"), "rewards/accuracies": ("pair accuracy", ".2f"),
               "logps/chosen": ("chosen log-prob", ".2f"), "logps/rejected": ("rejected log-prob", ".2f"),
               "kto/accuracies": ("share on the label's side of the reference point", ".2f"),
               "kl": ("reference point (KL estimate)", ".3f"), "logps/completion": ("completion log-prob", ".2f")}
TRAIN_KEYS = {"sft": ("loss",), "dpo": ("loss", "rewards/accuracies", "logps/chosen", "logps/rejected"),
              "kto": ("loss", "kto/accuracies", "kl", "logps/completion")}


def training_line(output_dir: str | Path, kind: str) -> str | None:
    """The logged training metrics (``kind``'s: :attr:`TrainConfig.run_kind`, :data:`TRAIN_KEYS`), first → last quarter of the
    steps (without an eval set, the only sign of what training did); None without a log."""
    keys = TRAIN_KEYS[kind]
    d = first_and_last(output_dir, keys)
    if d is None:
        return None
    parts = [f"{TRAIN_LINES[k][0]} {arrow}" for k in keys if (arrow := first_to_last(d, k, TRAIN_LINES[k][1]))]
    n = d["logged"]
    return f"{', '.join(parts)} (mean of the first and last {d['window']} of {n} logged step{'s' * (n != 1)})"


def outcome_lines(summary: dict, config: TrainConfig) -> list[str]:
    """What the run did: training's first → last steps, the eval metrics before → after, an
    early stop, the best evaluation's weights, and its time and peak memory."""
    kind = config.run_kind
    lines = [line] if (line := training_line(config.output_dir, kind)) else []
    logged = first_and_last(config.output_dir, WARNING_KEYS) if kind != "sft" else None
    lines += dpo_warnings(logged, config.loss) if logged else []
    before, after = summary.get("eval_before") or {}, summary.get("eval_after") or {}
    for key, label in EVAL_LINES.items():
        if key in after:
            was = f"{before[key]:.4f} → " if key in before else ""
            lines.append(f"{label}: {was}{after[key]:.4f}")
    stopped = summary.get("stopped_early")
    if stopped:
        lines.append(f"stopped early at step {stopped['step']} of {summary['total_steps']}: {stopped['metric']} had "
                     f"not improved for {stopped['patience']} evaluations")
    best = summary.get("best")
    if best:
        when = "before training" if best["step"] == 0 else f"at step {best['step']}"
        lines.append(f"best {best['metric']} ({best['order']}) {best['value']:.4f} {when}: weights in {best['saved']}")
    return lines + ([line] if (line := cost_line(summary)) else [])


def print_outcome(summary: dict, config: TrainConfig, outcome: list[str]) -> None:
    """What the run did (``outcome``: :func:`outcome_lines`) and where things went, on the console."""
    for line in outcome:
        print(f"prefopt: {line}", flush=True)
    print(f"prefopt: saved to {summary['saved']} (model card: {FILE}); per-step metrics in "
          f"{Path(config.output_dir) / 'metrics.jsonl'}", flush=True)
    print(f"prefopt: {curves_line(config.output_dir)}", flush=True)


def run_dpo(config, callbacks=(), evaluators=(), *, records=None, eval_records=None) -> dict:
    """Preference-tune ``config.model`` on ``config.data`` (a :class:`DPOConfig`); returns the
    training summary. ``callbacks`` and ``evaluators``: as :class:`~prefopt.train.loop.Trainer`
    takes them; ``records`` and ``eval_records``: as :func:`run_sft` takes them."""
    from ..data.feedback import load_feedback
    from ..data.preference import load_preferences
    from .dpo import DPOTrainer, kto_balance_line

    kto = config.run_kind == "kto"
    loader = load_feedback if kto else load_preferences  # KTO: unpaired, or pairs read as two
    config, tok, pairs, evals = _start(config, evaluators, records, eval_records, loader)
    if kto and init_distributed(resolve_device(config.device)).is_main:
        print(f"prefopt: {kto_balance_line(pairs, config)}", flush=True)
    model = prepare_model(config)
    trainer = DPOTrainer(model, config, pairs, evals, pad_id=tok.pad_token_id or 0, ref_model=reference_model(config),
                         ref_cache=config.ref_cache, callbacks=callbacks, tokenizer=tok, evaluators=evaluators)
    if trainer.ref_mode == "cache":  # filled: training reads the cache, and a --ref model's memory is let go (its
        trainer.ref_model = None     # copy on the CPU; under --fsdp its share on each GPU)
    return _train_and_save(trainer, config)
