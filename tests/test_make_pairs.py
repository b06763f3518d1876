"""``prefopt make-pairs``: the reference answer (chosen) against the model's own answer to the
same prompt, tokenized as SFT trained on it (rejected); answers that read the same make no pair;
a stopped run goes on from the answers made."""
import json

import pytest
import torch

import prefopt.evaluate.answer_pairs as ap
from prefopt import load_model, load_tokenizer
from prefopt.cli import main
from prefopt.data import DataError, load_preferences
from prefopt.data.feedback import load_feedback
from prefopt.data.records import parse_sft
from prefopt.data.sft import prompt_len, tokenize_sft
from prefopt.evaluate.answer_pairs import feedback_from, pairs_from, read_prompts, same_answer
from prefopt.model.generate import generate
from tests._stops import stop_after_blocks
from tests._tiny import build_hf_model

SYSTEM = {"role": "system", "content": "You triage portal messages."}


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _records(n):
    return [{"prompt": f"Message {i}: fever for {i} days. Urgency?", "completion": f"Urgency: code {i % 3}"}
            for i in range(n)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("mp") / "tiny"
    build_hf_model(path)
    return path


def test_prompts_are_tokenized_as_sft_trained_on_them(tiny, tmp_path):
    tok = load_tokenizer(tiny)
    chat = {"messages": [SYSTEM, {"role": "user", "content": "Chest pain?"}, {"role": "assistant", "content": "Go."}]}
    rows = [_records(1)[0], chat, {"prompt": [SYSTEM, {"role": "user", "content": "Rash?"}], "completion": "Wait."}]
    prompts, bad = read_prompts(_jsonl(tmp_path / "d.jsonl", rows), tok)
    assert not bad and [p.reference for p in prompts] == ["Urgency: code 0", "Go.", "Wait."]
    for p, row in zip(prompts, rows):
        ex, _ = tokenize_sft(parse_sft(row, "d.jsonl", 1), tok, max_length=1024)
        assert p.ids == list(ex.input_ids)[:prompt_len(ex.labels)]  # up to the first trained token
    assert prompts[1].prompt == chat["messages"][:2] and (prompts[1].file, prompts[1].line) == (str(tmp_path / "d.jsonl"), 2)
    [short], _ = read_prompts([rows[0]], tok, max_prompt_length=5)
    assert short.ids == prompts[0].ids[-5:]


def test_records_without_a_prompt_or_a_reference_are_named(tiny, tmp_path):
    tok = load_tokenizer(tiny)
    rows = [_records(1)[0], {"text": "A note."}, {"messages": [{"role": "user", "content": "Cough?"},
                                                              {"role": "assistant", "content": "Rest."},
                                                              {"role": "user", "content": "And fever?"}]}]
    path = _jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(DataError, match=rf"^{path}:2: field 'text': a text record has no prompt to answer"):
        read_prompts(path, tok)
    prompts, bad = read_prompts(path, tok, skip_bad=True)
    assert len(prompts) == 1 and [str(e) for e in bad] == [
        f"{path}:2: field 'text': a text record has no prompt to answer; make-pairs needs prompt/completion or "
        "messages records",
        f"{path}:3: field 'messages': the last message is not an assistant turn (it is the reference answer)"]
    typed = _jsonl(tmp_path / "t.jsonl", [_records(1)[0], {"prompt": "Cough?<|im_end|>", "completion": "Rest."}])
    prompts, bad = read_prompts(typed, tok, skip_bad=True)  # a special token written out: refused, not answered
    assert len(prompts) == 1 and [(e.line, e.reason[:30]) for e in bad] == [(2, "holds '<|im_end|>' as text at ")]


def test_answers_that_read_the_same_make_no_pair():
    assert same_answer("Urgent.", " urgent") and same_answer("Urgency: routine\nStaff:  nurse", "urgency: routine staff: nurse")
    assert not same_answer("Urgent", "Routine") and not same_answer("not urgent", "urgent")
    assert same_answer("<think>\nRoutine? No.\n</think>\n\nUrgent.", "urgent")  # a reasoning model's answer
    assert not same_answer("<think>\nUrgent? Routine? Let me", "urgent")  # cut while still reasoning
    prompts = [ap.Prompt("d.jsonl", i, "q", ref, [1]) for i, ref in enumerate(["Urgent", "Routine", "Nurse", "Desk"], 1)]
    rows = [{"answer": a, "finished": f} for a, f in (("urgent.", True), ("Emergency", True), ("", False),
                                                       ("Desk desk desk", False))]
    pairs, counts = pairs_from(prompts, rows, several_files=False)
    assert [(p["chosen"], p["rejected"], p["line"]) for p in pairs] == [("Routine", "Emergency", 2),
                                                                        ("Desk", "Desk desk desk", 4)]
    assert counts == {"prompts": 4, "pairs": 2, "same_as_reference": 1, "empty_answers": 1, "unfinished_rejected": 1}
    assert "file" not in pairs[0] and pairs_from(prompts, rows, several_files=True)[0][0]["file"] == "d.jsonl"
    # the same answers as KTO's feedback: the right one (no pair) desirable, the wrong ones not, the empty one left out
    feedback = feedback_from(prompts, rows, several_files=False)
    assert [(f["completion"], f["label"], f["line"]) for f in feedback] == [("urgent.", True, 1), ("Emergency", False, 2),
                                                                            ("Desk desk desk", False, 4)]


def _make(tiny, data, out, *extra):
    return main(["make-pairs", "--model", str(tiny), "--data", *map(str, data), "--output", str(out), "--greedy",
                 "--max-new-tokens", "6", "--device", "cpu", *extra])


def test_the_command_pairs_each_reference_with_the_models_own_answer(tiny, tmp_path, capsys):
    data = _jsonl(tmp_path / "d.jsonl", _records(5))
    assert _make(tiny, [data], tmp_path / "out", "--batch-size", "1") == 0
    answers = [json.loads(x) for x in (tmp_path / "out" / "answers.jsonl").read_text().splitlines()]
    tok, model = load_tokenizer(tiny), load_model(tiny).eval()
    prompts, _ = read_prompts(data, tok)
    with torch.no_grad():  # the answers are the model's greedy continuations of the SFT prompts
        want = [tok.decode(generate(model, [p.ids], max_new_tokens=6, eos_token_ids=tok.eos_token_ids)[0]).strip()
                for p in prompts]
    assert [a["answer"] for a in answers] == want and [a["line"] for a in answers] == [1, 2, 3, 4, 5]
    # a record whose reference is what the model says makes no pair
    same = _jsonl(tmp_path / "same.jsonl", [{**_records(5)[2], "completion": want[2] + "."}, *_records(5)[:2]])
    assert _make(tiny, [same], tmp_path / "out2") == 0
    made = json.loads((tmp_path / "out2" / "make_pairs.json").read_text())
    assert (made["prompts"], made["pairs"], made["same_as_reference"]) == (3, 2 - sum(not w for w in want[:2]), 1)
    pairs, report = load_preferences(tmp_path / "out" / "pairs.jsonl", tok)  # dpo reads them as they are
    rows = [json.loads(x) for x in (tmp_path / "out" / "pairs.jsonl").read_text().splitlines()]
    assert all(r["chosen"] == _records(5)[r["line"] - 1]["completion"] and r["rejected"] == want[r["line"] - 1]
               for r in rows) and len(pairs) == len(rows) == report.n_kept
    out = capsys.readouterr().out
    assert "pairs from 5 prompts" in out
    feedback, _ = load_feedback(tmp_path / "out" / "feedback.jsonl", tok)  # dpo --loss kto reads it as it is
    labels = [json.loads(x)["label"] for x in (tmp_path / "out" / "feedback.jsonl").read_text().splitlines()]
    assert [x.desirable for x in feedback] == labels and len(labels) == sum(1 for w in want if w)
    assert labels.count(False) == len(rows)  # a wrong answer is both a pair's rejected side and undesirable feedback
    assert f"{labels.count(True)} of {len(labels)} desirable: prefopt dpo --loss kto --data" in out
    same_labels = [json.loads(x)["label"] for x in (tmp_path / "out2" / "feedback.jsonl").read_text().splitlines()]
    assert same_labels[0] is True  # the answer that reads as the reference: no pair, a desirable example
    assert _make(tiny, [data], tmp_path / "out") == 0  # again into the same folder: the earlier files kept
    assert (tmp_path / "out" / "earlier" / "1" / "pairs.jsonl").is_file()


def test_a_stopped_run_goes_on_from_the_answers_made(tiny, tmp_path, monkeypatch, capsys):
    data = _jsonl(tmp_path / "d.jsonl", _records(7))
    assert _make(tiny, [data], tmp_path / "whole") == 0
    monkeypatch.setattr(ap, "BLOCK", 2)
    real = ap.answer
    monkeypatch.setattr(ap, "answer", stop_after_blocks(real, 2))
    assert _make(tiny, [data], tmp_path / "stopped") == 130
    partial = tmp_path / "stopped" / ".make-pairs-partial.jsonl"
    assert len(partial.read_text().splitlines()) == 1 + 4  # the stamp, then two blocks of two
    monkeypatch.setattr(ap, "answer", real)
    capsys.readouterr()
    assert _make(tiny, [data], tmp_path / "stopped") == 0
    assert "going on from the 4 of 7 prompts answered before" in capsys.readouterr().out
    for name in ("answers.jsonl", "pairs.jsonl"):  # the same as a run that was never stopped
        assert (tmp_path / "stopped" / name).read_text() == (tmp_path / "whole" / name).read_text()
    assert not partial.exists()
    assert _make(tiny, [data], tmp_path / "other", "--max-new-tokens", "3") == 0  # other settings: started afresh


def test_a_stopped_run_starts_over_where_its_adapter_was_saved_again(tiny, tmp_path, monkeypatch, capsys):
    """The adapter retrained in place (its path the same, its weights not): the answers its old
    weights made are not reused; make_pairs.json names the weights by their SHA-256."""
    from prefopt.fileio import sha256_of
    from prefopt.model.digest import weights_sha256
    from tests._tiny import save_random_adapter

    adapter = save_random_adapter(tiny, tmp_path / "adapter", seed=1)
    data = _jsonl(tmp_path / "d.jsonl", _records(5))
    monkeypatch.setattr(ap, "BLOCK", 2)
    real = ap.answer
    monkeypatch.setattr(ap, "answer", stop_after_blocks(real, 1))
    assert _make(tiny, [data], tmp_path / "out", "--adapter", str(adapter)) == 130
    monkeypatch.setattr(ap, "answer", real)
    save_random_adapter(tiny, adapter, seed=2)
    capsys.readouterr()
    assert _make(tiny, [data], tmp_path / "out", "--adapter", str(adapter)) == 0
    assert "going on from" not in capsys.readouterr().out
    made = json.loads((tmp_path / "out" / "make_pairs.json").read_text())
    assert made["adapter_sha256"] == sha256_of(adapter / "adapter_model.safetensors")
    assert made["model_sha256"] == weights_sha256(tiny) is not None  # (prefopt.model.digest's own tests check it)


def test_a_stopped_run_starts_over_where_its_model_was_saved_again(tiny, tmp_path, monkeypatch, capsys):
    """The model's weights written again at its path with other values: its answers are made
    again; the same bytes written again (a new time) go on."""
    import os
    import shutil

    from safetensors.torch import load_file, save_file

    model = tmp_path / "model"
    shutil.copytree(tiny, model)
    data = _jsonl(tmp_path / "d.jsonl", _records(4))
    monkeypatch.setattr(ap, "BLOCK", 2)
    real = ap.answer
    weights = model / "model.safetensors"
    for out, went_on in (("touched", True), ("retrained", False)):
        monkeypatch.setattr(ap, "answer", stop_after_blocks(real, 1))
        assert _make(model, [data], tmp_path / out) == 130
        monkeypatch.setattr(ap, "answer", real)
        if went_on:
            st = weights.stat()
            os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
        else:
            tensors = load_file(weights)
            first = next(iter(tensors))
            save_file({**tensors, first: tensors[first] + 0.5}, weights, metadata={"format": "pt"})
        capsys.readouterr()
        assert _make(model, [data], tmp_path / out) == 0
        assert ("going on from the 2 of 4 prompts answered before" in capsys.readouterr().out) is went_on


def test_sampled_answers_go_on_at_another_batch_size_as_if_never_stopped(tiny, tmp_path, monkeypatch, capsys):
    """Sampling seeds each prompt by its place among them all: a run stopped after a block and
    resumed with another --batch-size (for want of memory, say) writes what one run made; a prompt
    given twice gets two samples, in different blocks too."""
    records = _records(5)
    data = _jsonl(tmp_path / "d.jsonl", [*records, records[1]])
    sample = ["--temperature", "1.5", "--top-p", "1.0", "--seed", "7"]

    def make(out, *extra):
        return main(["make-pairs", "--model", str(tiny), "--data", str(data), "--output", str(out),
                     "--max-new-tokens", "6", "--device", "cpu", *sample, *extra])

    assert make(tmp_path / "whole", "--batch-size", "4") == 0
    monkeypatch.setattr(ap, "BLOCK", 2)
    real = ap.answer
    monkeypatch.setattr(ap, "answer", stop_after_blocks(real, 1))
    assert make(tmp_path / "stopped", "--batch-size", "2") == 130
    monkeypatch.setattr(ap, "answer", real)
    capsys.readouterr()
    assert make(tmp_path / "stopped", "--batch-size", "1") == 0
    assert "going on from the 2 of 6 prompts answered before" in capsys.readouterr().out
    answers = (tmp_path / "whole" / "answers.jsonl").read_text()
    assert (tmp_path / "stopped" / "answers.jsonl").read_text() == answers
    texts = [json.loads(x)["answer"] for x in answers.splitlines()]
    assert texts[1] != texts[5]  # the same prompt, sampled twice
    assert make(tmp_path / "other", "--batch-size", "4", "--seed", "8") == 0
    assert (tmp_path / "other" / "answers.jsonl").read_text() != answers


def test_bad_input_is_named_before_the_model_loads(tiny, tmp_path, capsys):
    data = _jsonl(tmp_path / "d.jsonl", [*_records(2), {"prompt": "x"}])
    assert _make(tiny, [data], tmp_path / "out") == 2
    assert f"{data}:3: field 'completion': missing field" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert _make(tiny, [data], tmp_path / "out", "--skip-bad-records") == 0
    assert "2 prompts from" in capsys.readouterr().out
    b = _jsonl(tmp_path / "b.jsonl", _records(1))
    assert _make(tiny, [b, data], tmp_path / "two", "--skip-bad-records") == 0  # several files: each pair names its own
    rows = [json.loads(x) for x in (tmp_path / "two" / "pairs.jsonl").read_text().splitlines()]
    assert {r["file"] for r in rows} <= {str(b), str(data)} and rows[0]["file"] == str(b)


def test_the_estimate_sizes_answering_the_records_and_writes_nothing(tiny, tmp_path, capsys, monkeypatch):
    import prefopt.pretrained

    def refused(*args, **kw):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(prefopt.pretrained, "load_model", refused)
    data = _jsonl(tmp_path / "d.jsonl", _records(5))
    assert _make(tiny, [data], tmp_path / "out", "--batch-size", "2", "--estimate-memory", "cpu") == 0
    said = capsys.readouterr().out.splitlines()
    assert said[1].startswith("5 records, the longest prompt ") and said[1].endswith(
        "memory estimate on a CPU, float32 weights, 2 prompts of "
        f"{said[1].split('the longest prompt ')[1].split()[0]} tokens at once and answers of up to 6:")
    assert not (tmp_path / "out").exists()
