"""Metrics by hand, ROUGE against rouge-score, statistics against scipy."""
import numpy as np
import pytest

from prefopt.evaluate.metrics import classification_report, confusion, macro_f1, triage_safety
from prefopt.evaluate.rouge import rouge
from prefopt.evaluate.stats import (
    best_of_bootstrap,
    beta_cdf,
    binomial_at_least,
    bootstrap_ci,
    exact_lower,
    mcnemar_exact,
    paired_bootstrap,
    wilcoxon_signed_rank,
    wilson_interval,
)


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
    boot = stats.bootstrap((a, b), lambda x, y: np.mean(y) - np.mean(x), paired=True, vectorized=False,
                           n_resamples=4000, method="percentile", random_state=0)
    assert got["se"] == pytest.approx(boot.standard_error, rel=0.05)  # other draws: about 2% apart at 4000
    assert got["se"] == pytest.approx(np.std(b - a, ddof=1) / np.sqrt(200), rel=0.05)  # a mean's textbook SE
    null = paired_bootstrap(mean_a, mean_a, 200, n_resamples=500)
    assert null["delta"] == 0 and null["p_value"] == 1.0
    lo, hi = bootstrap_ci(mean_a, 200)
    assert lo < a.mean() < hi


def test_paired_bootstrap_leaves_out_resamples_on_which_a_metric_is_undefined():
    """A metric that is NaN on some resamples (an AUROC of one class) is summarised over the
    others, counted in ``n_valid``, by hand with the same draws; p = 0 reads at their resolution."""
    from prefopt.evaluate.stats import p_text

    x = np.array([0.0, 0.0, 1.0, 2.0, 5.0])

    def a(idx):  # undefined where the resample lacks item 4
        return float(x[idx].mean()) if 4 in idx else float("nan")

    def b(idx):
        return float(x[idx].mean()) + 1.0

    got = paired_bootstrap(a, b, 5, n_resamples=300, seed=3)
    rng = np.random.default_rng(3)
    draws = [rng.integers(0, 5, 5) for _ in range(300)]
    kept = [b(i) - a(i) for i in draws if 4 in i]
    assert got["n_valid"] == len(kept) < 300 and got["delta"] == pytest.approx(1.0)
    assert got["ci"] == pytest.approx(list(np.quantile(kept, [0.025, 0.975])))
    assert got["se"] == pytest.approx(np.std(kept, ddof=1))  # over the resamples kept alone
    assert got["p_value"] == 0 and p_text(got) == f"< {1 / len(kept):.2g}"
    assert "n_valid" not in paired_bootstrap(b, b, 5, n_resamples=50)  # every resample counted
    never = paired_bootstrap(lambda i: float("nan"), b, 5, n_resamples=20)
    assert never["n_valid"] == 0 and np.isnan(never["p_value"]) and np.isnan(never["se"])


def _accuracy(correct: np.ndarray):
    return lambda idx: float(correct[idx].mean())


def test_best_of_bootstrap_with_one_candidate_is_the_one_sided_bootstrap_by_hand():
    """One candidate: p is the share of resamples whose difference, centred on the observed one,
    reaches the observed one (the same seeded indices, drawn here by hand)."""
    rng = np.random.default_rng(3)
    base, cand = rng.random(40) < 0.5, rng.random(40) < 0.7
    got = best_of_bootstrap(_accuracy(base), [_accuracy(cand)], 40, chosen=0, n_resamples=300, seed=5)
    delta = cand.mean() - base.mean()
    draw = np.random.default_rng(5)
    resampled = [cand[i].mean() - base[i].mean() for i in (draw.integers(0, 40, 40) for _ in range(300))]
    assert delta > 0 and got["delta"] == pytest.approx(delta)
    assert got["p_value"] == np.mean([d - delta >= delta - 1e-12 for d in resampled])
    assert got["n_candidates"] == 1 and got["n_resamples"] == 300
    same = best_of_bootstrap(_accuracy(base), [_accuracy(base)] * 3, 40, chosen=1, n_resamples=50)
    assert same["delta"] == 0 and same["p_value"] == 1.0


def _false_passes(n_candidates: int, sims: int = 150, n: int = 32) -> tuple[float, float]:
    """Ten (or ``n_candidates``) steps no better than the baseline, each answering ``n`` items
    right with probability 0.5 as the baseline does; the best is chosen. How often p < 0.1 by the
    plain one-sided bootstrap of the chosen step alone, and by the best-of test."""
    rng = np.random.default_rng(0)
    plain = corrected = 0
    for s in range(sims):
        base = rng.random(n) < 0.5
        steps = [rng.random(n) < 0.5 for _ in range(n_candidates)]
        best = int(np.argmax([x.mean() for x in steps]))
        if steps[best].mean() <= base.mean():
            continue  # the baseline itself would be chosen: nothing to test
        plain += best_of_bootstrap(_accuracy(base), [_accuracy(steps[best])], n, chosen=0, n_resamples=200,
                                   seed=s)["p_value"] < 0.1
        corrected += best_of_bootstrap(_accuracy(base), [_accuracy(x) for x in steps], n, chosen=best,
                                       n_resamples=200, seed=s)["p_value"] < 0.1
    return plain / sims, corrected / sims


def test_best_of_bootstrap_holds_its_level_where_the_plain_test_of_the_best_does_not():
    """Where no step is better than the baseline, the best of ten passes the plain test at p < 0.1
    far more often than one time in ten; the best-of test keeps to about one in ten or fewer."""
    plain, corrected = _false_passes(10)
    assert plain > 0.2 and corrected <= 0.12 and plain > 2.5 * corrected


def test_best_of_bootstrap_is_not_made_stricter_by_steps_that_are_clearly_worse():
    """A step with a real gain among nine where training went wrong (far below the baseline): p
    is about what it is for that step alone, where nine steps as good as the baseline raise it."""
    rng = np.random.default_rng(1)
    n = 32
    base = np.arange(n) % 2 == 0  # 16 of 32 right
    good = base | (np.arange(n) % 4 == 1)  # those and 8 more: +0.25
    worse = [rng.random(n) < 0.1 for _ in range(9)]
    null = [base.copy() for _ in range(9)]
    for x in null:  # as good as the baseline, answering other items right
        rng.shuffle(x)
    stat = _accuracy(base)
    alone = best_of_bootstrap(stat, [_accuracy(good)], n, chosen=0, n_resamples=1000)["p_value"]
    among_worse = best_of_bootstrap(stat, [_accuracy(good)] + [_accuracy(x) for x in worse], n, chosen=0,
                                    n_resamples=1000)["p_value"]
    among_null = best_of_bootstrap(stat, [_accuracy(good)] + [_accuracy(x) for x in null], n, chosen=0,
                                   n_resamples=1000)["p_value"]
    assert good.mean() - base.mean() == 0.25 and max(x.mean() for x in worse) < 0.3
    assert among_worse == pytest.approx(alone, abs=0.01) and among_null > alone + 0.02


@pytest.mark.parametrize("kw, match", [({"chosen": 2}, "chosen 2 is not one of the 2 candidates"),
                                       ({"chosen": 0, "n_resamples": 1}, "n_resamples must be at least 2")])
def test_best_of_bootstrap_refuses_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        best_of_bootstrap(_accuracy(np.ones(4)), [_accuracy(np.ones(4))] * 2, 4, **kw)
    with pytest.raises(ValueError, match="at least one candidate"):
        best_of_bootstrap(_accuracy(np.ones(4)), [], 4, chosen=0)


@pytest.mark.parametrize("seed", range(4))
def test_best_of_bootstrap_agrees_with_arch_spa_consistent(seed):
    """arch's SPA (Hansen's test; here with its i.i.d. bootstrap, block size 1, and without
    studentizing) gives the same p-value as ours, up to resampling noise: its "consistent"
    recentring is ours. Continuous per-item scores, so that no tie between the resampled and the
    observed maximum makes its strict ">" differ from our ">=". Half the seeds have three
    candidates far worse than the baseline, where the recentring matters."""
    arch = pytest.importorskip("arch.bootstrap")
    rng = np.random.default_rng(seed)
    n, k = 60, 8
    base = rng.random(n)
    shift = rng.normal(0, 0.06, k)
    shift[:3] = -0.3 if seed % 2 else 0.0
    models = np.clip(0.3 * base[:, None] + 0.7 * rng.random((n, k)) + shift, 0, 1)
    chosen = int(np.argmax(models.mean(0)))
    ours = best_of_bootstrap(lambda i: base[i].mean(), [lambda i, j=j: models[i, j].mean() for j in range(k)], n,
                             chosen=chosen, n_resamples=4000, seed=seed)
    spa = arch.SPA(-base, -models, block_size=1, reps=4000, bootstrap="stationary", studentize=False, seed=seed)
    spa.compute()  # losses: lower is better, so the scores' negatives
    assert ours["delta"] == pytest.approx(models.mean(0)[chosen] - base.mean())
    assert ours["p_value"] == pytest.approx(spa.pvalues["consistent"], abs=0.035)


def test_wilson_interval_is_statsmodels_and_stays_inside_0_and_1():
    proportion = pytest.importorskip("statsmodels.stats.proportion")
    for k, n in [(0, 1), (1, 1), (0, 6), (4, 6), (6, 7), (30, 60), (59, 60), (1, 200)]:
        lo, hi = wilson_interval(k, n)
        want = proportion.proportion_confint(k, n, alpha=0.05, method="wilson")
        assert (lo, hi) == pytest.approx(want, abs=1e-12), (k, n)
        assert 0 <= lo <= k / n <= hi <= 1 and lo < hi
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert wilson_interval(6, 7)[0] == pytest.approx(0.4869, abs=1e-4)  # (by hand: 6 of 7 right says little)


def test_the_binomial_tail_and_exact_lower_end_are_scipys_and_statsmodels():
    """review_target's test (the chance of k or more right were the share right p) and the
    Clopper-Pearson lower end it prints, against scipy and statsmodels' ``method="beta"``, from
    1 record to 100000; the incomplete beta beneath them against scipy's over a spread of shapes."""
    special, stats = pytest.importorskip("scipy.special"), pytest.importorskip("scipy.stats")
    proportion = pytest.importorskip("statsmodels.stats.proportion")
    rng = np.random.default_rng(0)
    for _ in range(500):
        a, b = (rng.uniform(0.1, 5) if rng.random() < 0.5 else float(rng.integers(1, 3000)) for _ in range(2))
        x = rng.random()
        assert beta_cdf(x, a, b) == pytest.approx(special.betainc(a, b, x), abs=1e-11), (x, a, b)
    for n in (1, 2, 6, 36, 60, 200, 5000, 100_000):
        for k in sorted({0, 1, n // 3, n // 2, n - 1, n}):
            for p in (0.01, 0.3, 0.5, 0.9, 0.99):
                assert binomial_at_least(k, n, p) == pytest.approx(stats.binom.sf(k - 1, n, p), abs=1e-10), (k, n, p)
            want = proportion.proportion_confint(k, n, alpha=0.05, method="beta")[0]
            assert exact_lower(k, n) == pytest.approx(want, abs=1e-10), (k, n)
    assert binomial_at_least(7, 6, 0.5) == 0.0 and exact_lower(0, 0) == 0.0
    assert binomial_at_least(5, 6, 0.5) == pytest.approx(7 / 64)  # (by hand: 6 + 1 of the 64 ways)
    assert exact_lower(6, 6) == pytest.approx(0.025 ** (1 / 6))  # (all right: the p with p ** 6 = 0.025)
