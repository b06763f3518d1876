"""A task's data looked at before ``prefopt compare`` trains on it (``prefopt check-data --task``):
its records read as the task reads them (a bad row stops with its file, line and field), each
label field's class mix, and the SFT examples compare would build from them measured as any
training file is (:func:`prefopt.data.check.check_data`: lengths, what ``--max-length`` cuts,
repeats)."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from ..data import Records
from ..data.check import answer_line, check_data
from ..tokenizer import Tokenizer
from .base import ClassificationTask, Task


def check_task_data(task: Task, path: str | None, tok: Tokenizer, *, max_length: int) -> list[str]:
    """The check as console lines. ``path`` None: the task's bundled data."""
    records = task.read(path)
    examples = Records([{"prompt": task.messages(r), "completion": r.target} for r in records], f"{task.name} records")
    check = check_data(examples, tok, kind="sft", max_length=max_length)
    check.report.path = Path(path) if path else Path(task.bundled_data or task.name)
    check.title = f"{task.name} records, as compare's SFT examples"
    if isinstance(task, ClassificationTask):  # the labels per field, not the rendered answers
        check.answers = {}
    lines = check.lines()
    if isinstance(task, ClassificationTask):
        for f in task.fields:
            counts = Counter({label: 0 for label in f.labels})  # a label no record has shows as 0
            counts.update(r.labels[f.name] for r in records if f.name in r.labels)
            lines.append(answer_line(f.name, counts, limit=len(counts), noun="labels"))
    return lines
