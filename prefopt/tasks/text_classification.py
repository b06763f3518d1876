"""Text classification: Medical Abstracts (5 condition classes), or any text + label file."""
from __future__ import annotations

from functools import partial
from pathlib import Path

from ._io import clip, column_cell, convert, file_options, likely_columns, one_row, table
from .base import ClassificationTask, LabelField, Record, label_list, word_map

ABSTRACT_CLASSES = {"1": "neoplasms", "2": "digestive system diseases", "3": "nervous system diseases",
                    "4": "cardiovascular diseases", "5": "general pathological conditions"}


class TextClassification(ClassificationTask):
    """Any CSV/TSV/JSONL with a text column and a label column (``text_column``, ``label_column``);
    a CSV's ``delimiter`` is read off its header unless given, ``encoding`` is UTF-8 unless given;
    ``sheet``: an Excel workbook's sheet to read (else its one sheet in view that holds data);
    ``label_map``: the file's own words (codes) as labels (``"1=neoplasms,2=digestive"``, any case;
    a cell the map does not name is its own label)."""

    name = "text_classification"

    def __init__(self, text_column: str = "text", label_column: str = "label", labels: list[str] | None = None,
                 max_chars: int = 1500, instruction: str | None = None, delimiter: str | None = None,
                 encoding: str = "utf-8", sheet: str | None = None, label_map: str | dict | None = None):
        super().__init__([LabelField("label", label_list(labels))])
        self.labels_given = bool(labels)
        self.maps = {"label": word_map("label_map", label_map, self.fields[0].labels or None)}
        self.text_column, self.label_column, self.max_chars = text_column, label_column, max_chars
        self.instruction, self.file = instruction, file_options(self, delimiter, encoding, sheet, documents=text_column)

    def _likely(self, labelled: bool):
        """The row's likely columns, for a missing one's error: the text the longest cell; the label
        the one cell among the labels given (or label_map's words), else the one other filled column."""
        labels = {"label_column": self.label_words()} if labelled and self.label_words() else None
        return partial(likely_columns, longest="text_column", labels=labels, other="label_column" if labelled else None)

    def load(self, path, labelled=True):
        self.labels_known(labelled)
        out, likely = [], self._likely(labelled)
        for line, row in table(path, **self.file):
            with one_row():
                text = column_cell(self, row, "text_column", path, line, likely)
                labels = {}
                if labelled:
                    cell = column_cell(self, row, "label_column", path, line, likely)
                    labels["label"] = self.own_label(convert(self.label_of, cell, self.label_column, path, line), path,
                                                     line, self.label_column, cell)
                out.append(Record(f"{Path(path).name}:{line}", "", labels.get("label", ""), labels,
                                  {"text": text, "row": row}))
        self.labels_read(path, out)
        options = ", ".join(self.fields[0].labels)
        for r in out:
            r.prompt = (f"{self.instruction or 'Classify this text.'} Answer with one of: {options}.\n\n"
                        f"{clip(r.meta.pop('text'), self.max_chars)}")
        return out


class MedicalAbstracts(TextClassification):
    """``medical_tc.csv`` (condition_label 1-5, medical_abstract)."""

    name = "medical_abstracts"

    def __init__(self, max_chars: int = 1500):
        super().__init__("medical_abstract", "condition_label", list(ABSTRACT_CLASSES.values()), max_chars,
                         "Which condition class does this medical abstract describe?")

    def label_of(self, raw):
        if raw not in ABSTRACT_CLASSES:
            raise ValueError(f"condition_label must be 1-5, got {raw!r}")
        return ABSTRACT_CLASSES[raw]
