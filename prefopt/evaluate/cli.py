"""``prefopt eval``, what it shares with ``prefopt predict`` (the chat date, the calibration,
the review threshold), the flags the task commands share, and the registration of every
evaluation command (``predict``: ``predict_cli``, ``eval-pairs``: ``pairs_cli``, ``eval-nll``:
``nll_cli``, ``compare`` and ``study``: ``compare_cli``; by ``prefopt.cli``)."""
from __future__ import annotations

import argparse
import json


def key_values(pairs: list[str] | None) -> dict:
    """``["levels=ktas", "disposition=true"]`` → ``{"levels": "ktas", "disposition": True}``."""
    out = {}
    for item in pairs or []:
        if "=" not in item:
            raise ValueError(f"expected key=value, got {item!r}")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip()] = v
    return out


def _sheet_tasks() -> list[str]:
    """The tasks that read a spreadsheet of the user's own (their option ``sheet``)."""
    from ..tasks import TASKS, task_options

    return sorted(name for name in TASKS if "sheet" in task_options(name))


def task_options_of(args) -> dict:
    """The task's options: ``--task-option KEY=VALUE`` and ``--sheet NAME`` (the task option
    ``sheet``, for the tasks that read a spreadsheet of the user's own)."""
    options = key_values(args.task_option)
    sheet = getattr(args, "task_sheet", None)
    if sheet is None:
        return options
    if args.task not in _sheet_tasks():
        raise ValueError(f"--sheet: task {args.task!r} reads its own data format, not a workbook's sheet (the "
                         f"tasks that read a spreadsheet of your own: {', '.join(_sheet_tasks())})")
    if options.get("sheet", sheet) != sheet:
        raise ValueError(f"--sheet {sheet!r} and --task-option sheet={options['sheet']!r} name different sheets: "
                         "give one")
    return options | {"sheet": sheet}


def add_task_sheet_flag(p: argparse.ArgumentParser) -> None:
    """``--sheet``, for a task's data: its option ``sheet`` (not :func:`prefopt.cli.add_data_file_flags`'s
    sheet of every workbook the command reads: compare's ``--pairs`` is a file of its own)."""
    p.add_argument("--sheet", dest="task_sheet", metavar="NAME", help="the sheet of an Excel workbook in --data to "
                   f"read (else its one sheet in view that holds data); the same as --task-option sheet=NAME "
                   f"({', '.join(_sheet_tasks())})")


def pin_chat(tok, args, command: str) -> None:
    """``tok`` given ``--chat-date`` (default: today, pinned for the whole run, as ``metrics.json``
    records it) and ``--chat-vars``; says so where they show, and where a thinking switch is left
    unset (:func:`~.runner.thinking_note`)."""
    from datetime import date

    from ..chat_template import parse_chat_date
    from ..cli import apply_chat_vars
    from .runner import thinking_note

    tok.chat_date = parse_chat_date(args.chat_date, "--chat-date") if args.chat_date else date.today()
    said, adapter_note = apply_chat_vars(tok, args, "prompt")
    for line in filter(None, [said, adapter_note or thinking_note(tok)]):
        print(f"prefopt {command}: {line}", flush=True)


def _eval(args) -> int:
    from ..cli import chat_vars_arg
    from ..devices import resolve
    from ..pretrained import load_model
    from ..tasks import get_task, sample_records, split_records
    from ..tasks.check import read_labelled
    from ..tokenizer import load_tokenizer
    from .calibration import calibration_fit, template_sha256, write_calibration
    from .confidence import SCORING, answer_logprobs, confidence_possible, marginals, scored_answers
    from .review import review_table
    from .runner import (
        DECODING,
        check_prompts,
        choose_max_new_tokens,
        decoding,
        past_context_said,
        placement,
        predict,
        prompt_settings,
        reasoning_note,
        reasoning_opened,
        require_chat,
        score,
    )
    from .target_search import review_target

    task = get_task(args.task, **task_options_of(args))
    device, dtype = resolve(args.device, args.dtype)  # a device this machine lacks stops here, before any work
    records = read_labelled(task, args.data)
    if args.split_file:
        records = _from_split_file(records, args.split_file, args.data, "val" if args.split == "val" else "test")
    elif args.split == "val":
        raise ValueError("--split val: a compare run's validation items, named in its split.json: give --split-file")
    elif args.split == "test":
        records = split_records(records, test=args.test, seed=args.seed, group_by=args.group_by)["test"]
    if args.limit:
        records = sample_records(records, args.limit, seed=args.seed)
    against = _against_rows(args.against, records) if args.against else None  # before any model loads
    if args.answers:
        return _rescore(task, records, against, args)
    if not args.model:
        raise ValueError("--model is needed (or --answers DIR: score an earlier evaluation's answers)")
    tok = load_tokenizer(args.model)
    temperature = temperature_of(args, task, tok)  # (a file fitted for another model: said before any model loads)
    check_review(args, task)
    require_chat(tok, args.model)
    check_prompts(tok, task, records, args.data)  # before the model loads
    pin_chat(tok, args, "eval")
    max_new = args.max_new_tokens
    if max_new is None:
        max_new, note = choose_max_new_tokens(task, tok, records, "--max-new-tokens N")
        if note:
            print(f"prefopt eval: {note}", flush=True)
    if args.estimate_memory:
        return print_estimate(args, tok, task, records, max_new or task.max_new_tokens)
    model = load_model(args.model, dtype=dtype, device=device, adapter=args.adapter, merge=args.adapter is not None,
                       quantize=args.quantize)
    settings = {k: getattr(args, k) for k in DECODING} | {"max_new_tokens": max_new}
    with past_context_said("eval", model, tok, task, records, decoding(settings, task)["max_new_tokens"]) as long:
        texts, ended = predict(model, tok, task, records, batch_size=args.batch_size, return_ended=True, **settings)
    preds, metrics = score(task, records, texts, ended, settings, opened=reasoning_opened(tok, task, records))
    if note := reasoning_note(metrics, "--max-new-tokens N"):
        print(f"prefopt eval: {note}", flush=True)
    metrics.update(placement(model) | prompt_settings(tok) | ({"past_context": len(long)} if long else {}))
    extra = {"ended": ended}
    scored = answer_logprobs(model, tok, task, records, batch_size=args.batch_size) \
        if args.confidence and confidence_possible(task, "eval") else None
    if scored is not None:
        probabilities = [marginals(task, s, temperature) for s in scored]
        metrics["confidence"], per_row = scored_answers(task, records, preds, probabilities)
        metrics["review"] = review_table(task, records, preds, per_row["confidence"], args.review_below)
        if args.review_target is not None:
            metrics["review"]["target"] = review_target(task, records, preds, per_row["confidence"], args.review_target)
        metrics["confidence_scoring"] = SCORING
        metrics |= {"temperature": temperature, "calibration": args.calibration} if args.calibration else {}
        extra.update(per_row)
    code = _write_and_test(task, records, texts, preds, metrics, extra, against, args, str(args.output))
    if scored is not None and args.fit_temperature:  # (the evaluation written first: a failed fit loses nothing)
        write_calibration(args.output, calibration_fit(task, records, preds, scored, metrics["confidence"],
                                                       model=args.model, adapter=args.adapter,
                                                       task_options=task_options_of(args), data=args.data,
                                                       quantized=args.quantize, chat_vars=chat_vars_arg(args),
                                                       template=template_sha256(tok)))
    return code


def temperature_of(args, task, tok) -> float:
    """``--calibration``'s temperature (1 without it), checked against this evaluation's or
    prediction's task, model and adapter, how the model is loaded (``--quantize``), the chat
    template (``tok``'s) and its variables and the task's labels before any model loads;
    ``--fit-temperature`` (eval's) and ``--calibration`` need the labels scored
    (``--confidence``, a task whose answers are labels)."""
    from ..cli import chat_vars_arg
    from ..tasks import prompt_options
    from .calibration import labels_of, read_calibration, template_sha256
    from .confidence import scorable

    fit = getattr(args, "fit_temperature", None)  # (eval's; predict scores its confidence unless told not to)
    flag = "--fit-temperature" if fit else "--calibration" if args.calibration else None
    if flag is None:
        return 1.0
    if fit and args.calibration:
        raise ValueError("--fit-temperature fits a temperature to the model's own probabilities, --calibration divides "
                         "by one fitted before: give one")
    if not args.confidence:
        raise ValueError(f"{flag} scales the label probabilities --confidence scores: add --confidence"
                         if fit is not None else
                         "--calibration scales the confidence columns, which --no-confidence leaves out: give one")
    if why := scorable(task):
        raise ValueError(f"{flag}: {why}")
    if args.calibration:
        return read_calibration(args.calibration, task=task.name, model=args.model, adapter=args.adapter,
                                quantized=args.quantize, chat_vars=chat_vars_arg(args),
                                labels=labels_of(task), prompts=prompt_options(task.name, task_options_of(args)),
                                template=template_sha256(tok))
    return 1.0


def check_review(args, task, scores: bool = True) -> None:
    """``--review-below`` (and eval's ``--review-target``): a probability (``--review-below``'s
    one per field, where given so: :func:`~.review.resolve_below`, put back in ``args``), read off
    the labels' confidence, which the task must have and, where it ``scores`` them, the command
    score (predict: before any record is read; eval: before the model loads; ``eval --answers``
    reads an earlier evaluation's instead)."""
    from .confidence import scorable
    from .review import check_threshold, resolve_below

    if args.review_below is not None:  # (one threshold per field where given so: each named field the task's)
        args.review_below = resolve_below(task, args.review_below)
    for flag, value in (("--review-below", args.review_below),
                        ("--review-target", getattr(args, "review_target", None))):
        if value is None:
            continue
        if flag == "--review-target":
            check_threshold(value, flag)
        if scores and not args.confidence:
            raise ValueError(f"{flag} reads the confidence --confidence scores: add --confidence"
                             if hasattr(args, "fit_temperature") else  # (eval's; predict scores it unless told not to)
                             f"{flag} reads the confidence columns, which --no-confidence leaves out: give one")
        if why := scorable(task):
            raise ValueError(f"{flag}: {why}")


def print_estimate(args, tok, task, records, new_tokens: int) -> int:
    """``--estimate-memory``: print what answering ``records`` will hold, and end the command."""
    from .answer_memory import answer_estimate_lines

    prompts = [tok.apply_chat_template(task.messages(r), add_generation_prompt=True) for r in records]
    print("\n".join(answer_estimate_lines(args, prompts, new_tokens)))
    return 0


def _rescore(task, records: list, against: list[dict] | None, args) -> int:
    """``eval --answers DIR``: the answers an earlier evaluation in DIR gave to ``records``, scored
    again by the task (no model loads), written to ``--output`` as an evaluation (each row's other
    fields, such as its confidence, kept) and tested ``--against`` another: two finished runs
    compared item by item without answering again; with ``--review-below`` or ``--review-target``,
    their table of records answered alone read off the confidence the answers hold."""
    from pathlib import Path

    from .runner import DECODING, ROW_KEYS, read_results, score

    moot = [f"--{k.replace('_', '-')}" for k in ("model", "adapter", "quantize", "confidence", "max_new_tokens",
                                                  "repetition_penalty", "no_repeat_ngram_size", "repeat_scope",
                                                  "estimate_memory", "fit_temperature", "calibration")
            if getattr(args, k, None)]
    if moot:
        raise ValueError(f"--answers {args.answers} scores the answers there, so {', '.join(moot)} would do nothing; "
                         "leave them out")
    if Path(args.output).resolve() == Path(args.answers).resolve():
        raise ValueError(f"--output {args.output} is the --answers folder: write the rescored evaluation elsewhere")
    rows = _against_rows(args.answers, records, flag="--answers")
    earlier = read_results(args.answers)[1]
    texts = [row["output"] for row in rows]
    preds, metrics = score(task, records, texts, opened=earlier.get("reasoning_opened", False))
    ended = [row.get("ended", True) for row in rows]
    metrics["unfinished"] = 1 - sum(ended) / max(len(ended), 1)
    kept = (*DECODING, "device", "dtype", "quantized", "chat_date", "chat_vars", "confidence_scoring", "temperature",
            "calibration")  # (the last three: what the kept confidences are)
    metrics |= {k: earlier[k] for k in kept if k in earlier} | {"answers_from": str(args.answers)}
    if args.review_below is not None or args.review_target is not None:
        metrics["review"] = _review_of_answers(task, records, preds, rows, args)
    metrics["evaluated"] = {k: v for k, v in earlier.get("evaluated", {}).items()
                            if k in ("model", "model_sha256", "adapter", "adapter_sha256")}
    extra = {k: [row.get(k) for row in rows] for k in dict.fromkeys(k for row in rows for k in row) if k not in ROW_KEYS}
    print(f"prefopt eval: {args.answers}'s answers to {len(records)} items, scored again", flush=True)
    return _write_and_test(task, records, texts, preds, metrics, extra, against, args, str(args.answers))


def _review_of_answers(task, records: list, preds: list[dict], rows: list[dict], args) -> dict:
    """``eval --answers DIR --review-below P`` (``--review-target A``): the table of records
    answered alone (:func:`~.review.review_table`) at the confidence DIR's answers hold, as that
    evaluation scored them (calibrated where it was; a compare stage's calibrated column where its
    rows hold one: :func:`~.review.confidence_key`), so thresholds are tried on a finished
    evaluation without answering again; refused where DIR's answers hold no confidence, or where
    the task now reads an answer otherwise than when its confidence was scored."""
    from .review import confidence_key, review_table
    from .target_search import review_target

    check_review(args, task, scores=False)
    flag = "--review-below" if args.review_below is not None else "--review-target"
    key = confidence_key(rows)
    if key is None:
        raise ValueError(f"{flag} reads the confidence of the answers in {args.answers}, which hold none (scored "
                         "without --confidence, or otherwise by an earlier prefopt): evaluate again with --confidence")
    changed = sum(row.get("prediction") != pred for row, pred in zip(rows, preds))
    if changed:
        raise ValueError(f"{flag}: {changed} of {args.answers}'s answers are read otherwise than when their "
                         "confidence was scored (an older prefopt's): evaluate again with --confidence")
    sure = [row[key] for row in rows]
    if key == "confidence_calibrated":
        print(f"prefopt eval: {args.answers}'s answers read at their calibrated confidence (confidence_calibrated: "
              "the temperature their run fitted on its validation items, as predict --calibration gives it)",
              flush=True)
    table = {"confidence": key, **review_table(task, records, preds, sure, args.review_below)}
    if args.review_target is not None:
        table["target"] = review_target(task, records, preds, sure, args.review_target)
    return table


def _write_and_test(task, records, texts, preds, metrics, extra, against, args, name: str) -> int:
    """An evaluation written to ``--output`` (an earlier one there moved aside), its metrics
    printed, and with ``--against`` the paired test, this one called ``name``."""
    from pathlib import Path

    from .confidence import confidence_line
    from .review import review_lines
    from .runner import keep_earlier, write_results
    from .target_search import target_line

    metrics["evaluated"] = _evaluated(args) | metrics.get("evaluated", {})
    moved = keep_earlier(args.output, ("predictions.jsonl", "metrics.json", "paired.json", "calibration.json"))
    if moved:
        print(f"prefopt eval: {args.output} held an evaluation; it is kept in {moved}", flush=True)
    write_results(args.output, task, records, texts, preds, metrics, extra)
    print(json.dumps({k: v for k, v in metrics.items() if not isinstance(v, dict)}, indent=2))
    for field, c in metrics.get("confidence", {}).items():
        print(f"prefopt eval: confidence in {field}: {confidence_line(c)}")
    for line in review_lines(metrics["review"]) if "review" in metrics else []:
        print(f"prefopt eval: {line}")
    if "target" in metrics.get("review", {}):
        print(f"prefopt eval: {target_line(metrics['review']['target'])}")
    print(f"prefopt eval: wrote {Path(args.output) / 'predictions.jsonl'} and metrics.json")
    if against is not None:
        _test_against(task, records, against, args, name)
    return 0


def _evaluated(args) -> dict:
    """What an evaluation evaluated, as its command said it (metrics.json's ``evaluated``): the
    task and its options, the data and which of its items, the model and adapter (a folder given
    as its full path; an alias or hub id as given) and the digests of their weights (None where
    their files are not on this machine, and for no adapter)."""
    from .calibration import where
    from .runner import weights_digests

    items = {"split_file": where(args.split_file), **({"split": "val"} if args.split == "val" else {})} \
        if args.split_file else \
        {"split": args.split} | ({"test": args.test} if args.split == "test" else {}) \
        | ({"group_by": args.group_by} if args.split == "test" and args.group_by else {})
    return {"task": args.task, "task_options": task_options_of(args), "data": where(args.data) or "the task's bundled "
            "data", **items, "limit": args.limit, "seed": args.seed, "model": where(args.model),
            "adapter": where(args.adapter), **weights_digests(args.model, args.adapter)}


def _against_rows(folder: str, records: list, flag: str = "--against") -> list[dict]:
    """The answers an earlier evaluation in ``folder`` gave to ``records``, in their order; an
    error where it lacks one of them or holds another reference for it (other data). Answers
    whose confidence was scored otherwise (an earlier prefopt) come without it: their AUROC is
    not compared with this one's."""
    from .runner import read_results
    from .stage_confidence import scored

    done = read_results(folder)
    if done is None:
        raise ValueError(f"{flag} {folder}: no evaluation there (predictions.jsonl and metrics.json)")
    by_id = {row["id"]: row for row in done[0]}
    missing = [r.id for r in records if r.id not in by_id]
    if missing:
        raise ValueError(f"{flag} {folder}: {len(missing)} of the {len(records)} items are not in that evaluation "
                         f"(first: {missing[0]!r}); evaluate the same --data with the same --split, --limit and --seed")
    other = next((r.id for r in records if by_id[r.id]["target"] != r.target), None)
    if other is not None:
        raise ValueError(f"{flag} {folder}: item {other!r} has another reference there: it evaluated other data")
    rows = [by_id[r.id] for r in records]
    if any("confidence" in row for row in rows) and not scored(done[1]):
        print(f"prefopt eval: {folder}'s confidence was scored by an earlier prefopt, otherwise than now; its AUROC "
              "and Brier score are not compared (evaluate it again with --confidence to compare)", flush=True)
        rows = [{k: v for k, v in row.items() if k not in ("confidence", "brier")} for row in rows]
    return rows


def _test_against(task, records: list, against: list[dict], args, name: str) -> None:
    """This evaluation against ``--against``'s, paired on the same items: printed, and written
    to ``paired.json`` beside the predictions. ``name``: what to call this one (its folder, or
    the folder its answers came from)."""
    from pathlib import Path

    from ..fileio import write_json_atomic
    from .report import compare_pair, item_test_line, verdict
    from .runner import read_results

    rows = read_results(args.output)[0]
    c = compare_pair(task, records, against, rows, n_resamples=args.n_resamples, seed=args.seed)
    c["verdict"] = verdict(str(args.against), name, task.primary, c["primary"])
    write_json_atomic(Path(args.output) / "paired.json", {"against": str(args.against), "n": len(records), **c})
    print(f"prefopt eval: {c['verdict'].replace('**', '')}")
    print(f"prefopt eval: {item_test_line(task, {f'{name} vs {args.against}': c})}")


def _from_split_file(records: list, path: str, data: str | None, part: str = "test") -> list:
    """The records named in the ``part`` list (``"test"`` or ``"val"``) of a compare run's
    ``split.json``, in its order. A run given ``--test-data`` took its test items from that file,
    whose ids another file may hold too: the records must be read from it (``data``); its
    validation items, from its ``--data``."""
    from pathlib import Path

    from ..fileio import read_json
    from .compare_config import same_path

    ids = read_json(path).get(part)
    if not isinstance(ids, list):
        raise ValueError(f"{path}: not a compare split.json (no \"{part}\" list of record ids)")
    if not ids:  # (a test list is never empty)
        raise ValueError(f"{path}: its run held no validation items out (compare --set val=N holds N out of "
                         "training, to choose DPO's weights by and to fit a temperature on)")
    config = Path(path).with_name("compare_config.json")
    recorded = read_json(config) if config.is_file() else {}
    tested = recorded.get("test_data") if part == "test" else None
    if tested and not same_path(tested, data):
        raise ValueError(f"{path}: its run tested on --test-data {tested}, not on {data or 'the bundled data'}: "
                         f"pass --data {tested}")
    if part == "val" and recorded.get("test_data") and same_path(recorded["test_data"], data):
        source = recorded.get("data")
        raise ValueError(f"{path}: its validation items are from its --data, {source or 'the bundled data'}, not from "
                         f"its --test-data {data}: " + (f"pass --data {source}" if source else "leave --data out"))
    by_id = {r.id: r for r in records}
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise ValueError(f"{path}: {len(missing)} of {len(ids)} {part} ids are not in the data (first: "
                         f"{missing[0]!r}); pass the --data the compare run used")
    return [by_id[i] for i in ids]


def add_estimate_flag(p: argparse.ArgumentParser, help_: str) -> None:
    """``--estimate-memory [DEVICE]`` (``auto`` alone; ``cpu`` or ``cuda``), the memory estimate's flag
    (sft, dpo, compare, study, eval, predict, make-pairs); ``help_`` says what it estimates."""
    p.add_argument("--estimate-memory", nargs="?", const="auto", choices=("auto", "cpu", "cuda"), metavar="DEVICE",
                   help=help_)


def add_answer_estimate_flag(p: argparse.ArgumentParser) -> None:
    """``--estimate-memory [auto|cpu|cuda]`` for a command that answers records (eval, predict, make-pairs)."""
    add_estimate_flag(p, "print how much memory answering the records will hold, on cpu or cuda (default: --device), "
                      "from the model's config.json and the records' prompts (no weights load), and exit writing "
                      "nothing")


def add_device_flags(p: argparse.ArgumentParser, dtype_flag: str = "--dtype", of: str = "parameter dtype",
                     note: str = "", *, quantize: bool = False) -> None:
    """``--device`` and a dtype flag (generate, eval, compare), both "auto" by default; the dtype's
    help is ``of``, what auto means, then ``note``. ``quantize``: ``--quantize`` too (one model's
    commands; compare and study take ``--set quantize=nf4``)."""
    from ..devices import DTYPES
    from ..quant import QUANT_KINDS

    p.add_argument("--device", default="auto",
                   help="auto (a CUDA GPU if one is visible, else the CPU), cpu, cuda, cuda:N or mps")
    p.add_argument(dtype_flag, choices=["auto", *DTYPES], default="auto",
                   help=f"{of}; auto: bfloat16 on a CUDA GPU (float16 where it lacks bfloat16), float32 elsewhere{note}")
    if quantize:
        p.add_argument("--quantize", choices=QUANT_KINDS, help="the projections in 4 bits (nf4; nf4-dq: the block "
                       "scales in 8 bits too), the adapter on top, as sft/dpo --quantize train it: about a quarter of "
                       "bf16's memory for them")


REPEAT_FLAGS = ("repetition_penalty", "no_repeat_ngram_size", "repeat_scope")  # add_repeat_flags' options


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1 (``--batch-size 0`` failed deep inside)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def share_or_count(text: str) -> float:
    """``--test``: a fraction in (0, 1) or a whole count of at least 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (0 < value < 1 or (value >= 1 and value.is_integer())):
        raise argparse.ArgumentTypeError(f"a fraction between 0 and 1 or a whole count, got {text}")
    return value


def add_repeat_flags(p: argparse.ArgumentParser) -> None:
    """``--repetition-penalty``, ``--no-repeat-ngram-size`` and ``--repeat-scope`` (generate and eval);
    each defaults to None: none."""
    from ..model.repeats import SCOPES

    p.add_argument("--repetition-penalty", type=float,
                   help="above 1 breaks the loops a small model falls into when decoding greedily (1.1-1.3; "
                   "default: none)")
    p.add_argument("--no-repeat-ngram-size", type=int, metavar="N",
                   help="ban any token that would repeat an N-gram (3-4 stops loops; default: none)")
    p.add_argument("--repeat-scope", choices=SCOPES,
                   help="what both count as repeated: all (prompt and output, as transformers; default) or "
                   "output (the answer only: copying from the prompt stays free, as a summary needs)")


def task_options_epilog() -> str:
    """Each task's options (``--task-option KEY=VALUE``) with their defaults, for ``--help``."""
    from ..tasks import TASKS, task_options

    lines = ["task options (--task-option KEY=VALUE; a list as a,b,c), with their defaults:"]
    for name in sorted(TASKS):
        opts = task_options(name)
        lines.append(f"  {name}: " + (", ".join(f"{k}={v!r}" for k, v in opts.items()) or "none"))
    return "\n".join(lines)


def add_commands(sub) -> None:
    from ..cli import add_chat_flags
    from ..tasks import TASKS
    from .review import below_arg

    shown = dict(epilog=task_options_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--task", required=True, choices=sorted(TASKS))
    common.add_argument("--model", help="model folder, alias (smollm2-135m), hub id or .gguf file (needed but by "
                        "eval --answers)")
    common.add_argument("--data", help="data file or folder (default: the task's bundled data, if any)")
    common.add_argument("--output", required=True, help="output folder")
    common.add_argument("--task-option", action="append", metavar="KEY=VALUE",
                        help="task constructor option, e.g. levels=ktas (repeatable)")
    add_task_sheet_flag(common)
    common.add_argument("--seed", type=int, default=0,
                        help="seed of the test split, of eval's --limit sample and of compare's training")
    add_chat_flags(common, "prompt", "the date a chat template that prints today's date (Llama 3.1+) shows in "
                   "every prompt (default: the day the run starts; a resumed compare run keeps its own, and its "
                   "--chat-vars)")

    e = sub.add_parser("eval", parents=[common], help="evaluate a model (+ adapter) on a task, or score "
                       "an earlier evaluation's answers (--answers); writes predictions.jsonl and metrics.json, and "
                       "with --against tests it against another, item by item", **shown)
    e.add_argument("--adapter", help="PEFT-layout LoRA adapter folder")
    e.add_argument("--split", choices=["test", "val", "all"], default="test",
                   help="the seeded test split (as compare makes it) or every record; with --split-file, val: its "
                   "run's validation items (compare --set val=N), to fit a temperature on")
    e.add_argument("--test", type=share_or_count, default=0.2, help="test fraction (<1) or count")
    e.add_argument("--group-by", metavar="COLUMN", help="as compare's --set group_by: records with the same value "
                   "in this column (a patient's id) go to one split, the test count being of groups")
    e.add_argument("--split-file", help="a compare run's split.json: evaluate exactly its test items (a compare "
                   "adapter was trained on that run's train items, which another split may include)")
    e.add_argument("--limit", type=positive_int, help="at most this many records: a seeded sample that keeps the class mix")
    e.add_argument("--batch-size", type=positive_int, default=16)
    e.add_argument("--max-new-tokens", type=positive_int, help="generation cap (default: the task's, raised for free-text "
                   "tasks whose reference answers are longer)")
    e.add_argument("--against", metavar="DIR", help="an earlier evaluation of the same items (another model or "
                   "adapter, e.g. the SFT one's): test this one against it, paired (the task's metric by bootstrap, "
                   "McNemar or Wilcoxon per item); printed and written to paired.json")
    e.add_argument("--answers", metavar="DIR", help="score the answers an earlier evaluation in DIR gave (a compare "
                   "stage's folder) instead of a model's: no model loads; with --against, two finished runs compared "
                   "item by item without answering again; with --review-below or --review-target, their records "
                   "answered alone at the confidence DIR's answers hold (an eval --confidence's)")
    e.add_argument("--n-resamples", type=positive_int, default=2000, help="paired bootstrap resamples (with --against)")
    e.add_argument("--confidence", action="store_true", help="also score every possible answer: each predicted "
                   "label's probability and the likeliest label (predictions.jsonl), and how well they do "
                   "(metrics.json: AUROC, accuracy of the more confident half, of the likeliest labels); about as "
                   "long again")
    e.add_argument("--fit-temperature", action="store_true", help="with --confidence: fit the temperature that "
                   "calibrates the label probabilities on these records (held out of training: a run's validation "
                   "items, a later month) and write calibration.json, with its effect cross-fitted (each half scaled "
                   "by the other's fit); predict and eval --calibration divide by it")
    e.add_argument("--review-below", type=below_arg, metavar="P", help="with --confidence (or --answers of an eval "
                   "with it): P among the thresholds "
                   "of the table of records the model would answer alone (predict --review-below P's, on labelled "
                   "records); or one per field, as predict takes it (urgency=0.9,staff=0.7), a row of its own")
    e.add_argument("--review-target", type=float, metavar="A", help="with --confidence (or --answers, as "
                   "--review-below): the threshold down to "
                   "which the records the model would answer alone were all right at a share whose exact 95%% CI "
                   "starts at A or above (0.95), thresholds tried downward from the one that keeps a quarter of the "
                   "records until one falls short; read it off validation items and check it on the test items with "
                   "--review-below")
    e.add_argument("--calibration", metavar="FILE", help="with --confidence: an eval --fit-temperature's "
                   "calibration.json, or a compare stage's (a run with --set val=N), or its folder, fitted with this "
                   "model and adapter: the label probabilities scaled by its temperature")
    add_repeat_flags(e)
    add_device_flags(e, quantize=True)
    add_answer_estimate_flag(e)
    e.set_defaults(func=_eval)

    from .predict_cli import add_command as add_predict

    add_predict(sub, shown)  # (after eval: --help lists them in the order added)
    from .reviewed_pairs_cli import add_command as add_reviewed_pairs

    add_reviewed_pairs(sub, shown)

    from .compare_cli import add_commands as add_compare_commands
    from .nll_cli import add_command as add_eval_nll
    from .pairs_cli import add_command as add_eval_pairs
    from .pool_seeds import add_command as add_pool_seeds
    from .rating_cli import add_commands as add_rating_commands

    add_eval_pairs(sub)
    add_eval_nll(sub)
    add_compare_commands(sub, common, shown)
    add_pool_seeds(sub)
    add_rating_commands(sub)
