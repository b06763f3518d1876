"""--review-target's search (prefopt.evaluate.target_search): thresholds tried downward from the
one that keeps a quarter of the records, each by an exact binomial test, stopping at the first
that falls short; by hand, against counting threshold by threshold, and through eval."""
import json

import pytest

from prefopt.cli import main
from prefopt.evaluate.confidence import SCORING
from prefopt.evaluate.stats import exact_lower, wilson_interval
from prefopt.evaluate.target_search import (
    fewest,
    reaches,
    records_needed,
    review_target,
    target_line,
    unreachable_line,
)
from prefopt.tasks import get_task
from tests import _formats as formats
from tests.tasks._portal import portal_records


def test_the_target_search_tries_thresholds_downward_and_stops_at_the_first_that_falls_short():
    """Seven records: each one's least sure field and whether both fields were right, by hand (so
    few that the search starts where the fewest that could reach the target are kept). The
    candidates are the records' own least confidences (1.0 is none: --review-below cannot take
    it; its record is kept at every threshold); a record that named no label is never answered
    alone. At 0.2 it takes 3 records all right (0.2 ** 3 = 0.008 <= 0.025 < 0.2 ** 2): 0.95 keeps
    2 and is passed over, 0.9 keeps 3 of 3 (passes), 0.85 keeps 3 of 4 (P(X >= 3) for Binomial(4,
    0.2) = 4 * 0.2 ** 3 * 0.8 + 0.2 ** 4 = 0.0272 > 0.025: stops); 0.8 (4 of 5: 5 * 0.2 ** 4 *
    0.8 + 0.2 ** 5 = 0.0067) and 0.75 would reach it, but the search that looked at 0.85 and found
    it short does not go on."""
    task = get_task("portal")
    least = [1.0, 0.95, 0.9, 0.85, 0.8, 0.75, None]
    right = [True, True, True, False, True, True, True]
    records = portal_records([("urgent", "nurse")] * 7)
    preds = [{"urgency": "urgent", "staff": "nurse" if ok else "doctor"} for ok in right]
    sure = [{"urgency": None, "staff": 0.99} if x is None else {"urgency": min(x + 0.05, 1.0), "staff": x}
            for x in least]
    assert (fewest(0.2), fewest(0.5), fewest(0.9)) == (3, 6, 36)
    assert not reaches(3, 4, 0.2) and reaches(4, 5, 0.2) and reaches(5, 6, 0.2) and reaches(3, 3, 0.2)
    found = review_target(task, records, preds, sure, 0.2)
    assert found == {"target": 0.2, "n_records": 7, "fewest": 3, "first": 3, "threshold": 0.9, "n": 3, "kept": 3 / 7,
                     "right": 1.0, "ci": list(wilson_interval(3, 3)), "lower": pytest.approx(0.025 ** (1 / 3)),
                     "stopped": {"threshold": 0.85, "n": 4, "kept": 4 / 7, "right": 0.75,
                                 "ci": list(wilson_interval(3, 4)), "lower": exact_lower(3, 4)}}
    lo, hi = wilson_interval(3, 3)
    lo4, hi4 = wilson_interval(3, 4)
    assert target_line(found) == (
        "the records answered alone were right at least 0.2 of the time (the exact 95% CI's lower end, thresholds "
        "tried downward from the one that keeps 3 records until one falls short) from confidence 0.9 up: review below "
        f"0.9 (3 of 7 answered alone, 1.000 right [{lo:.3f}, {hi:.3f}], exact lower end {0.025 ** (1 / 3):.3f}; "
        "below it, from "
        f"0.85 up: 4 of 7 answered alone, 0.750 right [{lo4:.3f}, {hi4:.3f}], exact lower end {exact_lower(3, 4):.3f}"
        "); check it on other records too: eval --confidence --review-below 0.9")
    # at 0.5 it takes 6: 0.75 keeps 5 of 6 right, P(X >= 5) = 7 / 64 for Binomial(6, 0.5): short
    none = review_target(task, records, preds, sure, 0.5)
    assert none["threshold"] is None and (none["best"]["threshold"], none["best"]["n"]) == (0.75, 6)
    lo6, hi6 = wilson_interval(5, 6)
    assert target_line(none).endswith(
        "on these 7 records; the first threshold tried, 0.75: 6 of 7 answered alone, "
        f"0.833 right [{lo6:.3f}, {hi6:.3f}], exact lower end {exact_lower(5, 6):.3f}; at the 0.833 right there, "
        "about 12 answered alone would show 0.5: some 14 records like these")  # (10 of 12: P = 79 / 4096 = 0.019;
    assert not reaches(9, 11, 0.5) and reaches(10, 12, 0.5)  # 9 of 11: 67 / 2048 = 0.033; 14 = 12 * 7 / 6, up)
    # at 0.9 it takes 36 and no threshold keeps so many: the one that keeps the most is named
    few = review_target(task, records, preds, sure, 0.9)
    assert few["threshold"] is None and few["best"]["threshold"] == 0.75 and few["fewest"] == few["first"] == 36
    assert ("; the search starts where 36 are answered alone (the fewest that, all right, reach 0.9) and at most 6 "
            "were (from 0.75 up: 6 of 7") in target_line(few)
    assert target_line(few).endswith("; right 0.833 of the time there, more records would not show 0.9")
    close = few | {"best": few["best"] | {"right": 0.9001}, "needed": None}  # (records_needed looked no further)
    assert target_line(close).endswith("; at the 0.900 right there, over a million answered alone would show 0.9")
    # six of each (42 records): it starts where a quarter, 11, are kept (0.95: 12 of 12 right) and goes down to
    # 0.75 (30 of 36), 0.85's wrong answers six among 24 now
    many = review_target(task, records * 6, preds * 6, sure * 6, 0.2)
    assert (many["first"], many["threshold"], many["n"], many["right"]) == (11, 0.75, 36, 30 / 36)
    assert many["stopped"] is None
    nothing = review_target(task, records[6:], preds[6:], sure[6:], 0.5)  # no record named every label
    assert nothing["best"] is None and target_line(nothing).endswith("on these 1 records; more labelled records "
                                                                      "narrow the CI")


def test_the_records_needed_are_about_the_fewest_at_which_that_share_right_would_show_the_target():
    """records_needed against counting up one by one (to 2000, then halving: where the fewest is
    larger, the count it finds shows the target and the one before it does not)."""
    for share, target in ((0.6, 0.5), (2 / 3, 0.5), (0.9, 0.8), (0.95, 0.9), (0.55, 0.5), (1.0, 0.9)):
        counted = next(n for n in range(1, 3000) if reaches(int(share * n + 1e-9), n, target))
        assert records_needed(share, target) == counted, (share, target)
    far = records_needed(0.52, 0.5)  # (some 2400)
    assert far > 2000 and reaches(int(0.52 * far), far, 0.5) and not reaches(int(0.52 * (far - 1)), far - 1, 0.5)
    assert records_needed(0.5, 0.5) is None and records_needed(0.4, 0.5) is None
    assert records_needed(0.5001, 0.5, most=10_000) is None  # (more than it looks for)
    assert records_needed(1.0, 0.9) == fewest(0.9) == 36


def test_eval_review_target_is_read_off_its_own_predictions_and_refused_where_it_cannot_be(tiny_model, tmp_path,
                                                                                           capsys, monkeypatch):
    from prefopt.evaluate import runner

    data = formats.write_jsonl(tmp_path / "m.jsonl", [
        {"id": f"m{i}", "message": f"Message {i}: a cough for {i} weeks", "urgency": "urgent", "staff": "nurse"}
        for i in range(8)])  # (each answered rightly: the search reaches 0.05 wherever it starts)
    answer = get_task("portal").read(str(data))[0].target

    def answered(model, tok, task, records, **kw):
        return [answer] * len(records), [True] * len(records)

    monkeypatch.setattr(runner, "predict", answered)
    calibration = tmp_path / "calibration.json"
    calibration.write_text(json.dumps({"temperature": 40.0, "task": "portal", "model": str(tiny_model), "adapter": None,
                                       "confidence_scoring": SCORING}))
    common = ["--task", "portal", "--model", str(tiny_model), "--data", str(data), "--max-new-tokens", "6",
              "--split", "all", "--calibration", str(calibration)]
    assert main(["eval", *common, "--output", str(tmp_path / "e"), "--confidence", "--review-target", "0.05"]) == 0
    out = capsys.readouterr().out
    found = json.loads((tmp_path / "e" / "metrics.json").read_text())["review"]["target"]
    rows = [json.loads(line) for line in (tmp_path / "e" / "predictions.jsonl").read_text().splitlines()]
    task, records = get_task("portal"), get_task("portal").read(str(data))
    by_id = {r["id"]: r for r in rows}
    assert found == review_target(task, records, [by_id[r.id]["prediction"] for r in records],
                                  [by_id[r.id]["confidence"] for r in records], 0.05)
    assert found["threshold"] is not None and f"prefopt eval: {target_line(found)}" in out
    for argv, error in ((["--review-target", "0.9"], "--review-target reads the confidence --confidence scores"),
                        (["--confidence", "--review-target", "1"], "--review-target 1: a probability between 0 and 1 "
                         "(0.95: the records the model answers alone should be right at least 95% of the time)")):
        assert main(["eval", *common[:-2], *argv, "--output", str(tmp_path / "refused")]) == 2, argv
        assert error in capsys.readouterr().err
    rescored = ["eval", "--task", "portal", "--data", str(data), "--split", "all", "--answers", str(tmp_path / "e")]
    assert main([*rescored, "--review-target", "0.05", "--output", str(tmp_path / "again")]) == 0  # no model loads
    assert json.loads((tmp_path / "again" / "metrics.json").read_text())["review"]["target"] == found
    assert main([*rescored, "--review-target", "1", "--output", str(tmp_path / "refused")]) == 2
    assert "--review-target 1: a probability between 0 and 1" in capsys.readouterr().err
    assert not (tmp_path / "refused").exists()


def test_the_target_search_counts_as_a_threshold_by_threshold_count_would():
    """The one pass over the records sorted by confidence finds what counting the records kept at
    every threshold one by one, from the most confident down, finds (ties, labels not named,
    confidences of 1.0 among them), scipy's binomial tail the test."""
    import random

    binom = pytest.importorskip("scipy.stats").binom
    rng = random.Random(3)
    task = get_task("portal")
    n = 300
    records = portal_records([("urgent", "nurse")] * n)
    stopped = found_some = 0
    for trial in range(6):
        skill = 0.5 + 0.08 * trial  # how often the surest are right
        sure = [{"urgency": rng.choice([None, 1.0, round(rng.random(), 2)]), "staff": round(rng.random(), 2)}
                for _ in range(n)]
        least = [None if s["urgency"] is None else min(s.values()) for s in sure]
        preds = [{"urgency": "urgent", "staff": "nurse" if x is not None and rng.random() < skill * (0.5 + x / 2)
                  else "doctor"} for x in least]
        right = [p["staff"] == "nurse" for p in preds]
        for target in (0.3, 0.45, 0.6, 0.8, 0.99):
            need = next(k for k in range(1, 10_000) if target ** k <= 0.025)
            first = max(need, 75)  # (a quarter of the 300 records)
            passed = halt = None
            for t in sorted({x for x in least if x is not None and 0 < x < 1}, reverse=True):
                kept = [i for i, x in enumerate(least) if x is not None and x >= t]
                if len(kept) < first:
                    continue
                if binom.sf(sum(right[i] for i in kept) - 1, len(kept), target) > 0.025:
                    halt = (t, len(kept))
                    break
                passed = (t, len(kept))
            found = review_target(task, records, preds, sure, target)
            assert (found["fewest"], found["first"]) == (need, first)
            if passed:
                found_some += 1
                assert (found["threshold"], found["n"]) == passed
                assert (found["stopped"] and (found["stopped"]["threshold"], found["stopped"]["n"])) == halt
            else:
                stopped += halt is not None
                lowest = min(x for x in least if x is not None and 0 < x < 1)  # where none keeps enough: the most
                most = (lowest, sum(x is not None and x >= lowest for x in least))
                best = found["best"]
                assert found["threshold"] is None and (best["threshold"], best["n"]) == (halt or most)
    assert found_some and stopped  # (both ways taken)


def test_a_target_the_validation_items_cannot_reach_even_all_right_is_said_before_a_run():
    assert unreachable_line(0.5, 60) is None and unreachable_line(0.9, 36) is None  # (36 all right: 0.9 ** 36 < 0.025)
    line = unreachable_line(0.9, 35)
    assert line.startswith("review_target 0.9: it takes at least 36 validation items answered alone, all right")
    assert "val holds 35: no review threshold can be chosen" in line
