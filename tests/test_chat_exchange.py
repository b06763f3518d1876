"""How a response is cut off from its prompt for SFT and DPO where a chat template renders a
finished assistant turn otherwise than the prompt a model answers from (DeepSeek-R1, QwQ and
Gemma 4 drop the reasoning block their generation prompt opens; Mistral NeMo moves the system
prompt), and the template features transformers' renderer has that prefopt's must match."""
import warnings

import pytest
from transformers.utils.chat_template_utils import render_jinja_template

from prefopt.chat_template import BoundaryError, exchange_texts, render_chat
from prefopt.data.records import SFTRecord
from prefopt.data.sft import tokenize_sft
from prefopt.tokenizer import load_tokenizer
from tests._tiny import CHATML, R1_STYLE, THINKING, build_tokenizer

ASKED = [{"role": "user", "content": "Chest pain since noon?"}]
SPECIALS = {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}
# the system prompt goes into the last user turn, which the answer's turn makes an earlier one
SYSTEM_LAST = (
    "{% set sys = messages[0]['content'] if messages[0]['role'] == 'system' else '' %}"
    "{% for m in messages if m['role'] != 'system' %}{% if m['role'] == 'user' %}"
    "{{ '[INST]' + (sys + ' ' if sys and loop.last else '') + m['content'] + '[/INST]' }}"
    "{% else %}{{ m['content'] + '</s>' }}{% endif %}{% endfor %}"
)


def _render(template):
    return lambda messages, gen: render_chat(template, messages, add_generation_prompt=gen, special_tokens=SPECIALS)


def test_a_response_follows_the_prompt_it_answers_where_the_finished_turn_renders_otherwise():
    prompt, full, continued = exchange_texts(_render(R1_STYLE), ASKED, "Emergency.")
    assert prompt.endswith("<|end_header_id|><think>\n") and continued
    # the prompt's open block closed empty, as Qwen3's template writes one, then the answer and the end of turn
    assert full == prompt + "\n</think>\n\nEmergency.<|eot_id|>"
    reasoned = "Chest pain: rule out ACS.\n</think>\n\nEmergency."  # the model's own turn, reasoning and all
    assert exchange_texts(_render(R1_STYLE), ASKED, reasoned)[1] == prompt + reasoned + "<|eot_id|>"
    whole = "<think>\n" + reasoned  # written whole, as Qwen3's template takes it apart: the prompt opened it
    assert exchange_texts(_render(R1_STYLE), ASKED, whole)[1] == prompt + reasoned + "<|eot_id|>"
    system = [{"role": "system", "content": "Be brief."}] + ASKED
    prompt, full, continued = exchange_texts(_render(SYSTEM_LAST), system, "Emergency.")
    assert prompt == "[INST]Be brief. Chest pain since noon?[/INST]" and full == prompt + "Emergency.</s>"
    assert continued
    prompt, full, continued = exchange_texts(_render(SYSTEM_LAST), ASKED, "Emergency.")  # no system: a prefix
    assert full == prompt + "Emergency.</s>" and not continued
    # a template whose finished turn extends the prompt but drops the response's reasoning: continued, not lost
    prompt, full, continued = exchange_texts(_render(THINKING), ASKED, whole)
    assert full == prompt + whole + "<|im_end|>\n" and continued and prompt.endswith("assistant\n")
    prompt, full, continued = exchange_texts(_render(THINKING), ASKED, "Emergency.")  # no reasoning: its own form
    assert full == prompt + "<think>\n\n</think>\n\nEmergency.<|im_end|>\n" and not continued
    shouted = R1_STYLE.replace("m['content'].split('</think>')[-1]", "m['content'].upper()")
    with pytest.raises(BoundaryError, match="rewrites an assistant turn's text"):
        exchange_texts(_render(shouted), ASKED, "Emergency.")


def test_sft_on_a_reasoning_template_trains_an_empty_block_then_the_answer_and_says_so_once(tmp_path):
    tok = load_tokenizer(build_tokenizer(tmp_path, template=R1_STYLE, bos="<|begin_of_text|>", eos="<|eot_id|>"))
    with pytest.warns(UserWarning, match="each response is taken as it follows that prompt") as said:
        ex, _ = tokenize_sft(SFTRecord(prompt="Chest pain since noon?", completion="Emergency."), tok, max_length=256)
    trained = [t for t, y in zip(ex.input_ids, ex.labels) if y != -100]
    assert tok.decode(trained, False) == "\n</think>\n\nEmergency.<|eot_id|>"
    assert tok.decode(ex.input_ids, False).endswith("<|end_header_id|><think>\n\n</think>\n\nEmergency.<|eot_id|>")
    messages = SFTRecord(messages=ASKED + [{"role": "assistant", "content": "Emergency."}])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once per tokenizer
        assert tokenize_sft(messages, tok, max_length=256)[0] == ex  # a conversation ending on its one answer
    assert len(said) == 1


def test_a_conversation_with_one_final_answer_encodes_as_before(tmp_path):
    """Such a conversation now goes through the prompt/response path: the same tokens and labels
    as every assistant turn cut from the whole conversation, where the template allows both."""
    from prefopt.data.sft import IGNORE

    tok = load_tokenizer(build_tokenizer(tmp_path, template=CHATML))
    msgs = [{"role": "system", "content": "Triage."}] + ASKED + [{"role": "assistant", "content": "Emergency."}]
    ex, _ = tokenize_sft(SFTRecord(messages=msgs), tok, max_length=256)
    full, start = tok.apply_chat_template(msgs), tok.apply_chat_template(msgs[:-1], add_generation_prompt=True)
    assert list(ex.input_ids) == full and list(ex.labels) == [IGNORE] * len(start) + full[len(start):]


def test_generation_blocks_and_namespaces_render_as_in_transformers():
    """``{% generation %}`` (templates that mark the assistant's text for transformers' masks)
    did not compile in prefopt; namespaces refuse names starting with '_', as transformers' do."""
    from jinja2.exceptions import SecurityError

    marked = ("{% set ns = namespace(n=0) %}{% for m in messages %}{% if m['role'] == 'assistant' %}{% generation %}"
              "{{ m['content'] }}{% set ns.n = ns.n + 1 %}{% endgeneration %}{% else %}{{ m['content'] }}{% endif %}"
              "{% endfor %}|{{ ns.n }}")
    msgs = ASKED + [{"role": "assistant", "content": "Emergency."}]
    theirs, _ = render_jinja_template([msgs], chat_template=marked)
    assert render_chat(marked, msgs) == theirs[0] == "Chest pain since noon?Emergency.|1"
    for template in ("{% set ns = namespace(_x=1) %}", "{% set ns = namespace() %}{% set ns.__class__ = 1 %}"):
        with pytest.raises(SecurityError, match="a name starting with '_'"):
            render_chat(template, msgs)
        with pytest.raises(SecurityError):
            render_jinja_template([msgs], chat_template=template)


def test_reasoning_data_after_a_closed_empty_block_is_warned_about():
    """With thinking off (Qwen3's enable_thinking=false) the prompt closes an empty block: a response
    written with its reasoning would train as a second block, so a warning says so; plain answers do not."""
    def off(messages, gen):
        return render_chat(THINKING, messages, add_generation_prompt=gen, special_tokens=SPECIALS,
                           enable_thinking=False)
    reasoned = "<think>\nChest pain: rule out ACS.\n</think>\n\nEmergency."
    with pytest.warns(UserWarning, match="trains as a second block after the empty one"):
        prompt, full, _ = exchange_texts(off, ASKED, reasoned)
    assert prompt.endswith("<think>\n\n</think>\n\n") and full[len(prompt):].count("</think>") == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        exchange_texts(off, ASKED, "Emergency.")  # a plain answer: what thinking off asks for
        exchange_texts(_render(THINKING), ASKED, reasoned)  # thinking on: the reasoning is the model's own block
        exchange_texts(_render(R1_STYLE), ASKED, reasoned)  # an open block: continued inside it
