"""The reference precompute's prompt-once forward against the full-sequence forward it replaces."""
import pytest
import torch

from prefopt import load_model
from prefopt.data.preference import PairExample, pair_collate
from prefopt.data.sft import IGNORE, TokenizedExample
from prefopt.lora import apply_lora
from prefopt.train.shared_prompt import (
    pack_pairs,
    pack_pairs_after,
    packed_hidden,
    pair_logp_sums,
    pairs_start,
    shared_prompt_logps,
    split_pair,
)
from tests._tiny import build_hf_model

PAD = 2


def _example(prompt, completion, masked_tail=0):
    labels = [IGNORE] * len(prompt) + completion[:len(completion) - masked_tail] + [IGNORE] * masked_tail
    return TokenizedExample(prompt + completion, labels)


def _pairs(seed=0, n=5):
    """Prompts of 3 to 20 tokens; chosen and rejected of different lengths (1 to 9 tokens)."""
    g = torch.Generator().manual_seed(seed)

    def ids(k):
        return torch.randint(3, 400, (k,), generator=g).tolist()
    out = []
    for i in range(n):
        prompt = ids(3 + (i * 7) % 18)
        out.append(PairExample(_example(prompt, ids(1 + (i * 3) % 9)), _example(prompt, ids(1 + (i * 5) % 9))))
    return out


@pytest.fixture(scope="module", params=[("llama", {}), ("qwen2", {}), ("mistral", {"sliding_window": 8}),
                                        ("gemma3", {"sliding_window": 8})],
                ids=["llama", "qwen2-biases", "mistral-window8", "gemma3-window8-and-full"])
def model(request, tmp_path_factory):
    arch, kw = request.param
    path = tmp_path_factory.mktemp(arch)
    build_hf_model(path, arch, tokenizer=False, **kw)
    return load_model(path, dtype=torch.float32).eval()


def test_prompt_once_equals_the_full_sequence_forward(model):
    pairs = _pairs()
    pairs.append(PairExample(_example([5, 6, 7], [8, 9, 10, 11], masked_tail=2), _example([5, 6, 7], [12])))
    with torch.no_grad():
        full = pair_logp_sums(model, pair_collate(pairs, PAD))
    chosen, rejected = shared_prompt_logps(model, pairs, PAD, torch.device("cpu"))
    assert chosen.dtype == torch.float32 and chosen.shape == (len(pairs),)
    assert torch.allclose(torch.cat([chosen, rejected]), full, rtol=1e-5, atol=1e-5)
    # one pair alone gives the same sums as in the padded batch
    alone = shared_prompt_logps(model, pairs[2:3], PAD, torch.device("cpu"))
    assert torch.allclose(torch.stack(alone).squeeze(1), torch.stack([chosen[2], rejected[2]]), atol=1e-5)


def test_pairs_that_do_not_share_their_prompt_are_refused():
    a = PairExample(_example([5, 6, 7], [8]), _example([5, 6, 9], [8]))  # same length, other tokens
    b = PairExample(_example([5, 6, 7], [8]), _example([5, 6], [7, 8]))  # other prompt length
    c = PairExample(TokenizedExample([5, 6], [5, 6]), TokenizedExample([5, 6], [5, 6]))  # no prompt
    d = PairExample(_example([5, 6, 7], [8]), TokenizedExample([5, 6, 7], [IGNORE] * 3))  # no answer
    good = _pairs(n=1)[0]
    assert split_pair(good) is not None and pack_pairs([good], PAD) is not None
    for bad in (a, b, c, d):
        assert split_pair(bad) is None and pack_pairs([good, bad], PAD) is None
    with pytest.raises(ValueError, match="same prompt"):
        shared_prompt_logps(None, [good, a], PAD, torch.device("cpu"))


def _started_pairs(start=20, n=5, seed=3):
    """Pairs whose prompts all begin with the same ``start`` tokens, then 1 to 9 of their own."""
    head = torch.randint(3, 400, (start,), generator=torch.Generator().manual_seed(seed)).tolist()
    return [PairExample(*(_example(head + list(p.chosen.input_ids[:1 + i % 9]), list(e.input_ids[-k:]))
                          for e, k in ((p.chosen, 1 + i % 4), (p.rejected, 2 + i % 5))))
            for i, p in enumerate(_pairs(seed, n))]


def test_pairs_after_a_shared_start_equal_their_full_sequences(model):
    """share_start: every pair in one row after the 20 tokens all prompts begin with, each pair
    seeing the start, its prompt and its own answer (a sliding window of 8 counted across the
    start): the sums of the two full sequences, and a pair's hidden states the same to the bit
    whatever else is in its row (the reference cache's fill and training batch pairs
    differently; the head's GEMM may then round by the number of rows it has: 1e-6)."""
    pairs = _started_pairs()
    assert pairs_start(pairs) == 20
    batch = pack_pairs_after(pairs, 20)
    assert batch["input_ids"].shape == (1, 20 + sum(batch["lengths"].sum(1)).item())
    assert int(batch["tokens"]) == sum(len(p.chosen.input_ids) + len(p.rejected.input_ids) - prompt
                                       for p in pairs for prompt in [len(split_pair(p)[0])])
    with torch.no_grad():
        full = pair_logp_sums(model, pair_collate(pairs, PAD))
        after = pair_logp_sums(model, batch)
        assert torch.allclose(after, full, rtol=1e-5, atol=1e-5)
        n = len(pairs)
        hidden = packed_hidden(model, batch)
        for other in ([pairs[3], pairs[1]], [pairs[1]]):  # pair 1 among others, and alone
            b = pack_pairs_after(other, 20)
            i, k = other.index(pairs[1]), len(other)
            h = packed_hidden(model, b)
            for row, mine in ((i, 1), (k + i, n + 1)):  # its chosen and rejected rows
                t = int((b["labels"][row] != IGNORE).sum())
                assert torch.equal(h[row, :t], hidden[mine, :t]) and t > 0
            sums = pair_logp_sums(model, b)
            assert torch.allclose(sums[[i, k + i]], after[[1, n + 1]], rtol=1e-6, atol=0)


@pytest.mark.parametrize("arch, window", [("llama", None), ("mistral", 8)])
def test_pairs_after_a_shared_start_give_the_packed_pairs_gradients(tmp_path, arch, window):
    """fp64 LoRA: the summed log-probs of pairs after the shared start and every LoRA gradient
    equal those of one packed row per pair (the start's gradient now one sum over the pairs)."""
    build_hf_model(tmp_path, arch, tokenizer=False, **({"sliding_window": window} if window else {}))
    model = apply_lora(load_model(tmp_path, dtype=torch.float64), r=4, alpha=8, dropout=0.0)
    g = torch.Generator().manual_seed(0)
    for name, p in model.named_parameters():  # a trained-looking adapter: every LoRA weight gets a gradient
        if "lora_B" in name:
            p.data = torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.05
    pairs = _started_pairs(n=4)
    out = []
    for batch in (pack_pairs(pairs, PAD), pack_pairs_after(pairs, 20)):
        model.zero_grad()
        loss = pair_logp_sums(model, batch).sum()
        loss.backward()
        out.append((loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (l0, g0), (l1, g1) = out
    assert abs(l0 - l1) < 1e-9 * abs(l0) and g0.keys() == g1.keys() and len(g0) > 0
    assert all((g0[n] - g1[n]).norm() <= 1e-6 * g1[n].norm() and g1[n].norm() > 0 for n in g0)


@pytest.mark.parametrize("layout", ["prompt once", "after the start"])
def test_dpo_s_packed_pairs_under_gradient_checkpointing_give_the_same_gradients(tmp_path, layout):
    """fp64 LoRA in training mode: recomputing every layer, or the lowest one only, under the
    pairs' explicit masks (a prompt once, or the shared start once) gives the log-prob sums and
    LoRA gradients of keeping every activation."""
    build_hf_model(tmp_path, "mistral", tokenizer=False, sliding_window=8)
    model = apply_lora(load_model(tmp_path, dtype=torch.float64), r=4, alpha=8, dropout=0.0).train()
    g = torch.Generator().manual_seed(0)
    for name, p in model.named_parameters():  # every LoRA weight gets a gradient
        if "lora_B" in name:
            p.data = torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.05
    pairs = _started_pairs(n=4)
    batch = pack_pairs(pairs, PAD) if layout == "prompt once" else pack_pairs_after(pairs, 20)
    out = []
    for ckpt in (False, 1, True):
        model.gradient_checkpointing = ckpt
        model.zero_grad()
        sums = pair_logp_sums(model, batch)
        sums.sum().backward()
        out.append((sums.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    for sums, grads in out[1:]:
        assert torch.allclose(sums, out[0][0], rtol=1e-12, atol=0) and grads.keys() == out[0][1].keys()
        assert all(torch.allclose(grads[n], out[0][1][n], rtol=1e-9, atol=1e-12) for n in grads)
    assert len(out[0][1]) > 0


def test_the_start_is_the_data_s_and_a_pair_without_it_is_not_packed_after_it():
    pairs = _started_pairs()
    short = _started_pairs(start=15)  # under MIN_SHARED (16)
    assert pairs_start(short) == 0 and pairs_start(pairs[:1]) == 0  # one prompt: nothing shared
    own = PairExample(_example(list(range(3, 40)), [8]), _example(list(range(3, 40)), [9]))
    assert pairs_start(pairs + [own]) == 0  # another prompt start
    unshared = PairExample(_example([5, 6, 7], [8]), _example([5, 6, 9], [8]))
    assert pairs_start(pairs + [unshared]) == 0  # a pair whose chosen and rejected prompts differ
    assert pack_pairs_after(pairs + [own], 20) is None and pack_pairs_after(pairs + [unshared], 20) is None
    whole = PairExample(*(_example(list(pairs[0].chosen.input_ids[:20]), [7 + k]) for k in (0, 1)))
    assert pack_pairs_after([whole], 20) is None  # the start is its whole prompt: none left of its own
    # a prompt that is the start plus one token keeps that token: its answers' first label predicted from it
    one = PairExample(*(_example(list(pairs[0].chosen.input_ids[:21]), [7 + k, 9]) for k in (0, 1)))
    assert pairs_start(pairs + [one]) == 20
    b = pack_pairs_after([one], 20)
    assert b["lengths"].tolist() == [[1, 2, 2]] and b["gather"].tolist() == [[20, 21], [20, 23]]
