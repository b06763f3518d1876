"""``prefopt reviewed-pairs``: DPO pairs, KTO feedback and SFT records from a predict table a
person has labelled (:mod:`prefopt.evaluate.reviewed_pairs`); no model loads."""
from __future__ import annotations

import argparse

FILES = ("pairs.jsonl", "feedback.jsonl", "sft.jsonl", "reviewed_pairs.json")


def add_command(sub, shown: dict) -> None:
    """The ``reviewed-pairs`` subcommand (``shown``: the task options' epilog, as eval's)."""
    from ..tasks import TASKS
    from .cli import add_task_sheet_flag

    p = sub.add_parser("reviewed-pairs", help="training data from a person's review: a predict table with the right "
                       "labels added for the rows checked; each wrong answer becomes a DPO pair (the person's answer "
                       "chosen, the model's rejected), and every labelled row KTO feedback and an SFT record",
                       **shown)
    p.add_argument("--task", required=True, choices=sorted(TASKS))
    p.add_argument("--data", required=True, help="a prefopt predict table (CSV, TSV, JSONL, Excel or "
                   "OpenDocument) with the person's labels in the task's label columns (urgency and staff for "
                   "portal, as in its data files); rows without a label in every field are left out")
    p.add_argument("--output", required=True, help="output folder: pairs.jsonl, feedback.jsonl, sft.jsonl, "
                   "reviewed_pairs.json")
    p.add_argument("--task-option", action="append", metavar="KEY=VALUE",
                   help="task option, as predict was given it (repeatable): the prompts are asked as then")
    add_task_sheet_flag(p)
    p.add_argument("--right-answers", choices=["skip", "wrong_label"], default="skip", help="the rows the model "
                   "answered right: no pair (skip, default), or each a pair against a wrong label (as compare's "
                   "model_errors strategy fills in)")
    p.add_argument("--seed", type=int, default=0, help="seed of --right-answers wrong_label's draws")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Write the training data a reviewed predict table gives."""
    from datetime import date
    from pathlib import Path

    from ..data.check import pair_lopsided_lines
    from ..fileio import check_writable, jsonl_text, write_json_atomic, write_text_atomic
    from ..tasks import get_task
    from .cli import task_options_of
    from .reviewed_pairs import read_reviewed, summary_lines, training_data
    from .runner import keep_earlier

    def say(line: str) -> None:
        print(f"prefopt reviewed-pairs: {line}", flush=True)

    options = task_options_of(args)
    task = get_task(args.task, **options)
    check_writable(args.output)
    reviewed = read_reviewed(task, args.data)
    pairs, feedback, sft, counts = training_data(task, reviewed.records, right_answers=args.right_answers,
                                                 seed=args.seed)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    kept = keep_earlier(out, FILES)
    if kept:
        say(f"{out} held training data made before; it is kept in {kept}")
    write_text_atomic(out / "pairs.jsonl", jsonl_text(pairs))
    write_text_atomic(out / "feedback.jsonl", jsonl_text(feedback))
    write_text_atomic(out / "sft.jsonl", jsonl_text(sft))
    write_json_atomic(out / "reviewed_pairs.json", {
        "task": task.name, "task_options": options, "data": str(Path(args.data).resolve()), "rows": reviewed.rows,
        "unlabelled_lines": reviewed.unlabelled, "right_answers": args.right_answers, "seed": args.seed, **counts,
        "date": date.today().isoformat()})
    for line in summary_lines(args.data, reviewed, counts):
        say(line)
    for line in pair_lopsided_lines(pairs):
        say(line)
    good = sum(1 for r in feedback if r["label"])
    say(f"wrote {out / 'pairs.jsonl'} (on top of the SFT adapter the answers came from: prefopt dpo --model MODEL "
        f"--sft-adapter ADAPTER --data {out / 'pairs.jsonl'} --output-dir DIR), feedback.jsonl (the model's "
        f"{len(feedback)} answers, {good} right: prefopt dpo --loss kto), sft.jsonl (the person's "
        f"{len(sft)} answers: prefopt sft) and reviewed_pairs.json")
    if not pairs:
        say("no pairs: the model answered every labelled row right (or empty); --right-answers wrong_label "
            "pairs the right ones against wrong labels")
    return 0
