"""A reasoning model as the judge: its reply is read after its reasoning, a reply still reasoning
when its few tokens ran out scores nothing (not a digit it passed on the way), and a judge whose
template has a thinking switch is asked to answer at once."""
import pytest

from prefopt.evaluate.judge import judge_scores, ready_judge
from prefopt.tasks import get_task
from prefopt.tasks.base import Record
from prefopt.tokenizer import load_tokenizer
from tests._tiny import CHATML, R1_STYLE, THINKING, build_tokenizer

RECORDS = [Record(f"r{i}", f"Summarise note {i}.", "Chest pain, sent to ED.") for i in range(4)]


@pytest.fixture
def replies(monkeypatch):
    """Script the judge's replies; what it was prompted with is kept in ``seen``."""
    import prefopt.evaluate.runner as runner

    scripted = {"replies": [], "seen": []}

    def predict(model, tok, task, records, **kw):
        scripted["seen"].extend(tok.apply_chat_template(task.messages(r), add_generation_prompt=True, tokenize=False)
                                for r in records)
        return scripted["replies"]

    monkeypatch.setattr(runner, "predict", predict)
    return scripted


def test_a_reasoning_judge_is_read_after_its_reasoning(tmp_path, replies):
    task = get_task("meqsum")
    tok = load_tokenizer(build_tokenizer(tmp_path / "chatml", template=CHATML))
    replies["replies"] = ["4", "<think>\nmaybe a 3, the", "<think>fine</think>\n\n5", "Score: 2"]
    assert judge_scores(None, tok, task, RECORDS, ["a"] * 4) == [4, None, 5, 2]
    opens = load_tokenizer(build_tokenizer(tmp_path / "r1", template=R1_STYLE, bos="<|begin_of_text|>",
                                           eos="<|eot_id|>"))  # its prompt opens the block: replies start inside
    replies["replies"] = ["The answer is close, 3 or", "fine\n</think>\n\n4", "2", "</think>5"]
    assert judge_scores(None, opens, task, RECORDS, ["a"] * 4) == [None, 4, None, 5]


def test_a_judge_with_a_thinking_switch_answers_at_once(tmp_path, replies):
    tok = load_tokenizer(build_tokenizer(tmp_path / "thinking", template=THINKING))
    assert ready_judge(tok) == ("the judge's chat template has a thinking switch: the judge answers with "
                                "enable_thinking=false (one digit)")
    replies["replies"] = ["3"] * 4
    assert judge_scores(None, tok, get_task("meqsum"), RECORDS, ["a"] * 4) == [3] * 4
    assert all(prompt.endswith("<think>\n\n</think>\n\n") for prompt in replies["seen"])
    assert ready_judge(tok) is None  # set already
    assert ready_judge(load_tokenizer(build_tokenizer(tmp_path / "chatml", template=CHATML))) is None
