"""Clinicians' ratings of a blinded sheet (:mod:`prefopt.evaluate.rating_sheet`) read against its
key: each filled sheet is one rater's; every row is checked (its code one of the key's, its answer
the one the code was given, its rating a whole number 1-5 or blank) and a bad one stops the read
named by file, line and field. Each item's score for a stage is the mean of the raters' ratings
of the answer that stage gave; the stages' mean scores get bootstrap CIs, and each pair of stages
the paired bootstrap and the Wilcoxon signed-rank test over the items both have, as compare's
Likert scores; the raters' agreement is Cohen's kappa with quadratic weights, pair by pair, and
the run's LLM judge, where it had one, is set beside each rater alike. The ratings also make
training data for the next model (:func:`training_data`: pairs for DPO, feedback for KTO)."""
from __future__ import annotations

import itertools
import math
import warnings
from pathlib import Path

import numpy as np

from ..data.records import DataError
from .rating_sheet import answer_hash
from .report import NAMES, PAIRS, pyplot, verdict
from .stats import bootstrap_ci, p_text, paired_bootstrap, wilcoxon_signed_rank

RATINGS = range(1, 6)


def read_ratings(path: Path, key: dict, comments: dict[str, str] | None = None) -> dict[str, int]:
    """``{code: rating}`` of the filled sheet at ``path`` (any format prefopt reads: .xlsx, .ods,
    .csv, ...), blanks left out; a row whose code is not the key's, whose answer is not the one
    its code was given, whose rating is not a whole number 1-5, or a code rated twice is a
    :class:`DataError` naming the file, line and field. ``comments``: filled with the rater's
    comments by code."""
    from ..data.readers import read_rows

    codes, seen = key["codes"], {}
    for line, row in read_rows(path):
        if isinstance(row, DataError):
            raise row
        for field in ("code", "answer", "rating"):
            if field not in row:
                raise DataError(path, line, field, "missing field (the sheet's columns are code, item, prompt, "
                                                   "reference, answer, rating, comment)")
        code = str(row["code"]).strip()
        if code not in codes:
            raise DataError(path, line, "code", f"{code!r} is not a code of the key (of {key['run']}): a sheet of "
                                                "another run, or a code changed?")
        if answer_hash(row["answer"] or "") != codes[code]["answer_sha256"]:
            raise DataError(path, line, "answer", f"not the answer code {code} was given (edited in the sheet, or "
                                                  "the key of another sheet?): the rating cannot be told whose it is")
        if code in seen:
            raise DataError(path, line, "code", f"{code} is rated on line {seen[code][0]} too")
        text = str(row["rating"] or "").strip()
        if text:
            seen[code] = (line, _rating(path, line, text))
        if comments is not None and str(row.get("comment") or "").strip():
            comments[code] = str(row["comment"]).strip()
    return {code: rating for code, (_, rating) in seen.items()}


def _rating(path: Path, line: int, text: str) -> int:
    """A rating cell's ``text`` as a whole number 1-5 (``4`` or ``4.0``, as a spreadsheet may give it)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if value not in RATINGS:
        raise DataError(path, line, "rating", f"{text!r}: a whole number from 1 to 5, or blank for unrated")
    return int(value)


def code_means(key: dict, ratings: dict[str, dict[str, int]]) -> dict[str, float]:
    """Each rated answer's mean rating over the raters who rated it, by its code."""
    got: dict[str, list[int]] = {}
    for by_code in ratings.values():
        for code, rating in by_code.items():
            got.setdefault(code, []).append(rating)
    return {code: sum(r) / len(r) for code, r in got.items()}


def item_scores(key: dict, ratings: dict[str, dict[str, int]]) -> tuple[list[str], dict[str, np.ndarray]]:
    """``(item ids, {stage: each item's score})``: the mean of the raters' ratings of the answer
    the stage gave the item (:func:`code_means`); NaN where no rater rated it."""
    items = list(dict.fromkeys(c["item"] for c in key["codes"].values()))
    where = {item: i for i, item in enumerate(items)}
    scores = {s: np.full(len(items), math.nan) for s in key["stages"]}
    for code, mean in code_means(key, ratings).items():
        entry = key["codes"][code]
        for stage in entry["stages"]:  # (one answer of the item's per stage)
            scores[stage][where[entry["item"]]] = mean
    return items, scores


def weighted_kappa(a: list[int], b: list[int]) -> float:
    """Cohen's kappa of two raters' ratings (1-5) of the same answers with quadratic weights: 1
    where they agree throughout, 0 where no more than chance would; NaN where chance agreement is
    total (both gave one rating to everything)."""
    k = len(RATINGS)
    observed = np.zeros((k, k))
    for x, y in zip(a, b):
        observed[x - 1, y - 1] += 1
    observed /= observed.sum()
    expected = np.outer(observed.sum(1), observed.sum(0))
    weights = (np.subtract.outer(np.arange(k), np.arange(k)) ** 2) / (k - 1) ** 2
    chance = (weights * expected).sum()
    return float(1 - (weights * observed).sum() / chance) if chance > 0 else math.nan


def krippendorff_alpha(ratings: dict[str, dict[str, int]]) -> float:
    """Krippendorff's alpha of all the raters at once, interval metric (squared differences, as
    the kappa's quadratic weights), each answer rated by two or more of them counted, missing
    ratings allowed: 1 where they agree throughout, 0 where no more than chance would; NaN where
    no answer has two ratings or every rating is one value."""
    k = len(RATINGS)
    coincidence = np.zeros((k, k))
    for code in {c for by_code in ratings.values() for c in by_code}:
        values = [by_code[code] for by_code in ratings.values() if code in by_code]
        if len(values) < 2:
            continue
        for i, j in itertools.permutations(range(len(values)), 2):  # each ordered pair of its ratings
            coincidence[values[i] - 1, values[j] - 1] += 1 / (len(values) - 1)
    n_c = coincidence.sum(1)
    n = n_c.sum()
    delta = np.subtract.outer(np.arange(k), np.arange(k)) ** 2.0
    expected = (np.outer(n_c, n_c) * delta).sum()
    return float(1 - (n - 1) * (coincidence * delta).sum() / expected) if n > 1 and expected > 0 else math.nan


def agreement(ratings: dict[str, dict[str, int]], judge: dict[str, int] | None = None) -> list[dict]:
    """Each pair of raters, then the LLM ``judge`` (its ratings by code, where the run had one)
    with each rater: the answers both rated, the share they rated alike and within one point, and
    the quadratic-weighted kappa."""
    out = []
    pairs = list(itertools.combinations(ratings.items(), 2)) + [(("LLM judge", judge), r) for r in ratings.items()
                                                                 if judge]
    for (r1, a), (r2, b) in pairs:
        both = [c for c in a if c in b]
        x, y = [a[c] for c in both], [b[c] for c in both]
        out.append({"raters": [r1, r2], "answers": len(both),
                    "exact": float(np.mean([i == j for i, j in zip(x, y)])) if both else math.nan,
                    "within_1": float(np.mean([abs(i - j) <= 1 for i, j in zip(x, y)])) if both else math.nan,
                    "kappa": weighted_kappa(x, y) if both else math.nan})
    return out


def summarize(key: dict, ratings: dict[str, dict[str, int]], *, n_resamples: int = 2000, seed: int = 0,
              comments: dict[str, dict[str, str]] | None = None) -> dict:
    """The stages' scores, their paired comparisons and the raters' agreement, as a dict; with
    ``comments`` (``{rater: {code: text}}``), each comment beside the stages whose answer it is on."""
    items, scores = item_scores(key, ratings)
    stages = {}
    for stage, s in scores.items():
        rated = s[np.isfinite(s)]
        stages[stage] = {"mean": float(rated.mean()) if len(rated) else math.nan, "items": int(len(rated)),
                         "ci": bootstrap_ci(lambda idx, r=rated: float(r[idx].mean()), len(rated),
                                            n_resamples=n_resamples, seed=seed) if len(rated) else [math.nan] * 2,
                         "given": [0] * len(RATINGS)}  # how often each rating was given its answers, all raters
    for by_code in ratings.values():
        for code, rating in by_code.items():
            for stage in key["codes"][code]["stages"]:
                stages[stage]["given"][rating - 1] += 1
    comparisons = {}
    for a, b in PAIRS:
        if a not in scores or b not in scores:
            continue
        both = np.isfinite(scores[a]) & np.isfinite(scores[b])
        x, y = scores[a][both], scores[b][both]
        if not len(x):
            continue
        cmp = paired_bootstrap(lambda idx, x=x: float(x[idx].mean()), lambda idx, y=y: float(y[idx].mean()), len(x),
                               n_resamples=n_resamples, seed=seed)
        comparisons[f"{b} vs {a}"] = {**cmp, "items": int(len(x)), "wilcoxon": wilcoxon_signed_rank(x, y),
                                      "verdict": verdict(NAMES[a], NAMES[b], "rating", cmp)}
    total = len(key["codes"])
    return {"run": key["run"], "task": key["task"], "items": len(items), "answers": total, "scale": key["scale"],
            "raters": {r: {"rated": len(by_code), "of": total} for r, by_code in ratings.items()},
            "stages": stages, "comparisons": comparisons, "agreement": agreement(ratings, _judge(key)),
            **({"alpha": krippendorff_alpha(ratings)} if len(ratings) > 1 else {}),
            "item_scores": {s: {i: (None if math.isnan(v) else float(v)) for i, v in zip(items, scores[s])}
                            for s in scores},
            "comments": [{"rater": rater, "code": code, "item": key["codes"][code]["item"],
                          "stages": key["codes"][code]["stages"], "rating": ratings.get(rater, {}).get(code),
                          "comment": text} for rater, by_code in (comments or {}).items()
                         for code, text in by_code.items()]}


def training_data(key: dict, ratings: dict[str, dict[str, int]], gap: float = 1.0) -> tuple[list[dict], list[dict]]:
    """``(pairs, feedback)`` made of the ratings, as the model was asked (the key's prompts):
    on each item, every two answers whose mean ratings differ by ``gap`` or more, the higher
    chosen (``prompt``/``chosen``/``rejected``, for ``prefopt dpo``); each answer whose mean
    rating is 4 or more desirable, 2 or less undesirable (``prompt``/``completion``/``label``,
    for ``dpo --loss kto``); empty answers left out. Each row says its item and ratings."""
    rated = code_means(key, ratings)
    means = {code: rated[code] for code, entry in key["codes"].items()  # (in the sheet's order)
             if code in rated and entry["answer"].strip()}  # (an empty answer trains nothing)
    by_item: dict[str, list[str]] = {}
    for code in means:
        by_item.setdefault(key["codes"][code]["item"], []).append(code)
    pairs, feedback = [], []
    for item, codes in by_item.items():
        prompt = key["prompts"][item]
        for a, b in itertools.combinations(sorted(codes, key=lambda c: -means[c]), 2):
            if means[a] - means[b] >= gap:
                pairs.append({"prompt": prompt, "chosen": key["codes"][a]["answer"],
                              "rejected": key["codes"][b]["answer"], "item": item, "ratings": [means[a], means[b]]})
        for code in codes:
            if means[code] >= 4 or means[code] <= 2:
                feedback.append({"prompt": prompt, "completion": key["codes"][code]["answer"],
                                 "label": means[code] >= 4, "item": item, "rating": means[code]})
    return pairs, feedback


def _judge(key: dict) -> dict[str, int]:
    """The LLM judge's rating of each code's answer, where the compare run had a judge (``--judge``)."""
    return {code: e["judge"] for code, e in key["codes"].items() if e.get("judge") is not None}


def unrated_warnings(summary: dict) -> None:
    """A warning for each rater who left answers unrated (they are left out, not scored)."""
    for rater, n in summary["raters"].items():
        if n["rated"] < n["of"]:
            warnings.warn(f"rater {rater!r} left {n['of'] - n['rated']} of {n['of']} answers unrated: left out of the "
                          "scores", stacklevel=2)


def report_markdown(summary: dict) -> str:
    """The ratings' report as Markdown."""
    raters = ", ".join(f"{r}: {n['rated']} of {n['of']}" for r, n in summary["raters"].items())
    lines = [f"# Clinicians' ratings: {summary['task']}", "",
             f"Run `{summary['run']}`; {summary['items']} items, {summary['answers']} distinct answers rated by "
             f"{len(summary['raters'])} rater{'s' if len(summary['raters']) != 1 else ''} ({raters}), blinded; "
             f"scale {summary['scale']}. An item's score for a stage is the mean of the raters' ratings of its "
             "answer; an answer two stages gave alike was rated once, for both.", "", "## Does it help?", ""]
    lines += [f"- {NAMES[b]} vs {NAMES[a]}: {summary['comparisons'][f'{b} vs {a}']['verdict']}"
              for a, b in PAIRS if f"{b} vs {a}" in summary["comparisons"]]
    lines += ["", "## Stages", "", "| stage | mean rating (95% CI) | items rated | rated 1 | 2 | 3 | 4 | 5 |",
              "|---|---|---|---|---|---|---|---|"]
    for s, v in summary["stages"].items():
        total = sum(v["given"])
        shares = " | ".join(_share(n / total if total else math.nan) for n in v["given"])
        mean = f"{v['mean']:.2f} [{v['ci'][0]:.2f}, {v['ci'][1]:.2f}]" if v["items"] else "—"
        lines.append(f"| {NAMES[s]} | {mean} | {v['items']} | {shares} |")
    lines += ["", "The shares are of all the ratings each stage's answers were given, every rater's."]
    if summary.get("plot"):
        lines += ["", f"![{summary['plot']}]({summary['plot']})"]
    lines += ["", "## Paired comparisons", "",
              "| comparison | Δ mean rating | 95% CI | bootstrap p | Wilcoxon p | items |",
              "|---|---|---|---|---|---|"]
    for a, b in PAIRS:
        c = summary["comparisons"].get(f"{b} vs {a}")
        if c:
            lines.append(f"| {NAMES[b]} vs {NAMES[a]} | {c['delta']:+.2f} | [{c['ci'][0]:+.2f}, {c['ci'][1]:+.2f}] | "
                         f"{p_text(c)} | {c['wilcoxon']['p_value']:.3g} | {c['items']} |")
    if summary["agreement"]:
        lines += ["", "## Agreement between raters", "",
                  "| raters | answers both rated | same rating | within one point | weighted kappa |",
                  "|---|---|---|---|---|"]
        lines += [f"| {' and '.join(g['raters'])} | {g['answers']} | {_share(g['exact'])} | {_share(g['within_1'])} | "
                  f"{'—' if math.isnan(g['kappa']) else format(g['kappa'], '.2f')} |" for g in summary["agreement"]]
        if "alpha" in summary:
            alpha = "—" if math.isnan(summary["alpha"]) else f"{summary['alpha']:.2f}"
            lines += ["", f"All {len(summary['raters'])} raters at once: Krippendorff's alpha (interval) {alpha}."]
        lines += ["", "Cohen's kappa with quadratic weights: 1 where the raters agree throughout, 0 where no more "
                  "than chance would; a disagreement by two points counts four times one by one point."
                  + (" The LLM judge (compare's --judge, the same scale) is set beside each rater: where it agrees "
                     "with them about as well as they agree with each other, its ratings may stand in for theirs "
                     "on later runs." if any(g["raters"][0] == "LLM judge" for g in summary["agreement"]) else "")]
    if summary.get("comments"):
        lines += ["", "## The raters' comments", "", "| stage | rating | comment | rater | item |",
                  "|---|---|---|---|---|"]
        lines += [f"| {' = '.join(NAMES[s] for s in c['stages'])} | {c['rating'] or '—'} | {_cell(c['comment'])} | "
                  f"{c['rater']} | {c['item']} |" for c in sorted(summary["comments"], key=_by_code)]
    return "\n".join(lines) + "\n"


def _by_code(comment: dict) -> tuple:
    """A comment's place in the sheet: its item's number, its answer's letter, its rater."""
    return int(comment["code"][:-1]), comment["code"][-1], comment["rater"]


def _cell(text: str) -> str:
    """``text`` as one Markdown table cell: its line breaks as spaces, its bars escaped."""
    return " ".join(text.split()).replace("|", "\\|")


def _share(x: float) -> str:
    """A share as a percentage; a dash where there is none (no answer both raters rated)."""
    return "—" if math.isnan(x) else f"{x:.0%}"


def plot(summary: dict, out: Path) -> str | None:
    """``ratings_by_stage.png`` in ``out``: each stage's ratings as one bar, the share of each of
    1-5 stacked from worst to best, its mean beside it; None without matplotlib."""
    plt = pyplot()
    stages = [s for s, v in summary["stages"].items() if sum(v["given"])]
    if plt is None or not stages:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 0.8 + 0.6 * len(stages)))
    colours = ["#d7191c", "#fdae61", "#e0e0a0", "#a6d96a", "#1a9641"]
    for row, stage in enumerate(reversed(stages)):
        given = np.array(summary["stages"][stage]["given"], dtype=float)
        left = 0.0
        for rating, share in enumerate(given / given.sum(), 1):
            ax.barh(row, share, left=left, color=colours[rating - 1], label=str(rating) if row == 0 else None)
            left += share
        ax.text(1.02, row, f"mean {summary['stages'][stage]['mean']:.2f}", va="center", fontsize=8)
    ax.set_yticks(range(len(stages)), [NAMES[s] for s in reversed(stages)])
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of the ratings")
    ax.legend(title="rating", ncol=5, fontsize=7, title_fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.0))
    fig.tight_layout()
    fig.savefig(out / "ratings_by_stage.png", dpi=120)
    plt.close(fig)
    return "ratings_by_stage.png"
