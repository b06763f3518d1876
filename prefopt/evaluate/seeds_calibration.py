"""The label probabilities' calibration over seeds: ``seeds.md``'s and ``seeds.json``'s Calibration.

Where a task's answers are labels, each seed's compare run scored every stage's label probabilities
(their Brier score, and SFT+DPO's against SFT's by the paired bootstrap: :mod:`.stage_confidence`)
and, with ``--set val=N``, calibrated each stage on its validation items (a temperature T, and the
test items' Brier score calibrated against the same at T = 1). A seed's DPO stage may come out too
sure on one seed and not on another, so the seeds' paired differences are pooled here per field as
:func:`.pooling.pooled` pools the primary metric's: each seed weighted by its bootstrap's variance
plus the variance between seeds (alike where a seed's two stages answered alike, as where the
validation guard kept the SFT model), with Student's t on seeds - 1 degrees of freedom.
"""
from __future__ import annotations

from .pooling import PAIRS, figures_text, paired_figures, pooled, pooled_p_said, se_of, signs, spread_text
from .report import NAMES
from .stage_confidence import bound_text, fmt, paired_text
from .stats import ALPHA


def stage_calibration(stages: dict) -> dict:
    """Each stage calibrated on the run's validation items (``report.json``'s stages, those with
    ``calibrated``): its temperature, and per field the test items' Brier score plain and
    calibrated, with their paired test (``calibrated_vs_plain``)."""
    return {s: {"temperature": v["metrics"]["calibrated"]["temperature"],
                "bound": v["metrics"]["calibrated"].get("bound"), "fitted_on": v["metrics"]["calibrated"]["fitted_on"],
                "fields": {name: {"brier": v["metrics"]["confidence"][name]["brier"], "calibrated": f["brier"],
                                  "test": v.get("calibrated_vs_plain", {}).get(name)}
                           for name, f in v["metrics"]["calibrated"]["fields"].items()}}
            for s, v in stages.items() if "calibrated" in v["metrics"] and "confidence" in v["metrics"]}


def run_calibration(report: dict) -> dict:
    """One seed's figures from its ``report.json``: each stage's Brier and ECE per field
    (``scores``), the stages' paired Brier tests (``brier``: ``{"sft->dpo": {field: test}}``) and
    each stage calibrated on the validation items (``calibrated``: :func:`stage_calibration`);
    empty where the run scored no label probabilities (answers that are not labels, or
    ``--set confidence=false``) or predates the Brier score (2026-12-06)."""
    st, cmp = report["stages"], report["comparisons"]
    if not all("confidence" in st[s].get("metrics", {}) for s in NAMES) or not all(
            cmp[f"{a}->{b}"].get("brier") for a, b in PAIRS):
        return {}
    return {"scores": {s: {name: {k: c.get(k) for k in ("brier", "ece")}
                           for name, c in st[s]["metrics"]["confidence"].items()} for s in NAMES},
            "brier": {f"{a}->{b}": {name: paired_figures(t) for name, t in cmp[f"{a}->{b}"]["brier"].items()}
                      for a, b in PAIRS},
            **({"calibrated": cal} if (cal := stage_calibration(st)) else {})}


def pool_calibration(runs: list[dict]) -> dict:
    """The seeds' Brier differences pooled per field (``brier``: ``{"sft->dpo": {field: pooled}}``)
    and, where every seed was calibrated on validation items, each stage's calibrated Brier
    against its own at T = 1 (``calibrated``: ``{"dpo": {field: pooled}}``, with the seeds'
    temperatures, ``temperatures``); empty where a seed lacks the figures or fewer than two ran."""
    cal = [r.get("calibration") or {} for r in runs]
    if len(runs) < 2 or not all(cal):
        return {}

    def pool(tests: list[dict]) -> dict:
        return pooled([t["delta"] for t in tests], [se_of(t) for t in tests])

    fields = list(cal[0]["brier"]["sft->dpo"])
    out = {"brier": {k: {name: pool([c["brier"][k][name] for c in cal]) for name in fields}
                     for k in cal[0]["brier"]}}
    if all("calibrated" in c for c in cal):
        stages = [s for s in cal[0]["calibrated"] if all(s in c["calibrated"] for c in cal)]
        tested = [s for s in stages if all(c["calibrated"][s]["fields"][n]["test"] for c in cal for n in fields)]
        out["calibrated"] = {s: {name: pool([c["calibrated"][s]["fields"][name]["test"] for c in cal])
                                 for name in fields} for s in tested}
        out["temperatures"] = {s: [c["calibrated"][s]["temperature"] for c in cal] for s in stages}
    return out


def brier_line(a: str, b: str, name: str, p: dict) -> str:
    """A pooled Brier difference of stage ``b`` against ``a`` for label field ``name``, in words
    (lower: nearer the truth)."""
    if p["p_value"] < ALPHA:
        said = "lower (nearer the truth)" if p["delta"] < 0 else "higher (further from the truth)"
    else:
        said = "no significant difference"
    return f"{NAMES[b]} against {NAMES[a]}, {name}'s Brier: {said} over the seeds ({figures_text(p)})"


def calibrated_line(stage: str, name: str, p: dict, temperatures: list[float]) -> str:
    """A stage's pooled calibrated Brier against its own at T = 1, with the seeds' temperatures."""
    lo, hi = p["ci"]
    pv = pooled_p_said(p)
    ts = ", ".join(f"{t:.2f}" for t in temperatures)
    return (f"{NAMES[stage]} calibrated, {name}'s Brier against T = 1: Δ {p['delta']:+.3f}, 95% CI [{lo:+.3f}, "
            f"{hi:+.3f}], p {pv} over the seeds (T {ts}; {spread_text(p)})")


def calibration_lines(summary: dict) -> list[str]:
    """``seeds.md``'s Calibration section: each seed's Brier score per stage and field with the
    stages' paired tests, the seeds pooled; with validation items each stage's temperature and
    calibrated Brier too. Nothing where the runs scored no label probabilities."""
    runs = [r for r in summary["runs"] if r.get("calibration")]
    if not runs:
        return []
    lines = ["", "## Calibration", "",
             "Brier score of each stage's label probabilities (the mean squared gap between each label's "
             "probability and the truth; lower: nearer it), and the stages against each other by each seed's paired "
             "bootstrap over its test items:", "",
             "| seed | field | Brier base | SFT | SFT+DPO | SFT vs base: ΔBrier [95% CI], p "
             "| SFT+DPO vs SFT: ΔBrier [95% CI], p |", "|---|---|---|---|---|---|---|"]
    for r in runs:
        c = r["calibration"]
        for name in c["brier"]["sft->dpo"]:
            lines.append(f"| {r['seed']} | {name} | " + " | ".join(fmt(c["scores"][s][name]["brier"]) for s in NAMES)
                         + " | " + " | ".join(paired_text(c["brier"][f"{a}->{b}"][name]) for a, b in PAIRS) + " |")
    pool = summary.get("calibration") or {}
    if pool.get("brier"):
        lines += [""] + [f"- {brier_line(a, b, name, p)}; {_direction(runs, a, b, name)}."
                         for a, b in PAIRS for name, p in pool["brier"][f"{a}->{b}"].items()]
    if any("calibrated" in r["calibration"] for r in runs):
        lines += ["", "Each stage calibrated on its seed's validation items (`--set val=N`: the temperature T fitted "
                  "on them; T > 1: the stage was too sure), then scored on the test items against the same at T = 1:",
                  "",
                  "| seed | stage | T | field | Brier | calibrated | ΔBrier [95% CI], p |",
                  "|---|---|---|---|---|---|---|"]
        for r in runs:
            for s, c in r["calibration"].get("calibrated", {}).items():
                lines += [f"| {r['seed']} | {NAMES[s]} | {c['temperature']:.3f}{bound_text(c)} | {name} | "
                          f"{fmt(f['brier'])} | {fmt(f['calibrated'])} | {paired_text(f['test'])} |"
                          for name, f in c["fields"].items()]
        if pool.get("calibrated"):
            lines += [""] + [f"- {calibrated_line(s, name, p, pool['temperatures'][s])}."
                             for s, fields in pool["calibrated"].items() for name, p in fields.items()]
    return lines


def _direction(runs: list[dict], a: str, b: str, name: str) -> str:
    return signs([r["calibration"]["brier"][f"{a}->{b}"][name] for r in runs], len(runs))


def console_lines(summary: dict) -> list[str]:
    """What ``compare --seeds`` prints of the calibration: SFT+DPO's pooled Brier against SFT's."""
    pool = (summary.get("calibration") or {}).get("brier", {}).get("sft->dpo", {})
    return [brier_line("sft", "dpo", name, p) for name, p in pool.items()]
