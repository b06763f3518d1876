"""``task_evaluator``: a task's score of greedy answers as a trainer's evaluator (for best_metric)."""
import json
from types import SimpleNamespace

import pytest

from prefopt import load_model, load_tokenizer
from prefopt.evaluate.runner import predict, score, task_evaluator
from prefopt.tasks import get_task
from tests._tiny import build_hf_model


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    build_hf_model(d, max_position_embeddings=4096)
    task = get_task("portal")
    return task, task.read()[:6], load_model(d), load_tokenizer(d)


def test_it_returns_the_tasks_metrics_of_greedy_answers_prefixed(setup):
    task, records, model, tok = setup
    got = task_evaluator(task, records, batch_size=4)(SimpleNamespace(model=model, tokenizer=tok))
    _, expected = score(task, records, predict(model, tok, task, records, show_progress=False))
    assert "val_macro_f1" in got and "val_n" not in got
    assert got == {f"val_{k}": float(v) for k, v in expected.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "n"}
    assert all(isinstance(v, float) for v in got.values())


def test_it_needs_the_trainers_tokenizer(setup):
    task, records, model, _ = setup
    with pytest.raises(ValueError, match="pass tokenizer=tok to the trainer"):
        task_evaluator(task, records)(SimpleNamespace(model=model, tokenizer=None))


def test_it_keeps_each_evaluations_answers_for_an_item_by_item_comparison(setup, tmp_path):
    """With ``answers=FILE`` the main process appends the parsed answers of every evaluation; a
    step evaluated twice (a resumed run) reads back as its last line; other processes write none."""
    from prefopt.evaluate.runner import read_answers

    task, records, model, tok = setup
    path = tmp_path / "val_answers.jsonl"
    evaluate = task_evaluator(task, records, batch_size=4, answers=path)
    main = SimpleNamespace(is_main=True)
    for step in (0, 5, 5):
        evaluate(SimpleNamespace(model=model, tokenizer=tok, step=step, dist=main))
    evaluate(SimpleNamespace(model=model, tokenizer=tok, step=9, dist=SimpleNamespace(is_main=False)))
    assert len(path.read_text().splitlines()) == 3
    got = read_answers(path)
    expected, _ = score(task, records, predict(model, tok, task, records, show_progress=False))
    assert sorted(got) == [0, 5] and got[5]["ids"] == [r.id for r in records]
    assert got[0]["predictions"] == json.loads(json.dumps(expected))  # as JSON gives them back
    assert read_answers(tmp_path / "none.jsonl") == {}
    with open(path, "a") as f:  # a SIGKILL mid-append: the resumed compare run once stopped on its JSONDecodeError
        f.write('{"step": 7, "ids": ["a", "b"], "predic')
    assert sorted(read_answers(path)) == [0, 5]
