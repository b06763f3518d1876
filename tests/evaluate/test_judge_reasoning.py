"""A reasoning model as the judge: its reply is read after its reasoning, a reply still reasoning
when its few tokens ran out scores nothing (not a digit it passed on the way), a judge whose
template has a thinking switch is asked to answer at once, and one whose prompt opens the block
itself (DeepSeek-R1's) finds it closed empty."""
import pytest

from prefopt.evaluate.judge import judge_scores, ready_judge
from prefopt.tasks.base import Record
from prefopt.tokenizer import load_tokenizer
from tests._tiny import CHATML, R1_STYLE, THINKING, build_tokenizer

RECORDS = [Record(f"r{i}", f"Summarise note {i}.", "Chest pain, sent to ED.") for i in range(4)]


@pytest.fixture
def replies(monkeypatch):
    """Script the judge's replies; what it was prompted with is kept in ``seen``."""
    import prefopt.evaluate.runner as runner

    scripted = {"replies": [], "seen": []}

    def answer_prompts(model, tok, prompts, **kw):
        assert kw["max_new_tokens"] == 4
        scripted["seen"].extend(tok.decode(p, False) for p in prompts)
        return scripted["replies"], [True] * len(prompts)

    monkeypatch.setattr(runner, "answer_prompts", answer_prompts)
    return scripted


def test_a_reasoning_judge_is_read_after_its_reasoning(tmp_path, replies):
    tok = load_tokenizer(build_tokenizer(tmp_path / "chatml", template=CHATML))
    replies["replies"] = ["4", "<think>\nmaybe a 3, the", "<think>fine</think>\n\n5", "Score: 2"]
    assert judge_scores(None, tok, RECORDS, ["a"] * 4) == [4, None, 5, 2]
    assert all("Summarise note" in p and p.endswith("<|im_start|>assistant\n") for p in replies["seen"])


def test_a_judge_whose_prompt_opens_a_reasoning_block_finds_it_closed_and_replies_at_once(tmp_path, replies):
    opens = load_tokenizer(build_tokenizer(tmp_path / "r1", template=R1_STYLE, bos="<|begin_of_text|>",
                                           eos="<|eot_id|>"))  # DeepSeek-R1's way: no switch, the prompt opens it
    assert ready_judge(opens) == ("the judge's chat template opens a reasoning block in its prompt: each judge "
                                  "prompt closes it empty, so the judge answers at once (one digit)")
    replies["replies"] = ["3", "Score 4", "<think>\nhmm, a 2 or", "</think>5"]
    assert judge_scores(None, opens, RECORDS, ["a"] * 4) == [3, 4, None, 5]
    # each prompt is the template's generation prompt with its block closed empty, as Qwen3 writes one
    assert all(p.endswith("<|end_header_id|><think>\n\n</think>\n\n") for p in replies["seen"])


def test_a_judge_with_a_thinking_switch_answers_at_once(tmp_path, replies):
    tok = load_tokenizer(build_tokenizer(tmp_path / "thinking", template=THINKING))
    assert ready_judge(tok) == ("the judge's chat template has a thinking switch: the judge answers with "
                                "enable_thinking=false (one digit)")
    replies["replies"] = ["3"] * 4
    assert judge_scores(None, tok, RECORDS, ["a"] * 4) == [3] * 4
    assert all(prompt.endswith("<think>\n\n</think>\n\n") for prompt in replies["seen"])
    assert ready_judge(tok) is None  # set already
    assert ready_judge(load_tokenizer(build_tokenizer(tmp_path / "chatml", template=CHATML))) is None
