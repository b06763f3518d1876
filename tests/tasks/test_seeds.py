"""``prefopt compare --seeds``: one compare run per seed, and the seeds' differences pooled by a
random-effects meta-analysis (checked against statsmodels' DerSimonian-Laird and by hand)."""
import json
import math
import shutil

import numpy as np
import pytest

from prefopt.cli import main
from prefopt.evaluate import pooling, seeds, seeds_calibration
from prefopt.evaluate.compare import CompareConfig
from tests.tasks.test_compare_smoke import TINY


def test_pooling_is_dersimonian_laird_with_hartung_knapp_as_statsmodels_computes_it():
    meta = pytest.importorskip("statsmodels.stats.meta_analysis")
    t = pytest.importorskip("scipy.stats").t
    cases = [([-0.093, -0.147, -0.337], [0.055, 0.047, 0.043]),  # the demo's three seeds: HKSJ's scale below 1
             ([0.12, -0.05, 0.30, 0.02, 0.18], [0.04, 0.03, 0.05, 0.02, 0.06])]  # five seeds: scale above 1
    scales = []
    for deltas, ses in cases:
        p = seeds.pooled(deltas, ses)
        ref = meta.combine_effects(np.array(deltas), np.array(ses) ** 2, method_re="dl")
        frame = ref.summary_frame()
        k = len(deltas)
        se = max(ref.sd_eff_w_re, ref.sd_eff_w_re_hksj)  # HKSJ, never narrower than DL
        scales.append(ref.sd_eff_w_re_hksj / ref.sd_eff_w_re)
        assert p["delta"] == pytest.approx(frame.loc["random effect", "eff"]) and p["se"] == pytest.approx(se)
        assert p["ci"] == pytest.approx([p["delta"] - t.ppf(0.975, k - 1) * se, p["delta"] + t.ppf(0.975, k - 1) * se])
        assert p["p_value"] == pytest.approx(2 * t.sf(abs(p["delta"]) / se, k - 1)) and p["df"] == k - 1
        assert p["tau"] ** 2 == pytest.approx(ref.tau2) and p["i2"] == pytest.approx(ref.i2)
        assert p["q"] == pytest.approx(ref.q)
        normal = frame.loc["random effect"]  # DerSimonian-Laird's normal figures, kept beside
        assert p["normal"]["se"] == pytest.approx(normal["sd_eff"])
        assert p["normal"]["ci"] == pytest.approx([normal["ci_low"], normal["ci_upp"]])
    assert scales[0] < 1 < scales[1]  # both branches of the max
    demo = seeds.pooled(*cases[0])
    assert demo["normal"]["p_value"] < 0.05 < demo["p_value"]  # three seeds: the normal CI is too narrow to trust
    same = seeds.pooled([0.1, 0.1], [0.05, 0.05])  # no spread between seeds: tau 0, the fixed-effect mean
    assert same["tau"] == 0 and same["i2"] == 0 and same["delta"] == pytest.approx(0.1)
    assert same["se"] == pytest.approx(0.05 / math.sqrt(2))
    # a seed whose stages answered alike (the validation guard kept SFT: exactly 0, a point CI) would take
    # nearly all the inverse-variance weight: the seeds weighted equally, a one-sample t test on their differences
    for deltas, ses in (([0.0, 0.0, -0.054], [0.0, 0.0, 0.037]), ([0.0, 0.2], [0.0, 0.05])):
        point = seeds.pooled(deltas, ses)
        ref = pytest.importorskip("scipy.stats").ttest_1samp(deltas, 0.0)
        assert point["weights"] == "equal" and point["delta"] == pytest.approx(np.mean(deltas))
        assert point["p_value"] == pytest.approx(ref.pvalue) and point["se"] == pytest.approx(np.std(deltas, ddof=1)
                                                                                              / math.sqrt(len(deltas)))
        assert point["ci"] == pytest.approx(list(ref.confidence_interval(0.95)))
        assert point["tau"] == pytest.approx(np.std(deltas, ddof=1)) and point["i2"] is None
    assert "the 3 seeds weighted equally, t with 2 df, SD 0.031" in seeds.pooled_line("sft", "dpo", seeds.pooled(
        [0.0, 0.0, -0.054], [0.0, 0.0, 0.037]))
    alike = seeds.pooled([0.0] * 3, [0.0] * 3)  # every seed kept SFT: no difference, and no spread to read a CI off
    assert alike["delta"] == 0 and alike["p_value"] == 1 and alike["se"] == pooling.MIN_SE
    assert seeds.se_of({"ci": [-0.2, 0.192], "se": 0.07}) == 0.07  # the bootstrap's own, where it gave one
    assert seeds.se_of({"ci": [-0.2, 0.192]}) == pytest.approx(0.1, rel=1e-3)  # a run from before: off its CI


def test_the_t_distribution_matches_scipy_for_whole_degrees_of_freedom():
    t = pytest.importorskip("scipy.stats").t
    from prefopt.evaluate.stats import t_critical, t_within

    for df in (1, 2, 3, 4, 5, 8, 9, 30):
        for x in (0.0, 0.3, 1.0, 2.5, 7.0, -2.0):
            assert t_within(x, df) == pytest.approx(1 - 2 * t.sf(abs(x), df), abs=1e-12)
        assert t_critical(df) == pytest.approx(t.ppf(0.975, df), abs=1e-9)
    with pytest.raises(ValueError, match="whole degrees of freedom"):
        t_within(1.0, 0)


def test_seeds_are_read_as_two_or_more_different_whole_numbers():
    assert seeds.parse_seeds("0,1,2") == [0, 1, 2] and seeds.parse_seeds(" 3, 7 ") == [3, 7]
    for bad in ("1", "0,0", "a,b", ""):
        with pytest.raises(ValueError, match=f"--seeds {bad}: "):
            seeds.parse_seeds(bad)


def _report(seed, sft, dpo, ci=(-0.1, 0.1), p=0.5, kept=False):
    def test(delta, lo, hi, pv):
        return {"primary": {"delta": delta, "ci": [lo, hi], "p_value": pv, "n_resamples": 200}}
    return {"task": "portal", "model": "m", "metric": "macro_f1", "n_test": 4,
            "weights": {"sft": "sft/train/final", "dpo": "sft/train/final" if kept else "dpo/train/final"},
            "stages": {s: {"primary": v} for s, v in (("base", 0.1), ("sft", sft), ("dpo", dpo))},
            "comparisons": {"base->sft": test(sft - 0.1, sft - 0.3, sft + 0.1, 0.0),
                            "sft->dpo": test(dpo - sft, dpo - sft + ci[0], dpo - sft + ci[1], p)}}


def test_every_seed_is_checked_before_the_first_runs_and_the_summary_follows_each(tmp_path):
    cfg = CompareConfig(task="portal", model="m", output=str(tmp_path / "out"), loss="rpo",
                        start_from=str(tmp_path / "earlier"))
    events = []

    def check(c):
        events.append(("check", c.seed, c.output, c.start_from))

    def run(c):
        events.append(("run", c.seed))
        if c.seed == 2:
            assert json.loads((tmp_path / "out" / "seeds.json").read_text())["seeds"] == [0]  # written after seed 0
            assert not (tmp_path / "out" / seeds.FOREST).exists()  # one seed: nothing pooled to draw
        return _report(c.seed, 0.7, 0.6 if c.seed == 0 else 0.4, p=0.06 if c.seed == 0 else 0.0, kept=c.seed == 0)

    summary = seeds.run_seeds(cfg, [0, 2], run=run, check=check)
    assert events == [("check", 0, str(tmp_path / "out" / "seed-0"), str(tmp_path / "earlier" / "seed-0")),
                      ("check", 2, str(tmp_path / "out" / "seed-2"), str(tmp_path / "earlier" / "seed-2")),
                      ("run", 0), ("run", 2)]
    assert summary["seeds"] == [0, 2] and summary["loss"] == "rpo"
    assert [r["dpo_is_sft"] for r in summary["runs"]] == [True, False]
    assert summary["runs"][1]["sft->dpo"]["delta"] == pytest.approx(-0.3)
    want = seeds.pooled([-0.1, -0.3], [0.2 / (2 * pooling.Z95)] * 2)
    got = summary["pooled"]["sft->dpo"]
    flat = lambda d: {f"{k}.{i}": x for k, v in d.items()  # noqa: E731
                      for i, x in enumerate(v if isinstance(v, list) else [v]) if not isinstance(v, dict)}
    assert flat(got) == pytest.approx(flat(want)) and flat(got["normal"]) == pytest.approx(flat(want["normal"]))
    md = (tmp_path / "out" / "seeds.md").read_text()
    assert "| 0 | 4 | 0.100 | 0.700 | 0.600 (the SFT model kept) | +0.600 [+0.400, +0.800], p < 0.005 | " \
           "-0.100 [-0.200, +0.000], p 0.06 |" in md
    assert f"- {seeds.pooled_line('sft', 'dpo', want)}; lower on 2 of 2 seeds, significantly on 1." in md
    if seeds.pyplot() is not None:  # the forest plot: each seed's difference and CI, the pooled diamond
        assert (tmp_path / "out" / seeds.FOREST).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert md.rstrip().endswith("![seeds_forest.png](seeds_forest.png)")
    assert json.loads((tmp_path / "out" / "seeds.json").read_text()) == json.loads(json.dumps(summary))
    one = tmp_path / "one"  # a folder holding a one-seed run (make demo's): reused as its seed's run
    one.mkdir()
    (one / "compare_config.json").write_text('{"seed": 5}')
    with pytest.raises(ValueError, match=r"one: a compare run of seed 5, not among --seeds 0,1: add 5 to reuse it as "
                                         r"that seed's run \(the others go into OUTPUT/seed-S beside it\), or give "
                                         r"another --output$"):
        seeds.run_seeds(CompareConfig(task="portal", model="m", output=str(one)), [0, 1], run=run, check=check)
    events.clear()
    assert [c.output for c in seeds.check_seeds(CompareConfig(task="portal", model="m", output=str(one),
                                                              start_from=str(one)), [1, 5], check=check)] == [
        str(one / "seed-1"), str(one)]
    assert [e[3] for e in events] == [str(one / "seed-1"), str(one)]  # --from such a folder: its own run for 5
    md = seeds.markdown(seeds.summarize(CompareConfig(task="portal", model="m", output=str(one)),
                                        {1: _report(1, 0.7, 0.6), 5: _report(5, 0.7, 0.6)}))
    assert "in `seed-S/` (`report.md` there), seed 5's this folder's own (a run made before --seeds)." in md[2]
    (one / "seed-5").mkdir()
    with pytest.raises(ValueError, match=r"one: a compare run of seed 5, and seed-5/ in it, another: move one of "
                                         r"them out$"):
        seeds.check_seeds(CompareConfig(task="portal", model="m", output=str(one)), [1, 5], check=check)
    lines = seeds.console_lines(summary)
    assert lines[1] == "seed 2: base 0.100, SFT 0.700, SFT+DPO 0.400; SFT+DPO vs SFT -0.300 [-0.400, -0.200], p < 0.005"
    assert lines[-1].startswith("SFT+DPO against SFT: no significant difference over the seeds (Δ -0.200, 95% CI [")
    assert lines[-1].endswith("t with 1 df, τ = 0.132, I² = 87%); lower on 2 of 2 seeds, significantly on 1")
    # two seeds: t with 1 df (12.7 for the 95% CI) leaves even a gain significant on both seeds unproven
    assert lines[-2] == ("SFT against base: no significant difference over the seeds (Δ +0.600, 95% CI [-0.317, "
                         "+1.517], p = 0.0762; random effects over 2 seeds, t with 1 df, τ = 0.000, I² = 0%); higher "
                         "on 2 of 2 seeds, significantly on 2")
    assert seeds.direction([{"d": {"delta": 0.0, "p_value": 1.0}}] * 2, "d") == "equal on every seed"


def _scored(report: dict, brier: dict, gaps: dict, calibrated: dict | None = None) -> dict:
    """``report`` (:func:`_report`) as a run that scored its stages' label probabilities: each stage's
    Brier (``brier``), the stages' paired Brier tests (``gaps``: their deltas, CI +-0.1, p 0.5) and,
    where given, each stage calibrated (``calibrated``: ``{stage: (T, Brier calibrated, delta)}``)."""
    def test(delta, p=0.5):
        return {"delta": delta, "ci": [delta - 0.1, delta + 0.1], "se": 0.05, "p_value": p, "n_resamples": 200}
    for s, b in brier.items():
        report["stages"][s]["metrics"] = {"confidence": {"urgency": {"brier": b, "ece": b / 10}}}
        if calibrated and s in calibrated:
            t, cb, d = calibrated[s]
            report["stages"][s]["metrics"]["calibrated"] = {"temperature": t, "fitted_on": 6,
                                                            "fields": {"urgency": {"brier": cb, "ece": 0.0}}}
            report["stages"][s]["calibrated_vs_plain"] = {"urgency": test(d, 0.01)}
    for k, d in gaps.items():
        report["comparisons"][k]["brier"] = {"urgency": test(d)}
    return report


def test_the_seeds_brier_scores_and_calibration_are_pooled_as_the_metric_is(tmp_path):
    """Each seed's paired Brier tests pooled per field (lower: nearer the truth, worded so), and,
    where each seed was calibrated on validation items, each stage's calibrated Brier against T = 1."""
    cfg = CompareConfig(task="portal", model="m", output=str(tmp_path / "out"))
    reports = {s: _scored(_report(s, 0.7, 0.6), {"base": 0.9, "sft": 0.6, "dpo": 0.6 + d},
                          {"base->sft": -0.3, "sft->dpo": d}, {"dpo": (t, 0.55, -d)})
               for s, d, t in ((0, 0.20, 3.0), (1, 0.22, 2.5), (2, 0.18, 3.5))}
    summary = seeds.summarize(cfg, reports)
    cal = summary["calibration"]
    want = seeds.pooled([0.20, 0.22, 0.18], [0.05] * 3)
    assert cal["brier"]["sft->dpo"]["urgency"] == want and want["p_value"] < 0.05
    assert cal["calibrated"]["dpo"]["urgency"] == seeds.pooled([-0.20, -0.22, -0.18], [0.05] * 3)
    assert cal["temperatures"] == {"dpo": [3.0, 2.5, 3.5]} and "sft" not in cal["calibrated"]
    md = "\n".join(seeds.markdown(summary))
    assert ("| 1 | urgency | 0.900 | 0.600 | 0.820 | -0.300 [-0.400, -0.200], p 0.5 | +0.220 [+0.120, +0.320], "
            "p 0.5 |") in md
    assert (f"- SFT+DPO against SFT, urgency's Brier: higher (further from the truth) over the seeds (Δ +0.200, 95% "
            f"CI [{want['ci'][0]:+.3f}, {want['ci'][1]:+.3f}], p = {want['p_value']:.3g}; random effects over 3 seeds, "
            "t with 2 df, τ = 0.000, I² = 0%); higher on 3 of 3 seeds.") in md
    assert "| 2 | SFT+DPO | 3.500 | urgency | 0.780 | 0.550 | -0.180 [-0.280, -0.080], p 0.01 |" in md
    assert "- SFT+DPO calibrated, urgency's Brier against T = 1: Δ -0.200" in md
    assert "(T 3.00, 2.50, 3.50; random effects over 3 seeds, t with 2 df" in md
    assert seeds.console_lines(summary)[-1] == seeds_calibration.brier_line("sft", "dpo", "urgency", want)
    reports[2] = _report(2, 0.7, 0.6)  # a seed whose run scored no probabilities: nothing pooled, the others shown
    partial = seeds.summarize(cfg, reports)
    assert "calibration" not in partial and "calibration" not in partial["runs"][2]
    assert "| 0 | urgency | 0.900 |" in "\n".join(seeds.markdown(partial))


def test_compare_with_seeds_runs_each_seed_and_pools_them(tiny_model, tmp_path, capsys):
    out = tmp_path / "seeds"
    argv = ["compare", "--task", "portal", "--model", str(tiny_model), "--output", str(out), "--seeds", "0,1",
            "--n-resamples", "100", *[f"--set={k}={v}" for k, v in TINY.items()]]
    assert main(argv) == 0
    said = capsys.readouterr().out.splitlines()
    summary = json.loads((out / "seeds.json").read_text())
    for seed in (0, 1):
        report = json.loads((out / f"seed-{seed}" / "report.json").read_text())
        run = summary["runs"][seed]
        assert run["seed"] == seed and run["sft"] == report["stages"]["sft"]["primary"]
        assert run["sft->dpo"]["delta"] == report["comparisons"]["sft->dpo"]["primary"]["delta"]
        assert run["sft->dpo"]["se"] == report["comparisons"]["sft->dpo"]["primary"]["se"]
        assert json.loads((out / f"seed-{seed}" / "compare_config.json").read_text())["seed"] == seed
        assert "`--seeds 0,1,2` runs the comparison on three and pools them" in (out / f"seed-{seed}" /
                                                                                 "report.md").read_text()
    runs = summary["runs"]  # pooled by each seed's bootstrap standard error
    assert summary["pooled"]["sft->dpo"] == seeds.pooled([r["sft->dpo"]["delta"] for r in runs],
                                                         [r["sft->dpo"]["se"] for r in runs])
    splits = [json.loads((out / f"seed-{s}" / "split.json").read_text())["test"] for s in (0, 1)]
    assert splits[0] != splits[1]  # each seed draws its own test items
    assert said[-1] == f"prefopt compare: each seed's run in {out}/seed-S; over the seeds: {out}/seeds.md"
    line = next(x for x in said if x.startswith("SFT+DPO against SFT: "))
    assert seeds.pooled_line("sft", "dpo", summary["pooled"]["sft->dpo"]) in line
    brier = summary["calibration"]["brier"]  # the label probabilities' Brier score, pooled as the metric is
    assert set(brier["sft->dpo"]) == {"urgency", "staff"}
    for seed, run in zip((0, 1), runs):
        cmp = json.loads((out / f"seed-{seed}" / "report.json").read_text())["comparisons"]
        assert run["calibration"]["brier"]["sft->dpo"] == {k: seeds.paired_figures(v)
                                                           for k, v in cmp["sft->dpo"]["brier"].items()}
    for name, p in brier["sft->dpo"].items():
        tests = [r["calibration"]["brier"]["sft->dpo"][name] for r in runs]
        assert p == seeds.pooled([t["delta"] for t in tests], [t["se"] for t in tests])
        assert seeds_calibration.brier_line("sft", "dpo", name, p) in said
    assert "## Calibration" in (out / "seeds.md").read_text() and "calibrated" not in summary["calibration"]
    assert main(argv) == 0  # again: both seeds resumed whole, the same summary
    assert json.loads((out / "seeds.json").read_text()) == summary
    assert main([*argv, "--seed", "3"]) == 2
    assert "give --seed or --seeds, not both" in capsys.readouterr().err
    one = ["compare", "--task", "portal", "--model", str(tiny_model), "--output", str(tmp_path / "one"), "--from",
           str(out), *[f"--set={k}={v}" for k, v in TINY.items()]]
    assert main(one) == 2  # a seeds folder given as one run: what to do instead
    assert (f"--from {out}: not a prefopt compare run (no compare_config.json there); a compare --seeds folder "
            "(seed-0, seed-1): add --seeds to start each seed from its own run, or name one of them"
            in capsys.readouterr().err)
    assert main(["rating-sheet", "--from", str(out)]) == 2
    assert "a folder of runs (a study's, or compare --seeds'): name one run in it" in capsys.readouterr().err
    single = tmp_path / "single"  # a one-seed run of seed 0 (as make demo leaves): reused as seed 0's, not trained
    shutil.copytree(out / "seed-0", single)
    shutil.copytree(out / "seed-1", single / "seed-1")
    adapter = single / "sft" / "train" / "final" / "adapter_model.safetensors"
    made = adapter.stat().st_mtime_ns
    assert main([*argv[:6], str(single), *argv[7:]]) == 0
    said = capsys.readouterr().out
    assert f"prefopt compare: each seed's run in {single}/seed-S (seed 0's: {single} itself); over the seeds" in said
    assert "sft: reusing" in said and adapter.stat().st_mtime_ns == made
    reused = json.loads((single / "seeds.json").read_text())
    assert [r["output"] for r in reused["runs"]] == [str(single), str(single / "seed-1")]
    assert reused["pooled"] == summary["pooled"] and reused["runs"][0]["sft"] == summary["runs"][0]["sft"]
    rpo = tmp_path / "rpo"  # another DPO on each seed's own base and SFT stages
    assert main(["compare", "--task", "portal", "--model", str(tiny_model), "--output", str(rpo), "--seeds", "0,1",
                 "--from", str(out), "--loss", "rpo", "--n-resamples", "100",
                 *[f"--set={k}={v}" for k, v in TINY.items()]]) == 0
    again = json.loads((rpo / "seeds.json").read_text())
    assert again["loss"] == "rpo" and [r["sft"] for r in again["runs"]] == [r["sft"] for r in summary["runs"]]
    for seed in (0, 1):
        assert json.loads((rpo / f"seed-{seed}" / "compare_config.json").read_text())["start_from"] == str(
            out / f"seed-{seed}")
    capsys.readouterr()
    pooled = tmp_path / "pooled"  # runs made one by one, each in a folder of its own: pooled as --seeds pools them
    assert main(["pool-seeds", str(single / "seed-1"), str(single), "--output", str(pooled)]) == 0
    again = json.loads((pooled / "seeds.json").read_text())
    assert again["pooled"] == summary["pooled"] and [r["output"] for r in again["runs"]] == [str(single / "seed-1"),
                                                                                             str(single)]
    assert f"its run (`report.md` there): seed 1 `{single / 'seed-1'}`, seed 0 `{single}`." in (
        pooled / "seeds.md").read_text()
    assert capsys.readouterr().out.splitlines()[-1] == f"prefopt pool-seeds: over the seeds: {pooled / 'seeds.md'}"
    (tmp_path / "unfinished").mkdir()
    shutil.copy(out / "seed-1" / "compare_config.json", tmp_path / "unfinished")
    decoded = tmp_path / "decoded"  # evaluated with other decoding (a resumed run may be): other scores
    shutil.copytree(out / "seed-1", decoded)
    config = json.loads((decoded / "compare_config.json").read_text())
    config["settings"]["max_new_tokens"] = 3
    (decoded / "compare_config.json").write_text(json.dumps(config))
    refused = [([str(out / "seed-0")], "pool-seeds: give two or more runs"),
               ([str(out / "seed-0"), str(single)], f"{single} and {out / 'seed-0'} are both seed 0's runs: pool each "
                                                    "seed once"),
               ([str(out / "seed-0"), str(rpo / "seed-1")], f"{rpo / 'seed-1'} was run with other settings than "
                                                           f"{out / 'seed-0'} (loss: 'sigmoid' -> 'rpo'): only the "
                                                           "seed may differ"),
               ([str(out), str(single)], f"{out}: not a prefopt compare run (no compare_config.json there); a compare "
                                         "--seeds folder, whose seeds.md already pools seed-0, seed-1"),
               ([str(out / "seed-0"), str(tmp_path / "unfinished")], "unfinished: not finished (no report.json): "
                                                                    "rerun its prefopt compare command"),
               ([str(out / "seed-0"), str(decoded)], "(settings.max_new_tokens: None -> 3): only the seed may differ")]
    for runs, message in refused:
        assert main(["pool-seeds", *runs, "--output", str(tmp_path / "refused")]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "refused").exists()


def test_each_seeds_validated_review_threshold_is_listed_not_pooled(tmp_path):
    """A seed whose run chose review thresholds on its validation items (report.json's
    ``review_validated``) keeps them in the summary, and seeds.md lists them a seed a row; a
    seed without any, and a summary with none, add nothing."""
    from prefopt.evaluate.validated_review import seeds_lines

    cfg = CompareConfig(task="portal", model="m", output=str(tmp_path / "out"))
    found = {"validation": {"target": 0.8, "n_records": 60, "threshold": 0.75, "n": 9, "kept": 0.15, "right": 8 / 9,
                            "ci": [0.565, 0.980]},
             "test": {"threshold": 0.75, "n": 7, "kept": 7 / 60, "right": 6 / 7, "ci": [0.487, 0.974]}, "n_test": 60}
    reports = {s: _report(s, 0.7, 0.6) for s in (0, 1)}
    for s in ("sft", "dpo"):
        reports[0]["stages"][s]["review_validated"] = found
    summary = seeds.summarize(cfg, reports)
    assert summary["runs"][0]["review_validated"] == {"sft": found, "dpo": found}
    assert "review_validated" not in summary["runs"][1]
    md = seeds.markdown(summary)
    assert md[-len(seeds_lines(summary["runs"])):] == seeds_lines(summary["runs"])
    assert "| 0 | 0.75 (9 of 60, 0.889 [0.565, 0.980]) | 7 of 60, 0.857 [0.487, 0.974] | 0.75 (9 of 60, 0.889 " \
        "[0.565, 0.980]) | 7 of 60, 0.857 [0.487, 0.974] |" in md
    assert not any(line.startswith("| 1 | 0.") for line in md)
    from prefopt.evaluate.study import ARMS, _seeds_row  # a study's row over these seeds keeps each seed's

    row = _seeds_row(next(a for a in ARMS if a.task == "portal"), summary, 1.0)
    assert row["review_seeds"] == [{"seed": 0, "review_validated": {"sft": found, "dpo": found}, "dpo_is_sft": False}]
    del reports[0]["stages"]["sft"]["review_validated"], reports[0]["stages"]["dpo"]["review_validated"]
    assert "## Review threshold" not in seeds.markdown(seeds.summarize(cfg, reports))
