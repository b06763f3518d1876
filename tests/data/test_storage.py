"""Tokenized examples are kept as int32 arrays: 8 bytes a token for ids and labels together,
where Python lists of ints took 46 (a 100k-pair dataset of 900-token sequences: 1.4 GB, not 8.3)."""
import hashlib
import json
import tracemalloc
from array import array

import torch

from prefopt.data import load_preferences, load_sft
from prefopt.data.collate import pad_collate
from prefopt.data.preference import PairExample, pair_collate
from prefopt.data.sft import IGNORE, TokenizedExample, prompt_len

WORDS = "patient fever cough chest pain triage urgent routine nurse blood pressure heart rate".split()


def _pairs(n):
    return [{"prompt": " ".join(WORDS[(i + k) % len(WORDS)] for k in range(60)),
             "chosen": f"urgent review {i}", "rejected": f"routine visit {i}"} for i in range(n)]


def test_examples_hold_int32_arrays_and_batch_as_lists_did(tok):
    examples, _ = load_sft([{"prompt": p["prompt"], "completion": p["chosen"]} for p in _pairs(5)], tok)
    assert all(isinstance(v, array) and v.typecode == "i" for e in examples for v in (e.input_ids, e.labels))
    batch = pad_collate(examples, pad_id=7)
    T = max(len(e.input_ids) for e in examples)
    for i, e in enumerate(examples):  # the batch a list-based example gives, built by hand
        n = len(e.input_ids)
        assert batch["input_ids"][i].tolist() == list(e.input_ids) + [7] * (T - n)
        assert batch["labels"][i].tolist() == list(e.labels) + [IGNORE] * (T - n)
        assert batch["attention_mask"][i].tolist() == [1] * n + [0] * (T - n)
    assert batch["input_ids"].dtype == torch.long
    made = TokenizedExample([5, 6, 7], [IGNORE, 6, 7])  # lists (a user's own) are accepted
    assert made == TokenizedExample(array("i", [5, 6, 7]), (IGNORE, 6, 7)) and made.input_ids.typecode == "i"
    assert pad_collate([made, TokenizedExample([], [])], pad_id=0)["input_ids"].tolist() == [[5, 6, 7], [0, 0, 0]]


def test_a_pairs_cache_key_is_what_it_was_with_lists(tok):
    """A reference cache filled before the arrays keys each pair by the JSON of its token lists."""
    pairs, _ = load_preferences(_pairs(3), tok)
    for p in pairs:
        c, r = p.chosen, p.rejected
        payload = json.dumps([list(c.input_ids), prompt_len(c.labels), list(r.input_ids), prompt_len(r.labels)])
        assert p.key == hashlib.sha256(payload.encode()).hexdigest()[:32]
    assert pair_collate(pairs, 0)["input_ids"].shape[0] == 6


def test_a_loaded_dataset_takes_about_8_bytes_a_token(tok):
    records = _pairs(300)
    tracemalloc.start()
    try:
        pairs, _ = load_preferences(records, tok)
        kept, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    tokens = sum(p.n_tokens for p in pairs)
    assert tokens > 300 * 100
    assert kept / tokens < 12  # arrays: 8 bytes a token plus each object's header; lists took 46
    assert isinstance(pairs[0], PairExample)


def test_check_data_holds_little_more_than_two_loads(tok):
    """check_data remembers every text's ids between its two passes. The memo keeps a digest of
    each text and its ids as int32, so the check's peak stays near two plain loads' (with the texts
    and lists of ints it was 3.2x theirs here; with SmolLM2's tokenizer the memo cost 268 MiB
    for 5,000 pairs, about 11 GB for 100,000 pairs of 900 tokens: docs/benchmarks.md)."""
    from prefopt.data.check import UNLIMITED, check_data

    records = _pairs(300)

    def peak(f):
        tracemalloc.start()
        try:
            f()
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    check = peak(lambda: check_data(records, tok, kind="preference", max_length=256))
    loads = peak(lambda: [load_preferences(records, tok, max_length=m, skip_bad=True) for m in (UNLIMITED, 256)])
    assert check < 2.5 * loads
    # SFT repeats are found by a digest, not a set of token tuples (which was 4.3x two loads here;
    # with SmolLM2, 2,000 records: 79 MiB against 12, now 21)
    sft = [{"prompt": r["prompt"], "completion": r["chosen"]} for r in records]
    check = peak(lambda: check_data(sft, tok, kind="sft", max_length=256))
    loads = peak(lambda: [load_sft(sft, tok, max_length=m, skip_bad=True) for m in (UNLIMITED, 256)])
    assert check < 2.5 * loads
    with tok.remembering():
        ids = tok.encode(records[0]["prompt"])
        assert tok.encode(records[0]["prompt"]) == ids and isinstance(ids, list)  # a list, as without the memo
        (key, special), = tok._seen
        assert isinstance(key, bytes) and len(key) == 16 and tok._seen[(key, special)].typecode == "i"


def test_tokenizing_a_file_shows_a_progress_bar_unless_switched_off(tok, tmp_path, monkeypatch):
    """100,000 records take minutes to tokenize: a bar (shown once it has taken 2 s) says how far."""
    import prefopt.data.sft as sft

    seen = []

    def bar(iterable, **kw):
        seen.append(kw)
        return iterable

    monkeypatch.setattr(sft, "progress", bar)
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _pairs(4)))
    assert len(load_preferences(path, tok)[0]) == 4
    load_sft([{"prompt": "a", "completion": "b"}], tok, show_progress=False)
    assert [(kw["desc"], kw["delay"], kw["disable"]) for kw in seen] == [("tokenizing pairs.jsonl", 2, False),
                                                                         ("tokenizing <records>", 2, True)]
    from prefopt.train import TrainConfig
    from prefopt.train.sft import load_train_eval

    seen.clear()
    sft_file = tmp_path / "sft.jsonl"
    sft_file.write_text(json.dumps({"prompt": "a", "completion": "b"}) + "\n")
    load_train_eval(TrainConfig(model="m", output_dir=str(tmp_path / "o"), data=str(sft_file), progress=False), tok)
    assert [kw["disable"] for kw in seen] == [True]  # --no-progress: no bar here either
