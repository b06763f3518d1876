"""``prefopt compare --seeds``: one compare run per seed, and the seeds' differences pooled by a
random-effects meta-analysis (checked against statsmodels' DerSimonian-Laird and by hand)."""
import json
import math

import numpy as np
import pytest

from prefopt.cli import main
from prefopt.evaluate import seeds
from prefopt.evaluate.compare import CompareConfig
from tests.tasks.test_compare_smoke import TINY


def test_pooling_is_dersimonian_laird_as_statsmodels_computes_it():
    meta = pytest.importorskip("statsmodels.stats.meta_analysis")
    norm = pytest.importorskip("scipy.stats").norm
    deltas, ses = [-0.093, -0.147, -0.337], [0.055, 0.047, 0.043]  # the demo's three seeds, roughly
    p = seeds.pooled(deltas, ses)
    ref = meta.combine_effects(np.array(deltas), np.array(ses) ** 2, method_re="dl")
    frame = ref.summary_frame()
    assert p["delta"] == pytest.approx(frame.loc["random effect", "eff"])
    assert p["se"] == pytest.approx(frame.loc["random effect", "sd_eff"])
    assert p["ci"] == pytest.approx([frame.loc["random effect", "ci_low"], frame.loc["random effect", "ci_upp"]])
    assert p["tau"] ** 2 == pytest.approx(ref.tau2) and p["i2"] == pytest.approx(ref.i2)
    assert p["q"] == pytest.approx(ref.q)
    assert p["p_value"] == pytest.approx(2 * norm.sf(abs(p["delta"]) / p["se"]))
    assert p["p_value"] < 0.05 and p["ci"][1] < 0 and p["i2"] > 0.8  # worse, and the seeds disagree by much
    same = seeds.pooled([0.1, 0.1], [0.05, 0.05])  # no spread between seeds: tau 0, the fixed-effect mean
    assert same["tau"] == 0 and same["i2"] == 0 and same["delta"] == pytest.approx(0.1)
    assert same["se"] == pytest.approx(0.05 / math.sqrt(2))
    point = seeds.pooled([0.0, 0.2], [0.0, 0.05])  # a CI that is a point still gets a finite weight
    assert math.isfinite(point["delta"]) and 0 <= point["delta"] <= 0.2
    assert seeds.se_of({"ci": [-0.2, 0.192]}) == pytest.approx(0.1, rel=1e-3)


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
    want = seeds.pooled([-0.1, -0.3], [0.2 / (2 * seeds.Z95)] * 2)
    got = summary["pooled"]["sft->dpo"]
    assert got["ci"] == pytest.approx(want.pop("ci")) and {k: got[k] for k in want} == pytest.approx(want)
    want["ci"] = got["ci"]
    md = (tmp_path / "out" / "seeds.md").read_text()
    assert "| 0 | 4 | 0.100 | 0.700 | 0.600 (the SFT model kept) | +0.600 [+0.400, +0.800], p < 0.005 | " \
           "-0.100 [-0.200, +0.000], p 0.06 |" in md
    assert f"- {seeds.pooled_line('sft', 'dpo', want)}." in md
    if seeds.pyplot() is not None:  # the forest plot: each seed's difference and CI, the pooled diamond
        assert (tmp_path / "out" / seeds.FOREST).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert md.rstrip().endswith("![seeds_forest.png](seeds_forest.png)")
    assert json.loads((tmp_path / "out" / "seeds.json").read_text()) == json.loads(json.dumps(summary))
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "compare_config.json").write_text("{}")
    with pytest.raises(ValueError, match=r"one: a compare run of one seed; --seeds writes each seed's run into "
                                         r"OUTPUT/seed-S: give another --output$"):
        seeds.run_seeds(CompareConfig(task="portal", model="m", output=str(tmp_path / "one")), [0, 1], run=run,
                        check=check)
    lines = seeds.console_lines(summary)
    assert lines[1] == "seed 2: base 0.100, SFT 0.700, SFT+DPO 0.400; SFT+DPO vs SFT -0.300 [-0.400, -0.200], p < 0.005"
    assert lines[-1].startswith("SFT+DPO against SFT: worse over the seeds (Δ -0.200, 95% CI [")
    assert lines[-2].startswith("SFT against base: better over the seeds (Δ +0.600, 95% CI [+0.459, +0.741], "
                                "p < 0.0001; random effects over 2 seeds, τ = 0.000, I² = 0%)")


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
        assert json.loads((out / f"seed-{seed}" / "compare_config.json").read_text())["seed"] == seed
        assert "`--seeds 0,1,2` runs the comparison on three and pools them" in (out / f"seed-{seed}" /
                                                                                 "report.md").read_text()
    splits = [json.loads((out / f"seed-{s}" / "split.json").read_text())["test"] for s in (0, 1)]
    assert splits[0] != splits[1]  # each seed draws its own test items
    assert said[-1] == f"prefopt compare: each seed's run in {out}/seed-S; over the seeds: {out}/seeds.md"
    assert said[-2].startswith("SFT+DPO against SFT: ") and "random effects over 2 seeds" in said[-2]
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
    rpo = tmp_path / "rpo"  # another DPO on each seed's own base and SFT stages
    assert main(["compare", "--task", "portal", "--model", str(tiny_model), "--output", str(rpo), "--seeds", "0,1",
                 "--from", str(out), "--loss", "rpo", "--n-resamples", "100",
                 *[f"--set={k}={v}" for k, v in TINY.items()]]) == 0
    again = json.loads((rpo / "seeds.json").read_text())
    assert again["loss"] == "rpo" and [r["sft"] for r in again["runs"]] == [r["sft"] for r in summary["runs"]]
    for seed in (0, 1):
        assert json.loads((rpo / f"seed-{seed}" / "compare_config.json").read_text())["start_from"] == str(
            out / f"seed-{seed}")
