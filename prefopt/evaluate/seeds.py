"""``prefopt compare --seeds 0,1,2``: the comparison once per seed, and what the seeds say together.

A seed draws the test split and training's randomness (LoRA's initial weights and dropout, the
order of the examples). On the portal demo SFT+DPO against SFT moved from -0.09 to -0.34 macro-F1
across three seeds (docs/results.md), so one seed's verdict says little about the method. Each
seed runs ``prefopt compare`` into ``OUTPUT/seed-S`` (resumable, as compare is; every seed's
settings are checked before the first trains); where OUTPUT already holds a one-seed run (``make
demo``'s, an earlier ``prefopt study``'s task) of a seed in the list, with the same settings, that
run is that seed's, reused rather than trained again. ``seeds.md`` and ``seeds.json`` then hold each
seed's scores and tests, and the seeds pooled by a random-effects meta-analysis: each seed's
difference weighted by the inverse of its own variance plus the variance between seeds (tau squared,
DerSimonian and Laird), with a 95% CI and p-value from Student's t on seeds - 1 degrees of freedom
(Hartung-Knapp-Sidik-Jonkman; the seeds weighted equally where one's stages answered alike), and
I squared, the share of the spread across seeds that their test sets' own noise does not explain.
A seed's variance is its bootstrap's: the resampled differences' variance (``se`` squared; read
off the 95% CI as ((hi - lo) / 3.92) squared for runs that predate it); the seeds' test sets
differ (the seed draws the split), so the pooled figure is over splits and training runs alike.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ..fileio import read_json, write_json_atomic, write_text_atomic
from . import seeds_calibration
from .compare import CompareConfig, check_compare, run_compare
from .pooling import PAIRS, figures_text, paired_figures, pooled, se_of, signs
from .report import NAMES, pyplot
from .stage_confidence import paired_text
from .stats import ALPHA
from .validated_review import seeds_lines, validated_of


def parse_seeds(text: str) -> list[int]:
    """``--seeds 0,1,2``: two or more distinct whole numbers."""
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--seeds {text}: expected whole numbers separated by commas (0,1,2)") from None
    if len(seeds) < 2 or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds {text}: two or more different seeds (0,1,2); one seed is --seed")
    return seeds


def seeds_of(args) -> list[int] | None:
    """compare's and study's ``--seeds`` (None where not given); ``--seed`` beside it refused."""
    if args.seeds is None:
        return None
    seeds = parse_seeds(args.seeds)
    if args.seed != 0:
        raise ValueError("give --seed or --seeds, not both")
    return seeds


def own_seed(folder: str | Path) -> int | None:
    """The seed of the one-seed compare run ``folder`` itself holds (its ``compare_config.json``), or None."""
    path = Path(folder) / "compare_config.json"
    return read_json(path).get("seed", 0) if path.is_file() else None


def seed_folder(folder: str | Path, seed: int) -> str:
    """Where seed ``seed``'s run is in a seeds folder: ``folder/seed-S``, or ``folder`` itself where
    it holds a one-seed run of that seed (made before ``--seeds``: reused as that seed's)."""
    return str(folder) if own_seed(folder) == seed else str(Path(folder) / f"seed-{seed}")


def seed_configs(cfg: CompareConfig, seeds: list[int]) -> list[CompareConfig]:
    """One config per seed, each into ``OUTPUT/seed-S``; ``--from DIR`` reads ``DIR/seed-S`` (each
    folder's own one-seed run for its seed: :func:`seed_folder`)."""
    return [replace(cfg, seed=s, output=seed_folder(cfg.output, s),
                    start_from=None if cfg.start_from is None else seed_folder(cfg.start_from, s))
            for s in seeds]


def check_seeds(cfg: CompareConfig, seeds: list[int], check=check_compare) -> list[CompareConfig]:
    """Raise what :func:`run_seeds` would refuse before any seed trains (a folder that holds a
    one-seed run of a seed not in ``seeds``, or of one whose ``seed-S`` folder is there too; each
    seed's run as ``check`` refuses it: a one-seed run made with other settings), writing nothing;
    the seeds' configs."""
    out = Path(cfg.output)
    own = own_seed(out)
    if own is not None and own not in seeds:
        raise ValueError(f"{out}: a compare run of seed {own}, not among --seeds {','.join(map(str, seeds))}: add "
                         f"{own} to reuse it as that seed's run (the others go into OUTPUT/seed-S beside it), or give "
                         "another --output")
    if own is not None and (out / f"seed-{own}").exists():
        raise ValueError(f"{out}: a compare run of seed {own}, and seed-{own}/ in it, another: move one of them out")
    configs = seed_configs(cfg, seeds)
    for c in configs:
        check(c)
    return configs


def run_seeds(cfg: CompareConfig, seeds: list[int], *, run=run_compare, check=check_compare) -> dict:
    """Every seed's config checked (:func:`check_seeds`), then each run (or resumed) in turn,
    ``seeds.md`` and ``seeds.json`` rewritten after each; returns ``seeds.json``'s content."""
    configs = check_seeds(cfg, seeds, check)  # a seed that would be refused is said before the first one trains
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    reports: dict[int, dict] = {}
    summary: dict = {}
    for c in configs:
        reports[c.seed] = run(c)
        summary = summarize(cfg, reports)
        write_summary(out, summary)
    return summary


def write_summary(out: Path, summary: dict) -> None:
    """``seeds.json``, ``seeds.md`` and (two or more seeds, with matplotlib) the forest plot into ``out``."""
    plot = forest_plot(summary, out)
    write_json_atomic(out / "seeds.json", summary)
    write_text_atomic(out / "seeds.md", "\n".join(markdown(summary, plot)) + "\n")


FOREST = "seeds_forest.png"


def forest_plot(summary: dict, out: Path) -> str | None:
    """``seeds_forest.png``: SFT+DPO against SFT, each seed's difference and 95% CI, the pooled one
    below them as a diamond; None where matplotlib is missing or fewer than two seeds have run."""
    plt = pyplot()
    if plt is None or not summary["pooled"]:
        return None
    runs, p = summary["runs"], summary["pooled"]["sft->dpo"]
    rows = len(runs) + 1
    fig, ax = plt.subplots(figsize=(5.2, 0.45 * rows + 1.2))
    for i, r in enumerate(runs):
        t = r["sft->dpo"]
        y = rows - i
        ax.plot(t["ci"], [y, y], color="#4c78a8")
        ax.plot([t["delta"]], [y], "s", color="#4c78a8")
    lo, hi = p["ci"]
    ax.fill([lo, p["delta"], hi, p["delta"]], [1, 1.25, 1, 0.75], color="#f58518")
    ax.axvline(0, color="#666666", linewidth=0.8, linestyle="--")
    ax.set_yticks(range(rows, 0, -1), [f"seed {r['seed']}" for r in runs] + ["pooled"])
    ax.set_xlabel(f"Δ{summary['metric']}, SFT+DPO − SFT (95% CI)")
    ax.set_title(f"{summary['task']}: SFT+DPO against SFT over the seeds", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / FOREST, dpi=120)
    plt.close(fig)
    return FOREST


def summarize(cfg: CompareConfig, reports: dict[int, dict], outputs: dict[int, str] | None = None) -> dict:
    """Each seed's scores and tests from its ``report.json``, and the seeds pooled (two or more).
    ``outputs``: each seed's run folder, where not ``cfg.output``'s (:func:`seed_folder`)."""
    first = next(iter(reports.values()))
    runs = []
    for seed, r in reports.items():
        where = outputs[seed] if outputs else seed_folder(cfg.output, seed)
        runs.append({"seed": seed, "output": where, "n_test": r["n_test"],
                     "dpo_is_sft": dpo_is_sft(r),
                     **{s: r["stages"][s]["primary"] for s in ("base", "sft", "dpo")},
                     **{f"{a}->{b}": paired_figures(r["comparisons"][f"{a}->{b}"]["primary"]) for a, b in PAIRS},
                     **({"calibration": cal} if (cal := seeds_calibration.run_calibration(r)) else {}),
                     **({"review_validated": found} if (found := validated_of(r)) else {})})
    pool = {}
    if len(runs) > 1:
        for a, b in PAIRS:
            key = f"{a}->{b}"
            pool[key] = pooled([x[key]["delta"] for x in runs], [se_of(x[key]) for x in runs])
    return {"task": first["task"], "model": first["model"], "metric": first["metric"], "loss": cfg.loss,
            "preset": cfg.preset, "output": str(cfg.output), "seeds": list(reports), "runs": runs, "pooled": pool,
            "test_data": getattr(cfg, "test_data", None),
            **({"calibration": cal} if (cal := seeds_calibration.pool_calibration(runs)) else {})}


def dpo_is_sft(report: dict) -> bool:
    """Whether a compare run's SFT+DPO stage is its SFT model (the validation items or
    ``dpo_max_p`` kept it): the same weights, by ``report.json``'s ``weights``."""
    weights = report.get("weights") or {}
    return bool(weights) and weights.get("dpo") == weights.get("sft")


def verdict(a: str, b: str, p: dict) -> str:
    """The pooled difference of ``b`` against ``a`` (stage keys), in words."""
    worded = f"{NAMES[b]} against {NAMES[a]}"
    if p["p_value"] < ALPHA:
        return f"{worded}: {'better' if p['delta'] > 0 else 'worse'} over the seeds"
    return f"{worded}: no significant difference over the seeds"


def pooled_line(a: str, b: str, p: dict) -> str:
    return f"{verdict(a, b, p)} ({figures_text(p)})"


def direction(runs: list[dict], key: str) -> str:
    """On how many seeds the difference ``key`` went each way, and significantly (p < 0.05)."""
    return signs([r[key] for r in runs], len(runs))


def markdown(summary: dict, plot: str | None = None) -> list[str]:
    """``seeds.md``: one row a seed, then the pooled verdicts (and ``plot``, the forest plot)."""
    m = summary["metric"]
    lines = [f"# {summary['task']}: base → SFT → SFT+DPO over seeds {', '.join(map(str, summary['seeds']))}", "",
             f"Model `{summary['model']}`, preset `{summary['preset']}`, DPO loss `{summary['loss']}`; metric {m}. "
             + (f"Every seed tests on `{summary['test_data']}` (--test-data) and draws its own training randomness; "
                if summary.get("test_data") else "Each seed draws its own test split and training randomness; ")
             + _where(summary), "",
             "| seed | test items | base | SFT | SFT+DPO | SFT vs base: Δ [95% CI], p "
             "| SFT+DPO vs SFT: Δ [95% CI], p |",
             "|---|---|---|---|---|---|---|"]
    for r in summary["runs"]:
        kept = " (the SFT model kept)" if r["dpo_is_sft"] else ""
        lines.append(f"| {r['seed']} | {r['n_test']} | {r['base']:.3f} | {r['sft']:.3f} | {r['dpo']:.3f}{kept} | "
                     + " | ".join(paired_text(r[f"{a}->{b}"]) for a, b in PAIRS) + " |")
    if summary["pooled"]:
        lines += ["", "## Pooled", ""]
        lines += [f"- {pooled_line(a, b, summary['pooled'][f'{a}->{b}'])}; "
                  f"{direction(summary['runs'], f'{a}->{b}')}." for a, b in PAIRS]
        lines += ["", "Random effects: each seed weighted by the inverse of its own variance (from its bootstrap CI) "
                  "plus the variance between seeds, τ² (DerSimonian-Laird); the CI and p from Student's t with seeds "
                  "− 1 degrees of freedom (Hartung-Knapp-Sidik-Jonkman), as a few seeds leave the spread between "
                  "them poorly known: with three, a pooled difference must be large against that spread to count. "
                  "I² is the share of the spread across seeds that their test sets' own noise does not explain: "
                  "high, and the verdict depends on the seed (training's randomness, the split) more than on the "
                  "items tested."]
        if any(p.get("weights") == "equal" for p in summary["pooled"].values()):
            lines[-1] += (" Where a seed's two stages answered alike (a difference of exactly 0 with no variance of "
                          "its own, as where the validation guard kept the SFT model), its inverse variance would "
                          "give it nearly all the weight and the pooled CI the width of a point: there the seeds are "
                          "weighted equally, their mean difference tested by Student's t on their own spread.")
        lines += ["", f"![{plot}]({plot})"] if plot else ["", "(The forest plot needs matplotlib: pip install "
                                                          "'prefopt[plots]'.)"]
    return lines + seeds_calibration.calibration_lines(summary) + seeds_lines(summary["runs"])


def _where(summary: dict) -> str:
    """seeds.md's words for where each seed's run is: ``seed-S/`` in this folder (one, maybe, this
    folder's own), or the folders ``prefopt pool-seeds`` was given."""
    out, runs = summary["output"], summary["runs"]
    if all(r["output"] in (out, str(Path(out) / f"seed-{r['seed']}")) for r in runs):
        own = "".join(f", seed {r['seed']}'s this folder's own (a run made before --seeds)"
                      for r in runs if r["output"] == out)
        return f"its run is in `seed-S/` (`report.md` there){own}."
    return "its run (`report.md` there): " + ", ".join(f"seed {r['seed']} `{r['output']}`" for r in runs) + "."


def console_lines(summary: dict) -> list[str]:
    """What ``prefopt compare --seeds`` prints at the end."""
    lines = [f"seed {r['seed']}: base {r['base']:.3f}, SFT {r['sft']:.3f}, SFT+DPO {r['dpo']:.3f}; SFT+DPO vs SFT "
             + paired_text(r["sft->dpo"]) for r in summary["runs"]]
    lines += [f"{pooled_line(a, b, summary['pooled'][f'{a}->{b}'])}; {direction(summary['runs'], f'{a}->{b}')}"
              for a, b in PAIRS if summary["pooled"]]
    return lines + seeds_calibration.console_lines(summary)
