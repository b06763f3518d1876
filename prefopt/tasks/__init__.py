"""Medical task adapters, layered on the core (the core never imports this package).

``get_task(name, **options)`` builds a task by name; :data:`TASKS` lists them:

========================  =============================================================
family                    tasks
========================  =============================================================
text classification       ``medical_abstracts``, ``text_classification`` (any text+label)
numeric classification    ``uci_heart`` (binary or multiclass), ``numeric_table``
clinical reasoning        ``medqa``, ``medqa_open`` (free text), ``pubmedqa``
summarization             ``meqsum``, ``aci_bench``, ``summarization`` (any source+target)
triage                    ``ktas`` (KTAS 1-5 or grouped, + disposition), ``portal`` (bundled)
========================  =============================================================
"""
from __future__ import annotations

import inspect

from ..hints import did_you_mean
from .base import ClassificationTask, GenerationTask, LabelField, Record, Task, name_list
from .numeric import NumericTable, UCIHeart
from .pairs import STRATEGIES, model_error_pairs, wrong_label_pairs
from .reasoning import MedQA, MedQAOpen, PubMedQA
from .splits import count_groups, mixed_labels, sample_records, split_records, split_with_test
from .summarization import ACIBench, MeQSum, Summarization
from .text_classification import MedicalAbstracts, TextClassification
from .triage import KTAS, PORTAL_DATA, PortalTriage

TASKS: dict[str, type[Task]] = {t.name: t for t in (
    MedicalAbstracts, TextClassification, UCIHeart, NumericTable, MedQA, MedQAOpen, PubMedQA, MeQSum, ACIBench,
    Summarization, KTAS, PortalTriage)}

FAMILIES = {"text classification": "medical_abstracts", "numeric classification": "uci_heart",
            "clinical reasoning": "medqa", "summarization": "meqsum", "triage": "ktas"}


def get_task(name: str, **options) -> Task:
    """A task by name; ``options`` go to its constructor (e.g. ``levels="ktas"``)."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}{did_you_mean(name, TASKS)}; choose from {', '.join(sorted(TASKS))}")
    known = task_options(name)
    for key in options:
        if key not in known:
            listed = ", ".join(f"{k}={v!r}" for k, v in known.items()) or "none"
            raise ValueError(f"task {name!r} has no option {key!r}{did_you_mean(key, known)}; its options "
                             f"(with their defaults): {listed}")
        options[key] = _option_value(name, key, options[key], known[key])
    try:
        return TASKS[name](**options)
    except TypeError as e:
        raise ValueError(f"task {name!r}: bad option ({e})") from None


_TRUE, _FALSE = ("true", "yes", "1", "on"), ("false", "no", "0", "off")


def _option_value(task: str, key: str, value, default):
    """An option given as text (``--task-option disposition=False``) as its default's kind: a
    yes/no option takes true/false (any case), yes/no, 1/0, on/off; a number option a number."""
    if isinstance(default, bool) and not isinstance(value, bool):
        text = str(value).strip().lower()
        if text in _TRUE + _FALSE:
            return text in _TRUE
        raise ValueError(f"task {task!r}: option {key} is true or false (got {value!r})")
    if isinstance(default, int) and not isinstance(default, bool) and not isinstance(value, int):
        try:
            return int(str(value).strip())
        except ValueError:
            raise ValueError(f"task {task!r}: option {key} is a whole number (got {value!r})") from None
    return value


def prompt_options(name: str, options: dict) -> dict:
    """Task ``name``'s options that change what its model is asked, each with its value given in
    ``options`` (as text or typed; a list of names as the list) or its default: all but those that
    say how to read a file (its ``*_column``, ``*_map``, ``delimiter``, ``encoding``, ``sheet``),
    its ``labels`` (a set, told apart by what they are) and ``max_new_tokens`` (how long an answer
    may run). A temperature fitted on prompts cut at ``max_chars=800`` or asked with another
    ``instruction`` does not fit others (:mod:`prefopt.evaluate.calibration` records and checks
    them)."""
    known, lists = task_options(name), _list_options(name)
    out = {key: _option_value(name, key, options.get(key, default), default) for key, default in known.items()
           if key not in _NOT_ASKED and not key.endswith(("_column", "_map"))}
    return {key: name_list(key, value) if key in lists and value is not None else value for key, value in out.items()}


def _list_options(name: str) -> set[str]:
    """Task ``name``'s options that take a list of names (``feature_columns``), given typed or as
    text split at commas (``age, sex``): :func:`prompt_options` records each as the list the task
    reads, so the two ways of giving it are one."""
    params = inspect.signature(TASKS[name]).parameters.values()
    return {p.name for p in params if str(p.annotation).startswith("list[")}


_NOT_ASKED = ("delimiter", "encoding", "sheet", "labels", "max_new_tokens")


def task_options(name: str) -> dict:
    """The options task ``name`` takes (``--task-option KEY=VALUE``), each with its default."""
    params = inspect.signature(TASKS[name]).parameters.values()
    return {p.name: p.default for p in params
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.default is not p.empty}


__all__ = ["FAMILIES", "PORTAL_DATA", "STRATEGIES", "TASKS", "ClassificationTask", "GenerationTask", "LabelField",
           "Record", "Task", "count_groups", "get_task", "mixed_labels", "model_error_pairs", "prompt_options",
           "sample_records", "split_records", "split_with_test", "task_options", "wrong_label_pairs"]
