"""ROUGE-1, ROUGE-2 and ROUGE-L F-measures, following the ``rouge-score`` package's defaults
(lowercase, non-alphanumerics to spaces, no stemming; ROUGE-L over the longest common
subsequence). Tested against ``rouge-score`` itself."""
from __future__ import annotations

import re
from collections import Counter


def tokenize(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).split()


def _f(overlap: int, n_ref: int, n_pred: int) -> dict:
    p = overlap / n_pred if n_pred else 0.0
    r = overlap / n_ref if n_ref else 0.0
    return {"precision": p, "recall": r, "fmeasure": 2 * p * r / (p + r) if p + r else 0.0}


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


def rouge(reference: str, prediction: str) -> dict[str, dict]:
    """``{"rouge1"|"rouge2"|"rougeL": {"precision", "recall", "fmeasure"}}``."""
    ref, pred = tokenize(reference), tokenize(prediction)
    out = {}
    for n in (1, 2):
        r, p = _ngrams(ref, n), _ngrams(pred, n)
        out[f"rouge{n}"] = _f(sum((r & p).values()), sum(r.values()), sum(p.values()))
    out["rougeL"] = _f(_lcs(ref, pred), len(ref), len(pred))
    return out
