"""The triage demo: does DPO after SFT help SmolLM2-135M triage patient-portal messages?

Runs ``prefopt compare`` (base → SFT → SFT+DPO, every stage on the same held-out messages)
on the bundled SYNTHETIC portal messages (prefopt/tasks/data/README.md), then prints the
verdicts and where the report is. ``make demo`` runs it with the quick preset.

    .venv/bin/python examples/run_triage.py                      # quick preset, runs/triage-demo
    .venv/bin/python examples/run_triage.py --preset full --output runs/triage-full
    .venv/bin/python examples/run_triage.py --task ktas --data ../shared/data/triage/ktas/data.csv
    .venv/bin/python examples/run_triage.py --data export.csv --task-option encoding=cp1252 \\
        --task-option message_column=Nachricht --task-option urgency_column=Dringlichkeit \\
        --task-option staff_column=Team  # your own portal messages, as Excel saved them
        # [--task-option "urgency_map=Notfall=emergency,dringend=urgent,Routine=routine"]: its own label words
        # [--test-data december.csv]: test on a later month's messages, all of them; export.csv trains
    .venv/bin/python examples/run_triage.py --loss rpo --output runs/triage-rpo
    .venv/bin/python examples/run_triage.py --loss rpo --output runs/triage-rpo --from runs/triage-demo  # DPO only
    .venv/bin/python examples/run_triage.py --preset full --estimate-memory cuda  # will each stage fit?

Rerunning with the same --output reuses finished stages; delete the folder to start over.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

from prefopt.cli import run_script
from prefopt.evaluate.cli import add_device_flags, add_estimate_flag, key_values
from prefopt.evaluate.compare import CompareConfig, run_compare
from prefopt.evaluate.compare_train import estimate_stages
from prefopt.evaluate.report import console_lines, rpo_from
from prefopt.losses import loss_arg
from prefopt.tasks import STRATEGIES


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--task", default="portal", choices=["portal", "ktas"])
    ap.add_argument("--data", help="data file (default: the bundled synthetic portal messages)")
    ap.add_argument("--test-data", metavar="PATH", help="messages to test on, all of them (a later month's, another "
                    "site's), read as --data is; --data then trains alone (default: a seeded share of --data)")
    ap.add_argument("--test-sheet", metavar="NAME", help="the sheet of --test-data where it is a workbook (else its "
                    "one sheet of data)")
    ap.add_argument("--task-option", action="append", metavar="KEY=VALUE",
                    help="a task option, e.g. message_column=Nachricht or encoding=cp1252 for your own portal "
                    "messages (repeatable; see prefopt eval --help)")
    ap.add_argument("--preset", default="quick", choices=["quick", "full"])
    ap.add_argument("--strategy", default="wrong_label", choices=[s for s in STRATEGIES if s != "ranked"])  # ranked needs a pairs file: use prefopt compare
    ap.add_argument("--loss", default="sigmoid", type=loss_arg,
                    help="preference loss (rpo adds the chosen answer's NLL; see docs/results.md)")
    ap.add_argument("--output", default="runs/triage-demo")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--from", dest="start_from", metavar="DIR",
                    help="start from the base and SFT stages of an earlier run with the same settings but DPO's "
                    "(e.g. --loss rpo --output runs/triage-rpo --from runs/triage-demo): only DPO trains")
    ap.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="override a preset setting, e.g. sft_steps=100 (repeatable; see prefopt compare --help)")
    add_device_flags(ap, "--eval-dtype", "parameter dtype of the evaluations")
    add_estimate_flag(ap, "print what a training step of the SFT and of the DPO stage, and answering the test set, "
                      "will hold, on cpu or cuda (default: this machine's device), and exit, as prefopt compare's")
    return ap


def rpo_next(a: argparse.Namespace) -> str:
    """The command that trains RPO (DPO plus the chosen answers' NLL) alone on this run's SFT
    model: its settings and :func:`~prefopt.evaluate.report.rpo_from`."""
    args = ["--preset", a.preset, "--seed", str(a.seed)]
    for flag, value, default in (("--model", a.model, "smollm2-135m"), ("--task", a.task, "portal"),
                                 ("--data", a.data, None), ("--test-data", a.test_data, None),
                                 ("--test-sheet", a.test_sheet, None),
                                 ("--strategy", a.strategy, "wrong_label")):
        if value != default:
            args += [flag, value]
    args += [x for kv in a.task_option or [] for x in ("--task-option", kv)]
    args += [x for kv in a.set or [] for x in ("--set", kv)]
    python = os.path.relpath(sys.executable)  # .venv/bin/python under make demo
    python = sys.executable if python.startswith("..") else python
    return shlex.join([python, os.path.relpath(__file__), *args, *rpo_from(a.output)])


def main() -> None:
    a = parser().parse_args()
    t0 = time.perf_counter()
    cfg = CompareConfig(task=a.task, model=a.model, output=a.output, data=a.data, test_data=a.test_data,
                        test_sheet=a.test_sheet,
                        preset=a.preset, strategy=a.strategy,
                        loss=a.loss, seed=a.seed, overrides=key_values(a.set), device=a.device, eval_dtype=a.eval_dtype,
                        start_from=a.start_from, task_options=key_values(a.task_option))
    if a.estimate_memory:
        print("\n".join(estimate_stages(cfg, None if a.estimate_memory == "auto" else a.estimate_memory)))
        return
    report = run_compare(cfg)
    print()
    for stage, s in report["stages"].items():
        print(f"{stage:>4}: macro-F1 {s['primary']:.3f}  95% CI [{s['ci'][0]:.3f}, {s['ci'][1]:.3f}]  "
              f"exact-match accuracy {s['accuracy']:.3f}")
    print("\n".join(console_lines(report, ("base->sft", "sft->dpo"))))
    if report["advice"]:  # DPO made SFT significantly worse, without an NLL term
        print(f"\nNext, RPO on the same SFT model (only DPO trains): {rpo_next(a)}")
    print(f"\nDone in {time.perf_counter() - t0:.0f} s. Report: {Path(a.output).resolve() / 'report.md'}")
    print("The portal messages are synthetic; see prefopt/tasks/data/README.md for what the scores can and cannot say.")


if __name__ == "__main__":
    run_script(main, "run_triage")  # bad input: one line, no traceback; Ctrl-C: exit 130
