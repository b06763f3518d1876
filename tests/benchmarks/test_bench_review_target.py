"""benchmarks/bench_review_target.py: its truth by hand, the search before by hand, and a small
run's table, a row for each scenario, size, share asked and search."""
import numpy as np
import pytest

from tests.benchmarks import load_script, run_main


def test_the_truth_is_the_share_right_among_the_records_at_or_above_each_threshold():
    bench = load_script("bench_review_target")
    above, right = bench.truth(bench.SCENARIOS["calibrated"])
    assert above[0] == pytest.approx(1.0) and right[0] == pytest.approx(4 / 6, abs=1e-6)  # Beta(4, 2)'s mean
    assert np.all(np.diff(above) <= 0) and np.all(np.diff(right[:-1]) >= 0)  # (calibrated: surer, righter)
    i = len(bench.GRID) // 2  # at 0.5: E[c | c >= 0.5] = (1 - I) / share, by hand from Beta(4, 2)'s moments
    share = 1 - (5 * 0.5 ** 4 - 4 * 0.5 ** 5)  # P(c >= 0.5): Beta(4, 2)'s CDF is 5x^4 - 4x^5
    mean_above = (4 / 6) * (1 - (6 * 0.5 ** 5 - 5 * 0.5 ** 6)) / share  # E[c; c >= t] = E[c] * P_Beta(5,2)(c >= t)
    assert (above[i], right[i]) == (pytest.approx(share, abs=1e-4), pytest.approx(mean_above, abs=1e-4))
    _, flat = bench.truth(bench.SCENARIOS["flat"])
    assert flat[:-1] == pytest.approx(0.78)


def test_the_search_before_took_the_lowest_threshold_whose_wilson_lower_end_reached_a():
    before = load_script("bench_review_target").before
    least = [0.9] * 6 + [0.7] * 4 + [0.5] * 10
    ok = [True] * 6 + [True, False, False, True] + [False] * 10
    # from 0.9: 6 of 6 (Wilson's lower end 0.61); from 0.7: 8 of 10 (0.49); from 0.5: 8 of 20 (0.22)
    assert before(least, ok, 0.45) == 0.7 and before(least, ok, 0.55) == 0.9 and before(least, ok, 0.7) is None
    assert before(least, ok, 0.2) == 0.5


def test_bench_review_target_writes_a_row_for_each_scenario_size_share_and_search(monkeypatch, capsys):
    run_main("bench_review_target", monkeypatch, "--n-val", "40", "--targets", "0.5,0.8", "--reps", 20)
    rows = [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines()
            if line.startswith("| ") and not line.startswith("| scenario")]
    assert [(r[0].strip(), r[3].strip()) for r in rows[:2]] == [("calibrated", "now"), ("calibrated", "before")]
    assert len(rows) == 3 * 2 * 2
    for r in rows:
        found, short = (float(x.strip().rstrip("%")) for x in r[4:6])
        assert 0 <= short <= found <= 100
