"""Paired statistics between two stages evaluated on the same test items.

- :func:`mcnemar_exact`: accuracy, from the discordant pairs (exact binomial, two-sided).
- :func:`paired_bootstrap`: any metric (macro-F1, ROUGE, Likert), resampling items with
  replacement (seeded); percentile 95% CI of the difference, its bootstrap standard error and a
  two-sided bootstrap p-value.
- :func:`best_of_bootstrap`: whether the best of several candidates (the DPO steps a validation
  set chose among) beats a baseline, corrected for having picked it as the best: White's (2000)
  reality check, with Hansen's (2005) recentring of the candidates that are clearly worse.
- :func:`wilcoxon_signed_rank`: Likert scores; exact null distribution when there are at most
  50 non-zero differences and no ties, else the normal approximation with tie correction
  (scipy's defaults: zeros dropped, no continuity correction).
- :func:`wilson_interval`: a proportion's 95% CI (the share of kept answers that were right),
  Wilson's score interval, which stays inside [0, 1] and is not a point at 0 or n of n.
- :func:`binomial_at_least`, :func:`exact_lower`: a binomial's upper tail, exact, and Clopper and
  Pearson's exact interval's lower end (a review threshold's test:
  :func:`~.target_search.review_target`), by the regularized incomplete beta function
  (:func:`beta_cdf`, a continued fraction).

All are checked against independent implementations in the tests (scipy, statsmodels; the best-of
test against the ``arch`` package's SPA, its "consistent" p-value); none is needed at run time.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

ALPHA = 0.05  # a difference counts as significant at p < ALPHA (reports, verdicts, seeds)
Z95 = 1.959963984540054  # the normal distribution's 97.5th percentile


def _binom_two_sided_half(k: int, n: int) -> float:
    """P(X ≤ k or X ≥ n−k) for X ~ Binomial(n, 1/2), with k ≤ n/2."""
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def mcnemar_exact(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> dict:
    """Exact McNemar test that stages A and B have the same accuracy on paired items."""
    if len(correct_a) != len(correct_b):
        raise ValueError("mcnemar: both stages must be scored on the same items")
    b = sum(bool(x) and not bool(y) for x, y in zip(correct_a, correct_b))  # A right, B wrong
    c = sum(not bool(x) and bool(y) for x, y in zip(correct_a, correct_b))  # A wrong, B right
    n = len(correct_a)
    return {"a_only": b, "b_only": c, "p_value": _binom_two_sided_half(min(b, c), b + c),
            "delta": (c - b) / n if n else 0.0}


def paired_bootstrap(stat_a: Callable[[np.ndarray], float], stat_b: Callable[[np.ndarray], float], n: int, *,
                     n_resamples: int = 2000, seed: int = 0, confidence: float = 0.95) -> dict:
    """Bootstrap the difference ``stat_b − stat_a`` over ``n`` paired items.

    ``stat_a(idx)`` / ``stat_b(idx)`` compute a stage's metric on the items ``idx`` (an int
    array, with repeats). The same resampled indices are used for both stages. A metric that is
    undefined on some resamples (NaN: an AUROC where they hold only right or only wrong answers)
    is summarised over the others, and ``n_valid`` says how many those were. ``se``: the standard
    deviation of the resampled differences (the bootstrap's standard error; ``--seeds`` pools seeds
    by it).
    """
    if n < 1:
        raise ValueError("paired_bootstrap: no items")
    if n_resamples < 1:
        raise ValueError("paired_bootstrap: n_resamples must be positive")
    rng = np.random.default_rng(seed)
    full = np.arange(n)
    delta = stat_b(full) - stat_a(full)
    deltas = np.empty(n_resamples)
    for i in range(n_resamples):
        idx = rng.integers(0, n, n)
        deltas[i] = stat_b(idx) - stat_a(idx)
    valid = np.isfinite(deltas)
    extra = {} if valid.all() else {"n_valid": int(valid.sum())}
    if not valid.any():
        return {"delta": float(delta), "ci": [float("nan")] * 2, "se": float("nan"), "p_value": float("nan"),
                "n_resamples": n_resamples, **extra}
    deltas = deltas[valid]
    lo, hi = np.quantile(deltas, [(1 - confidence) / 2, 1 - (1 - confidence) / 2])
    p = min(1.0, 2 * min((deltas <= 0).mean(), (deltas >= 0).mean()))
    se = float(deltas.std(ddof=1)) if deltas.size > 1 else 0.0
    return {"delta": float(delta), "ci": [float(lo), float(hi)], "se": se, "p_value": float(p),
            "n_resamples": n_resamples, **extra}


def p_text(cmp: dict) -> str:
    """``= p``, or ``< 1/n`` for a bootstrap p-value of 0 ("below the resolution of the
    resamples", ``n`` those that counted); ``cmp``: :func:`paired_bootstrap`'s result."""
    n = cmp.get("n_valid", cmp["n_resamples"])
    return f"< {1 / n:.2g}" if cmp["p_value"] == 0 else f"= {cmp['p_value']:.3g}"


def best_of_bootstrap(stat_base: Callable[[np.ndarray], float], stats: Sequence[Callable[[np.ndarray], float]],
                      n: int, *, chosen: int, n_resamples: int = 2000, seed: int = 0) -> dict:
    """One-sided test that candidate ``chosen`` of ``stats`` beats ``stat_base``, where it was
    chosen *because* it scored best of them on these ``n`` items.

    A plain paired bootstrap of the chosen candidate against the baseline ignores the choice: of
    ten candidates no better than the baseline, the best beats it by luck more often than one
    would. Here the null distribution is that of the *largest* difference among all candidates,
    each resampled difference centred on its own observed value (White's reality check). A
    candidate clearly worse than the baseline (its observed difference below ``-c`` bootstrap
    standard errors, ``c = sqrt(2 log log n)``) keeps its negative centre instead of 0 (Hansen's
    consistent recentring), so that the steps where training went wrong do not make the test
    needlessly strict. The p-value is the share of resamples whose largest centred difference
    reaches the chosen candidate's observed one; any rule that picked ``chosen`` from ``stats``
    is covered, the earliest best and a minimum gain included.

    Returns ``delta`` (chosen − baseline on all items), ``p_value``, ``n_candidates`` and
    ``n_resamples``.
    """
    if n < 1 or not stats:
        raise ValueError("best_of_bootstrap: needs items and at least one candidate")
    if not 0 <= chosen < len(stats):
        raise ValueError(f"best_of_bootstrap: chosen {chosen} is not one of the {len(stats)} candidates")
    if n_resamples < 2:
        raise ValueError("best_of_bootstrap: n_resamples must be at least 2")
    rng = np.random.default_rng(seed)
    full = np.arange(n)
    base = stat_base(full)
    observed = np.array([s(full) - base for s in stats])
    diffs = np.empty((n_resamples, len(stats)))
    for i in range(n_resamples):
        idx = rng.integers(0, n, n)
        b = stat_base(idx)
        diffs[i] = [s(idx) - b for s in stats]
    c = math.sqrt(2 * math.log(math.log(n))) if n > math.e else 0.0
    worse = observed < -c * diffs.std(axis=0, ddof=1)
    centre = np.where(worse, observed, 0.0)
    largest = (diffs - observed + centre).max(axis=1)
    delta = float(observed[chosen])
    return {"delta": delta, "p_value": float((largest >= delta).mean()), "n_candidates": len(stats),
            "n_resamples": n_resamples}


def bootstrap_ci(stat: Callable[[np.ndarray], float], n: int, *, n_resamples: int = 2000, seed: int = 0,
                 confidence: float = 0.95) -> list[float]:
    """Percentile CI of one stage's metric (for error bars)."""
    rng = np.random.default_rng(seed)
    vals = [stat(rng.integers(0, n, n)) for _ in range(n_resamples)]
    lo, hi = np.quantile(vals, [(1 - confidence) / 2, 1 - (1 - confidence) / 2])
    return [float(lo), float(hi)]


def average_ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (1-based) with ties sharing their mean rank."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    sx = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sx[j + 1] == sx[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def _exact_cdf(t: float, n: int) -> float:
    """P(R+ ≤ t) under H0, by counting subsets of {1..n} by their sum."""
    top = n * (n + 1) // 2
    counts = np.zeros(top + 1, dtype=np.float64)
    counts[0] = 1
    for k in range(1, n + 1):
        counts[k:] = counts[k:] + counts[:-k].copy()
    return counts[: int(math.floor(t)) + 1].sum() / 2**n


def wilcoxon_signed_rank(a: Sequence[float], b: Sequence[float]) -> dict:
    """Two-sided Wilcoxon signed-rank test on the paired differences ``b − a``."""
    d = np.asarray(b, dtype=float) - np.asarray(a, dtype=float)
    d = d[d != 0]
    n = len(d)
    if n == 0:
        return {"statistic": 0.0, "p_value": 1.0, "n": 0, "method": "none"}
    r = average_ranks(np.abs(d))
    r_plus, r_minus = r[d > 0].sum(), r[d < 0].sum()
    t = min(r_plus, r_minus)
    ties = len(np.unique(np.abs(d))) < n
    if n <= 50 and not ties:
        return {"statistic": float(t), "p_value": min(1.0, 2 * _exact_cdf(t, n)), "n": n, "method": "exact"}
    _, counts = np.unique(r, return_counts=True)
    var = n * (n + 1) * (2 * n + 1) / 24 - (counts**3 - counts).sum() / 48
    z = (t - n * (n + 1) / 4) / math.sqrt(var)
    return {"statistic": float(t), "p_value": float(math.erfc(abs(z) / math.sqrt(2))), "n": n,
            "method": "asymptotic"}


def t_within(t: float, df: int) -> float:
    """P(|T| < t) for Student's t with ``df`` (a whole number, at least 1) degrees of freedom, by
    the closed forms for whole degrees of freedom (Abramowitz and Stegun 26.7.3-4): a
    meta-analysis of a few seeds needs it, and scipy is not a dependency."""
    if df < 1 or int(df) != df:
        raise ValueError(f"t_within: whole degrees of freedom of at least 1, got {df}")
    theta = math.atan(abs(t) / math.sqrt(df))
    c2 = math.cos(theta) ** 2
    if df % 2:  # odd: (2/pi) (theta + sin cos (1 + 2/3 c2 + 2*4/(3*5) c2^2 + ...)), df - 3 over 2 terms after the 1
        if df == 1:
            return 2 * theta / math.pi
        term = total = 1.0
        for k in range(1, (df - 3) // 2 + 1):
            term *= 2 * k / (2 * k + 1) * c2
            total += term
        return 2 / math.pi * (theta + math.sin(theta) * math.cos(theta) * total)
    term = total = 1.0  # even: sin (1 + 1/2 c2 + 1*3/(2*4) c2^2 + ...), df - 2 over 2 terms after the 1
    for k in range(1, (df - 2) // 2 + 1):
        term *= (2 * k - 1) / (2 * k) * c2
        total += term
    return math.sin(theta) * total


def t_critical(df: int, confidence: float = 0.95) -> float:
    """The t with P(|T| < t) = ``confidence`` for ``df`` degrees of freedom (bisection on
    :func:`t_within`): 12.706 for one, 4.303 for two, 1.960 in the limit."""
    lo, hi = 0.0, 1.0
    while t_within(hi, df) < confidence:
        lo, hi = hi, hi * 2
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_within(mid, df) < confidence else (lo, mid)
    return (lo + hi) / 2


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson's score interval for ``k`` successes in ``n`` trials (95% at the default ``z``): the
    proportions a score test at that level would not reject (0 of 0: the whole of [0, 1])."""
    if n == 0:
        return 0.0, 1.0
    p, z2 = k / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz's method), which
    converges fast for ``x < (a + 1) / (a + b + 2)``."""
    tiny = 1e-300

    def kept(v: float) -> float:
        return v if abs(v) > tiny else tiny

    c, d = 1.0, 1.0 / kept(1.0 - (a + b) * x / (a + 1))
    h = d
    for m in range(1, 100_000):
        for term in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),  # the even step, then the odd
                     -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d, c = 1.0 / kept(1.0 + term * d), kept(1.0 + term / c)
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def beta_cdf(x: float, a: float, b: float) -> float:
    """The regularized incomplete beta function ``I_x(a, b)``: the Beta(a, b) distribution's CDF
    at ``x``."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1) / (a + b + 2):
        return front * _beta_fraction(a, b, x) / a
    return 1.0 - front * _beta_fraction(b, a, 1.0 - x) / b


def binomial_at_least(k: int, n: int, p: float) -> float:
    """``P(X >= k)`` for ``X ~ Binomial(n, p)``, exact: the chance of ``k`` or more successes in
    ``n`` trials were each a success with probability ``p``."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    return beta_cdf(p, k, n - k + 1)


def exact_lower(k: int, n: int, confidence: float = 0.95) -> float:
    """The lower end of Clopper and Pearson's exact ``confidence`` interval for ``k`` successes
    in ``n`` trials: the least ``p`` under which ``k`` or more come at least ``(1 - confidence) /
    2`` of the time, so a true share below it gives so many at most that often."""
    if k <= 0 or n <= 0:
        return 0.0
    tail = (1 - confidence) / 2
    if k == n:
        return tail ** (1 / n)
    lo, hi = 0.0, 1.0
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if binomial_at_least(k, n, mid) < tail else (lo, mid)
        if hi - lo < 1e-14:
            break
    return (lo + hi) / 2
