"""Parsers: chatter, casing, markdown, letters vs option text, empty output."""
import pytest

from prefopt.tasks import get_task
from prefopt.tasks.base import Record
from prefopt.tasks.parsing import find_label

MEDQA_ROW = {"question": "Which drug?", "options": {"A": "Aspirin", "B": "Metoprolol", "C": "Warfarin",
                                                    "D": "Non-steroidal anti-inflammatory drug"}, "answer_idx": "B"}


@pytest.fixture
def medqa(tmp_path):
    import json

    p = tmp_path / "medqa.jsonl"
    p.write_text(json.dumps(MEDQA_ROW) + "\n")
    task = get_task("medqa")
    return task, task.load(p)[0]


@pytest.mark.parametrize("text,want", [
    ("B", "B"),
    ("B) Metoprolol", "B"),
    ("**B**", "B"),
    ("The answer is B.", "B"),
    ("answer: b", "B"),
    ("I think the best option is (B) because it slows the heart.", "B"),
    ("Metoprolol", "B"),  # the option's text, no letter
    ("The correct choice would be metoprolol, a beta blocker.", "B"),
    ("Sure! Let me think about it. A patient like this needs... The answer is C) Warfarin", "C"),
    ("non-steroidal anti-inflammatory drug", "D"),
    ("", None),
    ("   ", None),
    ("I am not sure.", None),
    ("a patient should rest", None),  # the article 'a' is not option A
])
def test_medqa_parser(medqa, text, want):
    task, rec = medqa
    assert task.parse(text, rec) == {"answer": want}


@pytest.mark.parametrize("text,urgency,staff", [
    ("Urgency: urgent\nStaff: nurse", "urgent", "nurse"),
    ("urgency: EMERGENCY\nstaff: Physician", "emergency", "physician"),
    ("Sure! Urgency: **Routine**. Staff: front desk.", "routine", "front desk"),
    ("This is not urgent; the pharmacy team can handle it.", "routine", "pharmacist"),
    ("Urgency: non-urgent\nStaff: doctor", "routine", "physician"),
    ("Urgency: <urgency>\nStaff: <staff>", None, None),
    ("", None, None),
    ("Call 911 now - this needs a doctor immediately", "emergency", "physician"),
])
def test_portal_parser(text, urgency, staff):
    task = get_task("portal")
    rec = Record("x", "", "", {"urgency": "urgent", "staff": "nurse"})
    assert task.parse(text, rec) == {"urgency": urgency, "staff": staff}


@pytest.mark.parametrize("text,want", [("KTAS 3", "3"), ("Level 2.", "2"), ("Urgency: KTAS 5", "5"), ("4", "4"),
                                       ("The patient is 45 years old", None), ("", None)])
def test_ktas_level_parser(text, want):
    task = get_task("ktas", levels="ktas")
    assert task.parse(text, Record("x", "", "", {"urgency": "3"}))["urgency"] == want


@pytest.mark.parametrize("text,want", [("Yes.", "yes"), ("MAYBE", "maybe"), ("No, it does not.", "no"),
                                       ("The answer is yes", "yes"), ("", None)])
def test_pubmedqa_parser(text, want):
    task = get_task("pubmedqa")
    assert task.parse(text, Record("x", "", "", {"answer": "yes"}))["answer"] == want


def test_longest_form_wins_a_tie_and_earliest_mention_wins():
    aliases = {"urgent": [], "non-urgent": []}
    assert find_label("non-urgent", aliases) == "non-urgent"
    assert find_label("urgent, not non-urgent", aliases) == "urgent"


def test_empty_output_scores_as_wrong_not_a_crash(medqa):
    task, rec = medqa
    preds = [task.parse("", rec)]
    m = task.metrics([rec], preds)
    assert m["accuracy"] == 0.0 and m["answer"]["unparsed"] == 1.0


def test_open_answer_matching():
    task = get_task("medqa_open")
    rec = Record("x", "", "Metoprolol", meta={"answer": "Metoprolol"})
    assert task.correct(rec, "I would give metoprolol.")
    assert not task.correct(rec, "Aspirin")
    assert not task.correct(rec, "")


def test_medqa_headline_is_accuracy_and_others_macro_f1(medqa):
    import numpy as np

    task, rec = medqa
    assert task.primary == "accuracy" and get_task("portal").primary == "macro_f1"
    f = task.primary_on([rec, rec], [{"answer": "B"}, {"answer": "A"}])
    assert f(np.arange(2)) == 0.5


THOUGHT = ("<think>\nOption A, aspirin, treats pain but not rate. C is warfarin, an anticoagulant. So the answer is "
           "not A or C; a beta blocker fits.\n</think>\n\n")


@pytest.mark.parametrize("text, opened, want", [
    (THOUGHT + "Answer: B", False, ("Answer: B", "done")),
    ("Option A is wrong, so\n</think>\nB", True, ("B", "done")),  # the prompt opened the block
    ("Option A is wrong, so", True, ("", "unfinished")),  # cut by the cap inside it
    ("<think>\nOption A is wrong, so", False, ("", "unfinished")),
    ("[THINK]A? No.[/THINK]B", False, ("B", "done")),  # Magistral's tags
    ("<think>a</think>draft<think>b</think> final", False, ("final", "done")),  # the last block ends it
    ("The answer is B.", False, ("The answer is B.", None)),
    ("", True, ("", "unfinished")),
    (None, False, ("", None)),
])
def test_final_answer_is_what_a_reasoning_model_says_after_thinking(text, opened, want):
    from prefopt.tasks.parsing import final_answer

    assert final_answer(text, opened) == want


def test_a_reasoning_model_is_scored_on_its_answer_not_the_options_it_weighed(medqa):
    from prefopt.evaluate.runner import reasoning_note, score

    task, rec = medqa
    assert task.parse(THOUGHT + "Answer: B", rec) == {"answer": "A"}  # the thinking names A first
    assert task.parse_output(THOUGHT + "Answer: B", rec) == {"answer": "B"}
    preds, metrics = score(task, [rec] * 3, [THOUGHT + "Answer: B", "Option A? C? Let me", "B"], opened=False)
    assert [p["answer"] for p in preds] == ["B", "A", "B"] and metrics["reasoning_unfinished"] == 0
    assert metrics["accuracy"] == pytest.approx(2 / 3)
    preds, metrics = score(task, [rec] * 3, ["A is wrong.\n</think>\nB", "Option A? C? Let me", "B"], opened=True)
    assert [p["answer"] for p in preds] == ["B", None, None] and metrics["reasoning_unfinished"] == pytest.approx(2 / 3)
    assert metrics["reasoning_opened"] is True
    metrics["max_new_tokens"] = 64
    assert reasoning_note(metrics, "--max-new-tokens N").startswith(
        "67% of the answers were still reasoning when the 64-token cap stopped them")
    _, plain = score(task, [rec], ["B"])
    assert "reasoning_unfinished" not in plain and reasoning_note(plain, "x") is None


def test_a_generation_prompt_that_opens_reasoning_is_recognised(tmp_path, medqa):
    """DeepSeek-R1's template ends its generation prompt in "<think>\\n": the answers start inside."""
    from prefopt import load_tokenizer
    from prefopt.evaluate.runner import reasoning_opened
    from prefopt.tasks.parsing import opens_reasoning
    from tests._tiny import CHATML, build_tokenizer

    task, rec = medqa
    plain = load_tokenizer(build_tokenizer(tmp_path / "plain"))
    r1 = load_tokenizer(build_tokenizer(tmp_path / "r1", template=CHATML.replace(
        "'<|im_start|>assistant\\n'", "'<|im_start|>assistant\\n<think>\\n'")))
    assert reasoning_opened(r1, task, [rec]) and not reasoning_opened(plain, task, [rec])
    assert not reasoning_opened(r1, task, [])
    assert not opens_reasoning("<think>\n\n</think>\n\n")  # Qwen3 with thinking switched off: closed
