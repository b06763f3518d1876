"""A task's data looked at before ``prefopt compare`` trains on it (``prefopt check-data --task``):
its records read as the task reads them (every bad row with its file, line and field), each
label field's class mix, and the SFT examples compare would build from them measured as any
training file is (:func:`prefopt.data.check.check_data`: lengths, what ``--max-length`` cuts,
repeats)."""
from __future__ import annotations

import inspect
import json
import re
import warnings
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

from ..data import DataError, Records
from ..data.check import SHOW_BAD, answer_line, bad_lines, check_data
from ..data.records import ESCAPES, EscapedText, escape_counts
from ..tokenizer import Tokenizer
from ._io import NotALabel, read_past_bad_rows
from .base import ClassificationTask, Task, map_option
from .splits import count_groups, mixed_labels, overlapping


class TaskCheck(NamedTuple):
    """:func:`check_task_data`'s result."""
    lines: list[str]  # the check, as console lines
    n_bad: int  # bad rows found
    n_kept: int  # records kept
    records: list  # those records (none where the check stopped past its bad rows)


def read_labelled(task: Task, path: str | None) -> list:
    """``task.read(path)`` for eval and compare: a bad row stops it, its error pointing at the check
    that lists every one (:func:`check_task_data`); so does a file that holds no record (an empty
    file, a table of headers only), where a split or a metric would stop on it less plainly."""
    try:
        records = task.read(path)
    except DataError as e:
        if e.line is None:
            raise
        raise DataError(e.path, e.line, e.field, f"{e.reason} (prefopt check-data --task {task.name} lists every "
                                                 "bad row)") from None
    if not records:
        raise ValueError(f"{path or task.bundled_data or task.name}: no {task.name} records (an empty file, or a table "
                         "with no rows under its header?)")
    return records


def read_test_data(task: Task, path: str, sheet: str | None) -> list:
    """:func:`read_labelled` of a test file of ``task``'s (compare's ``--test-data``) with the
    task's options but its ``sheet``: the test workbook's is ``sheet`` (``--test-sheet``; None:
    its one sheet of data), as another file, or another sheet of the same workbook, holds the
    test records."""
    with on_test_sheet(task, sheet):
        return read_labelled(task, path)


@contextmanager
def on_test_sheet(task: Task, sheet: str | None):
    """Within it ``task`` reads a test file (``--test-data``): with its options, but ``sheet`` as
    the workbook's sheet (``--test-sheet``; None: its one sheet of data), and a missing sheet's
    error names ``--test-sheet``."""
    from ..data.sheets import naming_sheet_by

    own = getattr(task, "file", None)  # the options of a task that reads a table of the user's own
    if own is None and sheet is not None:
        raise ValueError(f"--test-sheet {sheet}: task {task.name!r} reads its own data format, not a workbook's sheet")
    if own is not None:
        task.file = {**own, "sheet": sheet}
    try:
        with naming_sheet_by("--test-sheet"):
            yield
    finally:
        if own is not None:
            task.file = own


def check_task_data(task: Task, path: str | None, tok: Tokenizer, *, max_length: int,
                    show_bad: int | None = SHOW_BAD) -> TaskCheck:
    """The check as console lines, how many bad rows it found, how many records it kept and
    those. ``path`` None: the task's bundled data. The read goes on past bad rows
    (:func:`~prefopt.tasks._io.read_past_bad_rows`): past ``show_bad`` of them (None: never) it
    stops and lists those, measuring nothing."""
    records, bad = read_past_bad_rows(task, path, limit=show_bad)
    where = Path(path) if path else Path(task.bundled_data or task.name)
    if records is None:
        return TaskCheck([f"{where}: {task.name} records; more than {show_bad} bad rows, the first {show_bad}:",
                          *bad_lines(bad[:show_bad], show_bad),
                          "  ... and more (--all-bad finds every one and measures what is left: lengths, cuts, the "
                          "class mix)", *unmapped_lines(bad[:show_bad], partial=True)], len(bad), 0, [])
    prompts = [task.messages(r) for r in records]  # rendered once (a document's text, a template), used twice
    examples = Records([{"prompt": p, "completion": r.target} for p, r in zip(prompts, records)],
                       f"{task.name} records")
    with warnings.catch_warnings():  # said below, by record
        warnings.simplefilter("ignore", EscapedText)
        check = check_data(examples, tok, kind="sft", max_length=max_length)
    check.report.path = where
    refused_at = {e.line for e in check.report.skipped}  # what encoding refused, by its example's place
    refused = [_of_record(records[e.line - 1], e) for e in check.report.skipped]
    bad += refused
    check.report.skipped, check.report.n_read = bad, check.report.n_read + len(bad) - len(refused)
    check.title = f"{task.name} records, as compare's SFT examples"
    if isinstance(task, ClassificationTask):  # the labels per field, not the rendered answers
        check.answers = {}
    lines = check.lines(show_bad) + unmapped_lines(bad)
    kept = [r for i, r in enumerate(records, 1) if i not in refused_at]  # what trains: not what encoding refused
    if isinstance(task, ClassificationTask):
        for f in task.fields:
            counts = Counter({label: 0 for label in f.labels})  # a label no record has shows as 0
            counts.update(r.labels[f.name] for r in kept if f.name in r.labels)
            lines.append(answer_line(f.name, counts, limit=len(counts), noun="labels"))
        if coded := coded_labels_line(task):
            lines.append(coded)
    if mixed := mixed_labels(records):
        lines.append(f"  {mixed}")
    lines += [f"  {line}" for line in escape_lines(task, records, prompts)]
    return TaskCheck(lines, len(bad), check.report.n_kept, kept)


def check_test_data(task: Task, path: str, sheet: str | None, training: TaskCheck, tok: Tokenizer, *,
                    max_length: int, show_bad: int | None = SHOW_BAD, group_by: str | None = None) -> TaskCheck:
    """:func:`check_task_data` of a test file (compare's ``--test-data``, read after the training
    data as compare reads it, on ``sheet``), and its lines then set against ``training``'s records
    (:func:`against_training`; with ``group_by``, the test records' groups too, and the training
    records of a test group). Its ``n_bad`` also counts the test records compare would refuse:
    those of a label no training record holds, or with ``group_by`` a record of no group."""
    with on_test_sheet(task, sheet):
        tested = check_task_data(task, path, tok, max_length=max_length, show_bad=show_bad)
    grouped, ok = group_lines(tested.records, group_by)
    both = ok and group_lines(training.records, group_by)[1]  # (the data's own line said where it is not)
    lines, refused = against_training(task, training.records, tested.records, group_by if both else None)
    return tested._replace(lines=tested.lines + grouped + lines, n_bad=tested.n_bad + refused + (not ok))


def unseen_labels(task: Task, tested: list) -> list[tuple]:
    """``(field, records)`` for each label field of which records of ``tested`` (a test file's)
    hold a label the field does not offer (none the training data held, where a classifier
    reads its labels off it): the prompt would not offer it and no answer could be right, so
    compare refuses the file and check-data says so."""
    fields = task.fields if isinstance(task, ClassificationTask) else ()
    return [(f, unseen) for f in fields if (unseen := [r for r in tested if r.labels.get(f.name) not in f.labels])]


def group_lines(records: list, group_by: str | None) -> tuple[list[str], bool]:
    """With ``group_by`` (compare's ``--set group_by``), a line of how many groups ``records`` make,
    each kept in one split, or of why a record cannot be grouped (then False: compare refuses it)."""
    if not group_by or not records:
        return [], True
    try:
        return [f"  group_by {group_by}: {len(records)} records in {count_groups(records, group_by)} groups (the "
                "same text or the same value), each in one split"], True
    except ValueError as e:
        return [f"  {e}"], False


def against_training(task: Task, training: list, tested: list, group_by: str | None = None
                     ) -> tuple[list[str], int]:
    """Lines that set a test file's records against the training data's, and how many test records
    compare would refuse: how many training records it leaves out as the same text (or
    ``group_by``'s value: the same patient) as a test record; per label field, the test records
    of a label no training record holds (the prompt would not offer it, so compare refuses them),
    then each label's share of the test records beside its share of the training records (a later
    period's or another site's mix may differ)."""
    if not training or not tested:
        return [], 0
    lines, refused = [], 0
    if shared := overlapping(training, tested, group_by):
        lines.append(f"  {len(shared)} of {len(training)} training records are also test records (the same text"
                     f"{f' or {group_by}' if group_by else ''}; the first: {shared[0].id}): compare leaves them out "
                     "of training")
    unseen_by_field = {f.name: unseen for f, unseen in unseen_labels(task, tested)}
    for f in task.fields if isinstance(task, ClassificationTask) else ():
        if unseen := unseen_by_field.get(f.name):
            refused += len(unseen)
            words = Counter(r.labels.get(f.name) for r in unseen)
            lines.append(f"  {f.name}: {len(unseen)} test record{'s' * (len(unseen) > 1)} of a label no training "
                         f"record holds ({', '.join(f'{w!r} {n}' for w, n in words.most_common())}; the first: "
                         f"{unseen[0].id}): compare refuses the test file (the prompt offers only {', '.join(f.labels)}"
                         "); --task-option labels=... offers them anyway, or leave those records out")
        test_n, train_n = Counter(r.labels.get(f.name) for r in tested), Counter(r.labels.get(f.name) for r in training)
        shares = [f"{label!r} {test_n[label] / len(tested):.0%} ({train_n[label] / len(training):.0%})"
                  for label in [*f.labels, *(w for w in test_n if w not in f.labels)]]
        lines.append(f"  {f.name}, each label's share of the test records (of the training records): "
                     + ", ".join(shares))
    return lines, refused


def unmapped_lines(errors: list, partial: bool = False) -> list[str]:
    """For check-data: per map option, the words of the file's label cells that are no label
    (:class:`NotALabel`), with their rows, and the option that maps them all (``partial``: read
    from the first bad rows alone)."""
    words: dict[str, dict[str, int]] = {}
    spelt: dict[str, str] = {}  # each word as the file first spells it (the map reads any case)
    for e in errors:
        if isinstance(e, NotALabel):
            seen = words.setdefault(e.option, {})
            word = spelt.setdefault(e.word.lower(), e.word)
            seen[word] = seen.get(word, 0) + 1
    out = []
    for option, seen in words.items():
        seen = dict(sorted(seen.items(), key=lambda x: -x[1]))  # the commonest first (stable: then as met)
        listed = ", ".join(f"{w!r} ({n} row{'s' * (n > 1)})" for w, n in seen.items())
        value = map_option(dict.fromkeys(seen, "LABEL"))
        option_text = f"\"{option}={value}\"" if isinstance(value, str) else \
            f"'{option}={json.dumps(value, ensure_ascii=False)}'"
        out.append(f"  no label{' in the bad rows listed' if partial else ''}: {listed}; where these are your "
                   f"file's own words for labels, --task-option {option_text} reads each as its label "
                   "(else correct those rows)")
    if len(out) > 1:  # a row stops at its first bad cell: its other label's word is not counted
        out.append("  (a row with two such cells is counted by its first)")
    return out


def coded_labels_line(task: ClassificationTask) -> str | None:
    """Where a generic classifier's labels are all numbers (the codes a hospital system exports,
    1 to 5) and no ``label_map`` names them, a line that says so: its prompt offers them bare, so
    the base model can only guess what each means, and how to name them."""
    params = inspect.signature(type(task)).parameters
    labels = task.fields[0].labels
    if "label_map" not in params or task.label_map or len(labels) < 2 or \
            not all(re.fullmatch(r"[-+]?\d+(?:[.,]\d+)?", x) for x in labels):
        return None
    said = "instruction" if "instruction" in params else "question"
    return (f"  the labels are codes ({', '.join(labels)}): the prompt asks for one of them and says nothing of "
            f"what each means, so the base model can only guess; --task-option \"label_map="
            f"{','.join(f'{x}=NAME' for x in labels)}\" names them (or say it in --task-option {said}=...)")


def escape_lines(task: Task, records: list, prompts: list | None = None) -> list[str]:
    """For each kind of text an export escaped (:data:`~prefopt.data.records.ESCAPES`) that the
    records' rows hold (``meta["row"]``, the cells as read: the prompts add the task's own line
    breaks) in the cells their prompts and answers use (a column the task does not read trains
    nothing), how many records and the first's id, in words. ``prompts``: the records' messages
    where the caller rendered them already."""
    def texts(r, messages) -> list[tuple[str, str]]:
        shown = [(m["role"], m["content"]) for m in messages if isinstance(m["content"], str)] + [
            ("target", r.target if isinstance(r.target, str) else "")]
        row = r.meta.get("row")
        if not isinstance(row, dict):
            return shown
        used = "\0".join(text for _, text in shown)
        return [(k, v) for k, v in row.items() if isinstance(v, str) and v.strip() and v.strip() in used]

    prompts = prompts if prompts is not None else map(task.messages, records)
    found = escape_counts((r.id, texts(r, m)) for r, m in zip(records, prompts))
    return [f"{n} of {len(records)} records hold {ESCAPES[kind][0]} (the first: record {first!r}): {ESCAPES[kind][1]}"
            for kind, (n, first, _) in found.items()]


def _of_record(record, e: DataError) -> DataError:
    """An error of the SFT example built from ``record`` (its prompt, its reference answer as the
    completion) as the record's, named by its id (``notes.csv:7``)."""
    what = "its reference answer" if e.field == "completion" else "its prompt"
    return DataError(record.id, None, None, f"{what}: {e.reason}")
