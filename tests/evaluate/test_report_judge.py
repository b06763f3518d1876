"""The LLM-judge parser and the report's paired tests on judge scores."""
import json

import numpy as np
import pytest

from prefopt.evaluate.judge import JUDGE_PROMPT, parse_likert
from prefopt.evaluate.report import compare_stages
from prefopt.evaluate.stats import wilcoxon_signed_rank
from prefopt.tasks import get_task
from prefopt.tasks.base import Record


@pytest.mark.parametrize("text,want", [("4", 4), ("Score: 5/5", 5), ("I'd say 2.", 2), ("", None), ("great", None),
                                       ("9 out of 10", None)])
def test_parse_likert(text, want):
    assert parse_likert(text) == want


def test_judge_prompt_has_the_fields():
    assert all(s in JUDGE_PROMPT for s in ("{prompt}", "{reference}", "{answer}"))


def test_report_runs_wilcoxon_and_bootstrap_on_likert_scores():
    task = get_task("meqsum")
    rng = np.random.default_rng(0)
    test = [Record(str(i), "q", "what is the dose of metformin") for i in range(30)]
    a = rng.integers(1, 6, 30).tolist()
    b = [min(5, x + int(rng.integers(0, 2))) for x in a]
    a[3] = None  # an unparsed judge reply is left out of the pair

    def rows(scores, text):
        return [{"prediction": text, "correct": False, "likert": s} for s in scores]

    results = {"sft": (rows(a, "dose of metformin"), {}), "dpo": (rows(b, "what is the dose of metformin"), {})}
    out = compare_stages(task, test, results, n_resamples=300)
    c = out["comparisons"]["sft->dpo"]
    pairs = [(x, y) for x, y in zip(a, b) if x is not None]
    assert c["likert_wilcoxon"] == wilcoxon_signed_rank([x for x, _ in pairs], [y for _, y in pairs])
    assert c["likert_bootstrap"]["delta"] == pytest.approx(np.mean([y - x for x, y in pairs]))
    assert c["primary"]["delta"] > 0 and "beat" in c["verdict"]  # ROUGE-L rose on every item


def _worse_dpo_results(n=30):
    test = [Record(str(i), "q", f"what is the dose of drug {i}") for i in range(n)]
    good = [{"prediction": r.target, "correct": True} for r in test]
    bad = [{"prediction": "what is it", "correct": False} for _ in test]
    return test, {"base": (bad, {}), "sft": (good, {}), "dpo": (bad, {})}


@pytest.mark.parametrize("loss, dpo_worse, advised", [
    ("sigmoid", True, True), ("ipo", True, True), ("rpo", True, False), ("orpo", True, False), ("sigmoid", False, False),
])
def test_advice_follows_a_significant_drop_under_a_loss_without_nll(loss, dpo_worse, advised):
    from prefopt.evaluate.report import advice

    test, results = _worse_dpo_results()
    if not dpo_worse:
        results["dpo"] = results["sft"]
    cmp = compare_stages(get_task("meqsum"), test, results, n_resamples=300)["comparisons"]
    text = advice(loss, cmp)
    assert (text is not None) == advised
    if advised:
        assert "--loss rpo" in text and f"`{loss}`" in text


def test_report_md_and_json_carry_the_advice(tmp_path):
    from types import SimpleNamespace

    from prefopt.evaluate.report import build_report

    test, results = _worse_dpo_results()
    cfg = SimpleNamespace(model="m", data="d.jsonl", preset="quick", seed=0, strategy="wrong_label", loss="sigmoid",
                          n_resamples=300, output=str(tmp_path), task_options={})
    report = build_report(cfg, get_task("meqsum"), test, results, tmp_path)
    assert report["advice"].endswith(f"the same command with `--loss rpo --from {tmp_path} --output {tmp_path}-rpo`.")
    md = (tmp_path / "report.md").read_text()
    assert "- What to try: the preference stage (loss `sigmoid`) made the SFT model worse" in md
    assert '"advice"' in (tmp_path / "report.json").read_text()
    # the terminal gets the same sentences, without markdown (prefopt compare; run_triage leaves out base->dpo)
    from prefopt.evaluate.report import console_lines

    lines = console_lines(report)
    assert [ln.split(":")[0] for ln in lines] == ["base->sft", "sft->dpo", "base->dpo", "what to try"]
    assert lines[1] == "sft->dpo: " + report["comparisons"]["sft->dpo"]["verdict"].replace("**", "")
    assert "**" in report["comparisons"]["sft->dpo"]["verdict"] and not any("**" in ln for ln in lines)
    assert lines[-1] == f"what to try: {report['advice']}"
    assert len(console_lines(report, ("base->sft", "sft->dpo"))) == 3


def test_summaries_are_compared_item_by_item_on_rouge_not_on_right_or_wrong(tmp_path):
    """A note is never word for word: on ACI-Bench every stage scored 0 "correct", and McNemar said
    "0 newly right, 0 newly wrong, p = 1" for every pair. ROUGE tasks get the Wilcoxon signed-rank
    test on per-item ROUGE-L instead; answer-matching and classification tasks keep McNemar."""
    from types import SimpleNamespace

    from prefopt.evaluate.report import build_report
    from prefopt.evaluate.rouge import rouge

    test = [Record(str(i), "q", f"knee pain for {i} weeks, ibuprofen and a brace, review in {i + 2} weeks")
            for i in range(12)]
    base = [f"patient {i} here" for i in range(12)]
    sft = [f"knee pain for {i} weeks, ibuprofen" for i in range(12)]
    dpo = [f"knee pain for {i} weeks, ibuprofen and a brace" if i % 3 else "knee" for i in range(12)]
    results = {s: ([{"prediction": p, "correct": False} for p in preds], {"unfinished": u, "max_new_tokens": 384})
               for s, preds, u in (("base", base, 1.0), ("sft", sft, 0.25), ("dpo", dpo, 0.0))}
    results["base"][1].update(reasoning_unfinished=0.5, reasoning_opened=True)  # a reasoning base model
    cfg = SimpleNamespace(model="m", data="d.csv", preset="quick", seed=0, strategy="wrong_label", loss="sigmoid",
                          n_resamples=200, output=str(tmp_path), task_options={})
    report = build_report(cfg, get_task("aci_bench"), test, results, tmp_path)
    c = report["comparisons"]["sft->dpo"]
    r = {s: [rouge(t.target, p)["rougeL"]["fmeasure"] for t, p in zip(test, v)]
         for s, v in (("base", base), ("sft", sft), ("dpo", dpo))}
    assert "mcnemar" not in c
    assert {k: c["item_wilcoxon"][k] for k in ("statistic", "p_value", "n")} == \
        {k: wilcoxon_signed_rank(r["sft"], r["dpo"])[k] for k in ("statistic", "p_value", "n")}
    assert (c["item_wilcoxon"]["higher"], c["item_wilcoxon"]["lower"]) == (8, 4)
    md = (tmp_path / "report.md").read_text()
    p = wilcoxon_signed_rank(r["base"], r["sft"])["p_value"]
    assert f"Wilcoxon signed-rank on per-item rougeL: SFT vs base: 12 items higher, 0 lower, p = {p:.3g};" in md
    assert "SFT+DPO vs SFT: 8 items higher, 4 lower" in md and "McNemar" not in md
    assert "| Wilcoxon (per-item rougeL) p |" in md
    # free text has no exact match: the stage table gives the answers' mean length instead
    assert "| stage | rougeL (95% CI) | mean words (reference 13.0) | extra |" in md
    assert report["stages"]["dpo"]["mean_words"] == pytest.approx((8 * 9 + 4 * 1) / 12)
    assert "] | 6.0 | unfinished 25% (stopped by the 384-token cap) |" in md.split("| SFT |")[1].splitlines()[0]
    assert "unfinished 100% (stopped by the 384-token cap)" in md and md.count("unfinished") == 2  # not at 0%
    base_row = md.split("| base |")[1].splitlines()[0]
    assert "still reasoning at the 384-token cap 50% (no answer)" in base_row and md.count("still reasoning") == 1
    assert "\n\nAnswers: greedy decoding, at most 384 new tokens.\n\n" in md
    # decoding settings as the stages' metrics.json recorded them; a stage decoded otherwise is named
    plain = {"max_new_tokens": 384, "repetition_penalty": 1.0, "no_repeat_ngram_size": 4, "repeat_scope": "output"}
    results = {s: (rows, {**m, **plain}) for s, (rows, m) in results.items()}
    results["base"][1].update(repetition_penalty=1.2, no_repeat_ngram_size=0, repeat_scope="all")
    build_report(cfg, get_task("aci_bench"), test, results, tmp_path)
    assert ("\nAnswers: base: greedy decoding, at most 384 new tokens; repetition penalty 1.2 (counted over prompt "
            "and answer); SFT, SFT+DPO: greedy decoding, at most 384 new tokens; no repeated 4-grams (counted over "
            "the answer's own tokens).\n") in (tmp_path / "report.md").read_text()
    # and where each stage ran, since a run may move from a CPU to a GPU between stages
    results = {s: (rows, {**m, **plain, "repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "device": "cpu",
                          "dtype": "float32"}) for s, (rows, m) in results.items()}
    results["dpo"][1].update(device="cuda:0", dtype="bfloat16")
    build_report(cfg, get_task("aci_bench"), test, results, tmp_path)
    assert ("\nAnswers: base, SFT: greedy decoding, at most 384 new tokens; run on cpu in float32; SFT+DPO: greedy "
            "decoding, at most 384 new tokens; run on cuda:0 in bfloat16.\n") in (tmp_path / "report.md").read_text()
    # an answer-matching task keeps McNemar on right/wrong items
    results = {s: ([{"prediction": "x", "correct": ok} for ok in flags], {})
               for s, flags in (("base", [False] * 12), ("sft", [True] * 8 + [False] * 4), ("dpo", [True] * 12))}
    report = build_report(cfg, get_task("medqa_open"), test, results, tmp_path)
    assert report["comparisons"]["sft->dpo"]["mcnemar"]["b_only"] == 4
    md = (tmp_path / "report.md").read_text()
    assert "Exact McNemar on per-item correctness: SFT vs base: 8 items newly right, 0 newly wrong" in md
    assert "| McNemar p |" in md and "Wilcoxon signed-rank on per-item" not in md
    assert "| exact match |" in md and "mean words" not in md and "mean_words" not in report["stages"]["sft"]


def _write_log(train_dir, rows):
    train_dir.mkdir(parents=True)
    (train_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_training_dynamics_compares_the_first_and_last_quarter_of_logged_steps(tmp_path):
    from prefopt.evaluate.dynamics import training_dynamics

    acc = [0.0, 0.5, 0.5, 0.5, 0.5, 1.0, 0.5, 1.0]
    rows = [{"step": i + 1, "loss": 1.0 - i / 10, "rewards/accuracies": a, "rewards/margins": i / 100}
            for i, a in enumerate(acc)]
    _write_log(tmp_path / "dpo" / "train", rows + [{"step": 8, "eval_loss": 9.0}])  # the eval line is left out
    _write_log(tmp_path / "sft" / "train", [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.0}])
    summary = {"total_steps": 2, "resumed_from_step": 0, "eval_after": {}, "train_seconds": 1.5, "device": "cpu",
               "peak_mem_mb": 300.0, "saved": "x"}
    (tmp_path / "sft" / "train" / "train_summary.json").write_text(json.dumps(summary))
    (tmp_path / "dpo" / "train" / "train_summary.json").write_text(json.dumps({"total_steps": 8}))  # before costs
    dyn = training_dynamics(tmp_path)
    d = dyn["dpo"]
    assert d["steps"] == 8 and d["window"] == 2
    assert d["first"]["rewards/accuracies"] == pytest.approx(0.25) and d["last"]["rewards/accuracies"] == 0.75
    assert d["first"]["loss"] == pytest.approx(0.95) and d["last"]["loss"] == pytest.approx(0.35)
    assert d["first"]["logps/chosen"] is None  # not logged: reported as missing, not as 0
    assert dyn["sft"]["first"]["loss"] == 2.0 and dyn["sft"]["last"]["loss"] == 1.0
    assert dyn["sft"]["cost"] == {k: summary[k] for k in ("train_seconds", "peak_mem_mb", "device", "total_steps",
                                                             "resumed_from_step")} and "cost" not in dyn["dpo"]
    assert training_dynamics(tmp_path / "nothing") == {}


@pytest.mark.parametrize("loss, chosen_end, warned", [("sigmoid", -3.2, True), ("sigmoid", -1.5, False),
                                                     ("rpo", -3.2, False), (None, -3.2, True)])
def test_training_says_when_dpo_made_the_chosen_answers_less_likely(tmp_path, loss, chosen_end, warned):
    """Sigmoid DPO on the demo: chosen log-prob -1.20 -> -3.26; RPO keeps it (docs/results.md)."""
    from prefopt.evaluate.dynamics import dynamics_lines, training_dynamics

    rows = [{"step": i + 1, "loss": 0.6, "rewards/accuracies": 0.7,
             "logps/chosen": -1.2 if i < 4 else chosen_end} for i in range(16)]
    _write_log(tmp_path / "dpo" / "train", rows)
    if loss:
        (tmp_path / "dpo" / "train" / "train_config.json").write_text(json.dumps({"loss": loss, "beta": 0.1}))
    dyn = training_dynamics(tmp_path)
    assert dyn["dpo"].get("loss") == loss
    said = [line for line in dynamics_lines(dyn) if "less likely" in line]
    assert bool(said) == warned
    if warned:
        assert f"fell by {-1.2 - chosen_end:.2f}" in said[0] and "--loss rpo" in said[0]


@pytest.mark.parametrize("final_acc, warned", [(0.5, True), (0.9, False)])
def test_report_says_when_dpo_never_learned_its_pairs(tmp_path, final_acc, warned):
    from types import SimpleNamespace

    from prefopt.evaluate.report import build_report

    rows = [{"step": i + 1, "loss": 0.69, "rewards/accuracies": final_acc, "rewards/margins": 0.0,
             "logps/chosen": -1.0, "logps/rejected": -1.5} for i in range(12)]
    _write_log(tmp_path / "dpo" / "train", rows)
    test, results = _worse_dpo_results()
    cfg = SimpleNamespace(model="m", data="d.jsonl", preset="quick", seed=0, strategy="wrong_label", loss="sigmoid",
                          n_resamples=300, output=str(tmp_path), task_options={})
    report = build_report(cfg, get_task("meqsum"), test, results, tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert f"- DPO: pair accuracy {final_acc:.2f} → {final_acc:.2f}" in md and "## Training" in md
    assert ("DPO did not learn to rank its training pairs" in md) == warned
    assert report["training"]["dpo"]["last"]["rewards/accuracies"] == pytest.approx(final_acc)
