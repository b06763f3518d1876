"""The LLM-judge parser and the report's paired tests on judge scores."""
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
