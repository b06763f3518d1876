"""Granite 3 (IBM's Apache-licensed 2B and 8B) against transformers' ``GraniteForCausalLM``: a
Llama whose embeddings are multiplied by ``embedding_multiplier``, each sublayer's output by
``residual_multiplier`` before the residual, attention scores by ``attention_multiplier``, and
whose logits are divided by ``logits_scaling``, in generation and in the log-probs training and
evaluation read through the fused kernels alike. Logits, padding and the head are in
test_parity.py (``granite``, ``granite-tied-bias``)."""
import pytest
import torch

from prefopt.kernels import sequence_logprobs
from prefopt.model.config import ModelConfig
from tests.model import _family as family

transformers = pytest.importorskip("transformers")
IDS = family.IDS


@pytest.fixture(scope="module")
def granite(tmp_path_factory):
    return family.tiny_family(tmp_path_factory, "granite")


def test_the_multipliers_are_read_and_each_matters(granite):
    hf, ours, _ = granite
    cfg = ours.config
    assert (cfg.embedding_multiplier, cfg.residual_multiplier, cfg.attention_multiplier, cfg.logits_scaling) == (
        12.0, 0.22, 0.0625, 8.0)
    with torch.no_grad():
        want = hf(IDS).logits
        assert (ours(IDS) - want).abs().max().item() < 1e-4
        for key, plain in (("embedding_multiplier", 1.0), ("residual_multiplier", 1.0),
                           ("attention_multiplier", 0.25), ("logits_scaling", 1.0)):
            assert (family.variant(ours, **{key: plain})(IDS) - want).abs().max().item() > 1e-3, key
    bare = {k: v for k, v in ours.config.raw.items() if not k.endswith(("_multiplier", "_scaling"))}
    cfg = ModelConfig.from_dict(bare)  # each 1 where config.json leaves it out, as transformers' GraniteConfig
    assert (cfg.embedding_multiplier, cfg.residual_multiplier, cfg.attention_multiplier, cfg.logits_scaling) == (
        1, 1, 1, 1) == tuple(getattr(transformers.GraniteConfig(), k) for k in (
            "embedding_multiplier", "residual_multiplier", "attention_multiplier", "logits_scaling"))


def test_the_log_probs_training_reads_are_transformers_log_softmax(granite):
    """The fused log-prob kernels take ``model.head(h)``: the hidden states divided by
    logits_scaling, so a loss trains on the logits the model answers with."""
    hf, ours, _ = granite
    labels = IDS[:, 1:]
    with torch.no_grad():
        want = torch.log_softmax(hf(IDS).logits[:, :-1].float(), -1).gather(-1, labels[..., None])[..., 0]
        got = sequence_logprobs(*ours.head(ours(IDS, return_hidden=True)[:, :-1]), labels)
    assert (got - want).abs().max().item() < 1e-4


def test_greedy_generation_with_the_cache_matches_transformers(granite):
    family.assert_greedy_generation_matches(*granite[:2])


def test_packed_sequences_equal_each_run_alone(granite):
    family.assert_packed_equals_alone(granite[1], IDS)


def test_a_saved_granite_loads_in_transformers(granite, tmp_path):
    cfg = family.assert_saved_loads_in_transformers(*granite[:2], tmp_path / "saved", IDS)
    assert cfg["architectures"] == ["GraniteForCausalLM"] and cfg["logits_scaling"] == 8.0


def test_sft_trains_a_granite(tmp_path):
    summary = family.sft_summary(tmp_path, "granite", lr=3e-2)
    # the logits divided by 8 and the sublayers' outputs scaled by 0.22: a random tiny model learns slower
    assert summary["eval_after"]["eval_loss"] < 0.9 * summary["eval_before"]["eval_loss"]
    from safetensors.torch import load_file

    tensors = load_file(tmp_path / "run" / "final" / "adapter_model.safetensors")
    assert all(t.abs().max() > 0 for k, t in tensors.items() if "lora_B" in k)  # every adapter moved from zero
