"""The comparison report: per-stage metrics with CIs, paired tests between stages, plots."""
from __future__ import annotations

import shlex
from pathlib import Path

import numpy as np

from ..chat_template import describe_chat_vars
from ..fileio import read_json, write_json_atomic, write_text_atomic
from ..losses import reads_nll
from ..model.digest import weights_sha256
from ..train.curves import FILE as CURVES
from ..train.curves import plot_curves
from .dynamics import dynamics_lines, training_dynamics
from .review import review_report_lines, stage_review
from .selection import against_step_0, stage_weights
from .stage_confidence import (
    auroc_comparison_lines,
    brier_comparison_lines,
    calibrated_lines,
    compare_auroc,
    compare_brier,
    compare_calibrated,
    confidence_console_lines,
    confidence_lines,
)
from .stats import ALPHA, bootstrap_ci, mcnemar_exact, p_text, paired_bootstrap, wilcoxon_signed_rank
from .usage import models_lines
from .validated_review import validated_lines, validated_review

PAIRS = (("base", "sft"), ("sft", "dpo"), ("base", "dpo"))
NAMES = {"base": "base", "sft": "SFT", "dpo": "SFT+DPO"}


def verdict(a: str, b: str, metric: str, cmp: dict) -> str:
    """``b`` against ``a`` (names as shown) on the primary metric's paired bootstrap ``cmp``, in words."""
    d, (lo, hi), p = cmp["delta"], cmp["ci"], cmp["p_value"]
    stats = f"Δ{metric} = {d:+.3f}, 95% CI [{lo:+.3f}, {hi:+.3f}], bootstrap p {p_text(cmp)}"
    if p < ALPHA and d > 0:
        return f"**Yes**: {b} beat {a} ({stats})."
    if p < ALPHA and d < 0:
        return f"**No**: {b} was worse than {a} ({stats})."
    if d == 0 and lo == hi == 0:
        return (f"**No difference**: {b} and {a} score the same on every resample "
                f"(Δ{metric} = 0; bootstrap p {p_text(cmp)}).")
    lean = "higher" if d > 0 else "lower" if d < 0 else "equal"
    return (f"**No significant difference**: {b} vs {a} ({stats}; the point estimate is {lean}, "
            f"but the CI includes 0).")


def rpo_from(output: str) -> list[str]:
    """The arguments that train RPO (DPO plus the chosen answers' NLL) alone on the SFT model of
    the run in ``output``, into ``OUTPUT-rpo`` (``--from``)."""
    output = str(output).rstrip("/")
    return ["--loss", "rpo", "--from", output, "--output", f"{output}-rpo"]


def advice(loss: str, comparisons: dict, output: str | None = None) -> str | None:
    """A next step for when DPO made the SFT model significantly worse, under a loss without an
    NLL term; else None. ``output``: the run's folder, for the command that tries it on the
    same SFT model (``--from``)."""
    c = comparisons.get("sft->dpo", {}).get("primary")
    if c is None or c["p_value"] >= ALPHA or c["delta"] >= 0 or reads_nll(loss):
        return None
    return (f"the preference stage (loss `{loss}`) made the SFT model worse. With a small model and few pairs, a "
            "preference loss without an NLL term often shifts the answer prior (a class, a length) instead of "
            "learning the items. "
            "`--loss rpo` adds the chosen answers' NLL; where sigmoid DPO made SmolLM2-135M significantly worse "
            "(KTAS, MeQSum, Medical Abstracts, the portal demo), RPO was neutral, and with four times the KTAS data it "
            "raised macro-F1 on three seeds of three (significantly on one; docs/results.md). On the portal demo RPO with "
            "WPO's pair weights (`--loss rpo --set wpo=true`) did no worse than RPO on three seeds of three and beat "
            "SFT significantly on one."
            + (f" To train DPO alone on this run's SFT model: the same command with `{shlex.join(rpo_from(output))}`."
               if output else ""))


def compare_pair(task, test, rows_a: list[dict], rows_b: list[dict], n_resamples: int = 2000, seed: int = 0
                 ) -> dict:
    """``rows_b``'s answers against ``rows_a``'s on the same items ``test`` (``predictions.jsonl``
    rows, in ``test``'s order): the primary metric's paired bootstrap, then exact McNemar on
    right/wrong items, or for free text the Wilcoxon signed-rank test on per-item scores, and
    the judge's Likert scores where both have them."""
    pa, pb = [row["prediction"] for row in rows_a], [row["prediction"] for row in rows_b]
    c = {"primary": paired_bootstrap(task.primary_on(test, pa), task.primary_on(test, pb), len(test),
                                     n_resamples=n_resamples, seed=seed)}
    if task.item_test == "wilcoxon":
        sa, sb = task.item_scores(test, pa), task.item_scores(test, pb)
        c["item_wilcoxon"] = {"higher": int((sb > sa).sum()), "lower": int((sb < sa).sum()),
                              **wilcoxon_signed_rank(sa, sb)}
    else:
        c["mcnemar"] = mcnemar_exact([row["correct"] for row in rows_a], [row["correct"] for row in rows_b])
    sure = compare_auroc(rows_a, rows_b, n_resamples=n_resamples, seed=seed)
    if sure:  # both stages scored every label (prefopt.evaluate.stage_confidence)
        c["confidence_auroc"] = sure
    if calibrated := compare_brier(rows_a, rows_b, n_resamples=n_resamples, seed=seed):
        c["brier"] = calibrated
    both = [(x["likert"], y["likert"]) for x, y in zip(rows_a, rows_b)
            if x.get("likert") is not None and y.get("likert") is not None]
    if both:
        xa, xb = np.array([x for x, _ in both], float), np.array([y for _, y in both], float)
        c["likert_wilcoxon"] = wilcoxon_signed_rank(xa, xb)
        c["likert_bootstrap"] = paired_bootstrap(lambda i, v=xa: float(v[i].mean()), lambda i, v=xb: float(v[i].mean()),
                                                 len(both), n_resamples=n_resamples, seed=seed)
    return c


def compare_stages(task, test, results: dict, n_resamples: int = 2000, seed: int = 0) -> dict:
    n = len(test)
    stages = {}
    for s, (rows, metrics) in results.items():
        fn = task.primary_on(test, [row["prediction"] for row in rows])
        stages[s] = {"primary": fn(np.arange(n)), "ci": bootstrap_ci(fn, n, n_resamples=n_resamples, seed=seed),
                     "accuracy": float(np.mean([row["correct"] for row in rows])), "metrics": metrics}
        if task.item_test == "wilcoxon":  # free text: how long the answers run against the references
            stages[s]["mean_words"] = float(np.mean([len(str(row["prediction"] or "").split()) for row in rows]))
        if tested := compare_calibrated(rows, n_resamples=n_resamples, seed=seed):  # (with validation items)
            stages[s]["calibrated_vs_plain"] = tested
        if review := stage_review(task, test, rows):  # (its labels scored)
            stages[s]["review"] = review
    comparisons = {}
    for a, b in PAIRS:
        if a in results and b in results:
            c = compare_pair(task, test, results[a][0], results[b][0], n_resamples, seed)
            c["verdict"] = verdict(NAMES[a], NAMES[b], task.primary, c["primary"])
            comparisons[f"{a}->{b}"] = c
    return {"stages": stages, "comparisons": comparisons}


def pyplot():
    """matplotlib's pyplot, drawing to files (Agg), or None where matplotlib is not installed (the
    reports leave their plots out, saying so)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _plots(task, stats: dict, out: Path) -> list[str]:
    plt = pyplot()
    if plt is None:
        return []
    files = []
    st = stats["stages"]
    names = [NAMES[s] for s in st]
    vals = [st[s]["primary"] for s in st]
    err = np.array([[v - st[s]["ci"][0], st[s]["ci"][1] - v] for s, v in zip(st, vals)]).T
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    ax.bar(names, vals, yerr=err, capsize=6, color=["#9aa5b1", "#4c78a8", "#f58518"][:len(names)])
    ax.set_ylabel(task.primary)
    ax.set_title(f"{task.name}: {task.primary} by stage (95% CI)")
    fig.tight_layout()
    fig.savefig(out / "metric_by_stage.png", dpi=120)
    plt.close(fig)
    files.append("metric_by_stage.png")
    for f in getattr(task, "fields", []):
        fig, axes = plt.subplots(1, len(st), figsize=(3.6 * len(st), 3.4))
        for ax, s in zip(np.atleast_1d(axes), st):
            cm = st[s]["metrics"][f.name]["confusion"]
            m = np.array(cm["matrix"])
            ax.imshow(m, cmap="Blues")
            ax.set_xticks(range(len(cm["labels"])), cm["labels"], rotation=45, ha="right", fontsize=7)
            ax.set_yticks(range(len(cm["labels"]) - 1), cm["labels"][:-1], fontsize=7)
            for (i, j), v in np.ndenumerate(m):
                ax.text(j, i, str(v), ha="center", va="center", fontsize=7)
            ax.set_title(NAMES[s], fontsize=9)
            ax.set_xlabel("predicted", fontsize=8)
        np.atleast_1d(axes)[0].set_ylabel("true", fontsize=8)
        fig.suptitle(f"{task.name}: {f.name} confusion matrices", fontsize=9)
        fig.tight_layout()
        name = f"confusion_{f.name.replace(' ', '_')}.png"
        fig.savefig(out / name, dpi=120)
        plt.close(fig)
        files.append(name)
    files += _calibration_plots(plt, task, st, out)
    for stage in ("sft", "dpo"):
        train = out / stage / "train"
        if not (train / CURVES).is_file() and (train / "metrics.jsonl").is_file():  # a run from before the curves
            try:
                plot_curves(train)
            except ValueError:  # nothing logged: no curves, and the report goes on
                pass
        if (train / CURVES).is_file():
            files.append(f"{stage}/train/{CURVES}")
    return files


def _calibration_plots(plt, task, st: dict, out: Path) -> list[str]:
    """``calibration_<field>.png``: each stage's reliability curve (the likeliest label's
    probability, binned, against how often it was right; a point's size its bin's count) on the
    diagonal a calibrated model follows, where every stage was scored (a run from before
    2026-12-06 kept no bins)."""
    scored = [st[s]["metrics"].get("confidence") for s in st]
    if not all(c and all("reliability" in x for x in c.values()) for c in scored):
        return []
    files = []
    for f in getattr(task, "fields", []):
        fig, ax = plt.subplots(figsize=(4.2, 4.0))
        ax.plot([0, 1], [0, 1], color="#bbbbbb", linestyle="--", linewidth=1)
        for s, color in zip(st, ["#9aa5b1", "#4c78a8", "#f58518"]):
            c = st[s]["metrics"]["confidence"][f.name]
            bins = c["reliability"]
            ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], color=color, marker="o",
                    markersize=3, linewidth=1.2, label=f"{NAMES[s]} (ECE {c['ece']:.3f})")
            ax.scatter([b["confidence"] for b in bins], [b["accuracy"] for b in bins], s=[8 * b["n"] for b in bins],
                       color=color, alpha=0.35)
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("probability of the likeliest label", fontsize=8)
        ax.set_ylabel("how often it was right", fontsize=8)
        ax.set_title(f"{task.name}: {f.name} calibration", fontsize=9)
        ax.legend(fontsize=7, loc="upper left")
        fig.tight_layout()
        name = f"calibration_{f.name.replace(' ', '_')}.png"
        fig.savefig(out / name, dpi=120)
        plt.close(fig)
        files.append(name)
    return files


def _fmt(v) -> str:
    return "—" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def console_lines(report: dict, comparisons: tuple[str, ...] = ("base->sft", "sft->dpo", "base->dpo")) -> list[str]:
    """A compare report's verdicts, training notes and advice as plain text for a terminal
    (report.md has the same sentences as markdown)."""
    lines = [f"{k}: {report['comparisons'][k]['verdict'].replace('**', '')}"
             for k in comparisons if k in report["comparisons"]]
    lines += confidence_console_lines({NAMES[s]: v["metrics"] for s, v in report["stages"].items()})
    lines += [line.removeprefix("- ") for line in dynamics_lines(report.get("training", {}))]
    return lines + ([f"what to try: {report['advice']}"] if report.get("advice") else [])


def _second_column(task, test) -> str:
    """Exact match for labels and short answers; for free text, which is never word for word,
    the answers' mean length against the references'."""
    if task.item_test == "wilcoxon":
        return f"mean words (reference {np.mean([len(r.target.split()) for r in test]):.1f})"
    return "exact match"


def _item_test_name(task) -> str:
    return f"Wilcoxon (per-item {task.primary})" if task.item_test == "wilcoxon" else "McNemar"


def item_test_line(task, cmp: dict[str, dict]) -> str:
    """The per-item paired tests in words, each under its label (e.g. "SFT vs base"): McNemar on
    right/wrong items, or the Wilcoxon signed-rank test on a graded per-item score (ROUGE-L),
    where no summary is right or wrong."""
    if task.item_test == "wilcoxon":
        return (f"Wilcoxon signed-rank on per-item {task.primary}: " + "; ".join(
            f"{k}: {v['item_wilcoxon']['higher']} items higher, {v['item_wilcoxon']['lower']} lower, "
            f"p = {v['item_wilcoxon']['p_value']:.3g}" for k, v in cmp.items()) + ".")
    return ("Exact McNemar on per-item correctness: " + "; ".join(
        f"{k}: {v['mcnemar']['b_only']} items newly right, {v['mcnemar']['a_only']} newly wrong, "
        f"p = {v['mcnemar']['p_value']:.3g}" for k, v in cmp.items()) + ".")


def past_context_note(results: dict, n: int) -> str | None:
    """Where some of the ``n`` test items' prompts and answers ran past the model's context (each
    stage's ``metrics.json`` counts them: ``past_context``), a line that says how many and what it
    means for their answers; None where none did, and for runs from before it was counted."""
    counts = [m["past_context"] for _, m in results.values() if m.get("past_context")]
    if not counts:
        return None
    return (f"**{max(counts)} of the {n} test items' prompts and answers run past the model's context**: positions it "
            "never trained on, so those answers, in every stage, are not to be trusted (the run named them as it "
            "started; shorter texts, or a lower `--task-option max_chars` where the task has it, keep them inside).")


def decoding_line(results: dict) -> str | None:
    """How the stages' answers were decoded, and where, from what each ``metrics.json`` recorded
    (None for runs from before it was recorded)."""
    said = {}
    # the batch each stage's answers were made in, said where the stages' are known to differ
    batches = {m["eval_batch_size"] for _, m in results.values() if "eval_batch_size" in m}
    for s, (_, m) in results.items():
        if "max_new_tokens" not in m:
            continue
        text = f"greedy decoding, at most {m['max_new_tokens']} new tokens"
        repeats = [f"repetition penalty {m['repetition_penalty']:g}" if m.get("repetition_penalty", 1) != 1 else "",
                   f"no repeated {m['no_repeat_ngram_size']}-grams" if m.get("no_repeat_ngram_size") else ""]
        if any(repeats):
            where = "the answer's own tokens" if m.get("repeat_scope") == "output" else "prompt and answer"
            text += f"; {', '.join(r for r in repeats if r)} (counted over {where})"
        if "device" in m:  # recorded since runs could move to a GPU
            text += f"; run on {m['device']} in {m['dtype']}"
            text += f" ({m['quantized']} base)" if m.get("quantized") else ""
        if len(batches) > 1 and m.get("eval_batch_size"):
            text += f", {m['eval_batch_size']} prompts at a time"
        said.setdefault(text, []).append(NAMES[s])
    if not said:
        return None
    copied = "".join(f" {NAMES[s]}'s answers are {NAMES[m['answers_of']]}'s, not made again: it is the same model."
                     for s, (_, m) in results.items() if m.get("answers_of"))
    if len(said) == 1:
        return f"Answers: {next(iter(said))}.{copied}"
    return "Answers: " + "; ".join(f"{', '.join(names)}: {text}" for text, names in said.items()) + "." + copied


def _variants(cfg) -> str:
    """LD-DPO's alpha, f-DPO's divergence and WPO where ``--set`` gave them (docs/dpo.md)."""
    from .compare_config import DPO_VARIANTS

    o = {**DPO_VARIANTS, **(getattr(cfg, "overrides", None) or {})}
    ld, fd, fa = o["ld_alpha"], o["f_divergence"], o["f_alpha"]
    named = [*([f"LD-DPO (alpha {ld:g})"] if ld is not None else []),
             *([f"f-DPO ({fd}{f', alpha {fa:g}' if fd == 'alpha_divergence' else ''})"] if fd != "reverse_kl" else []),
             *(["WPO pair weights"] if o["wpo"] else [])]
    if not named:
        return ""
    return " with " + (named[0] if len(named) == 1 else ", ".join(named[:-1]) + " and " + named[-1])


def _train_dtype(cfg) -> str:
    """The dtype of the base weights SFT and DPO trained on (``--set train_dtype``)."""
    return (getattr(cfg, "overrides", None) or {}).get("train_dtype", "float32")


def _chosen(stats: dict) -> str:
    """Where validation items chose the DPO weights, which step the SFT+DPO stage is."""
    sel = stats["training"].get("selection")
    if sel is None:
        return ""
    if (sel.get("choice") or {}).get("weights") == "sft" and sel["step"] != 0:
        return (f"; the SFT+DPO stage is the SFT model: DPO's best step on {sel['n_val']} validation items "
                f"(step {sel['step']} of {sel['total_steps']}) did not beat it significantly (see Training)")
    return (f"; the SFT+DPO weights are step {sel['step']} of {sel['total_steps']}, chosen on {sel['n_val']} "
            f"validation items (see Training)")


def _tested_on(cfg) -> str:
    """`` (all of `later.csv`, --test-data)`` where the test set was given, not drawn from the data."""
    test_data = getattr(cfg, "test_data", None)  # a report rebuilt for a run from before it has none
    return f" (all of `{test_data}`, --test-data)" if test_data else ""


def _left_out(out: Path) -> str:
    """The given pairs left out for their held-out prompts (``data/pairs_report.json``), in words."""
    path = out / "data" / "pairs_report.json"
    made = read_json(path) if path.is_file() else {}
    left = made.get("left_out")
    if not left:
        return ""
    return (f" ({len(left)} of the {len(left) + made['kept']} given left out: their prompts are held-out items' "
            "messages)")


def build_report(cfg, task, test, results: dict, out: Path, val: list | None = None,
                 review_target: float | None = None) -> dict:
    """Write ``report.md`` and ``report.json`` (returned) for a compare folder. ``val``: the
    validation items that chose the DPO weights, if the run held any out; ``review_target``:
    the share right a review threshold is chosen for on them (:mod:`.validated_review`)."""
    stats = compare_stages(task, test, results, n_resamples=cfg.n_resamples, seed=cfg.seed)
    if review_target is not None and val:
        for s in ("sft", "dpo"):
            if found := validated_review(task, val, test, out, s, results[s][0], review_target):
                stats["stages"][s]["review_validated"] = found
    plots = _plots(task, stats, out)
    st, cmp = stats["stages"], stats["comparisons"]
    stats["advice"] = advice(cfg.loss, cmp, getattr(cfg, "output", None))
    stats["training"] = training_dynamics(out)
    sel = stats["training"].get("selection")
    if sel is not None and val:
        sel["against_step_0"] = against_step_0(task, val, out, sel["step"], cfg.n_resamples, cfg.seed)
    trained = dynamics_lines(stats["training"])
    decoded = decoding_line(results)
    past = past_context_note(results, len(test))
    chat_vars = getattr(cfg, "chat_vars", None)  # a report rebuilt for a run from before them has none
    lines = [f"# prefopt compare: {task.name}", "",
             f"Model `{cfg.model}`; data `{cfg.data or 'bundled'}`; preset `{cfg.preset}`; seed {cfg.seed}; "
             f"{len(test)} test items{_tested_on(cfg)}; DPO pairs by `{cfg.strategy}`{_left_out(out)}, "
             f"loss `{cfg.loss}`{_variants(cfg)}"
             f"{_chosen(stats)}"
             + (f"; the chat template given `{describe_chat_vars(chat_vars)}`" if chat_vars else "")
             + (f"; both stages trained on a {dtype} base" if (dtype := _train_dtype(cfg)) != "float32" else "")
             + (f"; base and SFT stages from `{cfg.start_from}`" if getattr(cfg, "start_from", None) else "") + ".",
             *(["", decoded] if decoded else []), *(["", past] if past else []), "",
             "## Does it help?", "",
             f"- SFT vs base: {cmp['base->sft']['verdict']}",
             f"- DPO vs SFT: {cmp['sft->dpo']['verdict']}",
             *([f"- What to try: {stats['advice']}"] if stats["advice"] else []), "",
             item_test_line(task, {f"{NAMES[b]} vs {NAMES[a]}": v for k, v in cmp.items()
                                   for a, b in [k.split("->")]}),
             *(["", "## Training", "", *trained] if trained else []),
             "", "## Stages", "",
             f"| stage | {task.primary} (95% CI) | {_second_column(task, test)} | extra |", "|---|---|---|---|"]
    for s, v in st.items():
        m = v["metrics"]
        extra = []
        for f in getattr(task, "fields", []):
            extra.append(f"{f.name} macro-F1 {m[f.name]['macro_f1']:.3f}, unparsed {m[f.name]['unparsed']:.0%}")
            if "triage" in m[f.name]:
                t = m[f.name]["triage"]
                extra.append(f"under-triage {t['under_triage_rate']:.0%}, over-triage {t['over_triage_rate']:.0%}, "
                             f"recall of '{t['most_urgent_class']}' {_fmt(t['most_urgent_recall'])}")
        if "rouge1" in m:
            extra.append(f"ROUGE-1/2/L {m['rouge1']:.3f}/{m['rouge2']:.3f}/{m['rougeL']:.3f}")
        if task.kind == "generation" and m.get("unfinished"):
            extra.append(f"unfinished {m['unfinished']:.0%} (stopped by the {m['max_new_tokens']}-token cap)")
        if m.get("reasoning_unfinished"):  # a reasoning model the cap stopped before it answered
            extra.append(f"still reasoning at the {m.get('max_new_tokens')}-token cap {m['reasoning_unfinished']:.0%} "
                         "(no answer)")
        if m.get("likert") is not None:
            extra.append(f"judge Likert {m['likert']:.2f}")
        second = f"{v['mean_words']:.1f}" if "mean_words" in v else f"{v['accuracy']:.3f}"
        lines.append(f"| {NAMES[s]} | {v['primary']:.3f} [{v['ci'][0]:.3f}, {v['ci'][1]:.3f}] | {second} | "
                     f"{'; '.join(extra)} |")
    lines += ["", "## Paired comparisons", "",
              f"| comparison | Δ{task.primary} | 95% CI | bootstrap p | {_item_test_name(task)} p | Wilcoxon p (Likert) |",
              "|---|---|---|---|---|---|"]
    for k, v in cmp.items():
        a, b = k.split("->")
        w = v.get("likert_wilcoxon", {}).get("p_value")
        lines.append(f"| {NAMES[b]} vs {NAMES[a]} | {v['primary']['delta']:+.3f} | "
                     f"[{v['primary']['ci'][0]:+.3f}, {v['primary']['ci'][1]:+.3f}] | {p_text(v['primary']).lstrip('= ')} | "
                     f"{v.get('mcnemar', v.get('item_wilcoxon'))['p_value']:.3g} | {_fmt(w)} |")
    lines += ["", f"Paired bootstrap: {cfg.n_resamples} resamples of the test items (seed {cfg.seed}), percentile CI; "
              f"significance at p < {ALPHA}. Small test sets give wide CIs: read them before the point estimates. "
              + ("The test set is `--test-data`'s, whatever the seed; the seed drew training's randomness once"
                 if getattr(cfg, "test_data", None) else "The seed drew this test split and training's randomness once")
              + "; `--seeds 0,1,2` runs the comparison on three and pools them (docs/evaluation.md, \"Over seeds\")."]
    if task.kind == "generation":  # what the study's physicians rated; ROUGE and a judge stand in for them
        lines += ["", "Whether clinicians prefer one stage's answers is what ROUGE cannot say: `prefopt rating-sheet "
                  f"--from {shlex.quote(str(getattr(cfg, 'output', None) or out))}` writes them a blinded sheet of "
                  "these answers to rate 1-5, and `prefopt rating-report` tests their ratings (docs/evaluation.md)."]
    confident = confidence_lines({NAMES[s]: v["metrics"] for s, v in st.items()})
    tested = auroc_comparison_lines({f"{NAMES[b]} vs {NAMES[a]}": v.get("confidence_auroc") for k, v in cmp.items()
                                     for a, b in [k.split("->")]})
    calibrated = brier_comparison_lines({f"{NAMES[b]} vs {NAMES[a]}": v.get("brier") for k, v in cmp.items()
                                         for a, b in [k.split("->")]})
    lines += ["", *confident] if confident else []
    lines += ["", *tested] if confident and tested else []
    lines += ["", *calibrated] if confident and calibrated else []
    recalibrated = calibrated_lines({NAMES[s]: v["metrics"] for s, v in st.items()},
                                    {NAMES[s]: v.get("calibrated_vs_plain", {}) for s, v in st.items()})
    lines += ["", *recalibrated] if confident and recalibrated else []
    alone = review_report_lines({NAMES[s]: v.get("review") for s, v in st.items()})
    lines += ["", *alone] if confident and alone else []
    validated = validated_lines({NAMES[s]: v.get("review_validated") for s, v in st.items()})
    lines += ["", *validated] if confident and validated else []
    weights = stage_weights(out)
    lines += ["", *models_lines(cfg, task, out, weights, results["dpo"][1], st["dpo"].get("review_validated"))]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    else:
        lines += ["", "(Plots skipped: install matplotlib, `pip install 'prefopt[plots]'`.)"]
    write_text_atomic(out / "report.md", "\n".join(lines) + "\n")
    report = {"task": task.name, "model": cfg.model, "model_sha256": weights_sha256(cfg.model), "preset": cfg.preset,
              "n_test": len(test), "metric": task.primary, "plots": plots, "weights": weights,
              **({"chat_vars": chat_vars} if chat_vars else {}), **stats}
    write_json_atomic(out / "report.json", report)
    return report
