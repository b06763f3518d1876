"""ROUGE-1, ROUGE-2 and ROUGE-L F-measures, following the ``rouge-score`` package's defaults
(lowercase, non-alphanumerics to spaces, no stemming; ROUGE-L over the longest common
subsequence). Tested against ``rouge-score`` itself."""
from __future__ import annotations

import functools
import re
from collections import Counter

KEYS = ("rouge1", "rouge2", "rougeL")


def tokenize(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).split()


def _f(overlap: int, n_ref: int, n_pred: int) -> tuple[float, float, float]:
    p = overlap / n_pred if n_pred else 0.0
    r = overlap / n_ref if n_ref else 0.0
    return p, r, 2 * p * r / (p + r) if p + r else 0.0


def _ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def _lcs(a: list[str], b: list[str]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


@functools.lru_cache(maxsize=8192)
def _scores(reference: str, prediction: str) -> tuple[tuple[float, float, float], ...]:
    """(precision, recall, F) for ROUGE-1, -2, -L. Cached: a report scores each prediction for its
    metrics, its per-item scores and the bootstrap, and the LCS is quadratic in pure Python."""
    ref, pred = tokenize(reference), tokenize(prediction)
    out = []
    for n in (1, 2):
        r, p = _ngrams(ref, n), _ngrams(pred, n)
        out.append(_f(sum((r & p).values()), sum(r.values()), sum(p.values())))
    out.append(_f(_lcs(ref, pred), len(ref), len(pred)))
    return tuple(out)


def rouge(reference: str, prediction: str) -> dict[str, dict]:
    """``{"rouge1"|"rouge2"|"rougeL": {"precision", "recall", "fmeasure"}}`` (a fresh dict each call)."""
    return {k: dict(zip(("precision", "recall", "fmeasure"), v)) for k, v in zip(KEYS, _scores(reference, prediction))}
