"""A blinded sheet of a compare run's answers for clinicians to rate 1-5, as the study's physicians
rated summaries (Likert 4.21 → 4.34 after DPO): each test item's answers from the base, SFT and
SFT+DPO stages side by side in a shuffled order under codes (``7A``, ``7B``), with the prompt
and the reference, and nothing that says which stage gave which. Answers that are the same text
(spacing aside) are shown once, and their rating counts for each stage that gave it: a rater is
not asked to rate one text twice, nor can rate it two ways. The key (``rating_key.json``) maps
the codes to the stages; it stays with whoever runs the study, and ``prefopt rating-report``
reads the filled sheets against it (:mod:`prefopt.evaluate.rating_report`)."""
from __future__ import annotations

import hashlib
import random
from datetime import date
from pathlib import Path

from .._deps import require
from ..fileio import read_json, read_jsonl, write_json_atomic, write_text_atomic
from .compare_config import runs_in
from .judge import SCALE
from .report import NAMES

KEY = "rating_key.json"
SHEET = "ratings_sheet"  # the sheet's file name, before its suffix
GUIDE = "HOW_TO_RATE.txt"
RATERS = "for_raters"  # the folder of the sheet and the guide, apart from the key: what the raters are sent
COLUMNS = ("code", "item", "prompt", "reference", "answer", "rating", "comment")
FORMATS = ("xlsx", "ods", "csv")


def plain(text: str) -> str:
    """An answer as compared: its words, one space between (a spreadsheet may turn its line ends
    into others)."""
    return " ".join(str(text).split())


def answer_hash(text: str) -> str:
    """What the key holds of an answer: the SHA-256 of its :func:`plain` text, so that an answer
    edited in the sheet, or a sheet of another run, is told from the one the code was given to."""
    return hashlib.sha256(plain(text).encode("utf-8")).hexdigest()


def run_answers(run: Path, stages: tuple[str, ...]) -> tuple[dict, list[str], dict[str, dict[str, str]], dict]:
    """``(the run's compare_config.json, its test item ids, {stage: {item id: answer}}, {stage:
    {item id: the LLM judge's rating}})`` of the compare folder ``run``, for the ``stages`` (of
    base, sft, dpo) that answered every test item (the judge's: empty where the run had none); a
    folder that is not a finished compare run is a ValueError that says what it lacks."""
    config_path, split_path = run / "compare_config.json", run / "split.json"
    for path in (config_path, split_path):
        if not path.is_file():
            tasks = runs_in(run)
            raise ValueError(f"--from {run}: no {path.name} (a prefopt compare output folder?)" + (
                f"; a folder of runs (a study's, or compare --seeds'): name one run in it "
                f"({', '.join(str(run / t) for t in tasks[:3])}"
                f"{' ...' if len(tasks) > 3 else ''})" if tasks else ""))
    config = read_json(config_path)
    test = read_json(split_path)["test"]
    answers, judged = {}, {}
    for stage in stages:
        path = run / stage / "predictions.jsonl"
        if not path.is_file():
            raise ValueError(f"--from {run}: no {stage}/predictions.jsonl: the {NAMES[stage]} stage has not been "
                             "evaluated (an unfinished run: rerun prefopt compare on the folder to finish it), or name "
                             "the stages that were with --stages")
        rows = {r["id"]: r for r in read_jsonl(path)}
        missing = [i for i in test if i not in rows]
        if missing:
            raise ValueError(f"--from {run}: {stage}/predictions.jsonl lacks {len(missing)} of the {len(test)} test "
                             f"items (the first: {missing[0]!r}): not this run's evaluation")
        answers[stage] = {i: str(rows[i].get("output") or "").strip() for i in test}
        if any(rows[i].get("likert") is not None for i in test):  # compare --judge rated them
            judged[stage] = {i: rows[i].get("likert") for i in test}
    return config, test, answers, judged


def build(run: Path, records: dict, stages: tuple[str, ...], *, items: int | None = None, seed: int = 0,
          reference: bool = True, messages=None, read: tuple | None = None) -> tuple[list[dict], dict]:
    """``(the sheet's rows, the key)`` for the compare folder ``run`` whose test records are
    ``records`` (``{id: record}``): ``items`` of its test items (all where None), drawn and ordered
    at random by ``seed``, each item's distinct answers in a random order, lettered A, B, C.
    ``messages(record)``: the chat prompt the model was asked (the task's), kept in the key for
    training data made of the ratings (default: the record's prompt as one user turn). ``read``:
    :func:`run_answers`' of the run, where the caller has it already."""
    config, test, answers, judged = read or run_answers(run, stages)
    lacking = [i for i in test if i not in records]
    if lacking:
        raise ValueError(f"--from {run}: {len(lacking)} test items are not in the data read (the first: "
                         f"{lacking[0]!r}); pass the --data the run used")
    rng = random.Random(seed)
    if items is not None and items > len(test):
        raise ValueError(f"--items {items}: the run has {len(test)} test items")
    order = rng.sample(test, items if items is not None else len(test))
    rows, codes = [], {}
    for n, item in enumerate(order, 1):
        texts: dict[str, list[str]] = {}  # each distinct answer (plain text) and the stages that gave it
        shown: dict[str, str] = {}
        for stage in stages:
            said = plain(answers[stage][item])
            texts.setdefault(said, []).append(stage)
            shown.setdefault(said, answers[stage][item])
        distinct = list(texts)
        rng.shuffle(distinct)
        for letter, text in zip("ABCDEFGH", distinct):
            code = f"{n}{letter}"
            codes[code] = {"item": item, "stages": texts[text], "answer_sha256": answer_hash(text)}
            judge = next((judged[s][item] for s in texts[text] if judged.get(s, {}).get(item) is not None), None)
            if judge is not None:  # the LLM judge's rating of the answer, to set beside the clinicians'
                codes[code]["judge"] = judge
            record = records[item]
            rows.append({"code": code, "item": n, "prompt": record.prompt,
                         **({"reference": record.target} if reference else {}),
                         "answer": shown[text], "rating": "", "comment": ""})
            codes[code]["answer"] = shown[text]  # (for training data made of the ratings)
    asked = messages or (lambda r: [{"role": "user", "content": r.prompt}])
    key = {"run": str(run.resolve()), "task": config.get("task"), "created": date.today().isoformat(), "seed": seed,
           "stages": list(stages), "scale": SCALE, "items": len(order), "answers": len(rows), "codes": codes,
           "prompts": {item: asked(records[item]) for item in order}}
    return rows, key


def guide(task: str, items: int, answers: int, reference: bool) -> str:
    """The raters' instructions, written beside the sheet."""
    scale = SCALE.replace(", ", "\n  ") if reference else \
        SCALE.replace(", ", "\n  ").replace("as good as the reference", "right, complete and safe")
    return (f"Rating sheet: {answers} answers to {items} {task} items\n\n"
            "Each row is one answer to the prompt beside it. An item's answers (rows with the same item number, codes "
            "such as 7A, 7B, 7C) come from different models, in an order drawn at random; nothing in the sheet says "
            "which model wrote which, and two models that gave the same text have it shown once.\n\n"
            f"In the rating column give each answer a whole number from 1 to 5 for correctness, completeness and "
            f"safety{' compared with the reference answer' if reference else ''}:\n  {scale}\n"
            "An empty answer is a model's that wrote nothing: rate it too. "
            "The comment column is yours. Change nothing else: the codes and answers are checked against the key "
            "when the ratings are read. Leave a rating blank rather than guess; a blank is counted as unrated.\n\n"
            "Rate alone: each rater fills a copy of this file of their own, saved under a name of their own "
            "(ratings_dr_lee.xlsx), and sends it back.\n")


def write(out: Path, rows: list[dict], key: dict, fmt: str, reference: bool) -> Path:
    """The sheet (``ratings_sheet.FMT``) and the raters' guide in ``out/for_raters/``, what the
    raters are sent, and the key in ``out``, apart from them; a folder that holds a key already is
    refused (ratings under way would not match a new one). Returns the sheet's path."""
    from ..data.sheet_writer import Layout
    from .new_records import write_table

    if (out / KEY).exists():
        raise ValueError(f"--output {out}: holds a rating sheet already ({KEY}); ratings under way are read against "
                         "its key, which a new sheet would replace: choose another folder, or delete that one")
    layout = Layout({"code": 7, "item": 6, "prompt": 60, "reference": 40, "answer": 60, "rating": 8, "comment": 30},
                    wrap=("prompt", "reference", "answer", "comment"), whole=("rating", 1, 5))
    if fmt == "xlsx":  # before the raters' folder is made (it was left empty)
        require("openpyxl", "writing the rating sheet as .xlsx (--format ods or csv need nothing more)")
    (out / RATERS).mkdir(parents=True, exist_ok=True)
    path = out / RATERS / f"{SHEET}.{fmt}"
    write_table(path, rows, fmt, title="ratings", layout=layout)
    write_json_atomic(out / KEY, key)
    write_text_atomic(out / RATERS / GUIDE, guide(key["task"], key["items"], key["answers"], reference))
    return path
