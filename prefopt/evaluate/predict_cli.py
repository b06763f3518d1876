"""``prefopt predict``: answer new records that have no labels yet (a trained adapter on today's
messages) and write them back as their table, a prediction column per field, with each label's
confidence and, with ``--review-below``, a review column (:mod:`.new_records`, :mod:`.review`)."""
from __future__ import annotations


def add_command(sub, shown: dict) -> None:
    """``predict``'s parser (``shown``: the task options' epilog, as eval's)."""
    from ..cli import add_chat_flags
    from ..tasks import TASKS
    from .cli import add_answer_estimate_flag, add_device_flags, add_repeat_flags, add_task_sheet_flag, positive_int
    from .review import below_arg

    pr = sub.add_parser("predict", help="answer new records that have no labels yet (a trained adapter on "
                        "today's messages); writes their table with a prediction column per field", **shown)
    pr.add_argument("--task", required=True, choices=sorted(TASKS))
    pr.add_argument("--model", required=True, help="model folder, alias (smollm2-135m), hub id or .gguf file")
    pr.add_argument("--adapter", help="PEFT-layout LoRA adapter folder (a compare run's: its report.md names them)")
    pr.add_argument("--data", required=True, help="the records, in the task's data format; their label columns "
                    "are not read and may be absent. For portal, text_classification and summarization also a "
                    "folder of documents (.txt, .md, .docx, .odt, .pdf), a record each, written as a CSV")
    pr.add_argument("--output", required=True, help="output folder: predictions.csv/.tsv/.jsonl/.xlsx/.ods and "
                    "predict.json")
    pr.add_argument("--format", choices=["csv", "tsv", "jsonl", "xlsx", "ods"],
                    help="of the predictions table (default: the input's; a CSV keeps the input's delimiter; a "
                    "workbook's are written as one; Parquet's as JSONL)")
    pr.add_argument("--task-option", action="append", metavar="KEY=VALUE",
                    help="task constructor option, as the model was trained with (repeatable); a generic classifier "
                    "needs labels=a,b,c")
    add_task_sheet_flag(pr)
    pr.add_argument("--batch-size", type=positive_int, default=16)
    pr.add_argument("--no-confidence", dest="confidence", action="store_false",
                    help="skip the confidence_<field> and likeliest_<field> columns (each predicted label's "
                    "probability under the model, and the label it finds likeliest, every possible answer scored; "
                    "about as long again as the answers)")
    pr.add_argument("--calibration", metavar="FILE", help="an eval --fit-temperature's calibration.json, or a "
                    "compare stage's (a run with --set val=N), or its folder, fitted with this model and adapter: the "
                    "confidence columns calibrated by its temperature")
    pr.add_argument("--review-below", type=below_arg, metavar="P", help="a review column: why a record's answer "
                    "needs a person (a field's label given less than P, or none named), empty where the model is sure "
                    "enough; read P off eval --confidence's table of records answered alone at each confidence. One "
                    "per field: urgency=0.9,staff=0.7 (a bare P among them for the fields not named)")
    pr.add_argument("--max-new-tokens", type=positive_int, help="generation cap (default: the task's)")
    add_chat_flags(pr, "prompt")
    add_repeat_flags(pr)
    add_device_flags(pr, quantize=True)
    add_answer_estimate_flag(pr)
    pr.set_defaults(func=run)


def run(args) -> int:
    """Answer ``--data``'s records and write their table, with the confidence and review columns."""
    from datetime import date
    from pathlib import Path

    from .._deps import require
    from ..devices import resolve
    from ..pretrained import load_model
    from ..tasks import get_task
    from ..tokenizer import load_tokenizer
    from .cli import check_review, pin_chat, print_estimate, task_options_of, temperature_of
    from .confidence import SCORING, confidence_possible
    from .new_records import (
        FILES,
        ROW_FORMAT,
        counts,
        delimiter_of,
        predict_in_blocks,
        summary,
        table_format,
        write_predictions,
    )
    from .partial import claimed, fingerprint, resume
    from .review import mark_review
    from .runner import (
        DECODING,
        check_prompts,
        decoding,
        expected_placement,
        keep_earlier,
        past_context_said,
        placement,
        prompt_settings,
        require_chat,
        weights_digests,
    )

    options = task_options_of(args)
    task = get_task(args.task, **options)
    check_review(args, task)
    fmt = table_format(args.data, args.format)
    if fmt == "xlsx":
        require("openpyxl", "writing the predictions as .xlsx")  # now, not once every record is answered
    device, dtype = resolve(args.device, args.dtype)
    records = task.read(args.data, labelled=False)  # bad rows stop here, before any model loads
    if not records:
        raise ValueError(f"{args.data}: no records")
    tok = load_tokenizer(args.model)
    require_chat(tok, args.model)
    check_prompts(tok, task, records, args.data)  # before the model loads
    pin_chat(tok, args, "predict")
    settings = {k: getattr(args, k) for k in DECODING}
    if args.estimate_memory:
        return print_estimate(args, tok, task, records, decoding(settings, task)["max_new_tokens"])
    temperature = temperature_of(args, task, tok)  # (a file fitted for another model: said before the model loads)
    confidence = args.confidence and confidence_possible(task, "predict")
    known = {"task": task.name, "task_options": options, "model": args.model, "adapter": args.adapter,
             **weights_digests(args.model, args.adapter), "data": str(Path(args.data).resolve()),
             **decoding(settings, task)}
    scored = {**prompt_settings(tok), "confidence": confidence, **({"confidence_scoring": SCORING} if confidence else {}),
              **({"temperature": temperature, "calibration": args.calibration} if args.calibration else {})}
    with claimed(args.output):
        # what a stopped run must match (the weights by their digests: a model or adapter saved again at its path
        # starts it over); where a finished run's answers match it as the model would load, none loads
        made = known | expected_placement(device, dtype, args.quantize) | scored
        stamp = fingerprint(records, made | {"row_format": ROW_FORMAT})
        model = _config(args.model) if len(resume(args.output, stamp)) == len(records) else None
        if model is None:
            model = load_model(args.model, dtype=dtype, device=device, adapter=args.adapter,
                               merge=args.adapter is not None, quantize=args.quantize)
            made = known | placement(model) | scored
            stamp = fingerprint(records, made | {"row_format": ROW_FORMAT})
        with past_context_said("predict", model, tok, task, records, made["max_new_tokens"]) as long:
            rows = predict_in_blocks(model, tok, task, records, args.output, stamp, batch_size=args.batch_size,
                                     confidence=confidence, temperature=temperature, **settings)
        if args.review_below is not None:  # (after the rows: a stopped run goes on under another threshold)
            rows = mark_review(task, rows, args.review_below, past=long)
        tally = counts(task, rows) | ({"past_context": len(long)} if long else {})
        kept = keep_earlier(args.output, FILES)
        if kept:
            print(f"prefopt predict: {args.output} held predictions; they are kept in {kept}", flush=True)
        try:
            path = write_predictions(args.output, rows, fmt, delimiter_of(args.data, fmt, task),
                                     {**made, **_review_below(args), "date": date.today().isoformat(), **tally})
        except ValueError as e:  # a text no workbook holds
            raise ValueError(f"{e} (the answers are kept: the same command with --format csv or jsonl writes them "
                             "without answering again)") from None
    print(f"prefopt predict: {summary(tally)}")
    print(f"prefopt predict: wrote {path} and predict.json")
    return 0


def _review_below(args) -> dict:
    """predict.json's ``review_below``, where given (not in the rows' fingerprint: a stopped run
    goes on under another threshold)."""
    return {} if args.review_below is None else {"review_below": args.review_below}


def _config(model: str):
    """``model``'s :class:`~prefopt.model.config.ModelConfig`, read off its ``config.json`` (no
    weights load): what predict needs of a model whose answers it reuses (its context's length);
    None where it cannot be read so, and the model loads after all."""
    from ..model.config import ModelConfig
    from ..model.hub import resolve_model_dir

    try:
        return ModelConfig.from_hf(resolve_model_dir(model))
    except (OSError, ValueError, KeyError):
        return None
