"""``prefopt eval-nll``: how well a model (+ adapter) predicts held-out SFT records
(:mod:`prefopt.evaluate.nll_eval`)."""
from __future__ import annotations

import argparse


def add_command(sub) -> None:
    from ..cli import add_chat_flags, add_data_file_flags
    from .cli import add_device_flags, positive_int

    p = sub.add_parser("eval-nll", help="how well a model (+ adapter) predicts held-out SFT records: NLL per "
                       "trained token (and perplexity) with a 95%% CI over records, --against another evaluation "
                       "paired; writes records.jsonl and metrics.json")
    p.add_argument("--model", required=True, help="model folder, alias (smollm2-135m), hub id or .gguf file")
    p.add_argument("--adapter", help="a LoRA adapter to apply (e.g. an SFT run's final/)")
    p.add_argument("--data", required=True, nargs="+", metavar="PATH", help="SFT records, as sft reads them "
                   "(prompt/completion, messages, text; several files, a folder of shards or a quoted pattern too)")
    p.add_argument("--output", required=True, help="output folder: records.jsonl (one row a record), metrics.json")
    p.add_argument("--columns", nargs="+", metavar="FIELD=COLUMN", help="the data's own column names, as sft's")
    add_data_file_flags(p)
    p.add_argument("--max-length", type=positive_int, default=1024, help="as the run's max_length")
    p.add_argument("--max-prompt-length", type=positive_int, help="as the run's max_prompt_length")
    p.add_argument("--text-windows", action="store_true", help="as sft --text-windows: a long text record scored "
                   "whole, in windows (default: cut, as training without it)")
    p.add_argument("--skip-bad-records", action="store_true", help="skip (and count) bad records instead of stopping")
    p.add_argument("--batch-size", type=positive_int, default=8)
    p.add_argument("--n-resamples", type=positive_int, default=2000, help="bootstrap resamples for the CIs")
    p.add_argument("--against", metavar="DIR", help="an earlier eval-nll of the same records (the base model's, or "
                   "another adapter's): the difference in NLL per token, paired by record; paired.json")
    add_chat_flags(p, "prompt")
    add_device_flags(p, quantize=True)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from ..cli import apply_chat_flags, data_file_settings
    from ..data.columns import column_map
    from ..data.files import describe, given_paths
    from ..data.sft import IGNORE, load_sft
    from ..devices import resolve
    from ..fileio import check_writable
    from ..pretrained import load_model
    from ..tokenizer import load_tokenizer
    from .nll_eval import (
        against,
        against_line,
        by_record,
        check_same_records,
        example_nll,
        nll_metrics,
        summary_line,
    )
    from .runner import placement, read_earlier_rows, weights_digests, write_evaluation

    def say(line: str) -> None:
        print(f"prefopt eval-nll: {line}", flush=True)

    earlier = read_earlier_rows(args.against, "records.jsonl", "eval-nll")  # before any model loads
    device, dtype = resolve(args.device, args.dtype)
    check_writable(args.output)
    tok = load_tokenizer(args.model)
    said = apply_chat_flags(tok, args, "prompt")
    data = given_paths(args.data)
    examples, report = load_sft(data, tok, max_length=args.max_length, max_prompt_length=args.max_prompt_length,
                                skip_bad=args.skip_bad_records, columns=column_map(args.columns),
                                text_windows=args.text_windows)
    for line in [*said, report.summary()]:
        say(line)
    first = {}  # each record's first example: its file and line
    for i, r in enumerate(report.kept_records):
        first.setdefault(r, i)
    scored = np.array([sum(1 for x in ex.labels[1:] if x != IGNORE) for ex in examples], float)  # as the loss counts
    tokens = by_record(scored, report.kept_records)
    places = report.kept_places
    rows = [{**({"file": places[first[r]][0]} if places[first[r]][0] else {}), "line": places[first[r]][1],
             "tokens": int(tokens[r])} for r in range(len(tokens))]
    if earlier is not None:
        check_same_records(rows, earlier)  # before any model loads
    model = load_model(args.model, dtype=dtype, device=device, adapter=args.adapter, quantize=args.quantize)
    context = getattr(model.config, "max_position_embeddings", None)
    longest = max(len(ex.input_ids) for ex in examples)
    if context and longest > context:  # as the trainer refuses them: positions the model never saw
        raise ValueError(f"the longest example has {longest} tokens, more than the model's context of {context}: "
                         f"pass --max-length {context} or less")
    nll = by_record(example_nll(model, examples, batch_size=args.batch_size)[0],
                    report.kept_records)
    for row, value, n in zip(rows, nll, tokens):
        row |= {"nll": float(value), "nll_per_token": float(value / n) if n else None}
    metrics = nll_metrics(nll, tokens, n_resamples=args.n_resamples)
    metrics |= {"model": args.model, "adapter": args.adapter, **weights_digests(args.model, args.adapter),
                "data": describe(data),
                **data_file_settings(args), "max_length": args.max_length,
                "max_prompt_length": args.max_prompt_length, "text_windows": args.text_windows,
                "examples": len(examples), "skipped_records": len(report.skipped)} | placement(model)
    paired = against(rows, earlier, n_resamples=args.n_resamples) if earlier is not None else None
    out = write_evaluation(args.output, "records.jsonl", rows, metrics, paired, args.against, say)
    say(summary_line(metrics))
    if paired is not None:
        say(against_line(paired, args.against))
    say(f"wrote {out / 'records.jsonl'} and metrics.json")
    return 0
