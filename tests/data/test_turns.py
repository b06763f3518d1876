"""A conversation of several assistant turns on a template that renders a finished turn otherwise
than the prompt a model answers from (DeepSeek-R1's drops earlier turns' reasoning): no single
sequence holds every turn as the model saw it, so it trains one example per assistant turn."""
import pytest

from prefopt import load_tokenizer
from prefopt.data import load_sft, tokenize_sft
from prefopt.data.check import check_data
from prefopt.data.records import SFTRecord
from prefopt.data.sft import IGNORE, Turns, TurnsError, prompt_len, turn_examples
from prefopt.train.sft import split_eval
from tests._tiny import R1_STYLE, build_tokenizer
from tests.data import write_jsonl

# said once a tokenizer, whichever test here meets it first (test_such_a_template_is_warned_of_once_a_tokenizer)
pytestmark = pytest.mark.filterwarnings("ignore:the chat template renders a finished assistant turn")

TALK = [
    {"role": "user", "content": "Chest pain since noon?"},
    {"role": "assistant", "content": "<think>\nCardiac until shown otherwise.\n</think>\n\nEmergency."},
    {"role": "user", "content": "And if it eases at rest?"},
    {"role": "assistant", "content": "Still urgent."},
]


@pytest.fixture(scope="module")
def r1(tmp_path_factory):
    return load_tokenizer(build_tokenizer(tmp_path_factory.mktemp("r1"), template=R1_STYLE,
                                          bos="<|begin_of_text|>", eos="<|eot_id|>"))


def _trained(tok, ex) -> str:
    return tok.decode([t for t in ex.labels if t != IGNORE], False)


def test_each_assistant_turn_trains_after_the_prompt_the_model_answered_it_from(r1):
    examples, cut = turn_examples(TALK, r1, max_length=512)
    assert isinstance(examples, Turns) and len(examples) == 2 and cut.tokens == 0
    first, second = examples
    for ex, upto in ((first, 1), (second, 3)):
        p = prompt_len(ex.labels)
        # the prompt is exactly what generation would be given before this turn
        assert list(ex.input_ids[:p]) == r1.apply_chat_template(TALK[:upto], add_generation_prompt=True)
        assert all(t == IGNORE for t in ex.labels[:p]) and list(ex.labels[p:]) == list(ex.input_ids[p:])
    # the first turn learns its reasoning and answer once each, continuing the block the prompt opened
    assert _trained(r1, first) == "Cardiac until shown otherwise.\n</think>\n\nEmergency.<|eot_id|>"
    # the second turn's context holds the first turn as the template renders a finished turn: no reasoning
    context = r1.decode(second.input_ids[:prompt_len(second.labels)], False)
    assert "Cardiac" not in context and "Emergency.<|eot_id|>" in context
    assert _trained(r1, second) == "\n</think>\n\nStill urgent.<|eot_id|>"  # a plain answer: an empty block


def test_such_a_template_is_warned_of_once_a_tokenizer(tmp_path):
    import warnings

    tok = load_tokenizer(build_tokenizer(tmp_path, template=R1_STYLE, bos="<|begin_of_text|>", eos="<|eot_id|>"))
    with pytest.warns(UserWarning, match="renders a finished assistant turn otherwise than the prompt") as said:
        turn_examples(TALK, tok, max_length=512)
    assert len([w for w in said if "finished assistant turn" in str(w.message)]) == 1  # not once a turn
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same tokenizer says it no more
        turn_examples(TALK, tok, max_length=512)


def test_one_sequence_cannot_hold_them_so_tokenize_sft_says_where_to_go(r1):
    with pytest.raises(TurnsError, match="assistant turn 1: .*turn_examples"):
        tokenize_sft(SFTRecord(messages=TALK), r1, max_length=512)


def test_load_sft_splits_such_a_conversation_and_says_so(r1, tmp_path):
    single = [{"role": "user", "content": "Rash after amoxicillin?"}, {"role": "assistant", "content": "Urgent."}]
    path = write_jsonl(tmp_path / "talks.jsonl", [{"messages": single}, {"messages": TALK}, {"messages": TALK[:2]}])
    examples, report = load_sft(str(path), r1, max_length=512, show_progress=False)
    assert len(examples) == 4 and report.n_kept == 3
    assert report.kept_records == [0, 1, 1, 2] and report.kept_lines == [1, 2, 2, 3]
    assert (report.n_split, report.n_split_examples) == (1, 2)
    assert "1 conversation of several assistant turns trains as 2 examples, one per turn" in report.summary()
    assert report.n_tokens == sum(len(e.input_ids) for e in examples)  # every example's tokens, none shared
    # the turns of one conversation stay on one side of a train/eval split (no turn leaks into the other)
    for seed in range(4):
        _, held = split_eval(examples, 0.34, seed, report.kept_records)
        assert len(held) in (1, 2) and any(e is examples[1] for e in held) == any(e is examples[2] for e in held)
    check = check_data(str(path), r1, kind="sft", max_length=512)
    assert check.report.n_split == 1 and len(check.total) == 4 and not check.report.skipped
    assert any("trains as 2 examples" in line for line in check.lines())


def test_cut_turns_are_counted_and_a_turn_that_cannot_fit_is_a_bad_record(r1, tmp_path):
    examples, cut = turn_examples(TALK, r1, max_length=24)
    assert all(len(e.input_ids) <= 24 for e in examples) and cut.tokens > 0
    long_answer = TALK[:3] + [{"role": "assistant", "content": "Still urgent. " * 40}]
    path = write_jsonl(tmp_path / "long.jsonl", [{"messages": long_answer}])
    _, report = load_sft(str(path), r1, max_length=48, show_progress=False)
    assert report.n_truncated == 1 and report.n_response_cut == 1 and report.n_tokens_cut > 0


def test_a_template_whose_turns_are_spans_keeps_one_sequence(tok, tmp_path):
    path = write_jsonl(tmp_path / "talk.jsonl", [{"messages": TALK}])
    examples, report = load_sft(str(path), tok, max_length=512, show_progress=False)
    assert len(examples) == 1 and report.n_split == 0 and "one per turn" not in report.summary()
    trained = tok.decode([t for t in examples[0].labels if t != IGNORE], False)
    assert "Emergency." in trained and "Still urgent." in trained and "Chest pain" not in trained
