"""KTO's unpaired records: read, checked, tokenized, each beside a mismatched completion."""

import pytest

from prefopt.data import DataError
from prefopt.data.feedback import FeedbackExample, label_counts, load_feedback, mismatched
from prefopt.data.preference import load_preferences
from prefopt.data.sft import IGNORE, TokenizedExample, prompt_len
from tests.data import write_jsonl

UNPAIRED = [{"prompt": f"Message {i}: chest pain?", "completion": f"Answer {i}.", "label": i % 3 != 0}
            for i in range(6)]


def _split(x: TokenizedExample) -> tuple[list[int], list[int]]:
    k = prompt_len(x.labels)
    return list(x.input_ids[:k]), list(x.input_ids[k:])


def test_each_example_is_its_completion_beside_another_prompts_completion(tmp_path, tok):
    examples, report = load_feedback(write_jsonl(tmp_path / "f.jsonl", UNPAIRED), tok)
    assert [type(x) for x in examples] == [FeedbackExample] * 6 and report.n_kept == 6
    assert [x.desirable for x in examples] == [r["label"] for r in UNPAIRED]
    answers = [_split(x.chosen)[1] for x in examples]
    partners = []
    for i, x in enumerate(examples):
        prompt, answer = _split(x.chosen)
        kl_prompt, kl_answer = _split(x.rejected)
        assert tok.decode(answer).startswith(f"Answer {i}.")  # its own completion, trained as SFT would
        assert kl_prompt == prompt and kl_answer != answer  # the same prompt, another record's completion
        partners.append(answers.index(kl_answer))
        assert list(x.rejected.labels) == [IGNORE] * len(prompt) + kl_answer
    assert sorted(partners) == list(range(6))  # a cycle: every completion is used once
    assert partners != [(i + 1) % 6 for i in range(6)]  # in the order of the hashes, not the file's
    assert label_counts(examples) == (4, 2)
    again, _ = load_feedback(tmp_path / "f.jsonl", tok)  # fixed: a cached reference stays valid
    assert [x.key for x in again] == [x.key for x in examples]


def test_a_record_added_gives_new_partners_to_its_neighbours_alone(tmp_path, tok):
    """The reference cache's keys cover both sequences, so a reshuffle would recompute every
    example's reference; along the hash-ordered cycle one more record changes one other key."""
    rows = [{"prompt": f"Message {i}: chest pain?", "completion": f"Answer {i}.", "label": i % 2 == 0}
            for i in range(40)]
    before, _ = load_feedback(write_jsonl(tmp_path / "a.jsonl", rows), tok)
    after, _ = load_feedback(write_jsonl(tmp_path / "b.jsonl", rows + [{"prompt": "New?", "completion": "New.",
                                                                   "label": True}]), tok)
    changed = {x.key for x in before} - {x.key for x in after}
    assert len(changed) == 1


def test_a_preference_pair_is_read_as_two_examples_on_one_record(tmp_path, tok):
    pairs = [{"prompt": f"Message {i}?", "chosen": f"Go now {i}.", "rejected": f"Wait {i}."} for i in range(3)]
    examples, report = load_feedback(write_jsonl(tmp_path / "p.jsonl", pairs), tok)
    assert [x.desirable for x in examples] == [True, False] * 3
    assert report.n_kept == 3 and report.kept_lines == [1, 1, 2, 2, 3, 3] and report.kept_records == [0, 0, 1, 1, 2, 2]
    dpo, _ = load_preferences(tmp_path / "p.jsonl", tok)
    assert [x.chosen.input_ids for x in examples] == [s.input_ids for p in dpo for s in (p.chosen, p.rejected)]
    for x in examples:  # the mismatched completion comes from another prompt, not the pair's other side
        assert tok.decode(_split(x.rejected)[1]).split()[-1] != tok.decode(_split(x.chosen)[1]).split()[-1]


def test_labels_from_a_csv_and_the_mismatched_completion_is_cut_to_max_length(tmp_path, tok):
    path = tmp_path / "f.csv"
    long = "word " * 60
    path.write_text(f"prompt,completion,label\nFever?,Go now.,TRUE\nCough?,{long},false\nRash?,Wait.,1\n"
                    "Burn?,Cool it.,No\nCut?,Press.,yes\nBite?,Clean it.,0.0\n")
    examples, _ = load_feedback(path, tok, max_length=24)
    assert [x.desirable for x in examples] == [True, False, True, False, True, False]
    assert all(x.rejected.n_tokens <= 24 and x.chosen.n_tokens <= 24 for x in examples)
    own = tmp_path / "own.csv"  # a sheet's own names, the label's too (refused as no field until 2026-12-06)
    own.write_text(path.read_text().replace("prompt,completion,label", "Message,Draft,Sent"))
    renamed, _ = load_feedback(own, tok, max_length=24, columns={"prompt": "Message", "completion": "Draft",
                                                                 "label": "Sent"})
    assert [x.key for x in renamed] == [x.key for x in examples]
    with pytest.raises(DataError, match=r"own.csv:2: field 'Message': expected true or false .*got 'Fever\?'"):
        load_feedback(own, tok, columns={"prompt": "Message", "completion": "Draft", "label": "Message"})


@pytest.mark.parametrize("row,field,reason", [
    ({"prompt": "Fever?", "completion": "Go now."}, "label", "missing field (true: a desirable completion"),
    ({"prompt": "Fever?", "completion": "Go now.", "label": "good"}, "label",
     "expected true or false (is the completion desirable?; 1/0 and yes/no are read too), got 'good'"),
    ({"prompt": "Fever?", "completion": "Go now.", "label": 2}, "label", "expected true or false"),
    ({"prompt": "Fever?", "completion": "Go now.", "label": 0.5}, "label", "1/0 and yes/no are read too), got 0.5"),
    ({"prompt": "Fever?", "completion": "  ", "label": True}, "completion", "empty response"),
    ({"prompt": "Fever?", "label": True}, "completion", "missing field (KTO's records hold 'prompt', 'completion' "
                                                        "and 'label'"),
    ({"completion": "Go now.", "label": True}, "prompt", "missing field"),
    ({"prompt": "Fever?", "chosen": "Go now.", "rejected": "Go now."}, "rejected", "identical to chosen"),
])
def test_a_bad_record_is_named_by_file_line_and_field(tmp_path, tok, row, field, reason):
    path = write_jsonl(tmp_path / "f.jsonl", UNPAIRED[:2] + [row])
    with pytest.raises(DataError) as e:
        load_feedback(path, tok)
    assert (e.value.path.name, e.value.line, e.value.field) == ("f.jsonl", 3, field)
    assert reason in e.value.reason
    examples, report = load_feedback(path, tok, skip_bad=True)  # or skipped, and counted
    assert len(examples) == 2 and len(report.skipped) == 1


def test_a_reference_point_needs_two_different_completions(tmp_path, tok):
    with pytest.raises(DataError, match="KTO needs at least 2 examples"):
        load_feedback(write_jsonl(tmp_path / "one.jsonl", UNPAIRED[:1]), tok)
    same = [{"prompt": f"Q{i}?", "completion": "Same.", "label": True} for i in range(3)]
    with pytest.raises(DataError) as e:
        load_feedback(write_jsonl(tmp_path / "same.jsonl", same), tok)
    assert (e.value.path.name, e.value.line, e.value.field) == ("same.jsonl", 1, "completion")
    assert "no other example than this one has another prompt and completion" in e.value.reason


def test_one_prompt_with_many_completions_pairs_across_completions():
    ex = [TokenizedExample([1, 2, 3, 10 + i], [IGNORE, IGNORE, IGNORE, 10 + i]) for i in range(4)]
    out = mismatched(ex, max_length=8)
    assert all(list(o.input_ids[:3]) == [1, 2, 3] and o.input_ids[3] != e.input_ids[3] for o, e in zip(out, ex))
