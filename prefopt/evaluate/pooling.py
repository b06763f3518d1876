"""Seeds' paired differences pooled by a random-effects meta-analysis (``prefopt compare --seeds``,
``prefopt pool-seeds``, ``prefopt study --seeds``): the pooling itself, a seed's standard error, and
how the figures are kept and said. Checked against statsmodels' ``combine_effects`` and by hand
(tests/tasks/test_seeds.py)."""
from __future__ import annotations

import math

from .stats import ALPHA, Z95, p_text, t_critical, t_within

MIN_SE = 1e-3  # below it a seed's CI is a point (its stages answered alike): the seeds are weighted equally
PAIRS = (("base", "sft"), ("sft", "dpo"))  # the stages' differences pooled


def pooled(deltas: list[float], ses: list[float]) -> dict:
    """Random-effects pooling of ``deltas`` with standard errors ``ses``: the between-seed variance
    tau squared by DerSimonian and Laird, the CI and p-value by Hartung-Knapp-Sidik-Jonkman (Student's t
    with seeds - 1 degrees of freedom, the standard error never below DerSimonian-Laird's), since with
    a few seeds the normal distribution's CI is too narrow (DL's normal figures are kept, ``normal``):
    ``{"delta", "se", "ci", "p_value", "df", "tau", "i2", "q", "seeds", "normal"}``. Where a seed's
    difference has no variance of its own (:func:`equally_weighted`), the seeds weighted alike."""
    k = len(deltas)
    if any(s < MIN_SE for s in ses):
        return equally_weighted(deltas)
    se2 = [s ** 2 for s in ses]
    w = [1 / v for v in se2]
    fixed = sum(wi * d for wi, d in zip(w, deltas)) / sum(w)
    q = sum(wi * (d - fixed) ** 2 for wi, d in zip(w, deltas))
    c = sum(w) - sum(wi * wi for wi in w) / sum(w)
    tau2 = max(0.0, (q - (k - 1)) / c) if c > 0 else 0.0
    w_re = [1 / (v + tau2) for v in se2]
    delta = sum(wi * d for wi, d in zip(w_re, deltas)) / sum(w_re)
    se_dl = math.sqrt(1 / sum(w_re))
    spread = sum(wi * (d - delta) ** 2 for wi, d in zip(w_re, deltas)) / (k - 1)  # HKSJ's scale
    se = se_dl * math.sqrt(max(1.0, spread))
    crit = t_critical(k - 1)
    return {"delta": delta, "se": se, "ci": [delta - crit * se, delta + crit * se],
            "p_value": 1 - t_within(delta / se, k - 1), "df": k - 1, "tau": math.sqrt(tau2),
            "i2": max(0.0, (q - (k - 1)) / q) if q > 0 else 0.0, "q": q, "seeds": k,
            "normal": {"se": se_dl, "ci": [delta - Z95 * se_dl, delta + Z95 * se_dl],
                       "p_value": math.erfc(abs(delta) / se_dl / math.sqrt(2))}}


def equally_weighted(deltas: list[float]) -> dict:
    """The seeds' differences as so many observations weighted alike: their mean, its standard error
    from their own spread (``tau``: their standard deviation), Student's t with seeds - 1 degrees of
    freedom; ``weights``: ``"equal"``, ``i2`` and ``q`` None. For seeds of which one's difference has
    no variance of its own (its two stages answered alike, as where the validation guard kept the SFT
    model: exactly 0, a point CI): by the inverse of their variances that seed would take nearly all
    the weight, and the pooled CI would be as narrow as a point, however far the other seeds moved."""
    k = len(deltas)
    delta = sum(deltas) / k
    sd = math.sqrt(sum((d - delta) ** 2 for d in deltas) / (k - 1))
    se = max(sd / math.sqrt(k), MIN_SE)  # (every seed's difference the same: no spread to read a CI off)
    crit = t_critical(k - 1)
    return {"delta": delta, "se": se, "ci": [delta - crit * se, delta + crit * se],
            "p_value": 1 - t_within(delta / se, k - 1), "df": k - 1, "tau": sd, "i2": None, "q": None, "seeds": k,
            "weights": "equal", "normal": {"se": se, "ci": [delta - Z95 * se, delta + Z95 * se],
                                           "p_value": math.erfc(abs(delta) / se / math.sqrt(2))}}


def spread_text(p: dict) -> str:
    """How a pooled difference was pooled, for the end of its line."""
    if p.get("weights") == "equal":
        return (f"the {p['seeds']} seeds weighted equally, t with {p['df']} df, SD {p['tau']:.3f}: a seed's stages "
                "answered alike, a difference without a variance of its own to weight by")
    return f"random effects over {p['seeds']} seeds, t with {p['df']} df, τ = {p['tau']:.3f}, I² = {p['i2']:.0%}"


def se_of(cmp: dict) -> float:
    """A seed's standard error of a difference: its bootstrap's (the resampled differences'
    standard deviation); a run from before prefopt wrote it (2026-12-05) has it read off its 95%
    percentile CI, (hi - lo) / 3.92, as a normal distribution's would be."""
    if "se" in cmp:
        return cmp["se"]
    lo, hi = cmp["ci"]
    return (hi - lo) / (2 * Z95)


def paired_figures(cmp: dict) -> dict:
    """A paired test's figures as seeds.json and study.json keep them (``se`` and ``n_valid`` where
    the comparison has them: ``se`` since 2026-12-05)."""
    return {k: cmp[k] for k in ("delta", "ci", "se", "p_value", "n_resamples", "n_valid") if k in cmp}


def pooled_p(p: dict) -> str:
    """A pooled p-value as text: ``< 0.0001`` below that (1e-122 would say no more), else 3 digits."""
    return "< 0.0001" if p["p_value"] < 1e-4 else f"{p['p_value']:.3g}"


def p_cell(c: dict) -> str:
    """A p-value in a table's cell: a bootstrap's (``< 0.005`` at its resamples' resolution) or a
    pooled test's (:func:`pooled_p`)."""
    return p_text(c).lstrip("= ") if "n_resamples" in c else pooled_p(c)


def figures_text(p: dict) -> str:
    """A pooled difference's figures, and how it was pooled: ``Δ -0.018, 95% CI [...], p = 0.42; ...``."""
    lo, hi = p["ci"]
    return f"Δ {p['delta']:+.3f}, 95% CI [{lo:+.3f}, {hi:+.3f}], p {pooled_p_said(p)}; {spread_text(p)}"


def pooled_p_said(p: dict) -> str:
    """A pooled p-value after "p": ``< 0.0001`` or ``= 0.0123``."""
    return pooled_p(p) if p["p_value"] < 1e-4 else f"= {pooled_p(p)}"


def signs(tests: list[dict], n: int) -> str:
    """On how many of ``n`` seeds the differences ``tests`` went each way, and significantly (p < 0.05)."""
    parts = []
    for word, sign in (("higher", 1), ("lower", -1)):
        on = [t for t in tests if t["delta"] * sign > 0]
        if on:
            firm = sum(t["p_value"] < ALPHA for t in on)
            parts.append(f"{word} on {len(on)} of {n} seeds" + (f", significantly on {firm}" if firm else ""))
    return "; ".join(parts) or "equal on every seed"
