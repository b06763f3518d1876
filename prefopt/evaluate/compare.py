"""``prefopt compare``: base → SFT (LoRA) → DPO (on the SFT result), every stage on one test set.

Layout of the output folder (each step is skipped when its result is already there, so an
interrupted run resumes where it stopped)::

    DIR/split.json                   the seeded split (item ids); a rerun must match it
    DIR/data/sft_train.jsonl         SFT records (chat prompt, reference answer)
    DIR/data/pairs.jsonl             DPO pairs from the chosen strategy (+ pairs_report.json)
    DIR/base|sft|dpo/predictions.jsonl, metrics.json
                                     each stage's answers and scores (where the answers are labels, with
                                     its confidence in them: ``prefopt.evaluate.stage_confidence``)
    DIR/base|sft|dpo/earlier/N/      evaluations made with other decoding settings (or, for dpo, by
                                     weights another dpo_max_p no longer chose), kept when redone
    DIR/sft/train/final/             the SFT adapter
    DIR/dpo/train/final/             the SFT+DPO adapter (both updates; loads on the base model)
    DIR/dpo/train/best/              with ``--set val=N``: the SFT+DPO weights whose answers to the N
                                     held-out validation items scored best; the "dpo" stage's model
    DIR/dpo/train/val_answers.jsonl  with ``--set val=N``: the parsed answers at every evaluation
    DIR/dpo/train/choice.json        with ``--set dpo_max_p``: whether the chosen step's gain held up
                                     (``prefopt.evaluate.selection``); a rerun with another dpo_max_p
                                     decides again, and evaluates the "dpo" stage again if that
                                     changes its weights (``dpo/metrics.json`` names them)
    DIR/dpo/ref_cache/               reference log-probs (the SFT model), computed once
    DIR/report.md, report.json, *.png  (report.md ends with the commands that use the adapters)
"""
from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ..chat_template import run_chat_date, run_chat_vars
from ..data.records import EscapedText
from ..fileio import jsonl_text, read_json, write_json_atomic, write_text_atomic
from ..losses import UNPAIRED
from ..tasks.parsing import final_answer
from ..tokenizer import set_chat_date, set_chat_vars
from ..train.diverged import Diverged
from ..train.out_of_memory import reraised
from ..train.stop_signal import GoingOn, going_on_by
from . import given_pairs, start_from
from .compare_config import (
    PRESETS,
    CompareConfig,
    diverged_advice,
    memory_advice,
    other_settings,
    same_path,
    same_run,
)
from .compare_train import dpo_config, sft_config, task_length
from .judge import judge_scores, ready_judge
from .runner import (
    DECODING,
    check_prompts,
    choose_max_new_tokens,
    context_of,
    decoding,
    keep_earlier,
    past_context_line,
    past_context_records,
    placement,
    predict,
    prompt_settings,
    quiet_past_context,
    read_results,
    reasoning_note,
    reasoning_opened,
    require_chat,
    score,
    thinking_note,
    write_results,
)
from .selection import (
    CHOICE,
    SFT_WEIGHTS,
    VAL_ANSWERS,
    dpo_weights,
    require_gain,
    stage_weights,
    trainer_settings,
)
from .target_search import unreachable_line

# a stage stopped by SIGTERM, Ctrl-C or an error is resumed from its checkpoint, or started again, by
# rerunning the command (:func:`_resumed`); compare has no --resume, --overwrite or --save-every
RERUN = GoingOn(resume="rerun the same command", restart="rerun the same command", save_more="", output="--output",
                smaller="Into a new --output: a lower --set batch_size=N (SFT) or dpo_batch_size=N (DPO), or a "
                        "smaller max_length=N; into this one: --set gradient_checkpointing=true where it is off (the "
                        "same results). The command with --estimate-memory added says what a step of each stage "
                        "holds (docs/evaluation.md)",
                fewer_answers="Lower --set eval_batch_size=N: fewer prompts answered at once (the same answers, up to "
                              "rounding; a rerun into this --output keeps its finished stages). The command with "
                              "--estimate-memory added says what a batch of them holds (docs/evaluation.md)")


def _log(msg: str) -> None:
    print(f"prefopt compare: {msg}", flush=True)


def _pin_chat(cfg: CompareConfig, out: Path, tok, judge_tok, source: dict | None = None
              ) -> tuple[CompareConfig, list[str]]:
    """The run with its ``chat_date`` and ``chat_vars`` fixed: given, else those an earlier attempt
    recorded in ``compare_config.json`` (or ``source``'s, the run it starts from), else today's date and no variables
    (:func:`~prefopt.chat_template.run_chat_date`, :func:`~prefopt.chat_template.run_chat_vars`);
    the date set on both tokenizers, the variables on the model's (the judge's template is
    another: :func:`~.judge.ready_judge` turns its thinking off), and both passed to each stage's
    training. Also the lines that say so, where a template prints the date and where
    there are variables, where a thinking switch is left unset (:func:`~.runner.thinking_note`)
    and where the judge's is turned off."""
    path = out / "compare_config.json"
    earlier = read_json(path) if path.is_file() else source
    cfg = replace(cfg, chat_date=run_chat_date(cfg.chat_date, earlier),
                  chat_vars=run_chat_vars(cfg.chat_vars, earlier))
    lines = [set_chat_date([t for t in (tok, judge_tok) if t is not None], cfg.chat_date, "prompt"),
             set_chat_vars(tok, cfg.chat_vars, cfg.model, "prompt"), thinking_note(tok),
             ready_judge(judge_tok) if judge_tok is not None else None]
    return cfg, [line for line in lines if line]


def _fit_test_size(cfg: CompareConfig, s: dict, records: list, say: Callable[[str], None]) -> None:
    """A preset's test *count* that would leave less to train on than to test (the quick preset's
    60 of ACI-Bench's 87 encounters) becomes a fifth of the data, as in the full preset, unless
    ``--set test`` chose it."""
    from ..tasks import count_groups

    n, t = count_groups(records, s["group_by"]), s["test"]
    if t >= 1 and 2 * t > n and "test" not in cfg.overrides:
        s["test"] = max(1, round(0.2 * n))
        unit = f"groups of {s['group_by']}" if s["group_by"] else "items"
        say(f"test {s['test']} of {n} {unit} (a fifth), not the {cfg.preset} preset's {t}, which would leave "
            f"{max(n - t, 0)} to train on (--set test=N to choose)")


def _split(cfg: CompareConfig, records: list, s: dict, tested: list | None, say: Callable[[str], None]) -> dict:
    """The seeded train/val/test split; made before the run claims its folder, so sizes that leave
    nothing to train on stop it there. ``tested``: ``--test-data``'s records, the test set as
    they are (the data's records of the same text left out of training, and said)."""
    from ..tasks import count_groups, split_records, split_with_test

    by = s["group_by"]
    if by:
        say(f"group_by {by}: {len(records)} records in {count_groups(records, by)} groups, each in one split")
    if tested is None:
        return split_records(records, test=s["test"], val=s["val"] or 0, seed=cfg.seed, max_train=s["max_train"],
                             group_by=by)
    splits, dropped = split_with_test(records, tested, val=s["val"] or 0, seed=cfg.seed, max_train=s["max_train"],
                                      group_by=by)
    if dropped:
        say(f"{dropped} of {len(records)} records of {cfg.data or 'the bundled data'} are also in --test-data "
            f"{cfg.test_data} (the same text{f' or {by}' if by else ''}): left out of training")
    return splits


def _test_records(cfg: CompareConfig, task, say: Callable[[str], None]) -> list | None:
    """``--test-data``'s records, read as the data's are (after them: a classifier that reads its
    labels off the data keeps those), or None. A label no training record holds is refused: the
    prompt would not offer it and no answer could be right."""
    from ..tasks import mixed_labels
    from ..tasks.check import escape_lines, read_test_data, unseen_labels

    if not cfg.test_data:
        return None
    tested = read_test_data(task, cfg.test_data, cfg.test_sheet)
    if unseen := unseen_labels(task, tested):
        f, r = unseen[0][0], unseen[0][1][0]
        raise ValueError(f"--test-data {cfg.test_data}: record {r.id!r}: {f.name} {r.labels.get(f.name)!r} is none "
                         f"of the labels the training data holds ({', '.join(f.labels)}); --task-option labels=... "
                         "offers it in the prompt anyway (or leave those records out)")
    if mixed := mixed_labels(tested):
        say(f"--test-data: {mixed}")
    for line in escape_lines(task, tested):
        say(f"{cfg.test_data}: {line}")
    return tested


def _start_from(cfg: CompareConfig, out: Path, say: Callable[[str], None]) -> tuple[CompareConfig, dict | None]:
    """The run with ``start_from`` as its stages' origin, and the recorded settings of the run
    ``--from`` names where its stages are still to be copied (:mod:`.start_from`), else None.
    A folder that holds a run already goes on with its own stages and keeps its own origin (a
    rerun of the same command copies nothing again; another ``--from`` there is said to be unused)."""
    path = out / "compare_config.json"
    if path.is_file():
        had = read_json(path).get("start_from")
        if cfg.start_from and not same_path(cfg.start_from, had):
            say(f"--from {cfg.start_from} is not used: {out} holds a run already, which goes on with its own stages")
        return replace(cfg, start_from=had), None
    return cfg, start_from.source_config(cfg.start_from, out) if cfg.start_from else None


def _split_ids(splits: dict) -> dict[str, list]:
    """The split as ``split.json`` records it: each part's item ids."""
    return {k: [r.id for r in v] for k, v in splits.items()}


def _keep_split(splits: dict, out: Path) -> None:
    """Record the split's item ids in ``split.json``, or refuse a folder whose run had another."""
    ids = _split_ids(splits)
    path = out / "split.json"
    if path.is_file():
        old = read_json(path)
        if old != ids:
            raise ValueError(f"{out} holds a run with a different split (other data, seed or preset); "
                             "use a new --output")
    else:
        write_json_atomic(path, ids)


def _resumed(config, stage: str):
    """``config`` with ``resume`` where its folder holds a checkpoint of an interrupted attempt at
    the stage, written under the same settings (SIGTERM saves one: a preempted run loses no step
    of it); else as it is (``overwrite``: the stage starts again)."""
    from ..train import state

    ckpt = state.latest_checkpoint(config.output_dir)
    if ckpt is None:
        return config
    changed = state.changed_settings(state.checkpoint_config(config.output_dir), config.to_dict(),
                                     config.recorded_defaults())
    if changed:
        _log(f"{stage}: training from the start: the interrupted attempt's {ckpt} was written under other settings "
             f"({'; '.join(changed)})")
        return config
    _log(f"{stage}: resuming the interrupted attempt from {ckpt}")
    return replace(config, resume=True)


def _load_stage_model(cfg: CompareConfig, out: Path, stage: str, keep: dict | None = None):
    """The model of ``stage`` (base, or merged SFT / SFT+DPO adapters). ``keep``: a dict that
    holds the SFT model between its evaluation and mining its errors for pairs (one load)."""
    from ..lora import merge_and_unload
    from ..lora_files import load_adapter
    from ..lora_stack import is_stacked
    from ..pretrained import load_model

    if keep is not None and stage in keep:
        return keep.pop(stage)
    device, dtype = cfg.device_and_dtype()
    # a run that trained on a 4-bit base is evaluated on it, every stage, the adapters on top as they trained
    kw = dict(dtype=dtype, device=device, quantize={**PRESETS[cfg.preset], **cfg.overrides}["quantize"])
    if stage == "base":
        return load_model(cfg.model, **kw)
    dpo, sft = dpo_weights(out), out / SFT_WEIGHTS
    if stage == "dpo" and is_stacked(dpo):  # holds the SFT update too (prefopt.lora_stack)
        return load_model(cfg.model, adapter=dpo, merge=True, **kw)
    model = load_model(cfg.model, adapter=sft, merge=True, **kw)
    # dpo is sft where the stage is the SFT model (step 0 chosen, or dpo_max_p kept it) and there were no SFT
    # answers to copy; else a run from before stacked adapters: its DPO adapter goes on the merged SFT model
    if stage == "dpo" and dpo != sft:
        merge_and_unload(load_adapter(model, dpo))
    return model


def _load_judge(cfg: CompareConfig):
    """The judge model (``--judge``), where and as the evaluations run."""
    from ..pretrained import load_model

    device, dtype = cfg.device_and_dtype()
    return load_model(cfg.judge, dtype=dtype, device=device)


def _changed_decoding(metrics: dict, want: dict) -> list[str]:
    """How the decoding ``want`` differs from what made a finished evaluation. Its ``metrics.json``
    records it (runs from before a setting existed lack the key: they used none of it, and their
    ``max_new_tokens`` is unknown, so taken as it is)."""
    had = {**DECODING, "max_new_tokens": want["max_new_tokens"], **{k: metrics[k] for k in DECODING if k in metrics}}
    return [f"{k} {had[k]!r} -> {want[k]!r}" for k in DECODING if had[k] != want[k]]


def _evaluate(cfg, task, tok, test, out: Path, stage: str, s: dict, judge_tok, keep: dict | None = None,
              val: list | None = None) -> tuple[list[dict], dict]:
    """The stage's answers to the test items, scored (and rated by ``cfg.judge``, with its
    tokenizer ``judge_tok``, where one is given), or those already made, where the decoding and
    the weights that made them are still the stage's; its confidence, calibrated on the
    validation items ``val`` where the run held some out (:func:`_confident`)."""
    weights = _weights_name(out, stage)
    done = read_results(out / stage)
    if done is not None:
        changed = _changed_decoding(done[1], decoding(s, task))
        made_by = done[1].get("weights")  # None but for "dpo", whose weights _name_old_weights named
        if not changed and made_by == weights:
            _log(f"{stage}: reusing {out / stage / 'metrics.json'}")
            return _confident(cfg, task, tok, test, out, stage, s, done, keep=keep, val=val)
        kept = keep_earlier(out / stage)
        why = ([f"made with other decoding settings ({', '.join(changed)})"] * bool(changed)
               + [f"made by {made_by}, and the stage is now {weights}"] * (made_by != weights))
        _log(f"{stage}: evaluating again, its answers were {' and '.join(why)}; those are kept in {kept}")
    if weights == SFT_WEIGHTS and (sft := read_results(out / "sft")):
        return _confident(cfg, task, tok, test, out, stage, s, _same_as_sft(out, *sft), val=val)
    t0 = time.perf_counter()
    model = _load_stage_model(cfg, out, stage)
    if keep is not None:
        keep[stage] = model
    with quiet_past_context():  # (the items past the model's context were named as the run started: _checked)
        texts, ended = predict(model, tok, task, test, batch_size=s["eval_batch_size"], desc=f"{stage}: test set",
                               return_ended=True, **{k: s[k] for k in DECODING})
    long = past_context_records(tok, task, test, context_of(model), decoding(s, task)["max_new_tokens"])
    opened = reasoning_opened(tok, task, test)
    preds, metrics = score(task, test, texts, ended, s, opened=opened)
    if note := reasoning_note(metrics, "--set max_new_tokens=N"):
        _log(f"{stage}: {note}")
    metrics.update(placement(model) | prompt_settings(tok) | ({"weights": weights} if weights else {})
                   | ({"past_context": len(long)} if long else {}), eval_batch_size=s["eval_batch_size"])
    extra = {"ended": ended}
    if judge_tok is not None:  # loaded for each evaluation that rates answers, not held through training
        likert = judge_scores(_load_judge(cfg), judge_tok, test, [final_answer(t, opened)[0] for t in texts])
        extra["likert"] = likert
        got = [x for x in likert if x is not None]
        metrics["likert"] = sum(got) / len(got) if got else None
        metrics["judge_unparsed"] = likert.count(None) / max(len(likert), 1)
    metrics["eval_seconds"] = time.perf_counter() - t0
    write_results(out / stage, task, test, texts, preds, metrics, extra)
    _log(f"{stage}: {task.primary} = {metrics.get(task.primary, float('nan')):.3f} on {len(test)} test items")
    return _confident(cfg, task, tok, test, out, stage, s, read_results(out / stage), model, val=val)


def _confident(cfg, task, tok, test, out: Path, stage: str, s: dict, done: tuple[list[dict], dict], model=None,
               keep: dict | None = None, val: list | None = None) -> tuple[list[dict], dict]:
    """A stage's evaluation ``done`` with its confidence (:mod:`.stage_confidence`) where the run
    wants it and it lacks it, or has it scored as an earlier prefopt scored it, or lacks its
    calibration on the validation items ``val``. ``model``: the stage's, if loaded; else it loads
    (into ``keep``, if given). A calibrated stage's temperature is written to its folder's
    ``calibration.json``, for ``prefopt predict --calibration``."""
    from .stage_confidence import add_confidence, complete, wanted

    if not wanted(task, s):
        return done
    if not complete(done[1], val, done[0], out / stage):
        if model is None:
            model = _load_stage_model(cfg, out, stage, keep)
            if keep is not None:
                keep[stage] = model
        t0 = time.perf_counter()
        done = add_confidence(model, tok, task, test, out / stage, *done, batch_size=s["eval_batch_size"],
                              desc=f"{stage}: scoring labels", val=val)
        on_val = f" and the {len(val)} validation items" if val else ""
        _log(f"{stage}: scored every label of the {len(test)} test items{on_val} in {time.perf_counter() - t0:.1f} s")
    if "calibrated" in done[1]:
        _stage_calibration(cfg, task, tok, out, stage, done[1])
    return done


def _stage_calibration(cfg, task, tok, out: Path, stage: str, metrics: dict) -> None:
    """``out/stage/calibration.json``: the temperature fitted on the validation items, for the
    model and adapter the stage evaluates (its prompts rendered by ``tok``'s chat template), as
    ``eval --fit-temperature`` writes one."""
    from .calibration import FILE, calibration_record, template_sha256

    c = metrics["calibrated"]
    adapter = None if stage == "base" else str(out / stage_weights(out)[stage])
    write_json_atomic(out / stage / FILE, calibration_record(
        c, task, task_options=cfg.task_options, model=cfg.model, adapter=adapter, data=cfg.data,
        records=c["fitted_on"], uncalibrated=metrics["confidence"], quantized=metrics.get("quantized"),
        chat_vars=metrics.get("chat_vars"), template=template_sha256(tok),
        fitted_on="the run's validation items (split.json's val)", cross_fitted=None, calibrated_on_test=c["fields"]))


def _weights_name(out: Path, stage: str) -> str | None:
    """For the "dpo" stage: the adapter it evaluates (``dpo/train/best``, ``dpo/train/final`` or
    ``sft/train/final``), as its ``metrics.json`` records it under ``weights``; None for the others."""
    return stage_weights(out)["dpo"] if stage == "dpo" else None


def _name_old_weights(out: Path) -> None:
    """A "dpo" evaluation from before ``metrics.json`` named its weights: name them, as they are
    before ``dpo_max_p`` decides again (then they are the ones its answers were made by), so that
    a changed decision evaluates the stage again."""
    path = out / "dpo" / "metrics.json"
    if path.is_file() and "weights" not in (metrics := read_json(path)):
        write_json_atomic(path, {**metrics, "weights": _weights_name(out, "dpo")})


def _same_as_sft(out: Path, rows: list[dict], metrics: dict) -> tuple[list[dict], dict]:
    """The "dpo" stage where it is the SFT model (validation items chose step 0, or ``dpo_max_p``
    kept the SFT model): the SFT stage's answers (``rows``, ``metrics``), evaluated just before with
    the same decoding, copied rather than made again (``metrics.json`` says so: ``answers_of: "sft"``),
    and its validation items' probabilities where it kept them."""
    from .stage_confidence import VAL_PROBABILITIES

    metrics = {**metrics, "answers_of": "sft", "weights": SFT_WEIGHTS, "eval_seconds": 0.0}
    (out / "dpo").mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "dpo" / "predictions.jsonl", (out / "sft" / "predictions.jsonl").read_text(encoding="utf-8"))
    if (kept := out / "sft" / VAL_PROBABILITIES).is_file():
        write_text_atomic(out / "dpo" / VAL_PROBABILITIES, kept.read_text(encoding="utf-8"))
    write_json_atomic(out / "dpo" / "metrics.json", metrics)
    _log("dpo: the SFT+DPO stage is the SFT model; its answers are the SFT stage's")
    return rows, metrics


def _sft(cfg, task, train, out: Path, s: dict) -> None:
    from ..train.run import run_sft

    final = out / "sft" / "train" / "final"
    if (final / "adapter_model.safetensors").is_file():
        _log(f"sft: reusing {final}")
        return
    data = out / "data" / "sft_train.jsonl"
    data.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(data, jsonl_text({"prompt": task.messages(r), "completion": r.target} for r in train))
    with warnings.catch_warnings():  # its data's escapes were said as the run started, by record
        warnings.simplefilter("ignore", EscapedText)
        run_sft(_resumed(sft_config(cfg, s, data, out), "sft"))


def _pairs(cfg, task, tok, train, out: Path, s: dict, keep: dict | None = None, given: tuple | None = None) -> Path:
    from ..tasks import model_error_pairs, wrong_label_pairs

    if cfg.strategy == "ranked" and given is not None:  # given pairs less those on held-out items
        return given_pairs.write_kept(out, Path(cfg.pairs), *given)
    if cfg.strategy == "ranked":  # given pairs: DPO reads (and validates, with file:line errors) the file itself
        (out / "data").mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / "data" / "pairs_report.json", {"strategy": "ranked", "source": str(cfg.pairs)})
        return Path(cfg.pairs)
    path = out / "data" / "pairs.jsonl"
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    if cfg.strategy in ("wrong_label", "wrong_label_hardest"):
        pairs = wrong_label_pairs(task, train, seed=cfg.seed, hardest=cfg.strategy == "wrong_label_hardest")
        report = {"strategy": cfg.strategy}
    elif cfg.strategy == "model_errors":
        model = _load_stage_model(cfg, out, "sft", keep)
        pairs, report = model_error_pairs(
            task, train, lambda rs: predict(model, tok, task, rs, batch_size=s["eval_batch_size"],
                                            desc="sft: mining training prompts", **{k: s[k] for k in DECODING}),
            seed=cfg.seed, opened=reasoning_opened(tok, task, train))
        report["strategy"] = "model_errors"
        del model
    else:
        raise ValueError(f"unknown pair strategy {cfg.strategy!r}")
    report["pairs"] = len(pairs)
    write_json_atomic(out / "data" / "pairs_report.json", report)
    write_text_atomic(path, jsonl_text(pairs))
    return path


def _dpo(cfg, task, pairs: Path, val: list, out: Path, s: dict) -> None:
    from ..train.run import run_dpo

    final = out / "dpo" / "train" / "final"
    if (final / "adapter_model.safetensors").is_file():
        _log(f"dpo: reusing {final}")
        return
    chosen, evaluators = trainer_settings(task, val, pairs, s, out)
    config = _resumed(dpo_config(cfg, s, pairs, out, chosen), "dpo")
    # an interrupted attempt's (an overwrite clears only the run's own files); a resumed one keeps its validation
    # answers up to its checkpoint (a step evaluated again replaces its own)
    for stale in (CHOICE,) if config.resume else (VAL_ANSWERS, CHOICE):
        (out / "dpo" / "train" / stale).unlink(missing_ok=True)
    if val:
        _log(f"dpo: scoring greedy answers to {len(val)} validation items every {chosen['eval_every']} steps; "
             f"the weights with the best {task.primary} on them are the SFT+DPO model")
    with warnings.catch_warnings():  # (as _sft's)
        warnings.simplefilter("ignore", EscapedText)
        run_dpo(config, evaluators=evaluators)


def _past_context(model: str, task, tok, test: list, new_tokens: int) -> str | None:
    """Where some test items' prompts with ``new_tokens`` answer tokens run past ``model``'s
    context, the line that names them (:func:`~.runner.past_context_line`): said as the run
    starts, not by each stage's answering; the report counts them."""
    from ..model.config import ModelConfig
    from ..model.hub import resolve_model_dir

    context = context_of(ModelConfig.from_hf(resolve_model_dir(model)))
    return past_context_line(tok, task, test, context, new_tokens, what="test items")


def _refuse_tied_head(model: str) -> None:
    """``--set lora_targets=...,lm_head`` on a model whose head is its embedding: refused here, not
    at SFT after the base model's evaluation."""
    from ..lora import TIED_HEAD
    from ..model.config import ModelConfig
    from ..model.hub import resolve_model_dir

    if ModelConfig.from_hf(resolve_model_dir(model)).tie_word_embeddings:
        raise ValueError(f"{model}: {TIED_HEAD}")


@dataclass
class _Checked:
    """A compare run whose settings, data, split, tokenizers and folder were checked
    (:func:`_checked`); nothing is written yet."""
    cfg: CompareConfig  # with its --from origin and chat date and variables fixed
    task: Any
    s: dict  # its settings, the preset's with --set's and the task's needs
    splits: dict
    tok: Any
    judge_tok: Any
    source: dict | None  # the recorded settings of the run --from names, where its stages are still to be copied
    recorded: dict  # as compare_config.json holds the run
    chat_lines: list[str]
    given: tuple[list, list] | None  # ranked pairs where some were left out: (kept rows, (line, split, item) left)


def _checked(cfg: CompareConfig, say: Callable[[str], None]) -> _Checked:
    """Everything a run is refused for before it claims its folder: settings, data, the split's
    sizes, the tokenizers' chat templates, --from's run, a folder that holds a run made with
    other settings. ``say``: the notes on settings chosen for the task."""
    from ..tasks import get_task, mixed_labels
    from ..tasks.check import escape_lines, read_labelled
    from ..tokenizer import load_tokenizer

    s = cfg.settings()
    task = get_task(cfg.task, **cfg.task_options)
    task_length(cfg, task, s, say)
    records = read_labelled(task, cfg.data)  # bad data stops the run before its folder is claimed
    if mixed := mixed_labels(records):
        say(mixed)
    for line in escape_lines(task, records):  # said here by record, not by the stages' files' lines
        say(f"{cfg.data or task.name}: {line}")
    tested = _test_records(cfg, task, say)
    if tested is None:
        _fit_test_size(cfg, s, records, say)
    splits = _split(cfg, records, s, tested, say)
    if s["review_target"] is not None and (line := unreachable_line(s["review_target"], len(splits["val"]))):
        say(f"warning: {line}")
    given = None
    if cfg.strategy == "ranked":  # given pairs on held-out items are left out
        kept, left = given_pairs.held_out(Path(cfg.pairs), {"test": splits["test"], "validation": splits["val"]},
                                          cfg.pairs_encoding, cfg.pairs_sheet, cfg.pairs_columns,
                                          unpaired=cfg.loss in UNPAIRED)
        if left:
            say(given_pairs.left_out_line(Path(cfg.pairs), kept, left))
            given = (kept, left)
    tok = load_tokenizer(cfg.model)
    require_chat(tok, cfg.model)
    check_prompts(tok, task, records, cfg.data, targets=True)  # what its stages ask and train on
    if tested is not None:
        check_prompts(tok, task, tested, cfg.test_data)
    if "lm_head" in (s["lora_targets"] or ()):
        _refuse_tied_head(cfg.model)
    if s["lora_experts"]:
        from ..train.run import check_experts

        check_experts(cfg.model, True)
    judge_tok = load_tokenizer(cfg.judge) if cfg.judge else None
    if judge_tok is not None:  # it reads the answers as a chat too
        require_chat(judge_tok, cfg.judge)
    if s["max_new_tokens"] is None:
        s["max_new_tokens"], note = choose_max_new_tokens(task, tok, records + (tested or []),
                                                          "--set max_new_tokens=N")
        if note:
            say(note)
    if line := _past_context(cfg.model, task, tok, splits["test"], decoding(s, task)["max_new_tokens"]):
        say(f"warning: {line}")
    out = Path(cfg.output)
    cfg, source = _start_from(cfg, out, say)
    cfg, chat_lines = _pin_chat(cfg, out, tok, judge_tok, source)
    recorded = {**asdict(cfg), "settings": s}
    if source is not None:
        start_from.check_same_sft(cfg.start_from, source, recorded, _split_ids(splits))
    other_settings(out, recorded)
    return _Checked(cfg, task, s, splits, tok, judge_tok, source, recorded, chat_lines, given)


def check_compare(cfg: CompareConfig) -> None:
    """Raise what :func:`run_compare` would refuse ``cfg`` for before any work, and write nothing
    (``prefopt study`` checks every task's run so before the first one trains)."""
    _checked(cfg, say=lambda line: None)


def run_compare(cfg: CompareConfig) -> dict:
    """Run (or resume) the three stages and write the report; returns ``report.json``'s content."""
    from .report import build_report

    run = _checked(cfg, _log)
    cfg, task, s, splits, tok, judge_tok = run.cfg, run.task, run.s, run.splits, run.tok, run.judge_tok
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    if run.source is not None:
        _log(start_from.copy_stages(cfg.start_from, out, run.source, run.recorded))
    same_run(out, run.recorded)
    for line in run.chat_lines:  # once the folder is known to be this run's
        _log(line)
    torch.manual_seed(cfg.seed)
    _keep_split(splits, out)
    train, val, test = splits["train"], splits["val"], splits["test"]
    held = f" / {len(val)} validation" if val else ""
    _log(f"task {cfg.task}: {len(train)} train{held} / {len(test)} test items; preset {cfg.preset}; output {out}")

    def fitted(stage: str, training: bool, job):  # running out of memory is said (and warned of) in --set terms
        with going_on_by(RERUN):
            return reraised(job, lambda e: memory_advice(stage, training, s, e))

    def trained(stage: str, job):  # and so is a training that diverged, or one stopped (the same command resumes it)
        try:
            return fitted(stage, True, job)
        except Diverged as e:
            raise diverged_advice(stage, s, e) from e

    results = {"base": fitted("base", False, lambda: _evaluate(cfg, task, tok, test, out, "base", s, judge_tok,
                                                               val=val))}
    trained("sft", lambda: _sft(cfg, task, train, out, s))
    keep = {} if cfg.strategy == "model_errors" and not (out / "data" / "pairs.jsonl").is_file() else None
    results["sft"] = fitted("sft", False, lambda: _evaluate(cfg, task, tok, test, out, "sft", s, judge_tok, keep,
                                                            val))
    pairs = fitted("sft", False, lambda: _pairs(cfg, task, tok, train, out, s, keep, run.given))
    keep = None  # the SFT model, if its errors were mined, is released before DPO
    trained("dpo", lambda: _dpo(cfg, task, pairs, val, out, s))
    _name_old_weights(out)
    decided = require_gain(task, val, out, s, cfg.seed)
    if decided:
        _log(decided)
    results["dpo"] = fitted("dpo", False, lambda: _evaluate(cfg, task, tok, test, out, "dpo", s, judge_tok,
                                                            val=val))
    report = build_report(cfg, task, test, results, out, val, review_target=s["review_target"])
    _log(f"report: {out / 'report.md'}")
    return report
