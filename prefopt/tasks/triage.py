"""Triage: KTAS emergency-department records, and patient-portal messages (bundled, synthetic).

KTAS (``data.csv``, ``;``-separated, latin-1; a copy re-saved as UTF-8, or with ``,``, read
alike): chief complaint plus vitals → the expert's KTAS level (1 most urgent … 5), or grouped
(emergency 1-2, urgent 3, non-urgent 4-5), optionally with the disposition (discharge /
admission / transfer-or-other). Codes follow the dataset's documentation (Moon et al., 2019):
sex 1 female 2 male; mental 1 alert, 2 responds to voice, 3 to pain, 4 unresponsive; injury 2
yes; disposition 1 and 4 discharge, 2 ward, 3 ICU, 7 surgery, 5 transfer, 6 death.

Portal messages (``prefopt/tasks/data/portal_messages.jsonl``, see its README): message →
urgency (emergency / urgent / routine) and the staff who should handle it (physician, nurse,
pharmacist, front desk), as in the study's provider-triage task. A team's own messages
(``--data``) may name those columns otherwise and come as any table (options below).
"""
from __future__ import annotations

from functools import partial
from pathlib import Path

from ..data.decoding import read_bytes
from ..data.records import DataError
from ._io import column_cell, file_options, likely_columns, need, one_row, table
from .base import ClassificationTask, LabelField, Record, word_map

PORTAL_DATA = Path(__file__).resolve().parent / "data" / "portal_messages.jsonl"
GROUPS = {"1": "emergency", "2": "emergency", "3": "urgent", "4": "non-urgent", "5": "non-urgent"}
DISPOSITION = {"1": "discharge", "4": "discharge", "2": "admission", "3": "admission", "7": "admission",
               "5": "transfer or other", "6": "transfer or other"}
MENTAL = {"1": "alert", "2": "responds to voice", "3": "responds to pain", "4": "unresponsive"}
URGENCY_ALIASES = {"emergency": ["emergent", "critical", "call 911", "immediately"],
                   "urgent": ["same day", "same-day", "soon"],
                   "non-urgent": ["not urgent", "nonurgent", "non urgent", "routine", "less urgent"],
                   "routine": ["not urgent", "non-urgent", "nonurgent", "non urgent"]}


# a value the dataset lacks: "??", or the error a Turkish Excel wrote for an empty cell (#BOŞ!, "#NULL!"), as
# the published file's bytes read in latin-1 and as a copy re-saved in UTF-8 from a Turkish Excel holds it
MISSING = ("??", "#BOÞ!", "#BOŞ!")


def _f(row: dict, key: str, unit: str = "") -> str:
    v = str(row.get(key, "")).strip().replace(",", ".")
    return f"{v}{unit}" if v and v not in MISSING else "not recorded"


def ktas_encoding(path) -> str:
    """How to read a KTAS file: latin-1, as the dataset is published (its one byte past ASCII is
    the Þ of ``#BOÞ!``), unless the file is UTF-8 throughout, as a copy Excel saved as "CSV UTF-8"
    is, which latin-1 would misread without a word (``#BOÃ\\x9e!`` in 444 prompts). A file that
    cannot be read is left to the reader, which names it."""
    try:
        read_bytes(Path(path)).decode("utf-8")
    except UnicodeDecodeError:
        return "latin-1"
    except (OSError, DataError):
        pass
    return "utf-8"


class KTAS(ClassificationTask):
    name = "ktas"

    def __init__(self, levels: str = "grouped", disposition: bool = False):
        if levels not in ("ktas", "grouped"):
            raise ValueError(f"ktas levels must be 'ktas' (1-5) or 'grouped', got {levels!r}")
        if levels == "ktas":
            urgency = LabelField("urgency", ["1", "2", "3", "4", "5"], ordinal=True)
        else:
            urgency = LabelField("urgency", ["emergency", "urgent", "non-urgent"],
                                 {k: URGENCY_ALIASES[k] for k in ("emergency", "urgent", "non-urgent")}, ordinal=True)
        fields = [urgency]
        if disposition:
            fields.append(LabelField("disposition", ["admission", "discharge", "transfer or other"],
                                     {"admission": ["admit", "admitted", "ward", "icu"],
                                      "discharge": ["discharged", "home"], "transfer or other": ["transfer"]}))
        super().__init__(fields)
        self.levels, self.with_disposition = levels, disposition
        self.max_new_tokens = 24 if disposition else 12

    def render(self, labels, record=None):
        shown = dict(labels)
        if self.levels == "ktas":
            shown["urgency"] = f"KTAS {labels['urgency']}"
        return super().render(shown, record)

    def load(self, path, labelled=True):
        scale = ("KTAS level (1 most urgent to 5 least urgent)" if self.levels == "ktas"
                 else "urgency (emergency, urgent or non-urgent)")
        ask = f"Triage this emergency department patient. Give the {scale}"
        ask += " and the likely disposition (admission, discharge, or transfer or other)." if \
            self.with_disposition else "."
        fmt = "Urgency: <level>\nDisposition: <disposition>" if self.with_disposition else "the level only"
        out = []
        # the delimiter read off the header: ';' as published, ',' where Excel re-saved it in a comma locale
        for line, row in table(path, encoding=ktas_encoding(path)):
            with one_row():
                complaint = need(row, "Chief_complain", path, line)
                labels = self._labels(row, path, line) if labelled else {}
                out.append(Record(f"ktas:{line}", f"{ask} Answer with {fmt}.\n\n{_patient(row, complaint)}", "",
                                  labels, {"row": row}))
        for r in out:
            r.target = self.render(r.labels, r) if labelled else ""
        return out

    def _labels(self, row: dict, path, line: int) -> dict[str, str]:
        level = need(row, "KTAS_expert", path, line)
        if level not in GROUPS:
            raise DataError(path, line, "KTAS_expert", f"expected 1-5, got {level!r}")
        labels = {"urgency": level if self.levels == "ktas" else GROUPS[level]}
        if self.with_disposition:
            d = need(row, "Disposition", path, line)
            if d not in DISPOSITION:
                raise DataError(path, line, "Disposition", f"unknown code {d!r}")
            labels["disposition"] = DISPOSITION[d]
        return labels


def _patient(row: dict, complaint: str) -> str:
    """A KTAS row as the prompt describes the patient."""
    sex = {"1": "female", "2": "male"}.get(str(row.get("Sex")).strip(), "unknown sex")
    return (f"{_f(row, 'Age')}-year-old {sex}, chief complaint: {complaint}.\n"
            f"Injury: {'yes' if str(row.get('Injury')).strip() == '2' else 'no'}; mental status: "
            f"{MENTAL.get(str(row.get('Mental')).strip(), 'not recorded')}; pain score: {_f(row, 'NRS_pain')}.\n"
            f"BP {_f(row, 'SBP')}/{_f(row, 'DBP')} mmHg, HR {_f(row, 'HR')}/min, RR {_f(row, 'RR')}/min, "
            f"temperature {_f(row, 'BT')} C, SpO2 {_f(row, 'Saturation', '%')}.")


class PortalTriage(ClassificationTask):
    """Portal messages: the bundled synthetic ones, or a team's own (``--data``), whose columns may
    be named otherwise (``message_column``, ``urgency_column``, ``staff_column``; an ``id`` column,
    where there is one, names each record) and whose file is read as the generic tasks' are
    (``delimiter``, ``encoding``, ``sheet``: :class:`~.text_classification.TextClassification`).
    Its labels may be in the hospital's own words, each mapped to the task's (``urgency_map``,
    ``staff_map``: ``"Notfall=emergency,dringend=urgent,Routine=routine"``, any case); a cell
    the map does not name is read as it is (a task's own word, or refused)."""

    name = "portal"
    bundled_data = PORTAL_DATA

    def __init__(self, message_column: str = "message", urgency_column: str = "urgency", staff_column: str = "staff",
                 delimiter: str | None = None, encoding: str = "utf-8", sheet: str | None = None,
                 urgency_map: str | dict | None = None, staff_map: str | dict | None = None):
        super().__init__([
            LabelField("urgency", ["emergency", "urgent", "routine"],
                       {k: URGENCY_ALIASES[k] for k in ("emergency", "urgent", "routine")}, ordinal=True),
            LabelField("staff", ["physician", "nurse", "pharmacist", "front desk"],
                       {"physician": ["doctor", "provider"], "nurse": ["nursing"], "pharmacist": ["pharmacy"],
                        "front desk": ["front-desk", "administrative", "admin staff", "reception", "scheduling"]}),
        ])
        self.max_new_tokens = 16
        self.message_column, self.urgency_column, self.staff_column = message_column, urgency_column, staff_column
        self.file = file_options(self, delimiter, encoding, sheet, documents=message_column)
        self.maps = {f.name: word_map(f"{f.name}_map", words, f.labels)
                     for f, words in zip(self.fields, (urgency_map, staff_map))}
        given = {f"{k}_column": getattr(self, f"{k}_column") for k in ("message", "urgency", "staff")
                 if getattr(self, f"{k}_column") != k}
        given.update({f"{k}_map": v for k, v in (("urgency", urgency_map), ("staff", staff_map)) if v})
        given.update({k: v for k, v in self.file.items() if k not in ("task_options", "documents")
                      and v not in (None, "utf-8")})
        self._own_file_options = given  # for the team's file alone: the bundled one is read as it is

    def load(self, path=None, labelled=True):
        path = path or self.bundled_data
        bundled = Path(path).resolve() == self.bundled_data
        if bundled and self._own_file_options:
            named = " ".join(f"{k}={v}" for k, v in self._own_file_options.items())
            what = "these options describe" if len(self._own_file_options) > 1 else "this option describes"
            raise ValueError(f"task 'portal': {named}: {what} your own file, and no --data names one (the "
                             "bundled synthetic messages are read as they are)")
        file = {} if bundled else self.file
        # a missing column's error names the row's likely ones: a label field's, the one cell among its labels (or
        # its map's words); the message's, the longest of the rest
        labels = {f"{f.name}_column": {*f.labels, *self.maps[f.name]} for f in self.fields} if labelled else {}
        likely = partial(likely_columns, longest="message_column", labels=labels)
        out = []
        for line, row in table(path, **file):
            with one_row():
                out.append(self._record(path, line, row, labelled, likely))
        return out

    def _record(self, path, line: int, row: dict, labelled: bool, likely) -> Record:
        msg = column_cell(self, row, "message_column", path, line, likely)
        labels = {}
        for f in self.fields if labelled else []:
            cell = column_cell(self, row, f"{f.name}_column", path, line, likely)
            labels[f.name] = self.one_of(f, self.mapped(cell, f.name), path, line, getattr(self, f"{f.name}_column"),
                                         cell)
        prompt = ("Triage this patient portal message. How urgent is it (emergency, urgent or routine), and "
                  "who should handle it (physician, nurse, pharmacist or front desk)? Answer as\n"
                  f"Urgency: <urgency>\nStaff: <staff>\n\nMessage: {msg}")
        rec = Record(str(row.get("id") or f"portal:{line}"), prompt, "", labels, {"row": row})
        rec.target = self.render(labels, rec) if labelled else ""
        return rec
