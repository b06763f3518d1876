"""Summarization: MeQSum (consumer question → short question), ACI-Bench (dialogue → note), or
any file with a source and a target column."""
from __future__ import annotations

from functools import partial
from pathlib import Path

from ._io import clip, column_cell, file_options, likely_columns, one_row, table
from .base import GenerationTask, Record


class Summarization(GenerationTask):
    """Any CSV/TSV/JSONL with a source and a target column (``delimiter``, ``encoding`` and ``sheet`` as for
    :class:`~.text_classification.TextClassification`)."""

    name = "summarization"

    def __init__(self, source_column: str = "source", target_column: str = "target",
                 instruction: str = "Summarize the text.", max_chars: int = 3000, max_new_tokens: int = 96,
                 delimiter: str | None = None, encoding: str = "utf-8", sheet: str | None = None):
        super().__init__("rouge")
        self.file = file_options(self, delimiter, encoding, sheet, documents=source_column)
        self.source_column, self.target_column = source_column, target_column
        self.instruction, self.max_chars, self.max_new_tokens = instruction, max_chars, max_new_tokens

    @staticmethod
    def _likely(labelled: bool):
        """The row's likely columns, for a missing one's error: the source the longest cell, the
        target the one other filled column."""
        return partial(likely_columns, longest="source_column", other="target_column" if labelled else None)

    def load(self, path, labelled=True):
        out, likely = [], self._likely(labelled)
        for line, row in table(path, **self.file):
            with one_row():
                src = column_cell(self, row, "source_column", path, line, likely)
                tgt = column_cell(self, row, "target_column", path, line, likely) if labelled else ""
                out.append(Record(f"{Path(path).name}:{line}", f"{self.instruction}\n\n{clip(src, self.max_chars)}",
                                  tgt, meta={"row": row}))
        return out


class MeQSum(Summarization):
    name = "meqsum"

    def __init__(self):
        super().__init__("CHQ", "Summary", "Summarize this patient's question as one short question.", 1500, 48)


class ACIBench(Summarization):
    """ACI-Bench ``train.csv``/``valid.csv`` (dialogue, note), or its folder: both splits, 87
    encounters. Dialogues are long: the prompt keeps their first ``max_chars`` characters, and the
    note target is clipped the same way."""

    name = "aci_bench"
    folder_files = ("train.csv", "valid.csv")
    train_length = 1024  # a clipped dialogue and note: ~930 tokens with SmolLM2 (at 384 every note lost its end)

    def __init__(self, max_chars: int = 2500):
        super().__init__("dialogue", "note", "Write the clinical note for this doctor-patient conversation.",
                         max_chars, 384)  # a note clipped to 1200 characters runs to ~350 tokens with SmolLM2

    def load(self, path, labelled=True):
        out = super().load(path, labelled)
        for r in out:
            r.target = clip(r.target, 1200)
        return out
