"""Phi-3 (Phi-3, Phi-3.5 and Phi-4-mini: small models many hospitals can run on their own
machines) against transformers' ``Phi3ForCausalLM``: a Llama whose queries, keys and values are
one layer (``qkv_proj``) and whose MLP's gate and up projections are one (``gate_up_proj``),
with LongRoPE: short factors within the pretrained context, long ones past it, chosen by each
sequence's furthest position, and cos and sin scaled. Logits, padding and hidden states of each
variant are in test_parity.py (``phi3``, ``phi3-partial-tied``, ``phi3-4k``)."""
import json
import math

import pytest
import torch

from prefopt import apply_lora, generate, load_model, save_adapter
from prefopt.lora import lora_layers
from prefopt.model.config import ModelConfig, UnsupportedModelError
from prefopt.model.kv_cache import PromptCache
from prefopt.model.rope import rope_attention_factor
from tests.model import _family as family

transformers = pytest.importorskip("transformers")
IDS = family.IDS


@pytest.fixture(scope="module")
def phi3(tmp_path_factory):
    return family.tiny_family(tmp_path_factory, "phi3")


def test_longrope_takes_the_short_factors_within_the_pretrained_context_and_the_long_past_it(phi3):
    hf, ours, _ = phi3
    assert ours.config.rope_type == "longrope" and ours.config.rope_scaling["original_max_position_embeddings"] == 16
    assert rope_attention_factor(ours.config) == pytest.approx(math.sqrt(1 + math.log(256 / 16) / math.log(16)))
    always_short = family.variant(ours, original_max_position_embeddings=1000, rope_parameters={
        **ours.config.raw["rope_parameters"], "original_max_position_embeddings": 1000})
    ids = torch.randint(3, 400, (2, 29), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        for n in (12, 16, 17, 29):  # within the 16 pretrained positions, at the edge, past it
            want = hf(ids[:, :n]).logits
            assert (ours(ids[:, :n]) - want).abs().max().item() < 1e-4, n
        # within 16 the two differ only by cos and sin's scale (1 where the context does not grow)...
        scale = rope_attention_factor(always_short.config)
        assert scale == 1.0 and (always_short(ids[:, :12]) - ours(ids[:, :12])).abs().max().item() > 1e-3
        # ... past it by the factors too: the long ones' logits are not the short ones' scaled
        short_scaled = family.variant(ours, original_max_position_embeddings=1000, rope_parameters={
            **ours.config.raw["rope_parameters"], "original_max_position_embeddings": 1000,
            "attention_factor": rope_attention_factor(ours.config)})
        assert (short_scaled(ids[:, :12]) - ours(ids[:, :12])).abs().max().item() < 1e-5
        assert (short_scaled(ids) - ours(ids)).abs().max().item() > 1e-3


def test_a_config_json_in_the_hubs_older_spelling_reads_the_same(phi3):
    """Phi-3.5's config.json on the Hub: rope_scaling with "type" (su or longrope; Phi-3's first
    128k release said "su"), rope_theta and partial_rotary_factor at the top level."""
    _, ours, _ = phi3
    raw = {k: v for k, v in ours.config.raw.items() if k != "rope_parameters"}
    rp = ours.config.raw["rope_parameters"]
    for kind in ("su", "longrope", "yarn"):
        old = ModelConfig.from_dict({**raw, "rope_theta": rp["rope_theta"], "rope_scaling": {
            "type": kind, "short_factor": rp["short_factor"], "long_factor": rp["long_factor"]}})
        assert old.rope_scaling == {"rope_type": "longrope", "short_factor": rp["short_factor"],
                                    "long_factor": rp["long_factor"], "original_max_position_embeddings": 16}
    plain = ModelConfig.from_dict({**raw, "rope_scaling": None, "partial_rotary_factor": 0.75, "head_dim": 16})
    assert plain.rope_scaling is None and plain.rotary_dim == 12


@pytest.mark.parametrize("changes, error", [
    ({"resid_pdrop": 0.1}, r"phi3: resid_pdrop=0.1 \(dropout in the model\) is not supported"),
    ({"partial_rotary_factor": 0.3125, "rope_parameters": {"rope_type": "default", "partial_rotary_factor": 0.3125}},
     r"partial_rotary_factor=0.3125: RoPE on 5 of 16 dimensions \(a positive even number\)"),
    ({"partial_rotary_factor": 0.5, "rope_parameters": {"rope_type": "longrope", "partial_rotary_factor": 0.5,
                                                        "short_factor": [1.0] * 8, "long_factor": [1.0] * 8,
                                                        "original_max_position_embeddings": 16}},
     r"longrope: 8 factors for 4 frequencies"),
])
def test_what_prefopt_does_not_run_is_refused_by_name(phi3, changes, error):
    _, ours, _ = phi3
    with pytest.raises((UnsupportedModelError, ValueError), match=error):
        ours.__class__(ModelConfig.from_dict({**ours.config.raw, **changes}))


def test_greedy_generation_with_the_cache_matches_transformers_across_the_pretrained_context(phi3):
    """A 7-token prompt's 12 new tokens pass position 16: there both run the whole sequence again
    with the long factors (transformers' Phi-3 drops its cache), so the answer is the one without a
    cache. In a left-padded batch each row takes its own factors: its answer is the one it has
    alone (transformers lets the batch's furthest row decide for all)."""
    hf, ours, _ = phi3
    prompts = [*family.PROMPTS, list(range(3, 23))]  # (the last past 16 from the start)
    for p in prompts:
        want = hf.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                           max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0)
        assert generate(ours, [p], max_new_tokens=12) == [want[0, len(p):].tolist()], p
    together = generate(ours, prompts, max_new_tokens=12)  # each row crosses on its own step, rebuilt each time
    assert together == [generate(ours, [p], max_new_tokens=12)[0] for p in prompts]
    kept = PromptCache()  # a conversation (prefopt chat) whose second turn passes position 16
    first = generate(ours, [family.PROMPTS[0]], max_new_tokens=4, prompt_cache=kept)[0]
    turn = family.PROMPTS[0] + first + [40, 41, 42]
    assert generate(ours, [turn], max_new_tokens=8, prompt_cache=kept) == generate(ours, [turn], max_new_tokens=8)


def test_a_sequence_in_a_padded_batch_takes_the_factors_it_has_alone(phi3):
    """A row within the pretrained context batched with one past it keeps the short factors, so
    its log-probs (a DPO reference cached in one batch, the policy's in another) do not depend on
    what it is batched with."""
    _, ours, _ = phi3
    ids = torch.randint(3, 400, (2, 29), generator=torch.Generator().manual_seed(7))
    mask = torch.ones_like(ids)
    mask[1, 19:] = 0  # the second row 19 tokens (past 16), right-padded; then 10 tokens
    with torch.no_grad():
        both = ours(ids, attention_mask=mask)
        assert (both[0] - ours(ids[:1])[0]).abs().max().item() < 1e-4
        assert (both[1, :19] - ours(ids[1:, :19])[0]).abs().max().item() < 1e-4
        mask[1, 10:] = 0
        short = ours(ids, attention_mask=mask)
        assert (short[1, :10] - ours(ids[1:, :10])[0]).abs().max().item() < 1e-4


def test_packed_sequences_equal_each_run_alone(phi3):
    """Within the pretrained context, and where one packed sequence is past it and another not:
    each takes the factors it would alone."""
    ours = phi3[1]
    family.assert_packed_equals_alone(ours, IDS)
    a, b = torch.randint(3, 400, (22,), generator=torch.Generator().manual_seed(6)), IDS[1, :10]
    with torch.no_grad():
        packed = ours(torch.cat([a, b])[None], packed=[22, 10])
        assert (packed[0, :22] - ours(a[None])[0]).abs().max().item() < 1e-5
        assert (packed[0, 22:] - ours(b[None])[0]).abs().max().item() < 1e-5


def test_a_saved_phi3_loads_in_transformers(phi3, tmp_path):
    cfg = family.assert_saved_loads_in_transformers(*phi3[:2], tmp_path / "saved", IDS)
    assert cfg["architectures"] == ["Phi3ForCausalLM"] and cfg["rope_parameters"]["rope_type"] == "longrope"


def test_lora_goes_on_the_fused_layers_and_its_files_load_both_ways_in_peft(phi3, tmp_path):
    """The default targets (q_proj ... down_proj) name Phi-3's fused layers; the adapter holds
    qkv_proj and gate_up_proj as PEFT's for Phi-3 does, and loads in PEFT, and PEFT's in prefopt."""
    peft = pytest.importorskip("peft")
    hf, _, d = phi3
    model = apply_lora(load_model(d), r=4, alpha=8, dropout=0.0)
    names = {name.split(".")[-1] for name, _ in lora_layers(model)}
    assert names == {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}
    for _, layer in lora_layers(model):
        torch.nn.init.normal_(layer.lora_B.weight, std=0.05)
    save_adapter(model, tmp_path / "ours", base_model=str(d))
    assert sorted(json.loads((tmp_path / "ours" / "adapter_config.json").read_text())["target_modules"]) == [
        "down_proj", "gate_up_proj", "o_proj", "qkv_proj"]
    base = transformers.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
    theirs = peft.PeftModel.from_pretrained(base, tmp_path / "ours").eval()
    with torch.no_grad():
        assert (theirs(IDS).logits - model.eval()(IDS)).abs().max().item() < 1e-4
        with theirs.disable_adapter():
            assert (theirs(IDS).logits - model(IDS)).abs().max().item() > 1e-3
    base = transformers.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
    made = peft.get_peft_model(base, peft.LoraConfig(r=4, lora_alpha=12, lora_dropout=0.0, init_lora_weights=False,
                                                     target_modules=["qkv_proj", "gate_up_proj"])).eval()
    made.save_pretrained(tmp_path / "peft")
    with torch.no_grad():
        assert (load_model(d, adapter=tmp_path / "peft")(IDS) - made(IDS).logits).abs().max().item() < 1e-4
    with pytest.warns(UserWarning, match=r"LoRA: q_proj, v_proj are part of this model's qkv_proj \(one layer for "
                                         r"q_proj, k_proj, v_proj\): the adapter goes on the whole qkv_proj"):
        part = apply_lora(load_model(d), target_modules=["q_proj", "v_proj"])
    assert {name.split(".")[-1] for name, _ in lora_layers(part)} == {"qkv_proj"}


def test_sft_trains_a_phi3_quantized_to_nf4(tmp_path):
    summary = family.sft_summary(tmp_path, "phi3", quantize="nf4")
    assert summary["eval_after"]["eval_loss"] < 0.5 * summary["eval_before"]["eval_loss"]
    adapter = json.loads((tmp_path / "run" / "final" / "adapter_config.json").read_text())
    assert sorted(adapter["target_modules"]) == ["down_proj", "gate_up_proj", "o_proj", "qkv_proj"]
