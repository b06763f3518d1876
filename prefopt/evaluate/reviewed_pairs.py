"""Training data from a person's review of a model's answers: a ``prefopt predict`` table to which
a person has added the right labels (the task's own label columns, as its data files hold them),
for the rows they checked (those its ``review`` column sent them, say).

Each row a person labelled whose model answer was wrong becomes a preference pair, the person's
answer chosen and the model's own (``model_output``, as it wrote it) rejected: on-policy
negatives, as ``compare --strategy model_errors`` mines them on the training prompts, here on
the records the model met in use. Every labelled row is also a KTO record (the model's answer,
desirable where the person found it right) and an SFT record (the person's answer). Rows without
a label in every field are left out (not reviewed); a label that is none of the task's is refused
with its file, line and column, as everywhere (a typo must not become a training example). Where
the table has predict's review column, the labelled rows also say how often the model was right
on those it answered alone and on those it sent to review (:func:`_audit`).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from ..tasks.base import Record

OUTPUT = "model_output"  # predict's column of the model's answer as written
REVIEW = "review"  # predict's review column (--review-below): empty where the model answered alone
NO_LABEL = ("empty", "missing field")  # how a row's error begins where its label cell is blank or absent


@dataclass
class Reviewed:
    """A reviewed table read: the ``records`` a person labelled (each with its row in
    ``record.meta["row"]``), the lines of the rows ``unlabelled`` (left out), and ``rows``, all."""
    records: list[Record]
    unlabelled: list[int] = field(default_factory=list)
    rows: int = 0


def read_reviewed(task, path: str) -> Reviewed:
    """``path``, a predict table with a person's labels added: its rows read as the task reads its
    data, those with no label in a field left out. Refused where a row's other cells are bad (as
    predict would refuse them), a label is not one of the task's, or the table has no
    ``model_output`` column (not a predict table) or no labelled row."""
    from ..tasks._io import read_past_bad_rows

    every = task.read(path, labelled=False)  # the rows' own problems (an empty message) stop here, located
    if not every:
        raise ValueError(f"{path}: no rows")
    if OUTPUT not in every[0].meta.get("row", {}):
        raise ValueError(f"{path}: no {OUTPUT!r} column: not a prefopt predict table (its answers are the rejected "
                         "side of the pairs); give the predictions file with the person's labels added")
    records, bad = read_past_bad_rows(task, path)
    wrong = next((e for e in bad if not e.reason.startswith(NO_LABEL)), None)
    if wrong is not None:
        raise wrong
    unlabelled = sorted(e.line for e in bad)
    if not records:
        named = [getattr(task, f"{f.name}_column", None) for f in getattr(task, "fields", ())]  # (portal's, say)
        columns = ", ".join(c for c in named if c) or ", ".join(sorted({e.field for e in bad if e.field})) or \
            "the task's label columns"
        raise ValueError(f"{path}: no row has a person's labels ({columns}: {len(unlabelled)} rows without); add "
                         "the right labels in those columns for the rows reviewed (not in the predicted_ columns: "
                         "those hold the model's answers, the rejected side)")
    return Reviewed(records, unlabelled, len(every))


def model_prediction(task, record: Record):
    """What the model answered for ``record``, as predict read it: its ``predicted_<field>``
    columns where the table has every one (a reasoning model's answer read after its reasoning),
    else its ``model_output`` read by the task; free text: ``predicted``, else the output."""
    row = record.meta["row"]
    if task.kind != "classification":
        return row.get("predicted") if "predicted" in row else task.parse_output(str(row[OUTPUT] or ""), record)
    columns = [f"predicted_{f.name}" for f in task.fields]
    if all(c in row for c in columns):
        return {f.name: (str(row[c]).strip() or None) if row[c] is not None else None
                for f, c in zip(task.fields, columns)}
    return task.parse_output(str(row[OUTPUT] or ""), record)


def is_right(task, record: Record, prediction) -> bool:
    """Whether the model's ``prediction`` is the person's answer: every field (classification), or
    the same text, case, spacing and end punctuation aside (free text: any edit is a correction)."""
    from .answer_pairs import same_answer

    if task.kind == "classification":
        return bool(task.correct(record, prediction))
    return same_answer(str(prediction or ""), record.target)


def training_data(task, records: list[Record], *, right_answers: str = "skip", seed: int = 0
                  ) -> tuple[list[dict], list[dict], list[dict], dict]:
    """``(pairs, feedback, sft, counts)`` from the labelled ``records``: a pair for each wrong
    answer (``source`` ``"reviewed"``; with ``right_answers="wrong_label"`` each right one gets a
    pair against a wrong label, as compare's ``model_errors`` falls back); each answer as a KTO
    record; each person's answer as an SFT record. ``counts``: ``labelled``, ``wrong`` (and per
    field, classification), ``empty_answers`` (wrong, not paired: nothing to reject), ``pairs``,
    and where the table has a review column :func:`_audit`'s ``answered_alone`` and
    ``sent_to_review``."""
    from ..tasks.pairs import wrong_label_pairs

    pairs, feedback, sft, right, empty, oks = [], [], [], [], 0, []
    per_field: Counter = Counter()
    for r in records:
        answer = str(r.meta["row"].get(OUTPUT) or "").strip()
        prediction = model_prediction(task, r)
        ok = is_right(task, r, prediction)
        oks.append(ok)
        sft.append({"prompt": task.messages(r), "completion": r.target, "id": r.id})
        if answer:
            feedback.append({"prompt": task.messages(r), "completion": answer, "label": ok, "id": r.id,
                             "source": "reviewed"})
        if ok:
            right.append(r)
            continue
        if task.kind == "classification":
            per_field.update(f.name for f in task.fields if (prediction or {}).get(f.name) != r.labels[f.name])
        if answer:
            pairs.append({"prompt": task.messages(r), "chosen": r.target, "rejected": answer, "id": r.id,
                          "source": "reviewed"})
        else:
            empty += 1
    filled = wrong_label_pairs(task, right, seed=seed) if right_answers == "wrong_label" else []
    counts = {"labelled": len(records), "right": len(right), "wrong": len(records) - len(right),
              **({"wrong_by_field": dict(per_field)} if task.kind == "classification" else {}),
              "empty_answers": empty, "reviewed_pairs": len(pairs), "wrong_label_pairs": len(filled),
              "pairs": len(pairs) + len(filled), **_audit(records, oks)}
    return pairs + filled, feedback, sft, counts


def _audit(records: list[Record], oks: list[bool]) -> dict:
    """Where the table has predict's ``review`` column: how often the model was right on the
    labelled rows it answered alone (the column empty) and on those it sent to review, each
    ``{"labelled", "right", "share", "ci"}`` (Wilson's 95% CI): in use, the figure the review
    threshold was chosen for, on the rows a person labelled (a random sample of those answered
    alone says it for all of them)."""
    from .stats import wilson_interval

    if not records or not all(REVIEW in r.meta["row"] for r in records):
        return {}
    out = {}
    for key, alone in (("answered_alone", True), ("sent_to_review", False)):
        mine = [ok for r, ok in zip(records, oks) if (not str(r.meta["row"][REVIEW] or "").strip()) == alone]
        out[key] = {"labelled": len(mine), "right": sum(mine),
                    **({"share": sum(mine) / len(mine), "ci": list(wilson_interval(sum(mine), len(mine)))}
                       if mine else {})}
    return out


def summary_lines(path: str, reviewed: Reviewed, counts: dict) -> list[str]:
    """The console's account of a reviewed table: rows read, labelled and left out, the model's
    answers right and wrong (per field), the pairs made and, where counted, :func:`_audit`'s."""
    lines = [f"{path}: {reviewed.rows} rows, {counts['labelled']} with a person's labels" + (
        f" ({len(reviewed.unlabelled)} without a label in every field, left out: lines {_lines(reviewed.unlabelled)})"
        if reviewed.unlabelled else "")]
    fields = counts.get("wrong_by_field")
    by_field = f" ({', '.join(f'{k} {v}' for k, v in fields.items())})" if fields else ""
    lines.append(f"the model's answer was right on {counts['right']} and wrong on {counts['wrong']}{by_field}: "
                 f"{counts['reviewed_pairs']} pairs, the person's answer chosen and the model's rejected"
                 + (f"; {counts['empty_answers']} wrong answers were empty (no pair)" if counts["empty_answers"]
                    else "")
                 + (f"; {counts['wrong_label_pairs']} more for the right ones, each against a wrong label"
                    if counts["wrong_label_pairs"] else ""))
    if "answered_alone" in counts:
        alone, review = counts["answered_alone"], counts["sent_to_review"]
        lines.append(f"answered alone (review column empty): {_right_of(alone)}; sent to review: {_right_of(review)}"
                     + ("" if alone["labelled"] else " (label a random sample of those answered alone too: how often "
                        "they are right in use)"))
    return lines


def _right_of(c: dict) -> str:
    if not c["labelled"]:
        return "none labelled"
    return f"{c['right']} of the {c['labelled']} labelled right ({c['share']:.3f} [{c['ci'][0]:.3f}, {c['ci'][1]:.3f}])"


def _lines(lines: list[int], shown: int = 8) -> str:
    return ", ".join(map(str, lines[:shown])) + (f" and {len(lines) - shown} more" if len(lines) > shown else "")
