"""``prefopt eval-pairs``: how a model (+ adapter) ranks held-out preference pairs, DPO's reward
accuracy and margin against a reference (:mod:`prefopt.evaluate.pair_eval`)."""
from __future__ import annotations

import argparse


def add_command(sub) -> None:
    from ..cli import add_chat_flags, add_data_file_flags
    from .cli import add_device_flags, positive_int

    ep = sub.add_parser("eval-pairs", help="how a model (+ adapter) ranks held-out preference pairs: DPO's reward "
                        "accuracy and margin against a reference, and the model's own preference, with 95%% CIs; "
                        "writes pairs.jsonl and metrics.json")
    ep.add_argument("--model", required=True, help="model folder, alias (smollm2-135m), hub id or .gguf file")
    ep.add_argument("--adapter", help="the adapter whose preferences to measure (e.g. a DPO run's final/)")
    ep.add_argument("--reference-adapter", help="the reference's adapter, on the same model: the SFT adapter a DPO "
                    "run trained on top of (default: the model without --adapter, as a DPO run without "
                    "--sft-adapter used)")
    ep.add_argument("--data", required=True, nargs="+", metavar="PATH", help="preference pairs, as dpo reads them "
                    "(any of its formats; several files, a folder of shards or a quoted pattern too)")
    ep.add_argument("--output", required=True, help="output folder: pairs.jsonl (one row a pair) and metrics.json")
    ep.add_argument("--columns", nargs="+", metavar="FIELD=COLUMN", help="the data's own column names, as dpo's")
    add_data_file_flags(ep)
    ep.add_argument("--beta", type=float, default=0.1, help="the DPO beta the rewards are scaled by (the run's)")
    ep.add_argument("--max-length", type=positive_int, default=1024, help="as the run's max_length")
    ep.add_argument("--skip-bad-records", action="store_true", help="skip (and count) bad pairs instead of stopping")
    ep.add_argument("--batch-size", type=positive_int, default=8)
    ep.add_argument("--n-resamples", type=positive_int, default=2000, help="bootstrap resamples for the CIs")
    ep.add_argument("--against", metavar="DIR", help="an earlier eval-pairs of the same pairs (e.g. the SFT "
                    "adapter's): test, paired, how often each model alone prefers the chosen answer (bootstrap, "
                    "exact McNemar); printed and written to paired.json")
    add_chat_flags(ep, "prompt")
    add_device_flags(ep, quantize=True)
    ep.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """How a model (+ adapter) ranks held-out preference pairs."""
    from ..cli import apply_chat_flags, data_file_settings
    from ..data.columns import column_map
    from ..data.files import describe, given_paths
    from ..data.preference import load_preferences
    from ..devices import resolve
    from ..fileio import check_writable
    from ..pretrained import load_model
    from ..tokenizer import load_tokenizer
    from .pair_eval import against, against_line, check_same_pairs, pair_logps, pair_metrics, summary_lines
    from .runner import placement, read_earlier_rows, weights_digests, write_evaluation

    def say(line: str) -> None:
        print(f"prefopt eval-pairs: {line}", flush=True)

    if args.reference_adapter and not args.adapter:
        raise ValueError("--reference-adapter needs --adapter: the adapter measured against it")
    earlier = read_earlier_rows(args.against, "pairs.jsonl", "eval-pairs")
    device, dtype = resolve(args.device, args.dtype)
    check_writable(args.output)  # before the model loads
    tok = load_tokenizer(args.model)
    said = apply_chat_flags(tok, args, "prompt")
    data = given_paths(args.data)
    pairs, report = load_preferences(data, tok, max_length=args.max_length, skip_bad=args.skip_bad_records,
                                     columns=column_map(args.columns))
    for line in [*said, report.summary()]:
        say(line)
    places = report.kept_places
    if earlier is not None:
        check_same_pairs(places, earlier)  # before any model loads
    model = load_model(args.model, dtype=dtype, device=device, adapter=args.adapter, quantize=args.quantize)
    pad = tok.pad_token_id or 0
    policy = pair_logps(model, pairs, pad, batch_size=args.batch_size)
    if args.reference_adapter:
        reference_model = load_model(args.model, dtype=dtype, device=device, adapter=args.reference_adapter,
                                     quantize=args.quantize)
        reference = pair_logps(reference_model, pairs, pad, batch_size=args.batch_size, desc="reference")
        del reference_model
    elif args.adapter:
        reference = pair_logps(model, pairs, pad, batch_size=args.batch_size, base=True, desc="reference")
    else:
        reference = None
        say("no --adapter: nothing to measure rewards against, so the model's own log-probs only")
    metrics, rows = pair_metrics(pairs, policy, reference, beta=args.beta, n_resamples=args.n_resamples)
    metrics |= {"model": args.model, "adapter": args.adapter,
                **weights_digests(args.model, args.adapter, reference_adapter=args.reference_adapter),
                "data": describe(data),
                **data_file_settings(args), "max_length": args.max_length,
                "reference": args.reference_adapter or ("the model without the adapter" if args.adapter else None),
                "skipped_records": len(report.skipped)} | placement(model)
    for row, (file, line) in zip(rows, places):  # where each pair is in the data (its file where several)
        row.update({"file": file} if file else {}, line=line)
    paired = against(rows, earlier, n_resamples=args.n_resamples) if earlier is not None else None
    out = write_evaluation(args.output, "pairs.jsonl", rows, metrics, paired, args.against, say)
    for line in summary_lines(metrics) + ([against_line(paired, args.against)] if paired else []):
        say(line)
    say(f"wrote {out / 'pairs.jsonl'} and metrics.json")
    return 0
