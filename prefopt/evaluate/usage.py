"""The report's "The models" section: where a compare run's trained weights are, and the
commands that use them (evaluate new records as the run did, predict unlabelled ones, answer a
prompt, merge)."""
from __future__ import annotations

import inspect
import json
import shlex
from pathlib import Path

from ..lora import describe
from ..lora_files import read_adapter_config
from ..lora_stack import is_stacked
from ..tasks.base import WordMap, map_option
from .cli import REPEAT_FLAGS
from .confidence import scorable
from .runner import DECODING

WHAT = {"dpo/train/best": "one adapter holding the SFT update and the chosen DPO step's",
        "dpo/train/final": "one adapter holding the SFT update and the DPO one",
        "sft/train/final": "the SFT adapter: the SFT+DPO stage is the SFT model"}


def task_option_flags(cfg, task, metrics: dict) -> list[str]:
    """:func:`eval_flags`' ``--task-option`` flags alone: how a command that asks nothing (reviewed-pairs)
    reads the task's records as the run did."""
    flags = eval_flags(cfg, task, metrics)
    return [x for i in range(0, len(flags), 2) if flags[i] == "--task-option" for x in flags[i:i + 2]]


def eval_flags(cfg, task, metrics: dict) -> list[str]:
    """``prefopt eval``'s flags that ask a new file's records as the run asked its test items:
    the task's options, the labels where the task read them off the run's data (another file
    may hold fewer, and the prompt lists them), and the decoding the SFT+DPO stage's
    ``metrics.json`` records. The run's ``sheet`` is left out: it names a sheet of the run's
    workbook, and a new file (a CSV, a workbook of one sheet) may have none of that name; so is
    a ``label_map`` entry whose label none of the run's rows held."""
    options = {k: v for k, v in cfg.task_options.items() if k != "sheet"}
    if "labels" not in options and "labels" in inspect.signature(type(task)).parameters:
        labels = task.fields[0].labels
        options["labels"] = labels if any("," in x for x in labels) else ",".join(labels)
        if options.get("label_map"):  # a mapped label no row of the run held is not among these: eval would refuse it
            kept = WordMap({w: x for w, x in task.label_map.items() if x in labels}, task.label_map.spelt)
            options["label_map"] = map_option(kept)
            if not kept:
                del options["label_map"]
    flags = []
    for k, v in options.items():
        flags += ["--task-option", f"{k}={v if isinstance(v, str) and not _json(v) else json.dumps(v)}"]
    if metrics.get("max_new_tokens") not in (None, task.max_new_tokens):
        flags += ["--max-new-tokens", str(metrics["max_new_tokens"])]
    for k in REPEAT_FLAGS:
        if metrics.get(k, DECODING[k]) != DECODING[k]:
            flags += [f"--{k.replace('_', '-')}", str(metrics[k])]
    return flags


def prompt_flags(metrics: dict) -> list[str]:
    """``--chat-date`` and ``--chat-vars`` as a stage's ``metrics.json`` records them (the date where
    the chat template prints one, the variables where the run gave any): the prompts its answers
    came from."""
    from ..chat_template import chat_vars_entries

    flags = ["--chat-date", metrics["chat_date"]] if metrics.get("chat_date") else []
    return flags + (["--chat-vars", *chat_vars_entries(metrics["chat_vars"])] if metrics.get("chat_vars") else [])


def _json(text: str) -> bool:
    """Whether ``--task-option k=text`` would be read as JSON (``123``, ``true``), not as the text."""
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def adapters_line(model: str, out: Path, weights: dict[str, str], quantized: str | None) -> str:
    """What the run's adapters are (read off the SFT adapter: both stages train alike), and on what
    base: its name and the start of its weights' SHA-256 (:func:`~prefopt.model.digest.weights_sha256`;
    report.json's ``model_sha256`` holds all of it), where its files are on this machine."""
    from ..model.digest import weights_sha256

    try:
        what = describe(read_adapter_config(out / weights["sft"]))
    except (OSError, ValueError):
        what = "LoRA"
    digest = weights_sha256(model)
    base = ", ".join(([f"its {quantized} 4-bit base"] if quantized else [])
                     + ([f"weights SHA-256 {digest[:12]}"] if digest else []))
    return f"{what}, on `{model}`{f' ({base})' if base else ''}; each stage's adapter, with its tokenizer:"


def models_lines(cfg, task, out: Path, weights: dict[str, str], dpo_metrics: dict,
                 review: dict | None = None) -> list[str]:
    """Markdown: each trained stage's adapter (``weights``, relative to ``out``) and the commands.
    A run on a 4-bit base (``dpo_metrics["quantized"]``) is used as it was evaluated: the commands
    that answer load the base in 4 bits too (``--quantize``), and render the prompts as it did
    (``--chat-date``, ``--chat-vars``: :func:`prompt_flags`). ``review``: the SFT+DPO stage's
    review threshold chosen on the validation items (:mod:`.validated_review`), which predict's
    command then sends the records below to review by (``--review-below``), and the validation
    items' eval searches again (``--review-target``)."""
    folder = Path(cfg.output)
    q = shlex.quote
    model, adapter = q(str(cfg.model)), q(str(folder / weights["dpo"]))
    quantized = dpo_metrics.get("quantized")
    as_run = (["--quantize", q(quantized)] if quantized else []) + list(map(q, prompt_flags(dpo_metrics)))

    confidence = ["--confidence"] if scorable(task) is None else []  # does predict's confidence column mean much?
    fitted = confidence and (out / "dpo" / "calibration.json").is_file()  # (a run with validation items: its T)
    calibrated = ["--calibration", q(str(folder / "dpo"))] if fitted else []
    target = review["validation"]["target"] if review and calibrated else None
    threshold = review["validation"]["threshold"] if target is not None else None

    new_file = ("--data NEW_FILE", "--split all")  # another labelled file of the task, all of it
    run_val = (*(["--data", q(str(cfg.data))] if cfg.data else []), "--split-file", q(str(folder / "split.json")),
               "--split val")  # the run's own validation items

    def evaluate(weights_dir: str, output: str, *more: str, items: tuple[str, ...] = new_file) -> str:
        return " ".join(["prefopt eval --task", q(task.name), "--model", model, "--adapter", weights_dir, *as_run,
                         *map(q, eval_flags(cfg, task, dpo_metrics)), *items, "--output", q(str(folder / output)),
                         *confidence, *more])
    system = f" --system {q(task.system)}" if task.system else ""
    dpo = f"- SFT+DPO: `{weights['dpo']}` ({WHAT.get(weights['dpo'], 'its adapter')})"
    if weights["dpo"] != weights["sft"] and not is_stacked(out / weights["dpo"]):  # saved before adapters stacked
        dpo = (f"- SFT+DPO: `{weights['dpo']}`, a DPO adapter saved alone on top of the SFT one: make one adapter "
               f"of both first (`prefopt stack-adapters {q(str(folder / weights['sft']))} {adapter} OUT`) and use OUT "
               "below")
    return ["## The models", "",
            adapters_line(cfg.model, out, weights, quantized), "",
            f"- SFT: `{weights['sft']}`", dpo, "",
            "To use the SFT+DPO stage's:", "",
            "```bash",
            "# score it on another labelled file of this task (NEW_FILE in the run's data format), asked as the run "
            "asked its test items" + ("; --confidence: how well its confidence in an answer tells right from wrong"
                                      if confidence else ""),
            evaluate(adapter, "new-eval"),
            *(["# the SFT adapter on the same file, tested against it item by item (paired; into paired.json)",
               evaluate(q(str(folder / weights["sft"])), "new-eval-sft", "--against", q(str(folder / "new-eval")))]
              if weights["dpo"] != weights["sft"] else []),
            *(["# on the validation items, calibrated: how many records it would answer alone at each confidence, "
               "and how often rightly (read a threshold P off it for predict --review-below P)"
               + (f"; --review-target {target:g}: the threshold down to which those were right at least {target:g} of "
                  "the time" if target is not None else ""),
               evaluate(adapter, "review-val", *calibrated, *(["--review-target", f"{target:g}"] if target is not None
                                                              else []), items=run_val)] if calibrated else []),
            "# answer new records that have no labels yet (NEW_RECORDS: the same format, label columns not needed): "
            "predictions/predictions.csv (or .tsv, .jsonl, as the input) is their table with a prediction column"
            + (" per field, its confidence and the likeliest label" if confidence else "")
            + ("; --calibration: the confidence calibrated by the temperature fitted on the validation items"
               if calibrated else "")
            + (f"; --review-below {threshold:g}: the threshold chosen there for answers right at least {target:g} "
               "of the time (Review threshold, above), the records below it marked for a person"
               if threshold is not None else ""),
            " ".join(["prefopt predict --task", q(task.name), "--model", model, "--adapter", adapter, *as_run,
                      *map(q, eval_flags(cfg, task, dpo_metrics)), "--data NEW_RECORDS --output",
                      q(str(folder / "predictions")), *calibrated,
                      *(["--review-below", f"{threshold:g}"] if threshold is not None else [])]),
            "# answer a prompt of your own (the models learnt the task's prompts: data/sft_train.jsonl holds them)",
            " ".join(["prefopt generate --model", model, "--adapter", adapter, *as_run]) + f"{system} --greedy "
            "--prompt \"...\"",
            "# fold it into the base weights: a plain HF folder, for serving elsewhere"
            + (f" (in full precision: the adapter learnt the {quantized} base's corrections too, so this model "
               "answers otherwise than the one evaluated here; check it with prefopt eval on the merged folder)"
               if quantized else ""),
            f"prefopt merge --model {model} --adapter {adapter} --output {q(str(folder / 'merged'))}",
            "# one GGUF file, the adapter merged in, for llama.cpp or Ollama (q8_0: about a quarter of f32's size)",
            f"prefopt export-gguf --model {model} --adapter {adapter} --output {q(str(folder / 'sft-dpo.gguf'))} "
            "--type q8_0",
            "# once a person has checked predict's records (REVIEWED: its table with the right labels added in "
            "the task's label columns, for the rows checked): DPO pairs of the model's mistakes, the person's answer "
            "chosen, for the next round of training (prefopt dpo --sft-adapter ... --data "
            f"{q(str(folder / 'reviewed' / 'pairs.jsonl'))})",
            " ".join(["prefopt reviewed-pairs --task", q(task.name), *map(q, task_option_flags(cfg, task, dpo_metrics)),
                      "--data REVIEWED --output", q(str(folder / "reviewed"))]),
            "```"]
