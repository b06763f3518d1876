"""The reference precompute's prompt-once forward against the full-sequence forward it replaces."""
import pytest
import torch

from prefopt import load_model
from prefopt.data.preference import PairExample, pair_collate
from prefopt.data.sft import IGNORE, TokenizedExample
from prefopt.train.shared_prompt import pack_pairs, pair_logp_sums, shared_prompt_logps, split_pair
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
