"""How well a model (+ adapter) predicts held-out SFT records (``prefopt eval-nll``).

Each record is tokenized as SFT trains on it (a completion, a conversation's assistant turns, or
every token of a ``{"text"}`` record, in windows with ``text_windows``) and scored by the
negative log-likelihood of its trained tokens, as SFT's eval loss counts them. The headline is the
NLL per token pooled over all records (and its perplexity), with a bootstrap interval over
records; ``--against`` an earlier evaluation of the same records tests the difference, paired
record by record.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from .._deps import progress
from ..data.collate import packed_collate
from ..data.sft import IGNORE, TokenizedExample
from ..kernels import sequence_logprobs
from ..model import eval_mode
from ..train.distributed import head_operands
from ..train.sft import examples_start
from .stats import bootstrap_ci, p_text, paired_bootstrap


@torch.no_grad()
def example_nll(model, examples: Sequence[TokenizedExample], *, batch_size: int = 8,
                desc: str = "scoring") -> tuple[np.ndarray, np.ndarray]:
    """Each example's summed NLL over its trained tokens and how many they are, under ``model``
    in eval mode; the head's log-softmax is taken a chunk at a time (no ``(B, T, V)`` logits).
    A batch runs as SFT trains with ``pack`` and ``share_start``: its examples end to end in one
    row, the prompt start they all have once (``data.packed_collate``), no padding."""
    device = next(model.parameters()).device
    with eval_mode(model):  # each module's own mode back after, an error or not
        nll, tokens = np.zeros(len(examples)), np.zeros(len(examples))
        bar = progress(total=len(examples), desc=desc, unit="example", delay=2, leave=False)
        for s in range(0, len(examples), batch_size):  # (in order: a packed row has no padding to save)
            chunk = range(s, min(s + batch_size, len(examples)))
            batch = [examples[i] for i in chunk]
            start = examples_start(batch)
            row = packed_collate(batch, start)
            hidden = model(row["input_ids"].to(device), packed=row["lengths"].tolist(), packed_start=start,
                           return_hidden=True)
            labels = row["labels"][:, 1:].to(device)  # position t predicts token t + 1
            logp = sequence_logprobs(*head_operands(model, hidden[:, :-1]), labels, ignore_index=IGNORE)[0]
            logp, trained = logp.float().cpu(), row["labels"][0, 1:] != IGNORE  # on the CPU: no sync a record
            end = start
            for i, n in zip(chunk, row["lengths"].tolist()):  # its tokens: columns [end, end + n) of the row,
                cols = slice(max(end - 1, 0), end + n - 1)  # their labels at logp's [end - 1, end + n - 1)
                nll[i], tokens[i] = -logp[cols].sum().item(), trained[cols].sum().item()
                end += n
            bar.update(len(chunk))
        bar.close()
    return nll, tokens


def by_record(values: np.ndarray, records: Sequence[int]) -> np.ndarray:
    """``values`` per example summed per record (a text's windows are one record)."""
    out = np.zeros(max(records) + 1 if len(records) else 0)
    np.add.at(out, np.asarray(records, dtype=int), values)
    return out


def pooled(nll: np.ndarray, tokens: np.ndarray):
    """The NLL per token over the records ``idx`` (a statistic for the bootstrap)."""
    def stat(idx: np.ndarray) -> float:
        n = tokens[idx].sum()
        return float(nll[idx].sum() / n) if n else math.nan
    return stat


def nll_metrics(nll: np.ndarray, tokens: np.ndarray, *, n_resamples: int = 2000, seed: int = 0) -> dict:
    """Pooled NLL per token with its 95% bootstrap interval over records, and the perplexity."""
    value = pooled(nll, tokens)(np.arange(len(nll)))
    lo, hi = bootstrap_ci(pooled(nll, tokens), len(nll), n_resamples=n_resamples, seed=seed)
    return {"n_records": int(len(nll)), "n_tokens": int(tokens.sum()), "nll_per_token": value, "ci": [lo, hi],
            "perplexity": math.exp(value), "perplexity_ci": [math.exp(lo), math.exp(hi)]}


def place(row: dict) -> tuple:
    """Where a records.jsonl row's record is: its file (where several were read), line and tokens."""
    return row.get("file"), row["line"], row["tokens"]


def check_same_records(rows: list[dict], earlier: list[dict]) -> None:
    """ValueError unless the earlier evaluation's rows are these records (:func:`place`)."""
    if [place(r) for r in rows] != [place(r) for r in earlier]:
        raise ValueError("--against: that evaluation scored other records (their files, lines or token counts "
                         "differ); evaluate both on the same data with the same --max-length and --text-windows")


def against(rows: list[dict], earlier: list[dict], *, n_resamples: int = 2000, seed: int = 0) -> dict:
    """This evaluation's NLL per token against an earlier one's of the same records (another
    adapter, the base model): the difference (this - earlier; below 0, this predicts them better)
    with a paired bootstrap over records."""
    check_same_records(rows, earlier)
    a, b = (np.array([r["nll"] for r in side]) for side in (earlier, rows))
    tokens = np.array([r["tokens"] for r in rows], float)
    c = paired_bootstrap(pooled(a, tokens), pooled(b, tokens), len(rows), n_resamples=n_resamples, seed=seed)
    return {"earlier": pooled(a, tokens)(np.arange(len(a))), "this": pooled(b, tokens)(np.arange(len(b))), **c}


def summary_line(m: dict) -> str:
    lo, hi = m["ci"]
    return (f"NLL per token {m['nll_per_token']:.4f} [{lo:.4f}, {hi:.4f}] (perplexity {m['perplexity']:.2f}) over "
            f"{m['n_records']} records, {m['n_tokens']:,} trained tokens")


def against_line(c: dict, where: str) -> str:
    lo, hi = c["ci"]
    return (f"against {where}: NLL per token {c['this']:.4f} here, {c['earlier']:.4f} there (difference "
            f"{c['delta']:+.4f} [{lo:+.4f}, {hi:+.4f}], paired bootstrap p {p_text(c)}; below 0: this model predicts "
            "the records better)")
