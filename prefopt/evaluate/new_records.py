"""``prefopt predict``: a trained model's answers to new records that have no labels yet (today's
portal messages, a week of triage notes), written as a table that keeps each input row beside
its prediction, with the settings that made them."""
from __future__ import annotations

import csv
import io
import json
from collections import Counter
from pathlib import Path

from .._deps import progress
from ..data.decoding import data_suffix
from ..data.readers import csv_delimiter
from ..data.sheet_writer import write_sheet
from ..fileio import jsonl_text, write_json_atomic, write_text_atomic
from ..tasks.base import predict_columns
from .confidence import chosen, likeliest, probabilities_for
from .partial import append_partial, keep_answers, resume, start_partial
from .review import DIGITS, PAST_CONTEXT
from .runner import predict, reasoning_opened

BLOCK = 64  # records answered between two appends to the partial file
ROW_FORMAT = 2  # the rows' columns; raised when they change, so that a run does not go on from older rows
FORMATS = ("csv", "tsv", "jsonl", "xlsx", "ods")
FILES = tuple(f"predictions.{f}" for f in FORMATS) + ("predict.json",)  # what a predict folder holds


def table_format(data: str | Path | None, given: str | None = None) -> str:
    """The output's format: ``given`` (``--format``), else the input's (``.csv`` → csv, ``.tsv`` →
    tsv, an Excel workbook → xlsx (an .xls one too), an OpenDocument spreadsheet → ods, a folder
    of documents → csv, anything else, JSONL, JSON or Parquet, → jsonl)."""
    if given:
        if given not in FORMATS:
            raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {given!r}")
        return given
    suffix = data_suffix(data) if data else ""  # (train.csv.gz: csv)
    formats = {".csv": "csv", ".tsv": "tsv", ".xlsx": "xlsx", ".xlsm": "xlsx", ".xls": "xlsx", ".ods": "ods"}
    return formats.get(suffix, "csv" if data and Path(data).is_dir() else "jsonl")


def delimiter_of(data: str | Path | None, fmt: str, task) -> str:
    """The output's delimiter: a tab for tsv; for csv, the input CSV's own (the task's ``delimiter``
    option, else read off its header), so that a spreadsheet that opened the input opens the
    output alike; ``,`` for any other input."""
    if fmt == "tsv":
        return "\t"
    given = getattr(task, "file", {}).get("delimiter")
    if given:
        return given
    if data and data_suffix(data) == ".csv" and Path(data).is_file():
        return csv_delimiter(Path(data), getattr(task, "file", {}).get("encoding", "utf-8"))
    return ","


def predict_rows(model, tok, task, records, *, batch_size: int = 16, confidence: bool = True,
                 show_progress: bool = True, temperature: float = 1.0, **decode) -> list[dict]:
    """The predictions table's rows (:func:`prediction_rows`) for ``records``, e.g. read with
    ``task.read(path, labelled=False)``: greedy answers (``decode``: :func:`~.runner.predict`'s
    settings), parsed, each with its confidence where ``confidence`` and the task has labels to
    score (its probabilities calibrated by ``temperature``: :mod:`.temperature`). In a notebook::

        task = get_task("portal")
        rows = predict_rows(model, tok, task, task.read("new.csv", labelled=False))
    """
    texts, ended = predict(model, tok, task, records, batch_size=batch_size, return_ended=True, desc="predicting",
                           show_progress=show_progress, **decode)
    probabilities = probabilities_for(model, tok, task, records, batch_size=batch_size, command="predict",
                                      show_progress=show_progress, temperature=temperature) if confidence else None
    return prediction_rows(task, records, texts, ended, probabilities, opened=reasoning_opened(tok, task, records))


def predict_in_blocks(model, tok, task, records, out_dir: str | Path, stamp: dict, *, batch_size: int = 16,
                      confidence: bool = True, temperature: float = 1.0, **decode) -> list[dict]:
    """:func:`predict_rows` for ``records``, :data:`BLOCK` at a time, each block's rows on disk in
    ``out_dir``'s partial file before the next starts; where a stopped run with the same ``stamp``
    (:func:`fingerprint`) left one, or a finished one its answers, its rows are kept and the rest
    answered."""
    rows = resume(out_dir, stamp)
    if len(rows) == len(records):
        print(f"prefopt predict: the {len(rows)} records were answered before in {out_dir} by the same model and "
              "settings: their answers are reused (only the table and the review column are written again)",
              flush=True)
    elif rows:
        print(f"prefopt predict: going on from the {len(rows)} of {len(records)} records answered before", flush=True)
    start_partial(out_dir, stamp, rows)
    bar = progress(total=len(records), initial=len(rows), desc="predicting")
    for s in range(len(rows), len(records), BLOCK):
        block = predict_rows(model, tok, task, records[s:s + BLOCK], batch_size=batch_size, confidence=confidence,
                             show_progress=False, temperature=temperature, **decode)
        append_partial(out_dir, block)
        rows += block
        bar.update(len(block))
    bar.close()
    return rows


def prediction_rows(task, records, texts: list[str], ended: list[bool],
                    probabilities: list[dict[str, dict[str, float]]] | None = None, opened: bool = False) -> list[dict]:
    """One row per record: its input row's columns, then the parsed prediction
    (``predicted_<field>`` per labelled field, empty where the answer named none of the labels,
    and where a map reads the field (``urgency_map``, ``label_map``) ``predicted_<field>_word``,
    that label in the file's own word (:meth:`~prefopt.tasks.base.ClassificationTask.written`);
    each followed, where ``probabilities`` (:func:`~.confidence.label_probabilities`) are given,
    by ``confidence_<field>``, the probability the model gives that label, and
    ``likeliest_<field>``, the label it gives the highest probability; ``predicted`` for
    free text), the ``model_output`` it was parsed from, whether the model ``finished`` it
    (False: the ``max_new_tokens`` cap stopped it), and the ``record`` id. A column of the input
    with one of those names is left out (predictions run on a file of earlier predictions renew
    them, in a fresh run's places, and drop those this one does not write). A reasoning model's
    prediction is read after its reasoning (``opened``: the prompt opened the block,
    :func:`~.runner.reasoning_opened`)."""
    preds = [task.parse_output(text, record, opened) for text, record in zip(texts, records)]
    if probabilities is None:
        sure = best = [None] * len(records)
    else:
        sure, best = chosen(task, preds, probabilities), likeliest(task, probabilities)
    worded = {k for k, mapping in getattr(task, "maps", {}).items() if mapping}
    fields = [f.name for f in getattr(task, "fields", ())]
    owned = predict_columns(fields)  # (an earlier run's review column too: this run's threshold writes its own)
    rows = []
    for record, text, done, pred, confidence, top in zip(records, texts, ended, preds, sure, best):
        row = {k: v for k, v in record.meta.get("row", {}).items()  # not a trailing ";;"'s nameless columns,
               if str(k).strip() and not str(k).startswith("_") and k not in owned}  # nor an earlier prediction
        if isinstance(pred, dict):
            for k, v in pred.items():
                row[f"predicted_{k}"] = v or ""
                if k in worded:
                    row[f"predicted_{k}_word"] = task.written(v, k) if v else ""
                if confidence is not None:
                    row[f"confidence_{k}"] = "" if confidence[k] is None else round(confidence[k], DIGITS)
                    row[f"likeliest_{k}"] = top[k]
        else:
            row["predicted"] = pred
        rows.append(row | {"model_output": text, "finished": bool(done), "record": record.id})
    return rows


def counts(task, rows: list[dict]) -> dict:
    """``{"n", "unfinished"}``, and for a classification task ``"labels"`` (each field's predicted
    labels: ``{field: {label: count}}``), ``"unanswered"`` (``{field: count}`` of answers that
    named none of them) and, where the rows have ``likeliest_<field>``, ``"likeliest_unanswered"``
    (``{field: {label: count}}``: those answers' likeliest labels); where the rows have a review
    column, ``"review"`` (how many go to review) and ``"review_by"`` (``{field or past context:
    count}``, a record counted under each reason it has), for the summary line and ``predict.json``."""
    out: dict = {"n": len(rows), "unfinished": sum(not r["finished"] for r in rows)}
    if rows and "review" in rows[0]:
        out["review"] = sum(bool(r["review"]) for r in rows)
        named = Counter(name for r in rows for name in review_reasons(r["review"]))
        fields = [f.name for f in getattr(task, "fields", [])]
        out["review_by"] = {k: named[k] for k in [*fields, PAST_CONTEXT] if named[k]}  # (a record counts in each)
    for f in getattr(task, "fields", []):
        seen = Counter(r[f"predicted_{f.name}"] for r in rows)
        out.setdefault("labels", {})[f.name] = {label: seen[label] for label in f.labels if seen[label]}
        out.setdefault("unanswered", {})[f.name] = seen[""]
        if rows and f"likeliest_{f.name}" in rows[0]:
            guess = Counter(r[f"likeliest_{f.name}"] for r in rows if not r[f"predicted_{f.name}"])
            out.setdefault("likeliest_unanswered", {})[f.name] = {label: guess[label] for label in f.labels
                                                                  if guess[label]}
    return out


def summary(tally: dict) -> str:
    """One line: how many records, each field's predicted labels with counts, how many answers
    named none of them (and their likeliest labels, where scored) or were cut by the cap, how many
    prompts ran past the model's context (``past_context``, where some did)."""
    parts = [f"{tally['n']} records"]
    for name, by_label in tally.get("labels", {}).items():
        missed = tally["unanswered"][name]
        guess = tally.get("likeliest_unanswered", {}).get(name)
        guessed = f" (likeliest_{name}: " + ", ".join(f"{label} {c}" for label, c in guess.items()) + ")" \
            if missed and guess else ""
        parts.append(f"{name}: " + ", ".join([f"{label} {c}" for label, c in by_label.items()]
                                             + ([f"no label {missed}{guessed}"] if missed else [])))
    if tally["unfinished"]:
        parts.append(f"{tally['unfinished']} answers stopped by the max_new_tokens cap")
    if tally.get("past_context"):
        parts.append(f"{tally['past_context']} past the model's context")
    if "review" in tally:
        by = tally.get("review_by", {})
        why = ", ".join(f"{k} {c}" for k, c in by.items()) + "; " if len(by) > 1 else ""
        parts.append(f"{tally['review']} to review ({why}the review column says why)")
    return "; ".join(parts)


def review_reasons(text: str) -> list[str]:
    """What a ``review`` cell (:func:`~.review.mark_review`'s) names: each field below its threshold
    or without a label (``urgency 0.6213; staff no label``: urgency, staff), and
    :data:`~.review.PAST_CONTEXT` where the prompt ran past the model's context."""
    out = []
    for part in filter(None, (p.strip() for p in str(text or "").split(";"))):
        out.append(part if part == PAST_CONTEXT else part.removesuffix(" no label") if part.endswith(" no label")
                   else part.rsplit(" ", 1)[0])
    return out


def table_text(rows: list[dict], fmt: str, delimiter: str = ",") -> str:
    """``rows`` as a JSONL, CSV or TSV text. A CSV/TSV has every row's columns in first-seen order
    and starts with a UTF-8 byte-order mark, so that Excel reads its accents right (prefopt's
    readers drop it); values that are not text (MedQA's options) are written as JSON."""
    if fmt == "jsonl":
        return jsonl_text(rows)
    columns = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, delimiter="\t" if fmt == "tsv" else delimiter, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: v if isinstance(v, str) else json.dumps(v, ensure_ascii=False) for k, v in r.items()})
    return "\ufeff" + buf.getvalue()


def write_table(path: Path, rows: list[dict], fmt: str, delimiter: str = ",", title: str = "Sheet1",
                layout=None) -> None:
    """``rows`` at ``path`` as a table of ``fmt``, written atomically: a workbook (``xlsx``,
    ``ods``: :func:`~prefopt.data.sheet_writer.write_sheet`, its sheet ``title``, laid out by
    ``layout``) or text (``csv``, ``tsv``, ``jsonl``: :func:`table_text`)."""
    if fmt in ("xlsx", "ods"):
        write_sheet(path, rows, title, layout)
    else:
        write_text_atomic(path, table_text(rows, fmt, delimiter))


def write_predictions(out_dir: str | Path, rows: list[dict], fmt: str, delimiter: str, settings: dict) -> Path:
    """``predictions.<fmt>`` and ``predict.json`` (``settings``: what made them) in ``out_dir``,
    each written atomically, then the partial file kept as the run's answers (:func:`~.partial.keep_answers`:
    the same run again reuses them); returns the table's path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"predictions.{fmt}"
    write_table(path, rows, fmt, delimiter, "predictions")
    write_json_atomic(out / "predict.json", settings)
    keep_answers(out)
    return path
