"""Label scoring packs a record's answers as a prefix tree after its prompt: the tokens answers
share from their start run once, an answer's last token not at all, and every answer's log-prob
is the one it has scored alone after the prompt."""
import pytest
import torch

from prefopt.evaluate.confidence import _pack, _tree
from tests._tiny import build_hf_model

# answers that share starts, one a prefix of another, one of a single token, one alone
ANSWERS = [[5, 6, 7, 2], [5, 6, 8, 2], [5, 6, 7], [5, 9, 2], [11], [12, 13, 2]]


def _scored(model, batch, hidden) -> list[float]:
    """Each answer's summed log-prob from the packed rows' hidden states (fp64 log_softmax)."""
    logits = model.logits(hidden[batch["row"], batch["column"]]).double()  # (U, V)
    logp = torch.log_softmax(logits, -1).gather(1, batch["label"][:, None])[:, 0]
    n = int(batch["answer"].max()) + 1
    return torch.zeros(n, dtype=torch.float64).index_add_(0, batch["answer"], logp[batch["term"]]).tolist()


def _alone(model, rows) -> list[float]:
    """Each answer's summed log-prob from a plain causal forward of its prompt + answer."""
    want = []
    for prompt, answers in rows:
        for a in answers:
            ids = torch.tensor([prompt + a])
            lp = torch.log_softmax(model(ids).double()[0, :-1], -1).gather(1, ids[0, 1:, None])[:, 0]
            want.append(float(lp[len(prompt) - 1:].sum()))
    return want


def test_the_tree_shares_starts_and_leaves_out_last_tokens():
    tokens, parents, paths = _tree(ANSWERS)
    # nodes: 5, 6 (under 5), 7 (under 6), 8 (under 6), 9 (under 5), 12, 13 (under 12); no 2, no 11
    assert tokens == [5, 6, 7, 8, 9, 12, 13] and parents == [-1, 0, 1, 1, 0, -1, 5]
    assert paths == [[0, 1, 2], [0, 1, 3], [0, 1], [0, 4], [], [5, 6]]


def test_packed_log_probs_equal_each_answer_scored_alone(tmp_path):
    """Two records (padding in the batch): each answer's summed log-prob from the packed rows
    equals a plain causal forward of prompt + answer, log_softmax'd in float64."""
    from prefopt.pretrained import load_model

    build_hf_model(tmp_path / "m", tokenizer=False)
    model = load_model(str(tmp_path / "m")).eval()
    rows = [([1, 3, 4, 3, 20, 21], ANSWERS), ([1, 30, 31], [[40, 41, 2], [40, 42, 2], [43, 2]])]
    batch = _pack(rows, pad_id=0)
    assert batch["input_ids"].shape == (2, 6 + 7)  # the longer record: its prompt and 7 nodes, not 18 tokens
    assert batch["position_ids"][0, 6:].tolist() == [6, 7, 8, 8, 7, 6, 7]  # each node at its answers' position
    # each (position, next token) once: record 0's 18 terms are 12 (after the prompt 5, 11 or 12; after 5, 6 or
    # 9; after 6, 7 or 8; after 7, 8, 9 and 13, 2; after 12, 13), record 1's 8 are 7
    assert len(batch["row"]) == 12 + 7 and len(batch["term"]) == 18 + 8
    with torch.no_grad():
        hidden = model(batch["input_ids"], batch["mask"], batch["position_ids"], return_hidden=True)
        got, want = _scored(model, batch, hidden), _alone(model, rows)
    assert got == pytest.approx(want, rel=1e-5, abs=1e-4)
    assert len({round(v, 2) for v in want}) == len(want)  # all differ: a wrong gather would show


@pytest.mark.parametrize("arch,extra", [("llama", {}), ("mistral", {"sliding_window": 6})])
def test_a_shared_prompt_start_run_once_gives_the_same_log_probs(tmp_path, arch, extra):
    """The first tokens every prompt has run once into a KV cache (``_pack(..., start)``): each
    answer's log-prob is still the one a plain forward of its whole prompt + answer gives (with a
    sliding window, counted across the cached start)."""
    from prefopt.model import KVCache
    from prefopt.model.generate import run_shared_start
    from prefopt.pretrained import load_model

    build_hf_model(tmp_path / "m", arch=arch, tokenizer=False, **extra)
    model = load_model(str(tmp_path / "m")).eval()
    start = [1, 3, 4, 3, 20]
    rows = [(start + [21, 22], ANSWERS), (start + [30], [[40, 41, 2], [40, 42, 2], [43, 2]])]
    batch = _pack(rows, pad_id=0, start=len(start))
    B, S = batch["input_ids"].shape
    assert (B, S) == (2, 2 + 7) and batch["mask"].shape == (2, 1, S, 5 + S)
    assert batch["position_ids"][0].tolist() == [5, 6, 7, 8, 9, 9, 8, 7, 8]  # counted from the cached start
    assert batch["mask"][1, 0, :5, :5].all() and not batch["mask"][1, 0, 5:, :5].any()  # its 5 tokens, not padding
    with torch.no_grad():
        cache = KVCache(model.config, B, 5 + S, dtype=torch.float32, device="cpu")
        run_shared_start(model, start, cache)
        hidden = model(batch["input_ids"], batch["mask"], batch["position_ids"], kv_cache=cache, return_hidden=True)
        got, want = _scored(model, batch, hidden), _alone(model, rows)
    assert got == pytest.approx(want, rel=1e-5, abs=1e-4)
    assert len({round(v, 2) for v in want}) == len(want)


def test_label_scoring_runs_the_batch_shared_prompt_start_once(tmp_path, monkeypatch):
    """answer_logprobs on portal records (whose prompts share the task's instructions): the start
    runs once a batch, and every answer's log-prob is the one it has with each prompt whole in
    its row."""
    from prefopt.evaluate import confidence
    from prefopt.pretrained import load_model
    from prefopt.tasks import get_task
    from prefopt.tokenizer import load_tokenizer

    build_hf_model(tmp_path / "m")
    model, tok, task = load_model(str(tmp_path / "m")).eval(), load_tokenizer(str(tmp_path / "m")), get_task("portal")
    records = task.read()[:5]
    starts = []
    run = confidence.run_shared_start
    monkeypatch.setattr(confidence, "run_shared_start", lambda m, s, c: (starts.append(len(s)), run(m, s, c)))
    shared = confidence.answer_logprobs(model, tok, task, records, batch_size=3, show_progress=False)
    assert len(starts) == 2 and min(starts) >= 16  # batches of 3 and 2 records
    monkeypatch.setattr(confidence, "shared_start", lambda *a: 0)
    whole = confidence.answer_logprobs(model, tok, task, records, batch_size=3, show_progress=False)
    assert [labels for labels, _ in shared[0]] == [labels for labels, _ in whole[0]]
    got, want = [v for r in shared for _, v in r], [v for r in whole for _, v in r]
    assert got == pytest.approx(want, rel=1e-5, abs=1e-4) and len(got) == 5 * 12
