"""``prefopt make-pairs``: preference pairs without annotation, each SFT record's reference
answer against the model's own (:mod:`prefopt.evaluate.answer_pairs`)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_command(sub) -> None:
    """The ``make-pairs`` subcommand."""
    from ..cli import add_answer_flags, add_chat_flags, add_data_file_flags
    from .cli import add_answer_estimate_flag, positive_int

    p = sub.add_parser("make-pairs", help="preference pairs without annotation: each SFT record's reference answer "
                       "(chosen) against the model's own answer to its prompt (rejected), where they differ; "
                       "writes pairs.jsonl for prefopt dpo, and feedback.jsonl (each answer labelled right or "
                       "wrong) for dpo --loss kto",
                       description="The model (usually with the SFT adapter) answers each record's prompt as SFT "
                       "tokenized it; an answer that differs from the reference (case, spacing and end punctuation "
                       "aside) becomes the rejected side of a pair. Every answer is kept in answers.jsonl; a stopped "
                       "run goes on from the answers made.")
    add_answer_flags(p, system=False)
    p.add_argument("--data", required=True, nargs="+", metavar="PATH", help="SFT records (prompt/completion, or "
                   "messages ending with the reference answer), as sft reads them: one file or several, a folder of "
                   "shards, a quoted pattern")
    p.add_argument("--output", required=True, help="output folder: pairs.jsonl, feedback.jsonl, answers.jsonl, "
                   "make_pairs.json")
    p.add_argument("--columns", nargs="+", metavar="FIELD=COLUMN", help="the data's own column names, as sft's")
    add_data_file_flags(p)
    p.add_argument("--batch-size", type=positive_int, default=8, help="prompts answered at once")
    p.add_argument("--max-prompt-length", type=positive_int, help="keep each prompt's last N tokens (as training's)")
    p.add_argument("--skip-bad-records", action="store_true", help="skip (and count) bad records instead of stopping")
    add_chat_flags(p, "prompt")
    add_answer_estimate_flag(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """DPO pairs from an SFT file and a model's own answers."""
    import time
    from datetime import date

    from ..cli import chat_ready, data_file_settings, decoding_of
    from ..data.check import pair_lopsided_lines
    from ..data.columns import column_map
    from ..data.files import data_files, describe, given_paths
    from ..devices import resolve
    from ..fileio import check_writable, jsonl_text, write_json_atomic, write_text_atomic
    from ..pretrained import load_model
    from ..tokenizer import load_tokenizer
    from .answer_pairs import (
        FILES,
        JOB,
        answer_in_blocks,
        feedback_from,
        pairs_from,
        read_prompts,
        stamp,
        summary_line,
    )
    from .partial import claimed, partial_file
    from .runner import (
        context_of,
        keep_earlier,
        past_context,
        past_context_text,
        placement,
        prompt_settings,
        quiet_past_context,
        weights_digests,
    )

    def say(line: str) -> None:
        print(f"prefopt make-pairs: {line}", flush=True)

    t0 = time.time()
    data = given_paths(args.data)
    several = len(data_files(data)) > 1
    device, dtype = resolve(args.device, args.dtype)
    if not args.estimate_memory:
        check_writable(args.output)  # before the model loads
    tok = chat_ready(load_tokenizer(args.model), args, "prompt")
    prompts, bad = read_prompts(data, tok, columns=column_map(args.columns), max_prompt_length=args.max_prompt_length,
                                skip_bad=args.skip_bad_records)
    say(f"{len(prompts)} prompts from {describe(data)}" + (f"; {len(bad)} bad records skipped (first: {bad[0]})"
                                                            if bad else ""))
    if not prompts:
        raise ValueError(f"{describe(data)}: no usable records")
    if args.estimate_memory:
        from .answer_memory import answer_estimate_lines

        print("\n".join(answer_estimate_lines(args, [p.ids for p in prompts], args.max_new_tokens)))
        return 0
    model = load_model(args.model, dtype=dtype, device=device, adapter=args.adapter, merge=args.adapter is not None,
                       quantize=args.quantize)
    decode = decoding_of(args)
    made = {"model": args.model, "adapter": args.adapter, **weights_digests(args.model, args.adapter),
            "data": describe(data), "columns": args.columns,
            **data_file_settings(args), "max_new_tokens": args.max_new_tokens,
            "max_prompt_length": args.max_prompt_length,
            "batch_size": args.batch_size, **decode, **placement(model), **prompt_settings(tok)}
    context = context_of(model)
    long = past_context([(f"{p.file}:{p.line}", len(p.ids)) for p in prompts], context, args.max_new_tokens)
    if long:  # named here, by file and line (generate's own warning names no prompt)
        line = past_context_text(long, len(prompts), "prompts and their answers", context, args.max_new_tokens,
                                 _shorter(args.max_prompt_length))
        print(f"prefopt make-pairs: warning: {line}", file=sys.stderr, flush=True)
    with claimed(args.output, JOB), quiet_past_context():
        # the batch size changes no answer (each prompt seeded alone): a run stopped for want of memory goes on
        # with a smaller one; the weights by their digests (a model or adapter saved again at its path: start over)
        run_stamp = stamp(prompts, {k: v for k, v in made.items() if k != "batch_size"})
        rows = answer_in_blocks(model, tok, prompts, args.output, run_stamp, batch_size=args.batch_size,
                                max_new_tokens=args.max_new_tokens, **decode)
        pairs, counts = pairs_from(prompts, rows, several_files=several)
        kept = keep_earlier(args.output, FILES)
        if kept:
            say(f"{args.output} held pairs made before; they are kept in {kept}")
        out = Path(args.output)
        write_text_atomic(out / "answers.jsonl", jsonl_text(rows))
        write_text_atomic(out / "pairs.jsonl", jsonl_text(pairs))
        feedback = feedback_from(prompts, rows, several_files=several)
        write_text_atomic(out / "feedback.jsonl", jsonl_text(feedback))
        write_json_atomic(out / "make_pairs.json", {**made, **counts, "bad_records": len(bad),
                                                    **({"past_context": len(long)} if long else {}),
                                                    "date": date.today().isoformat(),
                                                    "seconds": round(time.time() - t0, 1)})
        (out / partial_file(JOB)).unlink(missing_ok=True)
    say(summary_line(counts))
    for line in pair_lopsided_lines(pairs):
        say(line)
    good = sum(1 for r in feedback if r["label"])
    say(f"wrote {out / 'pairs.jsonl'} (train on it: prefopt dpo --data {out / 'pairs.jsonl'} ...), feedback.jsonl "
        f"(every answer labelled by whether it reads as the reference, {good} of {len(feedback)} desirable: "
        f"prefopt dpo --loss kto --data {out / 'feedback.jsonl'} ...), answers.jsonl (every answer, for review) and "
        "make_pairs.json")
    say(f"before training, look at each side's mix (prefopt check-data --model {args.model} --data "
        f"{out / 'pairs.jsonl'}): pairs that mostly reject one answer teach that prior (docs/dpo.md)")
    return 0


def _shorter(max_prompt_length: int | None) -> str:
    """What keeps prompts inside the model's context, for the warning that names those past it."""
    if max_prompt_length:
        return f"a --max-prompt-length below {max_prompt_length} keeps fewer of their last tokens"
    return "--max-prompt-length N keeps each prompt's last N tokens (as training's)"
