"""Temperature scaling: label probabilities that mean what they say.

A fine-tuned model's label probabilities (:mod:`.confidence`) are often over- or under-confident:
DPO in particular sharpens them past what its accuracy bears out, and a clinical queue sorted by
them, or a threshold set on them, inherits the error. One number fixes most of it (Guo et al.,
ICML 2017): each answer's log-prob is divided by a temperature T before the softmax over a
record's possible answers, T fitted on labelled records the model did not train on by the
likelihood of their right answers. T > 1 softens over-confident probabilities, T < 1 sharpens
under-confident ones. The answers (greedy) and each record's order of its possible answers stay
as they were; a label's probability that sums several answers (portal's urgency, over the staff
fields) may change places with another's, and AUROCs, which compare records, may move.

``prefopt eval --confidence --fit-temperature`` fits T on the records it evaluates and writes
``calibration.json`` (:mod:`.calibration`); ``prefopt eval --calibration FILE`` and ``prefopt
predict --calibration FILE`` divide by it. The fit's effect is estimated on the same records honestly by cross-fitting
(:func:`cross_fitted`): each half's probabilities scaled by the T fitted on the other half.
"""
from __future__ import annotations

import numpy as np

BOUNDS = (0.05, 20.0)  # the temperatures a fit may reach: past them the scores carry almost nothing, or all
FOLDS = 2  # cross-fitting's parts (each fitted on the others)


def right_answer(task, record, scored: list[tuple[dict[str, str], float]]) -> int | None:
    """The index among ``scored`` (a record's possible answers and their log-probs,
    :func:`~.confidence.answer_logprobs`) of the answer that names ``record``'s labels in every
    field, or None where none does (a label the answers do not offer)."""
    want = {f.name: record.labels.get(f.name) for f in task.fields}
    return next((i for i, (labels, _) in enumerate(scored) if labels == want), None)


def _fit_rows(task, records, scored) -> list[tuple[np.ndarray, int]]:
    rows = [(np.array([v for _, v in s], dtype=np.float64), right_answer(task, r, s)) for r, s in zip(records, scored)]
    return [(values, i) for values, i in rows if i is not None]


def _nll(rows: list[tuple[np.ndarray, int]], beta: float) -> float:
    """The mean negative log-likelihood of the right answers with log-probs times ``beta`` (1/T)."""
    total = 0.0
    for values, i in rows:
        z = beta * values
        top = z.max()
        total += top + np.log(np.exp(z - top).sum()) - z[i]
    return total / len(rows)


def _slope(rows: list[tuple[np.ndarray, int]], beta: float) -> float:
    """d NLL / d beta: the mean over records of the log-probs' expectation under the scaled
    softmax less the right answer's log-prob; it rises with beta (the NLL is convex in it)."""
    total = 0.0
    for values, i in rows:
        z = beta * values
        p = np.exp(z - z.max())
        total += float(p @ values / p.sum()) - values[i]
    return total / len(rows)


def fit_temperature(task, records: list, scored: list) -> dict:
    """The temperature that makes ``records``' right answers likeliest under the softmax of their
    answers' log-probs divided by it (``scored``: :func:`~.confidence.answer_logprobs`): the
    root of the convex NLL's slope in 1/T, found by bisection within :data:`BOUNDS`. Returns
    ``temperature``, ``n`` (the records fitted: those whose labels an answer names), the mean NLL
    of their right answers at T = 1 and at the fit (``nll_before``, ``nll_after``) and ``bound``
    (``"low"``/``"high"`` where the fit stopped at a bound, else None)."""
    rows = _fit_rows(task, records, scored)
    if not rows:
        raise ValueError(f"fitting a temperature: none of the {len(records)} records' labels is among its possible "
                         "answers")
    lo, hi = 1 / BOUNDS[1], 1 / BOUNDS[0]  # in beta = 1/T
    bound = None
    if _slope(rows, lo) >= 0:  # flattest is best: the scores tell the right answer no better than chance
        beta, bound = lo, "high"
    elif _slope(rows, hi) <= 0:  # sharpest is best: every right answer far ahead
        beta, bound = hi, "low"
    else:
        for _ in range(60):  # the bracket shrinks 2^60-fold: far past the printed digits
            mid = (lo * hi) ** 0.5
            lo, hi = (mid, hi) if _slope(rows, mid) < 0 else (lo, mid)
        beta = (lo * hi) ** 0.5
    return {"temperature": 1 / beta, "n": len(rows), "nll_before": _nll(rows, 1.0), "nll_after": _nll(rows, beta),
            "bound": bound}


def cross_fitted(task, records: list, scored: list, folds: int = FOLDS) -> list[float]:
    """Each record's temperature fitted without it: the records dealt into ``folds`` parts by
    position (the first to part 0, the second to part 1, ...), each part's T fitted on the
    others. Probabilities scaled so are an honest estimate of the fit's effect on records it did
    not see."""
    if len(records) < 2 * folds:
        raise ValueError(f"cross-fitting a temperature: {len(records)} records are too few for {folds} parts")
    fits = []
    for k in range(folds):
        rest = [i for i in range(len(records)) if i % folds != k]
        fits.append(fit_temperature(task, [records[i] for i in rest], [scored[i] for i in rest])["temperature"])
    return [fits[i % folds] for i in range(len(records))]
