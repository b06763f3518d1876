"""``prefopt rating-sheet`` and ``prefopt rating-report``: a compare run's answers rated by
clinicians, blinded (:mod:`prefopt.evaluate.rating_sheet`, :mod:`prefopt.evaluate.rating_report`)."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_commands(sub) -> None:
    from ..cli import add_encoding_flag
    from .cli import positive_int
    from .rating_sheet import FORMATS

    p = sub.add_parser("rating-sheet", help="a blinded sheet of a compare run's answers for clinicians to rate 1-5 "
                       "(as the study's physicians rated summaries): each test item's answers from the stages in a "
                       "random order under codes, with the prompt and the reference; writes the sheet, the raters' "
                       "guide and the key that prefopt rating-report reads the ratings against")
    p.add_argument("--from", dest="run", required=True, metavar="DIR", help="a finished prefopt compare output folder")
    p.add_argument("--output", help="folder for rating_key.json and for_raters/ (ratings_sheet.xlsx, HOW_TO_RATE.txt: "
                   "what the raters are sent; default: DIR/ratings)")
    p.add_argument("--stages", default="base,sft,dpo", help="the stages whose answers are rated, of base, sft and "
                   "dpo (default all three; sft,dpo asks the raters for about a third less)")
    p.add_argument("--items", type=positive_int, help="rate this many test items, drawn at random (default: all)")
    p.add_argument("--seed", type=int, default=0, help="the draw of the items and the order of their answers")
    p.add_argument("--format", choices=FORMATS, default="xlsx", help="the sheet's format (default xlsx)")
    p.add_argument("--no-reference", action="store_true", help="leave the reference answers out of the sheet "
                   "(rate each answer on its own)")
    p.add_argument("--data", help="the data the run read its test items from, where its path has moved since "
                   "(default: the run's --test-data, else its --data)")
    p.set_defaults(func=_sheet)

    r = sub.add_parser("rating-report", help="the clinicians' filled rating sheets read against their key: each "
                       "stage's mean rating with its CI, the stages compared item by item (paired bootstrap, "
                       "Wilcoxon), and how far the raters agree (weighted kappa); writes ratings_report.md and "
                       "ratings.json")
    r.add_argument("--key", required=True, help="the sheet's rating_key.json, or the folder that holds it")
    r.add_argument("--ratings", required=True, nargs="+", metavar="FILE", help="the filled sheets, one per rater "
                   "(.xlsx, .ods, .csv, ...; each named after its rater: ratings_dr_lee.xlsx)")
    add_encoding_flag(r, "the filled sheets saved as CSV or TSV (a rater's Excel saves plain CSV in its code page)")
    r.add_argument("--output", help="folder for ratings_report.md and ratings.json (default: the key's)")
    r.add_argument("--n-resamples", type=positive_int, default=2000, help="bootstrap resamples")
    r.add_argument("--training-data", metavar="DIR", help="also write the ratings as training data for the next "
                   "model: pairs.jsonl (on each item, an answer rated at least --gap higher chosen over a lower one, "
                   "for prefopt dpo) and feedback.jsonl (answers rated 4-5 desirable, 1-2 undesirable, for dpo --loss "
                   "kto)")
    r.add_argument("--gap", type=float, default=1.0, help="the least difference in mean rating that makes a pair "
                   "(default 1)")
    r.set_defaults(func=_report)


def _sheet(args: argparse.Namespace) -> int:
    from ..tasks import get_task
    from ..tasks.check import read_labelled, read_test_data
    from . import rating_sheet

    run = Path(args.run)
    stages = tuple(s.strip() for s in args.stages.split(",") if s.strip())
    unknown = [s for s in stages if s not in ("base", "sft", "dpo")]
    if unknown or not stages or len(set(stages)) != len(stages):
        raise ValueError(f"--stages {args.stages}: name each of base, sft and dpo once at most")
    read = rating_sheet.run_answers(run, stages)  # a folder that is no finished run: said before the data
    config = read[0]
    data = args.data or config.get("test_data") or config.get("data")  # where its test items are
    if data and not Path(data).exists():
        raise FileNotFoundError(f"--from {run}: its {'test ' if config.get('test_data') else ''}data {data} is not "
                                "there (the run read it from another folder?): pass --data PATH")
    task = get_task(config["task"], **(config.get("task_options") or {}))
    if config.get("test_data"):  # read as the run read them: after --data, where the labels are read off it
        if not all(f.labels for f in getattr(task, "fields", ())):
            read_labelled(task, config.get("data"))
        records = {r.id: r for r in read_test_data(task, data, config.get("test_sheet"))}
    else:
        records = {r.id: r for r in read_labelled(task, data)}
    rows, key = rating_sheet.build(run, records, stages, items=args.items, seed=args.seed,
                                   reference=not args.no_reference, messages=task.messages, read=read)
    out = Path(args.output) if args.output else run / "ratings"
    path = rating_sheet.write(out, rows, key, args.format, not args.no_reference)
    alike = len(stages) * key["items"] - key["answers"]
    print(f"prefopt rating-sheet: {key['answers']} answers to {key['items']} items ({', '.join(stages)}; {alike} "
          f"answer{'s' if alike != 1 else ''} two stages gave alike shown once)")
    print(f"prefopt rating-sheet: wrote {path.parent}/ for the raters ({path.name}, {rating_sheet.GUIDE}: send them "
          f"that folder), and the key {out / rating_sheet.KEY}, which says which model wrote each answer: keep it "
          "from them")
    return 0


def _report(args: argparse.Namespace) -> int:
    from ..fileio import read_json, write_json_atomic, write_text_atomic
    from . import rating_report
    from .rating_sheet import KEY

    key_path = Path(args.key) / KEY if Path(args.key).is_dir() else Path(args.key)
    if not key_path.is_file():
        raise FileNotFoundError(f"--key {args.key}: no {KEY} there (prefopt rating-sheet writes it in its --output "
                                "folder, beside for_raters/)")
    if args.gap <= 0:
        raise ValueError(f"--gap {args.gap:g}: a difference in mean rating above 0 (answers rated alike make no pair)")
    key = read_json(key_path)
    paths = [Path(p) for p in args.ratings]
    names = [p.stem for p in paths]
    if len(set(names)) != len(names):  # two raters' files of one name in different folders
        names = [str(p) for p in paths]
    comments: dict[str, dict[str, str]] = {name: {} for name in names}
    ratings = {name: rating_report.read_ratings(path, key, comments[name]) for name, path in zip(names, paths)}
    if not any(ratings.values()):
        raise ValueError(f"--ratings: no answer is rated in {', '.join(map(str, paths))}: the raters fill the rating "
                         "column of their copies of the sheet (HOW_TO_RATE.txt)")
    summary = rating_report.summarize(key, ratings, n_resamples=args.n_resamples, comments=comments)
    rating_report.unrated_warnings(summary)
    out = Path(args.output) if args.output else key_path.parent
    out.mkdir(parents=True, exist_ok=True)
    summary["plot"] = rating_report.plot(summary, out)
    write_json_atomic(out / "ratings.json", summary)
    write_text_atomic(out / "ratings_report.md", rating_report.report_markdown(summary))
    for c in summary["comparisons"].values():
        print(f"prefopt rating-report: {c['verdict'].replace('**', '')}")
    print(f"prefopt rating-report: wrote {out / 'ratings_report.md'} and ratings.json"
          + (f", and the plot {summary['plot']}" if summary["plot"] else ""))
    if args.training_data:
        _training_data(Path(args.training_data), key, ratings, args.gap)
    return 0


def _training_data(out: Path, key: dict, ratings: dict, gap: float) -> None:
    """``out/pairs.jsonl`` and ``out/feedback.jsonl`` made of the ratings, said where they are."""
    from ..fileio import jsonl_text, write_text_atomic
    from .rating_report import training_data

    pairs, feedback = training_data(key, ratings, gap)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "pairs.jsonl", jsonl_text(pairs))
    write_text_atomic(out / "feedback.jsonl", jsonl_text(feedback))
    print(f"prefopt rating-report: wrote {len(pairs)} pairs (answers to one item whose mean ratings differ by {gap:g} "
          f"or more) to {out / 'pairs.jsonl'} and {len(feedback)} answers rated 4-5 or 1-2 to feedback.jsonl, for "
          "prefopt dpo (--loss kto for feedback); they are test items' answers: test a model trained on them on "
          "other items (compare --strategy ranked --pairs leaves out pairs on its held-out items)")
