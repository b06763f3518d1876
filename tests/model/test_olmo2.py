"""OLMo 2 (AllenAI's fully open 1B-32B: weights, data and training code, for teams that must say
what their model learned from) against transformers' ``Olmo2ForCausalLM``: a Llama with no norm
before attention or the MLP, one on each one's output before the residual (multiplied by its
weight in fp32), and q/k norms over the whole projections. Logits and padding are in
test_parity.py (``olmo2``, ``olmo2-tied-bias``)."""
import pytest
import torch

from prefopt.model.config import ModelConfig, UnsupportedModelError
from tests.model import _family as family

transformers = pytest.importorskip("transformers")
IDS = family.IDS


@pytest.fixture(scope="module")
def olmo2(tmp_path_factory):
    return family.tiny_family(tmp_path_factory, "olmo2")


def test_the_layers_have_no_norm_before_and_one_after_each_sublayer(olmo2):
    _, ours, _ = olmo2
    names = {n.split("layers.0.")[1] for n, _ in ours.named_parameters() if "layers.0." in n and "norm" in n}
    assert names == {"post_attention_layernorm.weight", "post_feedforward_layernorm.weight",
                     "self_attn.q_norm.weight", "self_attn.k_norm.weight"}


def test_its_norms_round_as_transformers_olmo2_norm_does_in_bf16():
    """OLMo 2's norms multiply by their weight in fp32 and round once; Llama's order (round, then
    multiply in bf16) rounds twice, and differs in the last bit."""
    from transformers.models.olmo2.modeling_olmo2 import Olmo2RMSNorm

    from prefopt.model.transformer import RMSNorm

    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 64, 256, generator=g).to(torch.bfloat16)
    weight = (1 + 0.3 * torch.randn(256, generator=g)).to(torch.bfloat16)
    theirs, wide, narrow = Olmo2RMSNorm(256, 1e-6), RMSNorm(256, 1e-6, wide=True), RMSNorm(256, 1e-6)
    for norm in (theirs, wide, narrow):
        norm.to(torch.bfloat16).weight.data.copy_(weight)
    with torch.no_grad():
        assert torch.equal(wide(x), theirs(x)) and not torch.equal(narrow(x), theirs(x))


def test_clip_qkv_is_refused_by_name(olmo2):
    _, ours, _ = olmo2
    with pytest.raises(UnsupportedModelError, match=r"olmo2: clip_qkv=8.0 \(clamping q, k and v\) is not supported"):
        ModelConfig.from_dict({**ours.config.raw, "clip_qkv": 8.0})


def test_greedy_generation_with_the_cache_matches_transformers(olmo2):
    family.assert_greedy_generation_matches(*olmo2[:2])


def test_packed_sequences_equal_each_run_alone(olmo2):
    family.assert_packed_equals_alone(olmo2[1], IDS)


def test_a_saved_olmo2_loads_in_transformers(olmo2, tmp_path):
    cfg = family.assert_saved_loads_in_transformers(*olmo2[:2], tmp_path / "saved", IDS)
    assert cfg["architectures"] == ["Olmo2ForCausalLM"]


def test_sft_trains_an_olmo2(tmp_path):
    summary = family.sft_summary(tmp_path, "olmo2")
    assert summary["eval_after"]["eval_loss"] < 0.5 * summary["eval_before"]["eval_loss"]
