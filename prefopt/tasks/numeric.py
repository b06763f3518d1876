"""Numeric classification: UCI Heart Disease, or any table of numeric columns rendered into text.

Missing values (``?`` or empty) are written as "missing", not dropped. ``target="binary"``
asks "heart disease: yes/no" (num > 0); ``target="multiclass"`` asks for the 0-4 severity.
"""
from __future__ import annotations

import csv
from functools import partial
from pathlib import Path

from ..data.decoding import data_suffix
from ..data.readers import FORMATS
from ..data.records import DataError
from ._io import column_cell, convert, file_options, likely_columns, one_row, set_aside, table
from .base import ClassificationTask, LabelField, Record, label_list, name_list, predict_columns, word_map

UCI_COLUMNS = ["age", "sex", "cp", "trestbps", "chol", "fbs", "restecg", "thalach", "exang", "oldpeak", "slope",
               "ca", "thal", "num"]
UCI_NAMES = {"age": "age (years)", "sex": "sex (1 male, 0 female)", "cp": "chest pain type (1-4)",
             "trestbps": "resting blood pressure (mm Hg)", "chol": "serum cholesterol (mg/dl)",
             "fbs": "fasting blood sugar > 120 mg/dl", "restecg": "resting ECG (0-2)",
             "thalach": "maximum heart rate", "exang": "exercise-induced angina", "oldpeak": "ST depression",
             "slope": "ST slope (1-3)", "ca": "major vessels coloured (0-3)", "thal": "thal (3, 6, 7)"}
MISSING = {"", "?", "na", "nan", "none"}


def _value(v: str) -> str:
    return "missing" if v.strip().lower() in MISSING else v.strip()


class NumericTable(ClassificationTask):
    """Any CSV/TSV/JSONL: ``feature_columns`` rendered as "name: value" lines, ``label_column`` the
    class (``delimiter``, ``encoding``, ``sheet`` and ``label_map`` as for
    :class:`~.text_classification.TextClassification`)."""

    name = "numeric_table"

    def __init__(self, label_column: str = "label", feature_columns: list[str] | None = None,
                 names: dict[str, str] | None = None, labels: list[str] | None = None, question: str | None = None,
                 delimiter: str | None = None, encoding: str = "utf-8", sheet: str | None = None,
                 label_map: str | dict | None = None):
        super().__init__([LabelField("label", label_list(labels))])
        self.maps = {"label": word_map("label_map", label_map, self.fields[0].labels or None)}
        self.labels_given, self.file = bool(labels), file_options(self, delimiter, encoding, sheet)
        self.label_column, self.names = label_column, names or {}
        self.feature_columns = name_list("feature_columns", feature_columns) or None
        self.question = question or "What is the class of this record?"

    def rows(self, path, labelled=True):
        return table(path, **self.file)

    def load(self, path, labelled=True):
        self.labels_known(labelled)
        out = []
        given = {"label_column": self.label_words()} if self.label_words() else None
        likely = partial(likely_columns, longest=None, labels=given)  # a missing label column's likely one
        for line, row in self.rows(path, labelled):
            with one_row():
                out.append(self._record(path, line, row, labelled, likely))
        self.labels_read(path, out)
        for r in out:
            r.prompt = f"{self.question} Answer with one of: {', '.join(self.fields[0].labels)}.\n\n{r.prompt}"
        return out

    def _record(self, path, line: int, row: dict, labelled: bool, likely) -> Record:
        """One row as a record, its prompt the feature lines (the question goes before them once
        every row is read: it lists the labels)."""
        labels = {}
        if labelled:
            cell = column_cell(self, row, "label_column", path, line, likely)
            labels["label"] = self.own_label(convert(self.label_of, cell, self.label_column, path, line), path,
                                             line, self.label_column, cell)
        # every named column but the label (an export's trailing ";;" makes unnamed, empty ones), and in a table of
        # predict's (its model_output column) not those predict wrote: the record as the model was asked it
        skip = {self.label_column, "_source", *(predict_columns([f.name for f in self.fields])
                                                 if "model_output" in row else ())}
        cols = self.feature_columns or [c for c in row if c.strip() and c not in skip]
        for c in cols:
            if c not in row:
                raise DataError(path, line, c, "missing column")
        lines = "\n".join(f"- {self.names.get(c, c)}: {_value(str(row[c]))}" for c in cols)
        return Record(f"{row.get('_source', Path(path).name)}:{line}", lines, labels.get("label", ""), labels,
                      {"row": row})


class UCIHeart(NumericTable):
    """``processed.*.data`` files (no header, 14 columns) or a folder of them."""

    name = "uci_heart"

    def __init__(self, target: str = "binary"):
        if target not in ("binary", "multiclass"):
            raise ValueError(f"uci_heart target must be 'binary' or 'multiclass', got {target!r}")
        labels = ["no", "yes"] if target == "binary" else ["0", "1", "2", "3", "4"]
        q = ("Does this patient have heart disease?" if target == "binary"
             else "What is this patient's heart disease severity (0 none to 4 severe)?")
        super().__init__("num", UCI_COLUMNS[:-1], UCI_NAMES, labels, q)
        self.target = target
        if target == "binary":
            self.fields[0].aliases = {"yes": ["heart disease present"], "no": ["no heart disease"]}

    def label_of(self, raw):
        n = int(float(raw))
        return ("yes" if n > 0 else "no") if self.target == "binary" else str(n)

    def rows(self, path, labelled=True):
        """Each line's values by column name; without labels, a line may also stop before ``num``. A
        table with a header (.csv, .jsonl, a workbook: predict's table of these records, read back by
        reviewed-pairs, or an export) is read by its column names, the dataset's."""
        path = Path(path)
        if path.is_file() and data_suffix(path) in FORMATS:
            yield from table(path)
            return
        files = sorted(path.glob("processed.*.data")) if path.is_dir() else [path]
        if not files:
            raise FileNotFoundError(f"{path}: no processed.*.data files")
        sizes = (len(UCI_COLUMNS),) if labelled else (len(UCI_COLUMNS) - 1, len(UCI_COLUMNS))
        for f in files:
            with open(f, encoding="latin-1") as fh:
                for i, values in enumerate(csv.reader(fh), 1):
                    if not values:
                        continue
                    if len(values) not in sizes:
                        e = DataError(f, i, None, f"expected {' or '.join(map(str, sizes))} values, got {len(values)}")
                        if set_aside(e):
                            continue
                        raise e
                    yield i, {**dict(zip(UCI_COLUMNS, values)), "_source": f.name}
