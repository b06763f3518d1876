"""Classification and triage metrics over gold labels and (possibly missing) predictions.

A prediction of ``None`` (the parser found no answer, e.g. empty output) counts as wrong:
it lowers recall and accuracy but is not a predicted class, so it never adds precision.
"""
from __future__ import annotations

from collections.abc import Sequence

NONE = "<none>"


def accuracy(gold: Sequence, pred: Sequence) -> float:
    return sum(g == p for g, p in zip(gold, pred)) / max(len(gold), 1)


def confusion(gold: Sequence[str], pred: Sequence[str | None], labels: Sequence[str]) -> dict:
    """``{"labels": [...], "matrix": rows=gold, cols=predicted}``; a last column counts ``None``."""
    idx = {label: i for i, label in enumerate(labels)}
    m = [[0] * (len(labels) + 1) for _ in labels]
    for g, p in zip(gold, pred):
        if g in idx:
            m[idx[g]][idx.get(p, len(labels)) if p is not None else len(labels)] += 1
    return {"labels": list(labels) + [NONE], "matrix": m}


def per_class(gold: Sequence[str], pred: Sequence[str | None], labels: Sequence[str]) -> dict[str, dict]:
    out = {}
    for c in labels:
        tp = sum(g == c and p == c for g, p in zip(gold, pred))
        n_pred = sum(p == c for p in pred)
        n_gold = sum(g == c for g in gold)
        prec = tp / n_pred if n_pred else 0.0
        rec = tp / n_gold if n_gold else 0.0
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        out[c] = {"precision": prec, "recall": rec, "f1": f1, "support": n_gold}
    return out


def _present(gold: Sequence[str], labels: Sequence[str]) -> list[str]:
    """The classes of ``labels`` that occur in ``gold`` (macro averages run over these)."""
    seen = set(gold)
    return [c for c in labels if c in seen]


def _macro(pc: dict[str, dict], key: str) -> float:
    return sum(v[key] for v in pc.values()) / max(len(pc), 1)


def macro_f1(gold: Sequence[str], pred: Sequence[str | None], labels: Sequence[str] | None = None) -> float:
    """Mean F1 over the classes present in ``gold`` (or ``labels``), like scikit-learn's macro."""
    labels = list(labels) if labels is not None else sorted(set(gold))
    return _macro(per_class(gold, pred, _present(gold, labels)), "f1")


def classification_report(gold: Sequence[str], pred: Sequence[str | None], labels: Sequence[str]) -> dict:
    pc = per_class(gold, pred, _present(gold, labels))
    return {
        "accuracy": accuracy(gold, pred),
        "macro_precision": _macro(pc, "precision"),
        "macro_recall": _macro(pc, "recall"),
        "macro_f1": _macro(pc, "f1"),
        "unparsed": sum(p is None for p in pred) / max(len(pred), 1),
        "per_class": pc,
        "confusion": confusion(gold, pred, labels),
    }


def triage_safety(gold: Sequence[str], pred: Sequence[str | None], order: Sequence[str]) -> dict:
    """``order`` runs from most to least urgent. Under-triage: predicted less urgent than the
    truth (or no answer: an unreadable triage is unsafe); over-triage: predicted more urgent."""
    rank = {c: i for i, c in enumerate(order)}
    n = max(len(gold), 1)
    under = sum(p is None or rank.get(p, len(order)) > rank[g] for g, p in zip(gold, pred))
    over = sum(p is not None and p in rank and rank[p] < rank[g] for g, p in zip(gold, pred))
    top = order[0]
    n_top = sum(g == top for g in gold)
    return {"under_triage_rate": under / n, "over_triage_rate": over / n,
            "most_urgent_recall": (sum(g == top and p == top for g, p in zip(gold, pred)) / n_top) if n_top else None,
            "most_urgent_class": top}
