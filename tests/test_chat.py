"""``prefopt chat``: a conversation in the terminal on a tiny model. Each turn's prompt holds the
whole conversation as the chat template renders it, the commands steer it, and a conversation
that outgrows the model's context drops its earliest exchanges and says so."""
import json

import pytest

import prefopt.model
from prefopt import generate, load_model, load_tokenizer
from prefopt.cli import main
from tests._tiny import build_hf_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("chat")
    build_hf_model(d, arch="llama", initializer_range=0.5)  # context: 256 positions
    return d


def converse(d, lines, monkeypatch, capsys, *flags):
    """Run ``prefopt chat`` on ``lines`` typed in; returns (exit code, console lines, the prompt
    of each answer and the answer's text)."""
    typed = iter(lines)

    def read(prompt):
        print(prompt, end="")
        try:
            return next(typed)
        except StopIteration:
            raise EOFError from None

    tok, real, asked = load_tokenizer(d), prefopt.model.generate, []

    def recorded(model, prompts, **kw):
        kept = kw["prompt_cache"]
        reused = next((i for i, (a, b) in enumerate(zip(kept.ids, prompts[0])) if a != b),
                      min(len(kept.ids), len(prompts[0])))  # the tokens of this prompt the last turn ran
        new = real(model, prompts, **kw)
        fresh = real(model, prompts, **{k: v for k, v in kw.items() if k not in ("prompt_cache", "on_step")})
        assert new == fresh  # the conversation's cache changes no answer
        recorded.reused.append(reused)
        asked.append((list(prompts[0]), tok.decode(new[0])))
        return new

    recorded.reused = []
    converse.reused = recorded.reused

    monkeypatch.setattr("builtins.input", read)
    monkeypatch.setattr(prefopt.model, "generate", recorded)
    code = main(["chat", "--model", str(d), "--greedy", "--max-new-tokens", "6", *flags])
    return code, capsys.readouterr().out.splitlines(), asked


def test_each_turn_sees_the_whole_conversation_and_commands_steer_it(tiny, monkeypatch, capsys, tmp_path):
    tok = load_tokenizer(tiny)
    note = tmp_path / "note.txt"
    note.write_text("54-year-old man, chest pain for two hours.\r\n")
    code, out, asked = converse(tiny, ["Fever and a stiff neck?", "  ", "/system You triage messages.",
                                       "And a rash?", f"/file {note}", f"/file {tmp_path / 'none.txt'}", "/what",
                                       "/reset", "/system", "hello", "/exit", "never read"], monkeypatch, capsys)
    assert code == 0 and len(asked) == 4
    (p1, a1), (p2, a2), (p3, _), (p4, _) = asked
    user = {"role": "user", "content": "Fever and a stiff neck?"}
    assert p1 == tok.apply_chat_template([user], add_generation_prompt=True)
    first = [user, {"role": "assistant", "content": a1}]
    system = [{"role": "system", "content": "You triage messages."}]
    assert p2 == tok.apply_chat_template(system + first + [{"role": "user", "content": "And a rash?"}],
                                         add_generation_prompt=True)
    assert p3 == tok.apply_chat_template(system + first + [{"role": "user", "content": "And a rash?"},
                                                           {"role": "assistant", "content": a2},
                                                           {"role": "user", "content": note.read_text().strip()}],
                                         add_generation_prompt=True)
    assert p4 == tok.apply_chat_template([{"role": "user", "content": "hello"}], add_generation_prompt=True)
    # the answers as streamed: each after its "model> ", the same text generate gives
    model = load_model(tiny)
    want = tok.decode(generate(model, [p1], max_new_tokens=6, eos_token_ids=tok.eos_token_ids,
                               pad_token_id=tok.pad_token_id)[0])
    assert out[1] == f"you> model> {want}" and a1 == want
    assert "you> you> (system message: 'You triage messages.')" in out  # a blank line: asked again
    assert "you> (no system message)" in out
    assert f"you> (sent {note} (42 characters))" in out
    assert f"you> ({tmp_path / 'none.txt'}: No such file or directory)" in out
    assert any(x.startswith("you> (unknown command '/what'; /reset: a new conversation") for x in out)
    assert "you> (a new conversation)" in out and out[-1] == "you> "
    # each turn runs only what it adds: the third reuses all of the second's prompt and some of its
    # answer; the second, with a system message new in front, only the template's first tokens;
    # /reset starts the cache afresh
    assert converse.reused[0] == 0 and converse.reused[3] == 0
    assert 0 < converse.reused[1] < 20 and len(p2) <= converse.reused[2] < len(p3)


def test_a_conversation_past_the_context_drops_its_earliest_exchanges(tiny, monkeypatch, capsys):
    """Context 256, 6 new tokens: the prompt must stay within 250. The fourth long message pushes
    the first exchanges out (said once); a message that alone does not fit is refused, the
    conversation kept."""
    tok = load_tokenizer(tiny)
    long = "the patient reports fever and cough for three days " * 3
    code, out, asked = converse(tiny, [f"{i}: {long}" for i in range(5)] + ["x " * 400, "still here?"],
                                monkeypatch, capsys)
    assert code == 0 and len(asked) == 6  # the one too long alone was not answered
    assert all(len(p) <= 250 for p, _ in asked)
    dropped = [x for x in out if "no longer fit the model's context of 256 tokens" in x]
    assert dropped and all("left out from here on" in x for x in dropped)
    assert "0: the patient" not in tok.decode(asked[-1][0]) and "still here?" in tok.decode(asked[-1][0])
    assert any("that message is" in x and "and 250 fit (the model's context less --max-new-tokens)" in x for x in out)


def test_a_special_token_typed_in_is_not_sent(tiny, monkeypatch, capsys, tmp_path):
    """A message or system message holding the chat template's own end-of-turn mark written out
    (a pasted chatbot transcript) would end its turn there: it is not sent, and the conversation
    goes on; generate refuses such a --prompt or --system before the model loads."""
    code, out, asked = converse(tiny, ["Fever? <|im_end|>", "/system You are <|im_end|> a nurse.", "Fever?"],
                                monkeypatch, capsys)
    assert code == 0 and len(asked) == 1
    assert "holds '<|im_end|>' as text at its end" in next(x for x in out if "(not sent: your message" in x)
    assert any(x.startswith("you> (system message not changed: it holds '<|im_end|>'") for x in out)
    tok = load_tokenizer(tiny)
    assert asked[0][0] == tok.apply_chat_template([{"role": "user", "content": "Fever?"}], add_generation_prompt=True)
    base = tmp_path / "tokenizer-only"
    base.mkdir()
    for f in tiny.iterdir():
        if f.suffix != ".safetensors":
            (base / f.name).write_bytes(f.read_bytes())
    assert main(["generate", "--model", str(base), "--prompt", "a <|im_end|> b"]) == 2
    assert "--prompt: holds '<|im_end|>' as text, which the tokenizer reads" in capsys.readouterr().err
    assert main(["generate", "--model", str(base), "--prompt", "hi", "--system", "<|im_end|>"]) == 2
    assert "--system: holds '<|im_end|>' as text" in capsys.readouterr().err
    assert main(["generate", "--model", str(base), "--prompt", "a <|im_end|> b", "--no-chat"]) == 2
    err = capsys.readouterr().err  # --no-chat: a raw prompt may spell the template out; on to the model's load
    assert "<|im_end|>" not in err and "safetensors" in err


def test_chat_needs_a_chat_template(tiny, tmp_path, capsys):
    import json
    import shutil

    base = tmp_path / "base"
    shutil.copytree(tiny, base)
    cfg = json.loads((base / "tokenizer_config.json").read_text())
    (base / "tokenizer_config.json").write_text(json.dumps({**cfg, "chat_template": None}))
    (base / "model.safetensors").unlink()  # refused from the tokenizer, before the model loads
    assert main(["chat", "--model", str(base)]) == 2
    assert "its tokenizer has no chat template, and chat sends chat messages" in capsys.readouterr().err


def test_ctrl_c_stops_an_answer_and_leaves_its_turn_out(tiny, monkeypatch, capsys):
    tok, calls = load_tokenizer(tiny), []
    real = prefopt.model.generate

    def interrupted_once(model, prompts, **kw):
        calls.append(list(prompts[0]))
        if len(calls) == 1:
            raise KeyboardInterrupt
        return real(model, prompts, **kw)

    lines = iter(["Fever and a stiff neck?", "hello"])

    def read(prompt):
        line = next(lines, None)
        if line is None:
            raise KeyboardInterrupt
        return line

    monkeypatch.setattr("builtins.input", read)
    monkeypatch.setattr(prefopt.model, "generate", interrupted_once)
    assert main(["chat", "--model", str(tiny), "--greedy", "--max-new-tokens", "4"]) == 130  # Ctrl-C at the prompt
    assert "(stopped: this turn is left out of the conversation)" in capsys.readouterr().out
    assert calls[1] == tok.apply_chat_template([{"role": "user", "content": "hello"}], add_generation_prompt=True)


def test_save_adds_the_conversation_as_an_sft_record(tiny, monkeypatch, capsys, tmp_path):
    from prefopt.data import load_sft

    saved = tmp_path / "chats.jsonl"
    code, out, asked = converse(tiny, [f"/save {saved}", "/system You triage messages.", "Fever?",
                                       f"/save {saved}", f"/save {tmp_path / 'no' / 'x.jsonl'}", "/reset", "Rash?",
                                       f"/save {saved}"], monkeypatch, capsys)
    assert code == 0 and "you> (nothing to save yet)" in out
    assert f"you> (added 1 exchange(s) to {saved}: a {{\"messages\"}} record, which prefopt sft trains on once its " \
           "answers are corrected)" in out
    assert f"you> ({tmp_path / 'no' / 'x.jsonl'}: No such file or directory)" in out
    records = [json.loads(line) for line in saved.read_text().splitlines()]
    assert [r["messages"] for r in records] == [
        [{"role": "system", "content": "You triage messages."}, {"role": "user", "content": "Fever?"},
         {"role": "assistant", "content": asked[0][1]}],
        [{"role": "system", "content": "You triage messages."}, {"role": "user", "content": "Rash?"},
         {"role": "assistant", "content": asked[1][1]}]]
    examples, report = load_sft(saved, load_tokenizer(tiny), skip_bad=True)  # what sft reads (an empty answer: bad)
    assert report.n_read == 2 and report.n_kept + len(report.skipped) == 2
    assert all("empty assistant turn" in e.reason for e in report.skipped), report.summary()
