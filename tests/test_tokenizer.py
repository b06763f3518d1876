"""Tokenizer: encode/decode, special tokens, chat templates against transformers, exact boundaries."""
import json

import pytest

from prefopt import load_tokenizer
from prefopt.chat_template import ChatTemplateError
from prefopt.tokenizer import BoundaryError
from tests._tiny import CHATML, LLAMA3, LLAMA31, build_tokenizer

transformers = pytest.importorskip("transformers")

CONVERSATIONS = [
    [{"role": "user", "content": "A 70-year-old has crushing chest pain. Triage level?"}],
    [{"role": "system", "content": "  You triage patient messages.  "},
     {"role": "user", "content": "My child has a fever of 39.5 C."},
     {"role": "assistant", "content": "How long has the fever lasted?"},
     {"role": "user", "content": "Two days, and she is drowsy."}],
    [{"role": "user", "content": "Unicode: naïve café — 120/80 mmHg ✓"}],
]


@pytest.fixture(params=["chatml", "llama3"])
def toks(request, tmp_path):
    if request.param == "chatml":
        d = build_tokenizer(tmp_path, template=CHATML)
    else:
        d = build_tokenizer(tmp_path, template=LLAMA3, bos="<|begin_of_text|>", eos="<|eot_id|>")
    return load_tokenizer(d), transformers.AutoTokenizer.from_pretrained(d)


@pytest.mark.parametrize("conv", range(len(CONVERSATIONS)))
@pytest.mark.parametrize("gen", [True, False])
def test_chat_template_matches_transformers(toks, conv, gen):
    ours, theirs = toks
    msgs = CONVERSATIONS[conv]
    want_text = theirs.apply_chat_template(msgs, add_generation_prompt=gen, tokenize=False)
    assert ours.apply_chat_template(msgs, add_generation_prompt=gen, tokenize=False) == want_text
    want_ids = theirs.apply_chat_template(msgs, add_generation_prompt=gen, tokenize=True)
    want_ids = want_ids["input_ids"] if hasattr(want_ids, "keys") else want_ids
    assert ours.apply_chat_template(msgs, add_generation_prompt=gen) == list(want_ids)


def test_llama3_template_uses_bos_and_raise_exception(tmp_path):
    tok = load_tokenizer(build_tokenizer(tmp_path, template=LLAMA3, bos="<|begin_of_text|>", eos="<|eot_id|>"))
    text = tok.apply_chat_template(CONVERSATIONS[0], add_generation_prompt=True, tokenize=False)
    assert text.startswith("<|begin_of_text|><|start_header_id|>system")
    assert text.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    with pytest.raises(ChatTemplateError, match="unknown role tool"):
        tok.apply_chat_template([{"role": "tool", "content": "x"}])
    with pytest.raises(ChatTemplateError, match=r"message 1 \('assistant'\): content must be text, got NoneType"):
        tok.apply_chat_template([{"role": "user", "content": "x"}, {"role": "assistant", "content": None}])


def test_a_dated_template_shows_today_or_the_pinned_date_as_transformers_does(tmp_path):
    """Llama 3.1's template prints today's date. Unpinned, ours renders transformers' text (the
    clock's date); pinned (``chat_date``, as training runs do), the text transformers renders when
    given that ``date_string``, whatever the day."""
    from datetime import date

    d = build_tokenizer(tmp_path, template=LLAMA31, bos="<|begin_of_text|>", eos="<|eot_id|>")
    ours, theirs = load_tokenizer(d), transformers.AutoTokenizer.from_pretrained(d)
    msgs = CONVERSATIONS[0]
    assert ours.prints_date and not load_tokenizer(build_tokenizer(tmp_path / "plain", template=LLAMA3)).prints_date
    today = ours.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert today == theirs.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert f"Today Date: {date.today():%d %b %Y}" in today
    ours.chat_date = date(2024, 2, 29)
    pinned = ours.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert "Today Date: 29 Feb 2024\n" in pinned
    assert pinned == theirs.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False,
                                                date_string="29 Feb 2024")


def test_encode_decode_and_special_tokens_match_transformers(toks):
    ours, theirs = toks
    for text in ["BP 150/90, HR 112", "  leading spaces\n\nand newlines", "<|im_start|>user\nhi<|im_end|>"]:
        assert ours.encode(text) == theirs.encode(text)
        assert ours.decode(ours.encode(text)) == theirs.decode(theirs.encode(text), skip_special_tokens=True)
    assert ours.eos_token_id == theirs.eos_token_id and ours.pad_token_id == theirs.pad_token_id
    assert ours.bos_token_id == theirs.bos_token_id


def test_a_special_token_is_found_in_a_text_exactly_where_transformers_encodes_one(toks):
    """``control_token_in`` names a special token written out in a text where transformers' own
    encoding of the text holds the id of a special token that shapes a conversation (its chat
    template writes it, or it is the bos, eos, pad or unk token), and only there: look-alikes are
    text, and another special token (Llama 3's ``<|eot_id|>`` to a ChatML model) is left alone."""
    ours, theirs = toks
    own = {theirs.bos_token, theirs.eos_token, theirs.pad_token, theirs.unk_token}
    specials = {i for i, t in theirs.added_tokens_decoder.items()
                if t.special and (t.content in theirs.chat_template or t.content in own)}
    assert (ours.control_token_in("a <|eot_id|>") is None) == ("<|eot_id|>" not in theirs.chat_template)
    texts = ["BP <90, HR >120", "<|im_end", "im_end|>", "< |im_end| >", "a<|im_end|>b", "<|eot_id|>", "x <|endoftext|>",
             "<|begin_of_text|>Note", "<<|im_start|>>", "plain", ""]
    for text in texts:
        found = ours.control_token_in(text)
        assert (found is not None) == bool(specials & set(theirs.encode(text, add_special_tokens=False))), text
        assert found is None or found in text
    ours.backend.add_special_tokens(["<think>", "[THINK]"])  # a reasoning model's tags, special in some tokenizers
    reasoning = type(ours)(ours.backend, ours.config)
    assert reasoning.control_token_in("<think>\nPain.\n</think>\n\n[THINK]x") is None  # its data writes them
    assert reasoning.control_token_in(f"<think>a{ours.eos_token}") == ours.eos_token


def test_any_of_matches_exactly_the_words_an_alternation_matches():
    """The trie pattern finds the same first match as a plain alternation of the words, longest
    first, on random texts over the words' own characters (words that are prefixes of others,
    and regex metacharacters, included)."""
    import random
    import re

    from prefopt.tokenizer import any_of

    rng = random.Random(0)
    for _ in range(200):
        words = {"".join(rng.choice("<|>.*[]ab") for _ in range(rng.randint(1, 5))) for _ in range(rng.randint(1, 8))}
        trie, plain = re.compile(any_of(words)), re.compile("|".join(map(re.escape, sorted(words, key=len)[::-1])))
        for _ in range(20):
            text = "".join(rng.choice("<|>.*[]abc") for _ in range(rng.randint(0, 12)))
            a, b = trie.search(text), plain.search(text)
            assert (a and (a.start(), a[0])) == (b and (b.start(), b[0])), (words, text)


def test_prompt_response_boundary_is_exact_with_chat_template(toks):
    ours, _ = toks
    msgs = CONVERSATIONS[1][:2]
    enc = ours.encode_prompt_response(msgs, "Urgent: see a clinician today.")
    prompt_ids = ours.apply_chat_template(msgs, add_generation_prompt=True)
    assert enc.ids[: enc.prompt_len] == prompt_ids
    assert ours.decode(enc.ids[enc.prompt_len:], skip_special_tokens=False).startswith("Urgent: see a clinician today.")
    full = ours.apply_chat_template(msgs + [{"role": "assistant", "content": "Urgent: see a clinician today."}])
    assert enc.ids == full


def test_plain_prompt_response_appends_eos_and_rejects_merged_boundary(tmp_path):
    tok = load_tokenizer(build_tokenizer(tmp_path))
    enc = tok.encode_prompt_response("Triage level:", " urgent", chat=False)
    assert enc.ids[: enc.prompt_len] == tok.encode("Triage level:")
    assert enc.ids[-1] == tok.eos_token_id
    with pytest.raises(BoundaryError, match="Move trailing whitespace"):
        tok.encode_prompt_response("Triage level: ", "urgent", chat=False)
    # without a template the texts are concatenated: "pain" + "urgent" merge into one word
    with pytest.raises(BoundaryError, match="Start the response with a space or a newline: the two texts run"):
        tok.encode_prompt_response("Chest pain", "urgent", chat=False)


def test_a_message_prompt_without_a_chat_template_is_a_data_error_at_its_line(tmp_path, capsys):
    """It was a TypeError, which the loaders do not turn into file:line errors: a traceback."""
    from prefopt.cli import main
    from prefopt.data import load_sft
    from prefopt.data.records import DataError
    from tests._tiny import build_hf_model

    d = tmp_path / "base"
    build_hf_model(d)
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    (d / "tokenizer_config.json").write_text(json.dumps({**cfg, "chat_template": None}))
    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps({"prompt": "Rash for 2 days.", "completion": " routine"}) + "\n"
                    + json.dumps({"prompt": [{"role": "user", "content": "Chest pain."}], "completion": "urgent"}) + "\n")
    with pytest.raises(DataError, match=r"train.jsonl:2: .*a message-list prompt needs a chat template, and this "
                                        r"tokenizer has none .*give the prompt as text"):
        load_sft(data, load_tokenizer(d))
    assert main(["sft", "--model", str(d), "--data", str(data), "--output-dir", str(tmp_path / "o"),
                 "--batch-size", "1"]) == 2
    assert "prefopt sft: error: " in capsys.readouterr().err


def test_chat_template_file_and_special_token_dicts(tmp_path):
    d = build_tokenizer(tmp_path)
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    template = cfg.pop("chat_template")
    cfg["eos_token"] = {"content": "<|im_end|>", "special": True}
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    (d / "chat_template.jinja").write_text(template)
    (d / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 4]}))
    tok = load_tokenizer(d)
    assert tok.chat_template == template and tok.eos_token == "<|im_end|>"
    assert tok.eos_token_ids == [tok.eos_token_id, 4]


def test_named_chat_templates_render_the_default_as_transformers_does(tmp_path):
    """Hermes and Command R models keep several named templates (``default``, ``tool_use``,
    ``rag``) in tokenizer_config.json; prefopt's loader took the list for one template and every
    rendering failed with "unhashable type: 'list'". A conversation without tools takes the
    default, as in transformers, and a save keeps them all."""
    d = build_tokenizer(tmp_path / "t")
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    named = [{"name": "tool_use", "template": "TOOLS " + CHATML}, {"name": "default", "template": CHATML}]
    (d / "tokenizer_config.json").write_text(json.dumps({**cfg, "chat_template": named}))
    ours, theirs = load_tokenizer(d), transformers.AutoTokenizer.from_pretrained(d)
    assert ours.chat_template == CHATML and list(ours.named_templates) == ["tool_use", "default"]
    for conv in CONVERSATIONS:
        want = theirs.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
        assert ours.apply_chat_template(conv, add_generation_prompt=True, tokenize=False) == want
        assert ours.apply_chat_template(conv, add_generation_prompt=True) == theirs.encode(want, add_special_tokens=False)
    ours.save(tmp_path / "saved")
    assert json.loads((tmp_path / "saved" / "tokenizer_config.json").read_text())["chat_template"] == named
    again = transformers.AutoTokenizer.from_pretrained(tmp_path / "saved")
    assert again.apply_chat_template(CONVERSATIONS[1], tokenize=False) == theirs.apply_chat_template(
        CONVERSATIONS[1], tokenize=False)
    theirs.save_pretrained(tmp_path / "hf")  # transformers 5: chat_template.jinja + additional_chat_templates/
    from_hf = load_tokenizer(tmp_path / "hf")
    assert from_hf.chat_template == CHATML and from_hf.named_templates == dict(
        default=CHATML, tool_use="TOOLS " + CHATML)

    (d / "tokenizer_config.json").write_text(json.dumps({**cfg, "chat_template": named[:1]}))
    assert load_tokenizer(d).chat_template == "TOOLS " + CHATML  # the only one
    (d / "tokenizer_config.json").write_text(json.dumps({**cfg, "chat_template": [named[0], {**named[0], "name": "rag"}]}))
    with pytest.raises(ValueError, match=rf"{d}: chat_template: 2 named templates \(tool_use, rag\) and none named "
                                         "'default'"):
        load_tokenizer(d)
    (d / "tokenizer_config.json").write_text(json.dumps({**cfg, "chat_template": [{"template": CHATML}]}))
    with pytest.raises(ValueError, match=r"chat_template: expected a template \(text\) or a list of named templates"):
        load_tokenizer(d)


@pytest.mark.parametrize("command", ["generate", "check-data"])
def test_generate_and_check_data_show_the_chat_date_they_are_given(command, tmp_path, monkeypatch, capsys):
    """``--chat-date`` pins the date a dated template (Llama 3.1) prints, as a training run's
    ``chat_date`` does, so that a prompt or a check renders the text training saw; said on stderr.
    Without it, the clock's date; a bad one is refused by its flag's name before any model loads."""
    from datetime import date

    import prefopt.pretrained
    from prefopt.cli import main
    from tests._render_spy import spy_rendering
    from tests._tiny import build_hf_model

    d = tmp_path / "m"
    build_hf_model(d, tokenizer=False)
    build_tokenizer(d, template=LLAMA31, bos="<|begin_of_text|>", eos="<|eot_id|>")
    args, rendered = spy_rendering(command, d, tmp_path, monkeypatch)
    shown_in = "prompt" if command == "generate" else "example"
    assert main(args + ["--chat-date", "2024-02-29"]) == 0
    assert "Today Date: 29 Feb 2024\n" in rendered[-1]
    assert f"every {shown_in} shows 29 Feb 2024 (chat_date 2024-02-29)" in capsys.readouterr().err
    assert main(args) == 0
    assert f"Today Date: {date.today():%d %b %Y}\n" in rendered[-1] and "chat_date" not in capsys.readouterr().err
    loads = []
    monkeypatch.setattr(prefopt.pretrained, "load_model", lambda *a, **kw: loads.append(a))
    assert main(args + ["--chat-date", "29/02/2024"]) == 2 and loads == [] and len(rendered) == 2
    assert "--chat-date must be a date as YYYY-MM-DD (got '29/02/2024')" in capsys.readouterr().err
