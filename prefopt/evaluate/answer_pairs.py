"""Preference pairs from a model's own answers (``prefopt make-pairs``).

Each SFT record's reference answer (its completion, or a conversation's last assistant turn) is
the chosen response; what the model (usually the SFT adapter) answers to the same prompt, as the
SFT run tokenized it, is the rejected one, where the two differ. These are on-policy negatives:
DPO then moves the model away from the answers it actually gives and toward the references, with
no preference annotation. Answers that read the same as the reference (case, spacing and end
punctuation aside) make no pair; they are counted, and every answer is kept in ``answers.jsonl``
for review. ``feedback.jsonl`` holds the same answers as KTO's unpaired records, each labelled by
whether it reads as the reference (``prefopt dpo --loss kto``): the right answers the model
gives, which make no pair, are desirable examples there. The run goes block by block, each on
disk before the next, so the same command after a stop goes on from the answers made.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from .._deps import progress
from ..data.columns import column_of, with_columns
from ..data.records import DataError, SFTRecord, control_token_problem, parse_sft, with_system
from ..data.sft import load_records, sources
from ..model.generate import row_seeds
from ..tasks.parsing import final_answer
from ..tokenizer import Tokenizer
from .partial import append_partial, resume, start_partial
from .runner import answer_prompts

BLOCK = 32  # prompts answered between two writes of the partial file
JOB = "make-pairs"
FILES = ("pairs.jsonl", "feedback.jsonl", "answers.jsonl", "make_pairs.json")


@dataclass(frozen=True)
class Prompt:
    """One record's prompt (as SFT tokenizes it) and reference answer, and where it is."""

    file: str
    line: int
    prompt: str | list
    reference: str
    ids: list[int]


def read_prompts(path, tok: Tokenizer, *, columns: dict[str, str] | None = None, max_prompt_length: int | None = None,
                 skip_bad: bool = False) -> tuple[list[Prompt], list[DataError]]:
    """Each SFT record of ``path`` (one file or several, as ``prefopt sft`` reads them) as a
    :class:`Prompt`; a ``{"text"}`` record, which has no prompt, or a conversation that does not
    end with an assistant turn is a bad record like a malformed one (raised, or with
    ``skip_bad`` returned beside the rest). ``max_prompt_length`` keeps each prompt's last tokens."""
    sft = with_columns(parse_sft, columns)

    def parse(row, name, line) -> tuple:  # (prompt, reference, field): every record checked in file order
        return _prompt_and_reference(sft(row, name, line), name, line, columns)

    out, bad = [], []
    for source in sources(path):
        records, report = load_records(source, parse, skip_bad=skip_bad)
        bad += report.skipped
        name = str(report.path)
        for line, (prompt, reference, field) in records:
            try:
                out.append(_prompt(prompt, reference, tok, name, line, column_of(field, columns), max_prompt_length))
            except DataError as e:
                if not skip_bad:
                    raise
                bad.append(e)
    return out, bad


def _prompt_and_reference(rec: SFTRecord, name, line: int, columns) -> tuple:
    if rec.text is not None:
        raise DataError(name, line, column_of("text", columns), "a text record has no prompt to answer; make-pairs "
                                                                "needs prompt/completion or messages records")
    if rec.messages is not None:
        if rec.messages[-1]["role"] != "assistant":
            raise DataError(name, line, column_of("messages", columns), "the last message is not an assistant turn "
                                                                        "(it is the reference answer)")
        return with_system(rec.messages[:-1], rec.system), rec.messages[-1]["content"], "messages"
    return with_system(rec.prompt, rec.system), rec.completion, "completion"


def _prompt(prompt, reference: str, tok: Tokenizer, name: str, line: int, field: str, max_prompt_length) -> Prompt:
    for text in ([prompt] if isinstance(prompt, str) else [m["content"] for m in prompt]) + [reference]:
        if problem := control_token_problem(text, tok):
            raise DataError(name, line, field, problem)
    try:  # the prompt's tokens exactly as SFT trained on them
        enc = tok.encode_prompt_response(prompt, reference)
    except ValueError as e:
        raise DataError(name, line, field, str(e)) from None
    ids = enc.ids[:enc.prompt_len]
    if max_prompt_length is not None:
        ids = ids[-max_prompt_length:]
    return Prompt(name, line, prompt, reference, ids)


def same_answer(a: str, b: str) -> bool:
    """Whether two answers read the same: case, runs of white space and punctuation at either
    end aside (``"Urgent."`` and ``"urgent"``), and a reasoning model's reasoning
    (:func:`~prefopt.tasks.parsing.final_answer`: what follows ``</think>`` is its answer)."""
    def norm(s: str) -> str:
        return re.sub(r"\s+", " ", final_answer(s)[0]).strip().strip(".,;:!?\"'()[] ").casefold()
    return norm(a) == norm(b)


def stamp(prompts: list[Prompt], settings: dict) -> dict:
    """What the answers depend on: ``settings`` and the prompts' tokens (a digest)."""
    h = hashlib.sha256()
    for p in prompts:
        h.update(json.dumps([p.file, p.line, p.ids]).encode() + b"\n")
    return {**settings, "prompts": len(prompts), "prompts_sha256": h.hexdigest()}


def answer(model, tok: Tokenizer, prompts: list[Prompt], *, batch_size: int = 8, max_new_tokens: int = 256,
           show_progress: bool = True, **decode) -> list[dict]:
    """The model's answer to each prompt (:func:`~.runner.answer_prompts`: batched by length, in
    the prompts' order): rows of ``{file, line, reference, answer, finished}``; ``finished`` False
    where ``max_new_tokens`` stopped it. ``decode``: :func:`~prefopt.model.generate.generate`'s
    sampling settings."""
    texts, ended = answer_prompts(model, tok, [p.ids for p in prompts], batch_size=batch_size, desc="answering",
                                  unit="prompt", show_progress=show_progress, max_new_tokens=max_new_tokens, **decode)
    return [{"file": p.file, "line": p.line, "reference": p.reference, "answer": text, "finished": done}
            for p, text, done in zip(prompts, texts, ended)]


def answer_in_blocks(model, tok: Tokenizer, prompts: list[Prompt], out_dir: str | Path, run_stamp: dict,
                     **kw) -> list[dict]:
    """:func:`answer`, :data:`BLOCK` prompts at a time, each block on disk before the next; a
    stopped run with the same :func:`stamp` goes on from the answers it left. A sampling ``seed``
    seeds each prompt by its place among them all (``row_seeds``), so the blocks and the batch
    size change no answer."""
    seeds = row_seeds(kw.pop("seed", None), [p.ids for p in prompts])
    rows = resume(out_dir, run_stamp, JOB)
    if rows:
        print(f"prefopt make-pairs: going on from the {len(rows)} of {len(prompts)} prompts answered before",
              flush=True)
    start_partial(out_dir, run_stamp, rows, JOB)
    bar = progress(total=len(prompts), initial=len(rows), desc="make-pairs", unit="prompt")
    for s in range(len(rows), len(prompts), BLOCK):
        block = answer(model, tok, prompts[s:s + BLOCK], show_progress=False,
                       seed=None if seeds is None else seeds[s:s + BLOCK], **kw)
        append_partial(out_dir, block, JOB)
        rows += block
        bar.update(len(block))
    bar.close()
    return rows


def pairs_from(prompts: list[Prompt], rows: list[dict], *, several_files: bool) -> tuple[list[dict], dict]:
    """The preference pairs (reference chosen, the model's answer rejected) where they differ, and
    the counts: ``same`` (the model gave the reference), ``empty`` (it answered nothing), ``unfinished``
    (pairs whose rejected answer the token cap cut)."""
    pairs, same, empty = [], 0, 0
    for p, row in zip(prompts, rows):
        if not row["answer"]:
            empty += 1
        elif same_answer(row["answer"], p.reference):
            same += 1
        else:
            where = {"file": p.file} if several_files else {}
            pairs.append({"prompt": p.prompt, "chosen": p.reference, "rejected": row["answer"], **where,
                          "line": p.line, "source": "model_answer", "finished": row["finished"]})
    counts = {"prompts": len(prompts), "pairs": len(pairs), "same_as_reference": same, "empty_answers": empty,
              "unfinished_rejected": sum(1 for x in pairs if not x["finished"])}
    return pairs, counts


def feedback_from(prompts: list[Prompt], rows: list[dict], *, several_files: bool) -> list[dict]:
    """KTO's records from the same answers: each non-empty answer, desirable where it reads as the
    reference (:func:`same_answer`), undesirable where not: on-policy feedback, as a grader
    accepting or rejecting the model's drafts would give it."""
    out = []
    for p, row in zip(prompts, rows):
        if row["answer"]:
            where = {"file": p.file} if several_files else {}
            out.append({"prompt": p.prompt, "completion": row["answer"],
                        "label": same_answer(row["answer"], p.reference), **where, "line": p.line,
                        "source": "model_answer", "finished": row["finished"]})
    return out


def summary_line(c: dict) -> str:
    """The counts as a console line."""
    n = max(c["prompts"], 1)
    line = (f"{c['pairs']} pairs from {c['prompts']} prompts; the model gave the reference answer to "
            f"{c['same_as_reference']} ({c['same_as_reference'] / n:.0%}), no pair for those")
    if c["empty_answers"]:
        line += f"; {c['empty_answers']} empty answers skipped"
    if c["unfinished_rejected"]:
        line += (f"; {c['unfinished_rejected']} rejected answers were cut by --max-new-tokens (the cut text is "
                 "what DPO sees)")
    return line
