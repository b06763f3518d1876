"""Chat variables: switches a chat template reads of its own (Qwen3's ``enable_thinking``), given to
every rendering as transformers' ``apply_chat_template(**kwargs)`` gives them; checked against
the template so that a misspelt one is an error, not a switch that silently does nothing."""

import pytest
import transformers

from prefopt.chat_template import parse_chat_vars, template_variables
from prefopt.tokenizer import load_tokenizer, set_chat_vars
from tests._render_spy import ASKED
from tests._tiny import CHATML, THINKING, build_hf_model, build_tokenizer

EMPTY_THOUGHT = "<think>\n\n</think>\n\n"


@pytest.fixture(scope="module")
def thinking(tmp_path_factory):
    """A tiny model whose template reasons first unless told ``enable_thinking=false``."""
    d = tmp_path_factory.mktemp("thinking")
    build_hf_model(d, tokenizer=False)
    build_tokenizer(d, template=THINKING)
    return d


def test_chat_vars_render_what_transformers_renders_with_the_same_keyword_arguments(thinking):
    ours, theirs = load_tokenizer(thinking), transformers.AutoTokenizer.from_pretrained(thinking)
    done = ASKED + [{"role": "assistant", "content": "A doctor today."}]
    for given in ({}, {"enable_thinking": False}, {"enable_thinking": True}):
        set_chat_vars(ours, given)
        for msgs, gen in ((ASKED, True), (done, False)):
            want = theirs.apply_chat_template(msgs, add_generation_prompt=gen, tokenize=False, **given)
            assert ours.apply_chat_template(msgs, add_generation_prompt=gen, tokenize=False) == want
    off = ours.apply_chat_template(ASKED, add_generation_prompt=True, tokenize=False)
    assert off.endswith("assistant\n") and EMPTY_THOUGHT not in off  # enable_thinking true: as unset
    set_chat_vars(ours, {"enable_thinking": False})
    assert ours.apply_chat_template(ASKED, add_generation_prompt=True, tokenize=False).endswith(EMPTY_THOUGHT)
    # a keyword argument of the call itself still wins over the tokenizer's variable, as in transformers
    assert ours.apply_chat_template(ASKED, add_generation_prompt=True, tokenize=False, enable_thinking=True) == off


def test_with_thinking_off_the_trained_response_is_the_answer_alone(thinking):
    """Qwen3 puts an empty reasoning block before a trained answer. Thinking on (the template's
    default), the response a model learns starts with that block; off, the block is in the prompt
    the model answers after, and the response is the answer alone."""
    tok = load_tokenizer(thinking)
    on = tok.encode_prompt_response(ASKED, "A doctor today.")
    assert tok.decode(on.ids[on.prompt_len:], False) == EMPTY_THOUGHT + "A doctor today.<|im_end|>\n"
    assert set_chat_vars(tok, {"enable_thinking": False}, shown_in="example") == \
        "every example is rendered with enable_thinking=false"
    off = tok.encode_prompt_response(ASKED, "A doctor today.")
    assert tok.decode(off.ids[off.prompt_len:], False) == "A doctor today.<|im_end|>\n"
    assert on.ids == off.ids  # the same text, cut elsewhere
    assert set_chat_vars(tok, None) is None and tok.chat_vars == {}


def test_chat_vars_are_read_as_the_command_line_gives_them():
    assert parse_chat_vars(["enable_thinking=false", "depth=3", "style=brief", "note=a=b", 'quoted="x"']) == {
        "enable_thinking": False, "depth": 3, "style": "brief", "note": "a=b", "quoted": "x"}
    assert parse_chat_vars("enable_thinking=true") == {"enable_thinking": True}
    assert parse_chat_vars({"enable_thinking": False}) == {"enable_thinking": False}
    assert template_variables(THINKING) == {"messages", "add_generation_prompt", "enable_thinking"}
    for bad, why in ((["enable_thinking"], "expected NAME=VALUE, got 'enable_thinking'"),
                     (["two words=1"], "'two words' is not a template variable's name"),
                     ([3], "expected NAME=VALUE entries or a mapping"),
                     (["messages=[]"], "'messages' is set by prefopt itself"),
                     (["eos_token=x"], "'eos_token' is set by prefopt itself"),
                     (["date_string=today"], "'date_string' is set by prefopt itself")):
        with pytest.raises(ValueError, match=why):
            parse_chat_vars(bad)


def test_a_switch_the_template_does_not_read_is_refused_with_the_ones_it_does(thinking, tmp_path):
    tok = load_tokenizer(thinking)
    with pytest.raises(ValueError, match=r"the chat template of M does not read 'enable_thinkng' \(did you mean "
                                         r"'enable_thinking'\?\); the variables it reads: enable_thinking"):
        set_chat_vars(tok, {"enable_thinkng": False}, "M")
    assert tok.chat_vars == {}  # nothing set by a refused call
    plain = load_tokenizer(build_tokenizer(tmp_path / "chatml", template=CHATML))
    with pytest.raises(ValueError, match="does not read 'enable_thinking'.*the variables it reads: none of its own"):
        set_chat_vars(plain, {"enable_thinking": False}, "M")
    none = load_tokenizer(build_tokenizer(tmp_path / "none", template=None))
    with pytest.raises(ValueError, match=r"chat variables \(enable_thinking\) were given, but M has no chat template"):
        set_chat_vars(none, {"enable_thinking": False}, "M")


@pytest.mark.parametrize("command", ["generate", "check-data"])
def test_generate_and_check_data_render_with_the_chat_vars_they_are_given(command, thinking, tmp_path, monkeypatch,
                                                                          capsys):
    """``--chat-vars`` reaches the prompt generate answers and the examples check-data measures,
    said on stderr; a misspelt switch, or one with --no-chat, is refused before any model loads."""
    import prefopt.pretrained
    from prefopt.cli import main
    from tests._render_spy import spy_rendering

    args, rendered = spy_rendering(command, thinking, tmp_path, monkeypatch)
    shown_in = "prompt" if command == "generate" else "example"
    assert main(args + ["--chat-vars", "enable_thinking=false"]) == 0
    assert rendered[-1].endswith(EMPTY_THOUGHT)
    assert f"every {shown_in} is rendered with enable_thinking=false" in capsys.readouterr().err
    assert main(args) == 0
    assert not rendered[-1].endswith(EMPTY_THOUGHT) and "rendered with" not in capsys.readouterr().err
    loads = []
    monkeypatch.setattr(prefopt.pretrained, "load_model", lambda *a, **kw: loads.append(a))
    assert main(args + ["--chat-vars", "enable_thinkng=false"]) == 2
    assert "does not read 'enable_thinkng' (did you mean 'enable_thinking'?)" in capsys.readouterr().err
    assert main(args + ["--chat-vars", "enable_thinking"]) == 2
    assert "--chat-vars: expected NAME=VALUE, got 'enable_thinking'" in capsys.readouterr().err
    if command == "generate":
        assert main(args + ["--no-chat", "--chat-vars", "enable_thinking=false"]) == 2
        assert "--no-chat does not apply it" in capsys.readouterr().err
    assert loads == [] and len(rendered) == 2
