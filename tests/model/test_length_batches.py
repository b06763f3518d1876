"""Prompts batched by length: at most batch_size, shortest first, and a batch closed early only
where its padding would pass what a batch more costs; answering and scoring give each record
its own answer and scores whichever batch it ran in."""
import pytest
import torch

from prefopt.model.length_batches import STEP_TOKENS, length_batches


def _padding(lengths, batch):
    return len(batch) * max(lengths[i] for i in batch) - sum(lengths[i] for i in batch)


def test_similar_lengths_are_batched_by_batch_size_alone_shortest_first():
    lengths = [230, 210, 250, 205, 240, 220, 215, 245, 235, 225]
    assert length_batches(lengths, 4, 16) == [[3, 1, 6, 5], [9, 0, 8, 4], [7, 2]]
    assert length_batches(lengths, 16, 16) == [sorted(range(10), key=lengths.__getitem__)]
    assert length_batches([], 4) == [] and length_batches([7], 4) == [[0]]
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        length_batches(lengths, 0)


def test_a_long_prompt_among_short_ones_runs_in_its_own_batch():
    """One letter of 3000 tokens beside fifteen messages of 300: 16 x 3000 tokens run, 7.6x the
    prompts' own, were the letter batched with them."""
    lengths = [300 + i for i in range(15)] + [3000]
    assert length_batches(lengths, 16, 16) == [list(range(15)), [15]]
    assert length_batches(lengths, 16, 16, "cuda") == [list(range(15)), [15]]  # (plainly lopsided: split there too)
    two = [90, 11289]  # a short message and a long letter: 11199 tokens of padding against 16 steps
    assert length_batches(two, 16, 16) == [[0], [1]]
    assert length_batches(two, 16, 1000) == [[0, 1]]  # (a thousand steps more cost more than that padding)


def test_a_batch_closes_where_its_padding_would_pass_what_a_batch_more_costs():
    """Lengths that spread evenly: each batch's padding stays within the steps' and the shared
    start's worth of tokens, and the next prompt would have taken it past."""
    lengths = [100 + 37 * i for i in range(40)]
    for new_tokens, start, device in ((16, 0, "cpu"), (4, 150, "cpu"), (2, 0, "cuda"), (1, 40, "cpu")):
        limit = new_tokens * STEP_TOKENS[device] + start
        batches = length_batches(lengths, 16, new_tokens, device, start)
        assert sorted(i for b in batches for i in b) == list(range(40))
        assert all(_padding(lengths, b) <= limit for b in batches)
        assert all(len(b) == 16 or _padding(lengths, b + [nxt[0]]) > limit for b, nxt in zip(batches, batches[1:]))
    assert len(length_batches(lengths, 16, 16)) > len(length_batches(lengths, 16, 16, "cuda"))
    for kind in ("cpu", "cuda"):  # a model's device, as answering passes it, counts by its kind
        assert length_batches(lengths, 16, 2, torch.device(kind)) == length_batches(lengths, 16, 2, kind)


def test_answers_and_scores_are_each_records_own_whichever_batch_it_ran_in(tiny_model_path, monkeypatch):
    """A long record among short ones: the answers and every label's scores, in the records'
    order, are those of each record answered and scored alone (to float rounding)."""
    from prefopt import load_model, load_tokenizer
    from prefopt.evaluate import confidence, runner
    from prefopt.tasks import get_task
    from tests import _formats as formats

    model, tok = load_model(tiny_model_path).eval(), load_tokenizer(tiny_model_path)
    task = get_task("portal")
    texts = ["A cough.", "pain " * 300, "A rash on my arm.", "Refill please.", "fever " * 40]
    path = formats.write_jsonl(tiny_model_path.parent / "m.jsonl", [{"message": t} for t in texts])
    records = task.read(str(path), labelled=False)
    seen = []
    real = runner.length_batches
    monkeypatch.setattr(runner, "length_batches", lambda *a, **k: seen.append(real(*a, **k)) or seen[-1])
    answers = runner.predict(model, tok, task, records, batch_size=8, max_new_tokens=3, show_progress=False)
    assert len(seen[0]) > 1 and [1] in seen[0]  # the long one alone
    assert answers == [runner.predict(model, tok, task, [r], max_new_tokens=3, show_progress=False)[0]
                       for r in records]
    scores = confidence.answer_logprobs(model, tok, task, records, batch_size=8, show_progress=False)
    for record, scored in zip(records, scores):
        alone = confidence.answer_logprobs(model, tok, task, [record], show_progress=False)[0]
        assert [labels for labels, _ in scored] == [labels for labels, _ in alone]
        assert [v for _, v in scored] == pytest.approx([v for _, v in alone], abs=1e-3)


@pytest.fixture(scope="module")
def tiny_model_path(tmp_path_factory):
    from tests._tiny import build_hf_model

    path = tmp_path_factory.mktemp("lengths") / "model"
    build_hf_model(path, max_position_embeddings=1024)
    return path


def test_the_batch_shapes_a_memory_estimate_takes_the_largest_of():
    """Each batch's (prompts, longest prompt), less those another batch matches or passes in
    both: a batch of 15 short prompts and one of a long prompt alone both stay."""
    from prefopt.model.length_batches import batch_shapes

    lengths = [300 + i for i in range(15)] + [3000]
    assert batch_shapes(lengths, 16, 16) == [(1, 3000), (15, 314)]
    assert batch_shapes([230, 210, 250, 205], 2, 16) == [(2, 250)]  # ((2, 210) is passed by it)
    assert batch_shapes([100] * 5, 2) == [(2, 100)]
