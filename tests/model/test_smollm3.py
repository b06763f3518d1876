"""SmolLM3 (Hugging Face's 3B with a thinking switch) against transformers' ``SmolLM3ForCausalLM``:
a Llama whose every fourth layer attends without RoPE (NoPE). Its layers without RoPE, both
ways of giving them, generation with the cache, packing, saving and training. Logits, padding
and hidden states of every family are in test_parity.py (``smollm3`` there)."""
import pytest
import torch

from prefopt.model.config import ModelConfig, UnsupportedModelError
from tests.model import _family as family

transformers = pytest.importorskip("transformers")
IDS = family.IDS


@pytest.fixture(scope="module")
def smollm3(tmp_path_factory):
    return family.tiny_family(tmp_path_factory, "smollm3")


def test_the_layers_without_rope_are_read_and_matter(smollm3):
    hf, ours, _ = smollm3
    assert ours.config.no_rope_layers == hf.config.no_rope_layers == [1, 1, 1, 0]
    assert [ours.config.uses_rope(i) for i in range(4)] == [True, True, True, False]
    raw = {k: v for k, v in ours.config.raw.items() if k != "no_rope_layers"}
    assert ModelConfig.from_dict(raw).no_rope_layers == [1, 1, 1, 0]  # from no_rope_layer_interval, as transformers
    assert ModelConfig.from_dict({**raw, "no_rope_layer_interval": 2}).no_rope_layers == [1, 0, 1, 0]
    with torch.no_grad():
        want = hf(IDS).logits
        assert (ours(IDS) - want).abs().max().item() < 1e-4
        assert (family.variant(ours, no_rope_layers=[1, 1, 1, 1])(IDS) - want).abs().max().item() > 1e-3  # RoPE everywhere


@pytest.mark.parametrize("changes, error", [
    ({"no_rope_layers": [1, 1, 0]}, r"no_rope_layers \[1, 1, 0\]: expected 4 of 0 / 1"),
    ({"use_sliding_window": True, "sliding_window": 8}, "SmolLM3 with use_sliding_window is not supported"),
])
def test_what_prefopt_does_not_run_is_refused_by_name(smollm3, changes, error):
    _, ours, _ = smollm3
    with pytest.raises(UnsupportedModelError, match=error):
        ModelConfig.from_dict({**ours.config.raw, **changes})


def test_greedy_generation_with_the_cache_matches_transformers(smollm3):
    family.assert_greedy_generation_matches(*smollm3[:2])


def test_packed_sequences_equal_each_run_alone(smollm3):
    family.assert_packed_equals_alone(smollm3[1], IDS)


def test_a_saved_smollm3_loads_in_transformers(smollm3, tmp_path):
    cfg = family.assert_saved_loads_in_transformers(*smollm3[:2], tmp_path / "saved", IDS)
    assert cfg["architectures"] == ["SmolLM3ForCausalLM"] and cfg["no_rope_layers"] == [1, 1, 1, 0]


def test_sft_trains_a_smollm3(tmp_path):
    summary = family.sft_summary(tmp_path, "smollm3")
    assert summary["eval_after"]["eval_loss"] < 0.5 * summary["eval_before"]["eval_loss"]
