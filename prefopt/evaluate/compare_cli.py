"""``prefopt compare`` (base → SFT → DPO on one test set, with statistics) and ``prefopt study``
(compare on every kind of task the study covered)."""
from __future__ import annotations

import argparse

from .cli import add_device_flags, add_estimate_flag, key_values, positive_int, task_options_of


def add_commands(sub, common: argparse.ArgumentParser, shown: dict) -> None:
    """``compare`` (with eval's ``common`` flags: --task, --model, --data, ...; ``shown``: the task
    options' epilog) and ``study``."""
    from ..cli import add_encoding_flag
    from ..losses import loss_arg
    from ..tasks import STRATEGIES
    from .compare_config import PRESETS

    c = sub.add_parser("compare", parents=[common], help="base → SFT → DPO on one test set, with statistics",
                       **shown)
    c.add_argument("--preset", choices=sorted(PRESETS), default="quick",
                   help="quick: 160 training items, fixed steps, minutes on a CPU; full: all the data, epochs")
    c.add_argument("--test-data", metavar="PATH", help="labelled records of the same task to test every stage on, "
                   "all of them, read as --data is (the same --task-option's): a later period's (temporal "
                   "validation) or another site's; --data then trains (and validates) alone, less any record of the "
                   "same text (default: a seeded share of --data, the preset's test)")
    c.add_argument("--test-sheet", metavar="NAME", help="the sheet of --test-data where it is a workbook (else its "
                   "one sheet in view that holds data; --sheet names --data's: one workbook, a sheet each, reads)")
    c.add_argument("--strategy", choices=STRATEGIES, default="wrong_label",
                   help="how DPO's rejected answers are made (ranked: given pairs, see --pairs)")
    c.add_argument("--pairs", help="ranked: a file of prompt/chosen/rejected pairs to train DPO on (JSONL, CSV, ...)")
    add_encoding_flag(c, "--pairs where it is a CSV, TSV, JSON or JSONL file", "--pairs-encoding", "pairs_encoding")
    c.add_argument("--pairs-columns", nargs="+", metavar="FIELD=COLUMN", help="--pairs' fields from columns of "
                   "other names, as dpo's --columns (prompt=question chosen=better rejected=worse)")
    c.add_argument("--pairs-sheet", metavar="NAME", help="the sheet of --pairs where it is a workbook (else its one "
                   "sheet in view that holds data; compare's --sheet is the task data's)")
    c.add_argument("--loss", default="sigmoid", type=loss_arg,
                   help="preference loss (docs/dpo.md), or a weighted sum such as 0.8*sigmoid+0.2*bco_pair+sft; "
                   "rpo adds the chosen answers' NLL")
    c.add_argument("--judge", help="a local model that rates answers 1-5 (LLM judge)")
    c.add_argument("--n-resamples", type=positive_int, default=2000, help="paired bootstrap resamples")
    c.add_argument("--seeds", metavar="S,S,...", help="run the comparison once per seed (each draws its own test "
                   "split and training randomness) into OUTPUT/seed-S, then pool the seeds' differences by a "
                   "random-effects meta-analysis: seeds.md, seeds.json (in place of --seed; --from DIR reads "
                   "DIR/seed-S; a one-seed run already in OUTPUT, make demo's, is reused as its seed's). Three or "
                   "more: with two, Student's t with 1 degree of freedom leaves the pooled CI very wide")
    c.add_argument("--from", dest="start_from", metavar="DIR",
                   help="start from the base and SFT stages of DIR, an earlier compare run with the same settings "
                   "but DPO's (--loss, --strategy, beta, dpo_lr, ...): they are checked and copied, and only DPO "
                   "trains")
    c.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a preset setting (repeatable); val=N holds N items out of training to "
                   "choose DPO's weights by the task's score on them; confidence=false skips scoring each "
                   "stage's labels; review_target=0.9 (with val) chooses each stage's review threshold on the "
                   "validation items and checks it on the test items (docs/evaluation.md). Settings: "
                   + ", ".join(sorted({*PRESETS["quick"], *PRESETS["full"]})))
    add_device_flags(c, "--eval-dtype", "parameter dtype of the evaluations",
                     ". Training keeps float32 weights (under bf16 autocast on CUDA)")
    add_estimate_flag(c, "print how much memory a training step of the SFT and of the DPO stage, and answering the "
                      "test set (and validation items, with --set val), will hold, on cpu or cuda (default: this "
                      "machine's device), from the model's config.json and the settings alone, and "
                      "exit: no data is read and nothing is written (as sft/dpo --estimate-memory)")
    c.set_defaults(func=compare_command)

    from .study import TASK_NAMES

    st = sub.add_parser("study", help="compare on every kind of task the study covered, one table of them all")
    st.add_argument("--model", required=True, help="model folder, alias (smollm2-135m), hub id or .gguf file")
    st.add_argument("--output", required=True, help="output folder: one compare run per task, study.md, study.json")
    st.add_argument("--data-root", help="the datasets, laid out as ../shared/data (docs/evaluation.md); without "
                    "it only the bundled synthetic portal messages run")
    st.add_argument("--tasks", help=f"comma-separated, default all: {','.join(TASK_NAMES)}")
    st.add_argument("--preset", choices=sorted(PRESETS), default="quick", help="as compare's, for every task")
    st.add_argument("--loss", default="sigmoid", type=loss_arg, help="preference loss, as compare's")
    st.add_argument("--strategy", choices=[s for s in STRATEGIES if s != "ranked"], default="wrong_label",
                    help="how DPO's rejected answers are made, as compare's")
    st.add_argument("--seed", type=int, default=0, help="seed of every task's split and training")
    st.add_argument("--seeds", metavar="S,S,...", help="each task as compare --seeds: once per seed into "
                    "OUTPUT/<task>/seed-S, its row the seeds' mean scores and pooled differences (three or more)")
    st.add_argument("--from", dest="start_from", metavar="DIR",
                    help="an earlier study's --output: each task starts from the base and SFT stages of its run "
                    "there (as compare's --from: the same settings but DPO's), and only DPO trains")
    st.add_argument("--set", action="append", metavar="KEY=VALUE", help="a compare setting for every task "
                    "(repeatable), e.g. test=120 or val=64")
    st.add_argument("--n-resamples", type=positive_int, default=2000, help="paired bootstrap resamples")
    st.add_argument("--chat-date", metavar="YYYY-MM-DD", help="as compare's")
    st.add_argument("--chat-vars", nargs="+", metavar="NAME=VALUE", help="as compare's (every task)")
    add_device_flags(st, "--eval-dtype", "parameter dtype of the evaluations")
    add_estimate_flag(st, "print how much memory a training step of each task's SFT and DPO stage, and answering "
                      "its test set, will hold, on cpu or cuda (default: this machine's device), from the model's "
                      "config.json and the settings alone, and exit: no data is read and nothing is written (as "
                      "compare's)")
    st.set_defaults(func=study_command)


def compare_command(args: argparse.Namespace) -> int:
    """base → SFT → DPO on one test set (once a seed, with --seeds)."""
    from ..cli import chat_vars_arg
    from .compare import CompareConfig, run_compare
    from .report import console_lines

    if not args.model:
        raise ValueError("--model is needed: the model compare trains and evaluates")
    overrides = key_values(args.set)
    cfg = CompareConfig(task=args.task, model=args.model, output=args.output, data=args.data,
                        test_data=args.test_data, test_sheet=args.test_sheet, preset=args.preset,
                        task_options=task_options_of(args), strategy=args.strategy, pairs=args.pairs,
                        pairs_encoding=args.pairs_encoding, pairs_sheet=args.pairs_sheet,
                        pairs_columns=args.pairs_columns, loss=args.loss,
                        seed=args.seed, judge=args.judge, n_resamples=args.n_resamples, overrides=overrides,
                        device=args.device, eval_dtype=args.eval_dtype, chat_date=args.chat_date,
                        chat_vars=chat_vars_arg(args), start_from=args.start_from)
    from .seeds import seeds_of

    seeds = seeds_of(args)
    if args.estimate_memory:  # (every seed's steps are alike)
        from .compare_train import estimate_stages

        print("\n".join(estimate_stages(cfg, None if args.estimate_memory == "auto" else args.estimate_memory)))
        return 0
    if seeds is not None:
        from .seeds import console_lines as seed_lines
        from .seeds import run_seeds

        summary = run_seeds(cfg, seeds)
        print("\n".join(seed_lines(summary)))
        own = "".join(f" (seed {r['seed']}'s: {args.output} itself)" for r in summary["runs"]
                      if r["output"] == summary["output"])
        print(f"prefopt compare: each seed's run in {args.output}/seed-S{own}; over the seeds: {args.output}/seeds.md")
        return 0
    print("\n".join(console_lines(run_compare(cfg))))
    return 0


def study_command(args: argparse.Namespace) -> int:
    """compare on every task family of the study; 1 where a task failed."""
    from ..cli import chat_vars_arg
    from .study import estimate_study, pick, run_study

    if args.estimate_memory:
        print("\n".join(estimate_study(args.model, args.output, tasks=args.tasks, preset=args.preset, loss=args.loss,
                                        strategy=args.strategy, seed=args.seed, overrides=key_values(args.set),
                                        device=args.device, eval_dtype=args.eval_dtype, chat_date=args.chat_date,
                                        chat_vars=chat_vars_arg(args),
                                        on=None if args.estimate_memory == "auto" else args.estimate_memory)))
        return 0
    from .seeds import seeds_of

    seeds = seeds_of(args)
    study = run_study(args.model, args.output, args.data_root, tasks=args.tasks, preset=args.preset, loss=args.loss,
                      strategy=args.strategy, seed=args.seed, n_resamples=args.n_resamples,
                      overrides=key_values(args.set), device=args.device, eval_dtype=args.eval_dtype,
                      chat_date=args.chat_date, chat_vars=chat_vars_arg(args), start_from=args.start_from,
                      seeds=seeds)
    asked = {a.task for a in pick(args.tasks)}  # the table also keeps rows of tasks an earlier command ran
    counts = {s: sum(r["status"] == s for r in study["arms"] if r["task"] in asked)
              for s in ("ran", "failed", "not run")}
    print(f"prefopt study: {counts['ran']} ran, {counts['failed']} failed, {counts['not run']} not run; "
          f"table: {args.output}/study.md")
    return 1 if counts["failed"] else 0
