"""Clinical reasoning: MedQA multiple choice (the letter, optionally with a short rationale),
PubMedQA yes/no/maybe, and a free-text MedQA mode graded by matching the answer text."""
from __future__ import annotations

import json
from pathlib import Path

from ..data.readers import keyed_json
from ..data.records import DataError
from ._io import clip, need, one_row, table
from .base import ClassificationTask, GenerationTask, LabelField, Record

LETTERS = ["A", "B", "C", "D", "E"]


def _medqa_rows(path, labelled=True):
    """``(line, row, question, options, answer letter)`` of each row (the letter None unlabelled)."""
    for line, row in table(path):
        with one_row():
            q = need(row, "question", path, line)
            options = _options(row, path, line)
            answer = None
            if labelled:  # MedQA's answer_idx; a spreadsheet's answer column may hold the letter
                lettered = "answer_idx" not in row and str(row.get("answer") or "").strip().upper() in LETTERS
                name = "answer" if lettered else "answer_idx"
                if name not in row:
                    raise DataError(path, line, name, f"missing field (have: {', '.join(map(str, row))}): the right "
                                    "option's letter (or a column 'answer' of letters)")
                answer = need(row, name, path, line).upper()
                if answer not in options:
                    raise DataError(path, line, name, f"{answer!r} is not one of the options {sorted(options)}")
            yield line, row, q, options, answer


def _options(row: dict, path, line: int) -> dict[str, str]:
    """A question's options by letter: MedQA's ``options`` object (in a table's cell, that object as
    JSON text), else a spreadsheet's columns named by letter (``A`` to ``E``; an empty cell is no
    option: four-option questions beside five-option ones)."""
    options = row.get("options")
    if isinstance(options, str) and options.strip():
        try:
            options = json.loads(options)
        except ValueError:
            options = None
    elif options is None or options == "":
        columns = {str(c).strip().upper(): c for c in row if str(c).strip().upper() in LETTERS}
        cells = {k: str(row[columns[k]]).strip() for k in LETTERS if k in columns and row[columns[k]] is not None}
        options = {k: v for k, v in cells.items() if v}
    if not isinstance(options, dict) or len(options) < 2:
        raise DataError(path, line, "options", "expected an object of lettered options (MedQA's JSONL: "
                        "{\"A\": ..., \"B\": ...}), or a column for each option named A, B, C, ... (a spreadsheet)")
    return {str(k).upper(): str(v) for k, v in options.items()}


class MedQA(ClassificationTask):
    """``medqa_usmle_4options.jsonl``: question, options {A..D}, answer_idx. The model answers
    with the letter and the option's text (``rationale=True`` asks for one sentence of why,
    though the SFT target then has no rationale to imitate; it stays the letter and text)."""

    name = "medqa"
    primary = "accuracy"  # as the study reports clinical reasoning; macro-F1 is in the metrics too

    def __init__(self, rationale: bool = False):
        super().__init__([LabelField("answer", LETTERS[:4])])
        self.rationale = rationale
        self.max_new_tokens = 64 if rationale else 24

    def load(self, path, labelled=True):
        out = []
        for line, row, q, options, answer in _medqa_rows(path, labelled):
            self.fields[0].labels = sorted(set(self.fields[0].labels) | set(options))
            listing = "\n".join(f"{k}) {v}" for k, v in sorted(options.items()))
            ask = "Answer with the letter of the best option" + (
                ", then one sentence of reasoning." if self.rationale else ".")
            prompt = f"{q}\n\n{listing}\n\n{ask}"
            out.append(Record(f"medqa:{line}", prompt, f"{answer}) {options[answer]}" if answer else "",
                              {"answer": answer} if answer else {},
                              {"aliases": {"answer": {k: [v] for k, v in options.items()}}, "options": options,
                               "row": row}))
        return out

    def choices(self, f, record):
        return sorted(record.meta["options"])  # 4 or 5 letters, as the question has them

    def render(self, labels, record=None):
        letter = labels["answer"]
        return f"{letter}) {record.meta['options'][letter]}" if record is not None else letter

    def scored_prefix(self, labels, record):
        """The letter and its parenthesis: the letter picks the option, and its text, fixed by the
        letter, would make a short option likelier than a long one."""
        return f"{labels['answer']})"

    def wrong_answers(self, record, rng, others, hardest: bool = False):
        wrong = [k for k in record.meta["options"] if k != record.labels["answer"]]
        rng.shuffle(wrong)
        return [self.render({"answer": k}, record) for k in wrong]


class MedQAOpen(GenerationTask):
    """MedQA without the options: the model must name the answer; correct when the answer
    text appears in its reply (or 80% of its words do). Like the study's open-ended reasoning."""

    name = "medqa_open"
    max_new_tokens = 32

    def __init__(self):
        super().__init__("match")

    def load(self, path, labelled=True):
        out = []
        for line, row, q, options, answer in _medqa_rows(path, labelled):
            text = options[answer] if answer else ""
            out.append(Record(f"medqa:{line}", f"{q}\n\nAnswer in a few words.", text,
                              meta={"answer": text, "options": options, "row": row}))
        return out

    def wrong_answers(self, record, rng, others, hardest: bool = False):
        wrong = [v for k, v in record.meta["options"].items() if v != record.meta["answer"]]
        rng.shuffle(wrong)
        return wrong


class PubMedQA(ClassificationTask):
    """``ori_pqal.json`` (PQA-L): question + abstract contexts → yes / no / maybe."""

    name = "pubmedqa"
    max_new_tokens = 8

    def __init__(self, max_chars: int = 1500):
        super().__init__([LabelField("answer", ["yes", "no", "maybe"])])
        self.max_chars = max_chars

    def load(self, path, labelled=True):
        path = Path(path)
        out = []
        for line, key, row, by_id in self._rows(path):
            with one_row():
                if isinstance(row, DataError):
                    raise row
                out.append(self._record(path, line, key, row, labelled, by_id))
        return out

    @staticmethod
    def _rows(path: Path):
        """``(line, key, row, by_id)``: PQA-L's own file, one JSON object of records by PubMed id (the
        key, and the line it is on; ``by_id``: its errors name it); else a table's rows (a JSON
        list's too), keyed ``file:line``."""
        if path.suffix == ".json":
            for line, key, row in keyed_json(path):
                if key is not None:
                    yield line, key, row, True
                    continue
                if not isinstance(row, list):  # (keyed_json's one value of a file that is no object)
                    raise DataError(path, 1, None, "expected PubMedQA's object of records by PubMed id "
                                                   "(ori_pqal.json) or a list of records")
                break
            else:
                return
        yield from ((line, f"{path.name}:{line}", row, False) for line, row in table(path))

    def _record(self, path, line: int, key, row, labelled: bool, by_id: bool) -> Record:
        """One record; a bad one's error names its line, and with ``by_id`` (PQA-L's JSON) its
        PubMed id too."""
        def field(name: str) -> str:
            try:
                return need(row, name, path, line)
            except DataError as e:
                if by_id:
                    raise DataError(path, line, name, f"record {key}: {e.reason}") from None
                raise

        if not isinstance(row, dict):
            raise DataError(path, line, None, f"record {key}: expected an object of fields, got {type(row).__name__}")
        pqa_l = any(k in row for k in ("QUESTION", "CONTEXTS", "final_decision"))

        def named(own: str, plain: str) -> str:  # the field as the row names it; a missing one as its layout would
            return own if own in row else plain if plain in row else own if pqa_l else plain

        q = field(named("QUESTION", "question"))
        ctx = _listed(row.get("CONTEXTS") or row.get("context") or [])
        ctx = " ".join(map(str, ctx)) if isinstance(ctx, list) else str(ctx)
        name = named("final_decision", "answer")
        label = field(name).lower() if labelled else ""
        if labelled and label not in ("yes", "no", "maybe"):
            raise DataError(path, line, name, (f"record {key}: " if by_id else "")
                            + f"expected yes, no or maybe, got {label!r}")
        prompt = f"Context: {clip(ctx, self.max_chars)}\n\nQuestion: {q}\n\nAnswer yes, no or maybe."
        return Record(f"pubmedqa:{key}", prompt, label, {"answer": label} if labelled else {}, {"row": row})


def _listed(cell):
    """A context cell as its list of passages where a table holds the list as JSON text (predict's
    CSV of PubMedQA records writes it so: reviewed-pairs reads them back as asked); else the cell."""
    if isinstance(cell, str) and cell.lstrip().startswith("["):
        try:
            value = json.loads(cell)
        except json.JSONDecodeError:
            return cell
        return value if isinstance(value, list) else cell
    return cell
