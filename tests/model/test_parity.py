"""prefopt's forward pass against transformers on tiny random checkpoints."""
import pytest
import torch

from prefopt import load_model
from tests._tiny import build_hf_model

transformers = pytest.importorskip("transformers")

FAMILIES = {
    "llama": dict(arch="llama"),
    "llama-untied-mha": dict(arch="llama", num_key_value_heads=4, tie_word_embeddings=False),
    "llama-tied": dict(arch="llama", tie_word_embeddings=True),
    "llama3-rope": dict(arch="llama", rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                    "high_freq_factor": 4.0, "original_max_position_embeddings": 16}),
    "llama-linear-rope": dict(arch="llama", rope_scaling={"rope_type": "linear", "factor": 2.0}),
    "llama-bias": dict(arch="llama", attention_bias=True, mlp_bias=True),
    "mistral": dict(arch="mistral"),
    "qwen2": dict(arch="qwen2"),
    "qwen2-tied": dict(arch="qwen2", tie_word_embeddings=True),
    "qwen3": dict(arch="qwen3"),  # q/k norms, no biases
    "qwen3-tied-bias": dict(arch="qwen3", tie_word_embeddings=True, attention_bias=True),
    "smollm3": dict(arch="smollm3"),  # layer 3 of 4 without RoPE (NoPE)
    "smollm3-untied-bias": dict(arch="smollm3", tie_word_embeddings=False, attention_bias=True,
                                no_rope_layers=[0, 1, 1, 0]),
    "gemma3": dict(arch="gemma3"),  # a sliding layer (window 4) and a full one: tests/model/test_gemma3.py
    "gemma3-untied": dict(arch="gemma3", tie_word_embeddings=False, num_key_value_heads=4),
    "qwen3-moe": dict(arch="qwen3_moe"),  # a mixture of experts, then a dense layer: tests/model/test_moe.py
    "qwen3-moe-unnormalised": dict(arch="qwen3_moe", norm_topk_prob=False, mlp_only_layers=[]),
    "mixtral": dict(arch="mixtral"),
    "qwen2-moe": dict(arch="qwen2_moe"),  # routed experts unnormalised, a shared expert, then a dense layer
    "qwen2-moe-normalised": dict(arch="qwen2_moe", norm_topk_prob=True, mlp_only_layers=[]),
    "olmoe": dict(arch="olmoe"),  # q/k norms over the whole projections
    "olmoe-normalised": dict(arch="olmoe", norm_topk_prob=True),
    "phi3": dict(arch="phi3"),  # fused qkv_proj and gate_up_proj, LongRoPE (tests/model/test_phi3.py)
    "phi3-partial-tied": dict(arch="phi3", partial_rotary_factor=0.75, tie_word_embeddings=True, head_dim=16,
                              rope_scaling={"rope_type": "longrope", "short_factor": [1.0 + 0.1 * i for i in range(6)],
                                            "long_factor": [2.0 + 0.5 * i for i in range(6)]}),  # as Phi-4-mini
    "phi3-4k": dict(arch="phi3", rope_scaling=None, sliding_window=7),  # as Phi-3-mini-4k: no scaling, a window
    "olmo2": dict(arch="olmo2"),  # norms after attention and MLP only, q/k norms over the whole projections
    "olmo2-tied-bias": dict(arch="olmo2", tie_word_embeddings=True, attention_bias=True),
    "granite": dict(arch="granite"),  # embedding, residual and attention multipliers, logits divided
    "granite-tied-bias": dict(arch="granite", tie_word_embeddings=True, attention_bias=True, mlp_bias=True),
}


@pytest.fixture(params=list(FAMILIES))
def pair(request, tmp_path):
    hf = build_hf_model(tmp_path, **FAMILIES[request.param], tokenizer=False)
    return hf, load_model(tmp_path)


def test_logits_match_transformers(pair):
    hf, ours = pair
    ids = torch.randint(0, 400, (3, 29), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = hf(ids).logits
        got = ours(ids)
    assert got.shape == want.shape == (3, 29, 400)
    assert (got - want).abs().max().item() < 1e-4


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_logits_match_transformers(pair, side):
    hf, ours = pair
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(3, 400, (3, 17), generator=g)
    mask = torch.ones_like(ids)
    for row, n_pad in enumerate([0, 5, 11]):
        if n_pad:
            if side == "left":
                mask[row, :n_pad] = 0
            else:
                mask[row, -n_pad:] = 0
    ids = ids.masked_fill(mask == 0, 2)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        want = hf(ids, attention_mask=mask, position_ids=pos).logits
        got = ours(ids, attention_mask=mask)
        if ours.config.rope_type == "longrope":  # each row's factors its own (transformers: the batch's furthest
            for row in range(3):                 # row decides), so each row as transformers gives it alone
                keep = mask[row].bool()
                want[row, keep] = hf(ids[row, keep][None]).logits[0]
    real = mask.bool()
    assert torch.isfinite(got).all()
    assert (got[real] - want[real]).abs().max().item() < 1e-4


def test_left_padding_equals_unpadded(pair):
    _, ours = pair
    ids = torch.randint(3, 400, (1, 12), generator=torch.Generator().manual_seed(3))
    padded = torch.cat([torch.full((1, 6), 2), ids], dim=1)
    mask = torch.cat([torch.zeros(1, 6, dtype=torch.long), torch.ones(1, 12, dtype=torch.long)], dim=1)
    with torch.no_grad():
        alone = ours(ids)
        with_pad = ours(padded, attention_mask=mask)[:, 6:]
    # an expert runs on the tokens routed to it, pads too: another row count, another BLAS blocking
    assert (alone - with_pad).abs().max().item() < (5e-5 if ours.config.num_experts else 1e-5)


def test_return_hidden_gives_logits_through_output_weight(pair):
    hf, ours = pair
    ids = torch.randint(0, 400, (2, 9), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        h = ours(ids, return_hidden=True)
        logits = ours(ids)
        want = hf(ids, output_hidden_states=True).hidden_states[-1]
    assert h.shape == (2, 9, 64)
    assert (h - want).abs().max().item() < 1e-4
    h2, w = ours.head(h)  # what the log-prob kernels multiply: h and the head's weight (Granite: h / logits_scaling)
    assert torch.allclose(h2 @ w.T, logits, atol=1e-5)
    assert w is ours.output_weight and (h2 is h) == (ours.config.logits_scaling == 1)


def test_mistral_sliding_window_matches_transformers(tmp_path):
    hf = build_hf_model(tmp_path, arch="mistral", sliding_window=5, tokenizer=False)
    ours = load_model(tmp_path)
    assert ours.config.sliding_window == 5
    ids = torch.randint(0, 400, (2, 23), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        want = hf(ids).logits
        got = ours(ids)
        unwindowed = ours.__class__(ours.config.__class__.from_dict({**ours.config.raw, "sliding_window": None}))
        unwindowed.load_state_dict(ours.state_dict())
        full = unwindowed(ids)
    assert (got - want).abs().max().item() < 1e-4
    assert (full - want).abs().max().item() > 1e-3  # the window really changes the result


def test_gradient_checkpointing_gives_same_gradients(tmp_path):
    """All layers (True) or the first N: the same gradients as keeping every activation."""
    build_hf_model(tmp_path, tokenizer=False, num_hidden_layers=3)
    ids = torch.randint(0, 400, (2, 15), generator=torch.Generator().manual_seed(6))
    grads = []
    for ckpt in (False, True, 1, 2):
        m = load_model(tmp_path).train()
        m.gradient_checkpointing = ckpt
        m(ids).logsumexp(-1).mean().backward()
        grads.append({n: p.grad.clone() for n, p in m.named_parameters()})
    for other in grads[1:]:
        assert grads[0].keys() == other.keys()
        for n in grads[0]:
            assert torch.allclose(grads[0][n], other[n], atol=1e-6), n


def _kept_for_backward(m, ids) -> tuple[int, torch.Tensor]:
    """The bytes of the tensors a forward of ``m`` keeps for its backward (parameters aside), and
    its loss."""
    params, kept = {p.data_ptr() for p in m.parameters()}, {}

    def pack(t):
        if t.data_ptr() not in params:
            kept[t.data_ptr()] = t.untyped_storage().nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = m(ids).logsumexp(-1).mean()
    return sum(kept.values()), loss


def _checkpointed(m, setting) -> int:
    m.gradient_checkpointing = setting
    return m.checkpointed_layers()


def test_checkpointing_some_layers_keeps_less_than_none_and_more_than_all(tmp_path):
    """``gradient_checkpointing = N``: the first N layers keep only their inputs for the backward,
    so the tensors kept (parameters aside) fall with N; True is every layer, a number past the
    model's layers too, and nothing is recomputed outside training or without gradients."""
    build_hf_model(tmp_path, tokenizer=False, num_hidden_layers=4)
    m = load_model(tmp_path).train()
    ids = torch.randint(0, 400, (2, 32), generator=torch.Generator().manual_seed(7))

    def kept_bytes(ckpt) -> int:
        m.gradient_checkpointing = ckpt
        return _kept_for_backward(m, ids)[0]

    sizes = [kept_bytes(n) for n in (False, 1, 2, 3, True)]
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == 5, sizes
    assert kept_bytes(99) == sizes[-1]
    assert [_checkpointed(m, n) for n in (False, True, 2, 99)] == [0, 4, 2, 4]
    m.eval()  # (a forward with gradients outside training, such as a reference pass, recomputes nothing)
    assert kept_bytes(True) == sizes[0]


def test_checkpointed_layers_count_from_the_lowest_layer_the_backward_reaches(tmp_path):
    """With adapters on the top layers only (--lora-layers), the layers below keep nothing for the
    backward anyway: N counts from the lowest adapted layer, so N = 1 recomputes layer 2 here
    (checkpointing layer 0 saved nothing, and kept its input besides), and the gradients stay the same."""
    from prefopt.lora import apply_lora

    build_hf_model(tmp_path, tokenizer=False, num_hidden_layers=4)
    ids = torch.randint(0, 400, (2, 32), generator=torch.Generator().manual_seed(8))
    kept, grads = [], []
    for ckpt in (False, 1, 2, True):
        torch.manual_seed(0)  # the same adapter each time
        m = apply_lora(load_model(tmp_path).train(), r=4, alpha=8, dropout=0.0, layers=(2, 3))
        m.gradient_checkpointing = ckpt
        saved, loss = _kept_for_backward(m, ids)
        loss.backward()
        kept.append(saved)
        grads.append({n: p.grad for n, p in m.named_parameters() if p.requires_grad})
    assert kept[0] > kept[1] > kept[2] == kept[3], kept  # layers 2 and 3 are all the backward reaches
    assert m.backward_layers() == 2
    assert [_checkpointed(m, n) for n in (False, 1, True, 99)] == [0, 1, 2, 2]
    for other in grads[1:]:
        assert all(torch.allclose(grads[0][n], other[n], atol=1e-6) for n in grads[0])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_close_to_fp32(tmp_path, dtype):
    build_hf_model(tmp_path, tokenizer=False)
    ids = torch.randint(0, 400, (2, 11), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        ref = load_model(tmp_path)(ids)
        m = load_model(tmp_path, dtype=dtype)
        assert all(p.dtype == dtype for p in m.parameters())
        got = m(ids)
    assert got.dtype == dtype
    rel = (got.float() - ref).norm() / ref.norm()
    assert rel < 0.05


def test_an_explicit_mask_with_positions_equals_the_causal_forward(tmp_path):
    """A (B, 1, T, T) boolean mask plus position_ids: the causal mask given explicitly gives the
    plain forward (with a sliding window applied by position); a token hidden from the others
    changes them; the mask is refused without positions or where it does not cover a KV cache's
    entries."""
    from prefopt.model import KVCache

    build_hf_model(tmp_path, arch="mistral", sliding_window=5, tokenizer=False)
    m = load_model(tmp_path).eval()
    ids = torch.randint(0, 400, (2, 13), generator=torch.Generator().manual_seed(7))
    pos = torch.arange(13)[None].expand(2, -1)
    causal = torch.ones(13, 13, dtype=torch.bool).tril()[None, None].expand(2, 1, -1, -1)
    with torch.no_grad():
        want = m(ids)
        got = m(ids, causal, pos)
        hidden = causal.clone()
        hidden[:, :, 5:, 3] = False  # later tokens do not see token 3
        other = m(ids, hidden, pos)
    assert (got - want).abs().max().item() < 1e-5
    assert (other[:, :4] - want[:, :4]).abs().max().item() < 1e-5 and (other[:, 5:] - want[:, 5:]).abs().max() > 1e-3
    with pytest.raises(ValueError, match="needs position_ids"):
        m(ids, causal)
    with pytest.raises(ValueError, match=r"shape \(2, 1, 13, 13\) for 13 tokens after 4 cached"):
        cache = KVCache(m.config, 2, 20, dtype=torch.float32, device="cpu")
        cache.advance(4)
        m(ids, causal, pos, kv_cache=cache)


@pytest.mark.parametrize("arch,extra", [("llama", {}), ("mistral", {"sliding_window": 5})])
def test_an_explicit_mask_after_a_shared_cached_start_equals_the_whole_forward(tmp_path, arch, extra):
    """A prompt start run once into a one-row cache, shared by every row, then each row's rest
    under an explicit ``(B, 1, T, cached + T)`` mask: the same hidden states as the rows run
    whole (a sliding window counted across the cached start); a row whose rest hides the start
    from a token differs there."""
    from prefopt.model import KVCache

    build_hf_model(tmp_path, arch=arch, tokenizer=False, **extra)
    m = load_model(tmp_path).eval()
    g = torch.Generator().manual_seed(3)
    start = torch.randint(0, 400, (1, 6), generator=g)
    rest = torch.randint(0, 400, (2, 7), generator=g)
    with torch.no_grad():
        want = m(torch.cat([start.expand(2, -1), rest], 1), return_hidden=True)[:, 6:]
        one = KVCache(m.config, 1, 6, dtype=torch.float32, device="cpu")
        m(start, kv_cache=one, return_hidden=True)
        mask = torch.ones(7, 13, dtype=torch.bool).tril(6)[None, None].expand(2, 1, -1, -1).clone()
        pos = torch.arange(6, 13)[None].expand(2, -1)

        def run(mask):
            cache = KVCache(m.config, 2, 13, dtype=torch.float32, device="cpu")
            cache.share(one)
            return m(rest, mask, pos, kv_cache=cache, return_hidden=True)

        got = run(mask)
        mask[1, :, 1:, 5] = False  # the second row's later tokens do not see the start's last token
        other = run(mask)
    assert (got - want).abs().max().item() < 1e-5
    assert (other[0] - want[0]).abs().max().item() < 1e-5 and (other[1, :1] - want[1, :1]).abs().max() < 1e-5
    assert (other[1, 1:] - want[1, 1:]).abs().max() > 1e-3
