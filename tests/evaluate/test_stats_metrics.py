"""Metrics by hand, ROUGE against rouge-score, statistics against scipy."""
import numpy as np
import pytest

from prefopt.evaluate.metrics import classification_report, confusion, macro_f1, triage_safety
from prefopt.evaluate.rouge import rouge
from prefopt.evaluate.stats import bootstrap_ci, mcnemar_exact, paired_bootstrap, wilcoxon_signed_rank


def test_classification_metrics_by_hand():
    gold = ["a", "a", "b", "b", "c"]
    pred = ["a", "b", "b", None, "a"]
    r = classification_report(gold, pred, ["a", "b", "c"])
    assert r["accuracy"] == pytest.approx(2 / 5)
    # a: P=1/2 R=1/2 F=1/2; b: P=1/2 R=1/2 F=1/2; c: P=0 R=0 F=0
    assert r["macro_f1"] == pytest.approx(1 / 3)
    assert r["per_class"]["a"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert r["unparsed"] == pytest.approx(1 / 5)
    assert confusion(gold, pred, ["a", "b", "c"])["matrix"] == [[1, 1, 0, 0], [0, 1, 0, 1], [1, 0, 0, 0]]


def test_macro_f1_matches_sklearn_style_on_present_classes():
    gold = ["x", "y", "y", "z"]
    pred = ["x", "y", "z", "z"]
    # x: F1 1; y: P 1, R .5, F 2/3; z: P .5 R 1 F 2/3
    assert macro_f1(gold, pred) == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)


def test_triage_safety_rates():
    order = ["emergency", "urgent", "routine"]
    gold = ["emergency", "emergency", "urgent", "routine", "routine"]
    pred = ["emergency", "urgent", "emergency", None, "routine"]
    s = triage_safety(gold, pred, order)
    assert s["under_triage_rate"] == pytest.approx(2 / 5)  # emergency->urgent, and the unreadable one
    assert s["over_triage_rate"] == pytest.approx(1 / 5)
    assert s["most_urgent_recall"] == pytest.approx(1 / 2)


@pytest.mark.parametrize("ref,pred", [
    ("What are the side effects of metformin?", "what side effects does metformin have"),
    ("Is it safe to take ibuprofen with lisinopril?", "Can I take ibuprofen and lisinopril together? Is it safe?"),
    ("How long does flu last", ""),
    ("The patient reports chest pain, 3 days.", "Chest pain for 3 days; patient reports."),
])
def test_rouge_matches_rouge_score(ref, pred):
    rs = pytest.importorskip("rouge_score.rouge_scorer")
    want = rs.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False).score(ref, pred)
    got = rouge(ref, pred)
    for k in ("rouge1", "rouge2", "rougeL"):
        assert got[k]["fmeasure"] == pytest.approx(want[k].fmeasure, abs=1e-12)
        assert got[k]["precision"] == pytest.approx(want[k].precision, abs=1e-12)


def test_rouge_is_cached_but_hands_out_fresh_dicts():
    ref, pred = "chest pain for three days", "three days of chest pain"
    first = rouge(ref, pred)
    first["rougeL"]["fmeasure"] = -1.0  # a caller editing its result must not poison the cache
    again = rouge(ref, pred)
    assert again["rougeL"]["fmeasure"] == pytest.approx(0.4) and again is not first  # LCS "chest pain": 2 of 5


@pytest.mark.parametrize("b,c", [(0, 0), (3, 9), (10, 2), (25, 31), (7, 7), (0, 12)])
def test_mcnemar_matches_scipy_binomtest(b, c):
    stats = pytest.importorskip("scipy.stats")
    a = [True] * b + [False] * c + [True] * 5 + [False] * 4
    bb = [False] * b + [True] * c + [True] * 5 + [False] * 4
    got = mcnemar_exact(a, bb)
    assert (got["a_only"], got["b_only"]) == (b, c)
    want = 1.0 if b + c == 0 else stats.binomtest(min(b, c), b + c, 0.5).pvalue
    assert abs(got["p_value"] - want) < 1e-6


@pytest.mark.parametrize("seed,n,ties", [(0, 12, False), (1, 30, False), (2, 40, True), (3, 80, False)])
def test_wilcoxon_matches_scipy(seed, n, ties):
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(seed)
    if ties:  # Likert-like: integer scores 1..5, with ties and zero differences
        a, b = rng.integers(1, 6, n), rng.integers(1, 6, n)
    else:
        a, b = rng.normal(size=n), rng.normal(0.3, 1, size=n)
    got = wilcoxon_signed_rank(a, b)
    want = stats.wilcoxon(b, a)
    assert got["statistic"] == pytest.approx(want.statistic)
    assert abs(got["p_value"] - want.pvalue) < 1e-6
    assert got["method"] == ("exact" if n <= 50 and not ties else "asymptotic")


def test_paired_bootstrap_ci_agrees_with_scipy_and_is_seeded():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    a = rng.normal(0.5, 0.2, 200)
    b = a + rng.normal(0.05, 0.1, 200)
    mean_a, mean_b = (lambda i: a[i].mean()), (lambda i: b[i].mean())
    got = paired_bootstrap(mean_a, mean_b, 200, n_resamples=4000, seed=1)
    assert got == paired_bootstrap(mean_a, mean_b, 200, n_resamples=4000, seed=1)
    want = stats.bootstrap((a, b), lambda x, y: np.mean(y) - np.mean(x), paired=True, vectorized=False,
                           n_resamples=4000, method="percentile", random_state=0).confidence_interval
    assert got["delta"] == pytest.approx(b.mean() - a.mean())
    assert got["ci"][0] == pytest.approx(want.low, abs=4e-3) and got["ci"][1] == pytest.approx(want.high, abs=4e-3)
    assert got["p_value"] < 0.01
    null = paired_bootstrap(mean_a, mean_a, 200, n_resamples=500)
    assert null["delta"] == 0 and null["p_value"] == 1.0
    lo, hi = bootstrap_ci(mean_a, 200)
    assert lo < a.mean() < hi
