"""What a task is: records, prompts, SFT targets, a parser, metrics, and wrong answers.

A :class:`Record` is one item of a task (a message to triage, a question to answer). A
:class:`Task` turns records into chat prompts and SFT targets, parses generated text into a
prediction, scores predictions, and proposes wrong answers for preference pairs. Two kinds:
:class:`ClassificationTask` (one or more labelled fields) and :class:`GenerationTask`
(free text scored by ROUGE or by matching the answer).
"""
from __future__ import annotations

import difflib
import random
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..evaluate.metrics import classification_report, macro_f1, triage_safety
from ..evaluate.rouge import rouge
from ._documents import documents_folder
from ._io import NotALabel
from .parsing import final_answer, find_label


@dataclass
class Record:
    id: str
    prompt: str
    target: str  # the reference answer, as the model should write it
    labels: dict[str, str] = field(default_factory=dict)  # classification: field -> canonical label
    meta: dict[str, Any] = field(default_factory=dict)  # e.g. per-record aliases (option texts)

    def stratum(self) -> str:
        return "|".join(self.labels.values()) if self.labels else ""


def predict_columns(fields: list[str]) -> set[str]:
    """The columns ``prefopt predict`` writes beside a record's own, for a task of these label
    ``fields`` (none: free text): each field's prediction, its word, confidence and likeliest
    label (``predicted`` for free text), the model's output, whether it finished, the record's id
    and the review column. A table of predictions read back (reviewed-pairs; predict run on it
    again) is told from a record's own columns by them: :class:`~.numeric.NumericTable` leaves them
    out of a record's features, and predict writes them anew."""
    return {"model_output", "finished", "record", "review", *([] if fields else ["predicted"]),
            *(f"{head}_{k}{tail}" for k in fields
              for head, tail in [("predicted", ""), ("predicted", "_word"), ("confidence", ""), ("likeliest", "")])}


@dataclass
class LabelField:
    """A labelled output field. For an ordinal field (triage), ``labels`` run from the most to
    the least urgent and the triage-safety metrics are reported."""

    name: str
    labels: list[str]
    aliases: dict[str, list[str]] = field(default_factory=dict)
    ordinal: bool = False


class Task:
    name = "task"
    kind = "generation"
    system: str | None = None
    max_new_tokens = 64
    primary = "rougeL"  # the headline metric, compared between stages by paired bootstrap
    train_length: int | None = None  # max_length its training examples need; compare raises a preset's below it
    # the report's per-item paired test: "mcnemar" on right/wrong items, or "wilcoxon" on a graded
    # per-item score (ROUGE-L), where right/wrong means little (a summary is never word for word)
    item_test = "mcnemar"

    bundled_data = None  # a data file shipped with prefopt, read when no path is given
    folder_files: tuple[str, ...] = ()  # the files read, in this order, when the path is the dataset's folder

    def load(self, path: str, labelled: bool = True) -> list[Record]:
        """The records of the file at ``path``, each with its input row in ``meta["row"]``.
        ``labelled=False``: new records to predict, whose answer columns are not read (they may
        be absent): ``labels`` is {} and ``target`` empty."""
        raise NotImplementedError

    def read(self, path: str | None = None, labelled: bool = True) -> list[Record]:
        """``load(path, labelled)``, or the bundled data where ``path`` is None; a clear error
        where the task ships none (the real datasets are not redistributed with prefopt). A
        folder reads the task's ``folder_files`` in order (ACI-Bench: its train and valid splits);
        for a task whose records are one free text, unlabelled, a folder of documents is its
        records (:mod:`._documents`)."""
        if path and self.folder_files and Path(path).is_dir():
            missing = [f for f in self.folder_files if not (Path(path) / f).is_file()]
            if missing:
                raise FileNotFoundError(f"{path}: no {', '.join(missing)} (task {self.name!r} reads "
                                        f"{', '.join(self.folder_files)} from its folder; or pass one file)")
            return [r for f in self.folder_files for r in self.load(Path(path) / f, labelled)]
        if path and labelled and getattr(self, "file", {}).get("documents") and documents_folder(path):
            raise ValueError(f"{path}: a folder of documents, which hold no labels: prefopt predict answers them, one "
                             "record a document; eval, compare and check-data read a table with the labels")
        if path:
            return self.load(path, labelled)
        if self.bundled_data is None:
            raise ValueError(f"task {self.name!r} ships no data: pass --data with the dataset's file "
                             "(docs/evaluation.md lists each task's format and source)")
        return self.load(self.bundled_data, labelled)

    def messages(self, record: Record) -> list[dict]:
        msgs = [{"role": "system", "content": self.system}] if self.system else []
        return msgs + [{"role": "user", "content": record.prompt}]

    def parse(self, text: str, record: Record):
        raise NotImplementedError

    def parse_output(self, text: str, record: Record, opened: bool = False):
        """:meth:`parse` of a model's output, after its reasoning where it reasons first
        (:func:`~prefopt.tasks.parsing.final_answer`; ``opened``: the prompt opened the block)."""
        return self.parse(final_answer(text, opened)[0], record)

    def correct(self, record: Record, pred) -> bool:
        raise NotImplementedError

    def metrics(self, records: list[Record], preds: list) -> dict:
        raise NotImplementedError

    def item_scores(self, records: list[Record], preds: list) -> np.ndarray:
        """Per-item scores whose mean is a metric (for CIs); classification uses correctness."""
        return np.array([float(self.correct(r, p)) for r, p in zip(records, preds)])

    def primary_on(self, records: list[Record], preds: list):
        """``f(idx) -> primary metric`` on a resample of items (for the paired bootstrap)."""
        scores = self.item_scores(records, preds)
        return lambda idx: float(scores[idx].mean())

    def wrong_answers(self, record: Record, rng: random.Random, others: list[Record], hardest: bool = False) -> list[str]:
        """Plausible wrong answers for ``record`` (``hardest``: the hardest first, where the task can tell)."""
        raise NotImplementedError


def name_list(option: str, value: list[str] | str | None) -> list[str]:
    """A list option of a generic task: a list, or a string split at commas (``--task-option
    labels=urgent,routine``), each name stripped and kept once."""
    names = [str(x).strip() for x in (value.split(",") if isinstance(value, str) else value or [])]
    if "" in names:
        raise ValueError(f"{option}: an empty name in {value!r}")
    return list(dict.fromkeys(names))


class WordMap(dict):
    """:func:`word_map`'s answer: each word, lower-cased, to its label; ``spelt``: each word as the
    option wrote it (``Notfall`` for ``notfall``), for writing a label back in the file's words."""

    def __init__(self, pairs=(), spelt: dict[str, str] | None = None):
        super().__init__(pairs)
        self.spelt = dict(spelt or {})

    def written(self, label: str) -> str:
        """``label`` in the file's word: the first word the map gives it, as the option spelt it;
        the label itself where no word is mapped to it (the file holds it as it is)."""
        return next((self.spelt.get(w, w) for w, x in self.items() if x == label), label)


def word_map(option: str, value: dict | str | None, labels: list[str] | None) -> WordMap:
    """A task's map from a file's own words to its labels (``--task-option
    urgency_map="Notfall=emergency,dringend=urgent"``, or a JSON object): each word lower-cased,
    mapped to one of ``labels`` (None: to any label, lower-cased). A label not among them, a pair
    without ``=`` or a word given twice is a ValueError that names ``option``."""
    if not value:
        return WordMap()
    pairs = value.items() if isinstance(value, dict) else [p.rpartition("=")[::2] if "=" in p else (p, None)
                                                           for p in str(value).split(",") if p.strip()]
    out = WordMap()
    for given, label in pairs or [("", None)]:  # a value of no pair (",") is a mistake, not "no map"
        word, label = str(given).strip().lower(), str(label).strip().lower() if label is not None else None
        if not word or not label:
            raise ValueError(f"{option}: expected WORD=LABEL pairs split by commas, or a JSON object "
                             f"{{\"WORD\": \"LABEL\"}}; got {value!r}")
        if labels is not None and label not in labels:
            raise ValueError(f"{option}: {word}={label}: {label!r} is not one of the task's labels "
                             f"({', '.join(labels)})")
        if out.get(word, label) != label:
            raise ValueError(f"{option}: {word!r} is given twice, as {out[word]!r} and as {label!r}")
        out[word] = label
        out.spelt.setdefault(word, str(given).strip())
    return out


def map_option(mapping: dict[str, str]) -> str | dict[str, str]:
    """``mapping`` as a map option's value, :func:`word_map`'s input: ``WORD=LABEL`` pairs split by
    commas, or the mapping itself (a JSON object) where a word or label holds a comma or ``=``. A
    :class:`WordMap`'s words are written as its option spelt them."""
    spelt = getattr(mapping, "spelt", {})
    mapping = {spelt.get(w, w): x for w, x in mapping.items()}
    if any("," in t or "=" in t for t in (*mapping, *mapping.values())):
        return mapping
    return ",".join(f"{w}={x}" for w, x in mapping.items())


def _letters(label: str) -> str:
    """A label without its digits: ``grade 2`` and ``grade 3`` are the same here."""
    return "".join(ch for ch in label if not ch.isdigit())


def label_list(labels: list[str] | str | None) -> list[str]:
    """A generic task's ``labels`` option as the labels its rows are compared with (lower-cased)."""
    return list(dict.fromkeys(x.lower() for x in name_list("labels", labels)))


class ClassificationTask(Task):
    kind = "classification"
    max_new_tokens = 16
    primary = "macro_f1"
    labels_given = False  # a generic task given its labels: rows must hold one of them (own_label)
    maps: dict[str, WordMap] = {}  # each label field's map from a file's own words to its labels (word_map)
    RARE, COMMON = 3, 10  # labels_read's rare and common classes, in rows

    def __init__(self, fields: list[LabelField]):
        self.fields = fields

    def own_label(self, label: str, path, line: int, column: str, cell: str) -> str:
        """A generic task's ``label``, read from the file's ``cell``; where the labels were given
        (``labels_given``), one of them (:meth:`one_of`)."""
        if self.labels_given:
            return self.one_of(self.fields[0], label, path, line, column, cell, "the labels given")
        return label

    def one_of(self, field: LabelField, label: str, path, line: int, column: str, cell: str,
               offered: str = "the labels") -> str:
        """``label`` of ``field``, read from the file's ``cell``, where it is one of the field's
        labels; else a :class:`~._io.NotALabel` at ``path:line``, field ``column``, that names the
        cell as the file spells it and the map option (``<field>_map``) that would read it."""
        if label not in field.labels:
            raise NotALabel(path, line, column, str(cell).strip(), f"{offered} ({', '.join(field.labels)})",
                            f"{field.name}_map", self.maps.get(field.name, {}))
        return label

    @property
    def label_map(self) -> dict[str, str]:
        """A generic task's map (its one field's: the ``label_map`` option)."""
        return self.maps.get(self.fields[0].name, {})

    def mapped(self, cell: str, field: str) -> str:
        """A label cell of ``field`` as its label: lower-cased, through that field's map (``maps``)."""
        word = cell.strip().lower()
        return self.maps.get(field, {}).get(word, word)

    def written(self, label: str, field: str) -> str:
        """``label`` of ``field`` in the file's own word, where a map reads that field
        (:meth:`WordMap.written`); else the label."""
        mapping = self.maps.get(field)
        return mapping.written(label) if isinstance(mapping, WordMap) else label

    def label_of(self, raw: str) -> str:
        """A generic task's label cell as its label (:meth:`mapped`)."""
        return self.mapped(raw, self.fields[0].name)

    def label_words(self) -> set[str]:
        """What a generic task's label column may hold, to find it by (:func:`~._io.likely_columns`):
        the labels given, and ``label_map``'s words and labels."""
        return {*(self.fields[0].labels if self.labels_given else ()), *self.label_map, *self.label_map.values()}

    def labels_read(self, path, records: list[Record]) -> None:
        """Where no labels were given, the labels ``records`` hold, sorted; a rare one (at most
        ``RARE`` rows) spelt nearly as a common one (``COMMON`` rows or more) is warned of: a
        misspelling in a hand-labelled sheet ("urgnet") is read as a class of its own, which the
        model is trained to answer and macro-F1 averages over. Labels that differ in digits alone
        ("grade 1", "grade 2") are not."""
        if self.fields[0].labels:
            return
        counts = Counter(r.labels["label"] for r in records)
        self.fields[0].labels = sorted(counts)
        common = [c for c, n in counts.items() if n >= self.COMMON]
        for label, n in sorted(counts.items()):
            if n > self.RARE:
                continue
            near = [c for c in difflib.get_close_matches(label, common, n=1, cutoff=0.8)
                    if _letters(c) != _letters(label)]
            if near:
                warnings.warn(f"{path}: label {label!r} ({n} row{'s' if n > 1 else ''}) is spelt nearly as "
                              f"{near[0]!r} ({counts[near[0]]} rows): a misspelling? It is read as a class of its "
                              "own; correct it in the data (or give the labels, --task-option labels=a,b,c, and "
                              "rows of any other are refused)", stacklevel=2)

    def labels_known(self, labelled: bool) -> None:
        """Unlabelled records (``labelled=False``) need the labels given: a generic task reads them
        off its data's rows otherwise, and the prompt lists them."""
        if not labelled and not all(f.labels for f in self.fields):
            raise ValueError(f"task {self.name!r}: records without labels need the labels the model was trained "
                             "on: --task-option labels=a,b,c (the compare report's commands give them)")

    def render(self, labels: dict[str, str], record: Record | None = None) -> str:
        if len(self.fields) == 1:
            return labels[self.fields[0].name]
        return "\n".join(f"{f.name.capitalize()}: {labels[f.name]}" for f in self.fields)

    def choices(self, f: LabelField, record: Record) -> list[str]:
        """The labels of ``f`` that ``record`` may be answered with (all of them, but for MedQA)."""
        return list(f.labels)

    def scored_prefix(self, labels: dict[str, str], record: Record) -> str | None:
        """The start of :meth:`render`'s answer whose probability stands for the whole answer's
        when :mod:`prefopt.evaluate.confidence` scores it; None (the default): the whole answer,
        its end of turn included."""
        return None

    def aliases(self, f: LabelField, record: Record) -> dict[str, list[str]]:
        per_record = record.meta.get("aliases", {}).get(f.name, {})
        return {label: list(f.aliases.get(label, [])) + list(per_record.get(label, [])) for label in f.labels}

    def parse(self, text: str, record: Record) -> dict[str, str | None]:
        return {f.name: find_label(text, self.aliases(f, record), f.name if len(self.fields) > 1 else None)
                for f in self.fields}

    def correct(self, record: Record, pred: dict) -> bool:
        return all(pred.get(f.name) == record.labels[f.name] for f in self.fields)

    def metrics(self, records, preds) -> dict:
        out: dict[str, Any] = {"accuracy": float(np.mean([self.correct(r, p) for r, p in zip(records, preds)]))}
        for f in self.fields:
            gold = [r.labels[f.name] for r in records]
            pred = [p.get(f.name) for p in preds]
            rep = classification_report(gold, pred, f.labels)
            if f.ordinal:
                rep["triage"] = triage_safety(gold, pred, f.labels)
            out[f.name] = rep
        out["macro_f1"] = float(np.mean([out[f.name]["macro_f1"] for f in self.fields]))
        return out

    def primary_on(self, records, preds):
        if self.primary == "accuracy":
            return super().primary_on(records, preds)
        cols = [([r.labels[f.name] for r in records], [p.get(f.name) for p in preds], f.labels) for f in self.fields]
        arrays = [(np.array(g, dtype=object), np.array(p, dtype=object), labels) for g, p, labels in cols]
        return lambda idx: float(np.mean([macro_f1(g[idx].tolist(), p[idx].tolist(), labels)
                                          for g, p, labels in arrays]))

    def wrong_answers(self, record, rng, others, hardest: bool = False):
        """Answers with one field set to a wrong label, fields interleaved in random order.

        By default the wrong labels are drawn in proportion to their frequency in ``others``
        (the training records), so each class is about as often rejected as it is chosen.
        With uniform draws instead, rare classes are rejected far more often than they are
        chosen, and DPO can lower its loss by simply favouring the majority class; on the
        imbalanced triage sets that is what happened. ``hardest=True`` puts the neighbouring
        levels of ordinal fields first (the most realistic triage mistakes), which has the
        same kind of bias towards rejecting the middle level.
        """
        per_field = []
        for f in rng.sample(self.fields, len(self.fields)):
            gold = record.labels[f.name]
            counts = Counter(o.labels.get(f.name) for o in others)
            wrong = [c for c in f.labels if c != gold]
            # a weighted random order: key u^(1/w) (Efraimidis-Spirakis), unseen classes last
            wrong.sort(key=lambda c: -(rng.random() ** (1 / counts[c])) if counts[c] else 1 + rng.random())
            if hardest and f.ordinal:
                i = f.labels.index(gold)
                wrong.sort(key=lambda c: abs(f.labels.index(c) - i))
            per_field.append([self.render({**record.labels, f.name: c}, record) for c in wrong])
        out = []
        for k in range(max(map(len, per_field), default=0)):
            out += [w[k] for w in per_field if k < len(w)]
        return out


class GenerationTask(Task):
    """Free text. ``mode="rouge"`` (summaries) scores ROUGE-L F; ``mode="match"`` (open-ended
    answers) counts an answer correct when it contains the reference answer or recalls at least
    80% of its words (ROUGE-1 recall)."""

    max_new_tokens = 96

    def __init__(self, mode: str = "rouge"):
        if mode not in ("rouge", "match"):
            raise ValueError(f"generation mode must be 'rouge' or 'match', got {mode!r}")
        self.mode = mode
        self.primary = "rougeL" if mode == "rouge" else "accuracy"
        self.item_test = "wilcoxon" if mode == "rouge" else "mcnemar"

    def parse(self, text, record):
        return (text or "").strip()

    def correct(self, record, pred) -> bool:
        if not pred:
            return False
        ref = record.meta.get("answer", record.target)
        if " ".join(ref.lower().split()) in " ".join(pred.lower().split()):
            return True
        return rouge(ref, pred)["rouge1"]["recall"] >= 0.8

    def item_scores(self, records, preds):
        if self.mode == "match":
            return super().item_scores(records, preds)
        return np.array([rouge(r.target, p)["rougeL"]["fmeasure"] for r, p in zip(records, preds)])

    def metrics(self, records, preds) -> dict:
        scores = [rouge(r.target, p) for r, p in zip(records, preds)]
        out = {k: float(np.mean([s[k]["fmeasure"] for s in scores])) for k in ("rouge1", "rouge2", "rougeL")}
        out["accuracy"] = float(np.mean([self.correct(r, p) for r, p in zip(records, preds)]))
        out["empty"] = float(np.mean([not p for p in preds]))
        return out

    def wrong_answers(self, record, rng, others, hardest: bool = False):
        """Another record's reference (a fluent but wrong answer), in random order."""
        pool = [o.target for o in others if o.target != record.target]
        rng.shuffle(pool)
        return pool[:3]
