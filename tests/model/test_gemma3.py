"""Gemma 3's text model (Gemma 3, MedGemma 27B text) against transformers' ``Gemma3ForCausalLM``:
its sliding and full layers, both RoPE bases, both config spellings, generation, packing,
saving, LoRA in PEFT's format and training. The logits, padding and hidden-state checks of
every family are in test_parity.py (``gemma3`` there)."""
import json

import pytest
import torch

from prefopt import load_model
from prefopt.model.config import ModelConfig, UnsupportedModelError
from tests._tiny import build_hf_model, peft_lora
from tests.model import _family as family

transformers = pytest.importorskip("transformers")
IDS = family.IDS


@pytest.fixture(scope="module")
def gemma(tmp_path_factory):
    return family.tiny_family(tmp_path_factory, "gemma3")


def test_each_layer_type_keeps_its_window_and_rope(gemma):
    """Layer 0 slides (window 4, RoPE base 1e4), layer 1 sees everything (base 1e6, linear x8):
    reading any of those wrong changes the logits of a 13-token text."""
    hf, ours, _ = gemma
    cfg = ours.config
    assert [cfg.window(i) for i in range(2)] == [4, None] and cfg.local_rope_theta == 10000.0
    assert cfg.rope_theta == 1e6 and cfg.rope_scaling == {"rope_type": "linear", "factor": 8.0}
    with torch.no_grad():
        want = hf(IDS).logits
        assert (ours(IDS) - want).abs().max().item() < 1e-5
        full = {"rope_type": "default", "rope_theta": 1e6}
        for changes in ({"layer_types": ["full_attention"] * 2},  # no window
                        {"rope_parameters": {"sliding_attention": full, "full_attention": {
                            "rope_type": "linear", "factor": 8.0, "rope_theta": 1e6}}},  # one base for both
                        {"rope_parameters": {"sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
                                             "full_attention": full}},  # no scaling
                        {"query_pre_attn_scalar": 16}):
            assert (family.variant(ours, **changes)(IDS) - want).abs().max().item() > 1e-3, changes


def test_the_older_config_spelling_reads_the_same(gemma):
    """Gemma 3's first config.json files: rope_theta + rope_local_base_freq + rope_scaling, and
    sliding_window_pattern instead of layer_types (every 2nd layer full here, every 6th in
    the released models)."""
    _, ours, _ = gemma
    old = {k: v for k, v in ours.config.raw.items() if k not in ("layer_types", "rope_parameters")}
    old.update(rope_theta=1e6, rope_local_base_freq=10000.0, rope_scaling={"rope_type": "linear", "factor": 8.0},
               sliding_window_pattern=2)
    cfg = ModelConfig.from_dict(old)
    for f in ("layer_types", "rope_theta", "rope_scaling", "local_rope_theta", "sliding_window", "hidden_act",
              "query_pre_attn_scalar", "tie_word_embeddings"):
        assert getattr(cfg, f) == getattr(ours.config, f), f
    assert ModelConfig.from_dict({**old, "num_hidden_layers": 12, "sliding_window_pattern": 6}).layer_types == (
        (["sliding_attention"] * 5 + ["full_attention"]) * 2)


@pytest.mark.parametrize("changes, error", [
    ({"final_logit_softcapping": 30.0}, "soft-capping"),
    ({"use_bidirectional_attention": True}, "causal"),
    ({"hidden_activation": "gelu"}, "unsupported hidden_act 'gelu'"),
    ({"layer_types": ["sliding_attention"]}, "expected 2"),
])
def test_what_prefopt_does_not_run_is_refused_by_name(gemma, changes, error):
    with pytest.raises(UnsupportedModelError, match=error):
        ModelConfig.from_dict({**gemma[1].config.raw, **changes})


def test_greedy_generation_with_the_cache_matches_transformers(gemma):
    """Past the window: the sliding layer's cache keeps every key, its mask only the last 4."""
    family.assert_greedy_generation_matches(*gemma[:2])


def test_packed_sequences_equal_each_run_alone(gemma):
    """SFT packs examples into one row: each keeps its windows and positions (a 9-token one is
    longer than the window)."""
    family.assert_packed_equals_alone(gemma[1], IDS)


def test_bfloat16_matches_transformers_in_bfloat16(gemma, tmp_path):
    """The embedding scale is rounded to the model's dtype first (sqrt(64) is exact; a tiny
    model with hidden 48 checks the rounding: sqrt(48) = 6.93 is 6.9375 in bfloat16)."""
    build_hf_model(tmp_path, arch="gemma3", hidden_size=48, head_dim=12, tokenizer=False)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
    ours = load_model(tmp_path, dtype=torch.bfloat16)
    with torch.no_grad():
        want, got = theirs(IDS).logits.float(), ours(IDS).float()
    assert (got - want).abs().max().item() <= 0.02 * want.abs().max().item()


def test_a_saved_gemma_loads_in_transformers(gemma, tmp_path):
    cfg = family.assert_saved_loads_in_transformers(*gemma[:2], tmp_path / "saved", IDS)
    assert cfg["architectures"] == ["Gemma3ForCausalLM"] and cfg["hidden_activation"] == "gelu_pytorch_tanh"
    assert "hidden_act" not in cfg and cfg["layer_types"] == ["sliding_attention", "full_attention"]


def test_lora_adapters_load_both_ways_with_peft(gemma, tmp_path):
    from prefopt import apply_lora, save_adapter
    from tests._tiny import randomize_lora

    _, ours, d = gemma
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    theirs = peft_lora(d, tmp_path / "peft", target_modules=targets)
    with torch.no_grad():
        assert (load_model(d, adapter=tmp_path / "peft")(IDS) - theirs(IDS).logits).abs().max().item() < 1e-5
    mine = apply_lora(load_model(d), r=4, alpha=8, dropout=0.0, target_modules=targets)
    randomize_lora(mine)
    save_adapter(mine, tmp_path / "mine", base_model=str(d))
    peft = pytest.importorskip("peft")
    base = transformers.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
    again = peft.PeftModel.from_pretrained(base, tmp_path / "mine").eval()
    with torch.no_grad():
        assert (again(IDS).logits - mine(IDS)).abs().max().item() < 1e-5


def test_sft_and_dpo_train_a_gemma(tmp_path):
    """LoRA SFT, then DPO, on a tiny Gemma 3 with the training tests' learnable tasks: held-out
    loss falls, the adapters change, DPO learns to rank the held-out pairs."""
    from prefopt.train import TrainConfig
    from prefopt.train.dpo import DPOConfig
    from prefopt.train.run import run_dpo, run_sft
    from tests.train._fixtures import write_pairs, write_task

    build_hf_model(tmp_path / "model", arch="gemma3", initializer_range=0.1)
    model_dir, data = write_task(tmp_path)
    lora = dict(lora_r=8, lora_alpha=16, lora_dropout=0.0, batch_size=4, progress=False)
    summary = run_sft(TrainConfig(model=str(model_dir), data=str(data), output_dir=str(tmp_path / "sft"),
                                  max_steps=24, lr=3e-3, eval_fraction=0.25, warmup_steps=2, **lora))
    assert summary["eval_after"]["eval_loss"] < 0.5 * summary["eval_before"]["eval_loss"]
    pairs, held = write_pairs(tmp_path / "pairs.jsonl"), write_pairs(tmp_path / "held.jsonl", n=16, offset=1000)
    summary = run_dpo(DPOConfig(model=str(model_dir), data=str(pairs), eval_data=str(held), beta=0.1,
                                output_dir=str(tmp_path / "dpo"), max_steps=32, lr=5e-3, **lora))
    before, after = summary["eval_before"], summary["eval_after"]
    assert after["eval_rewards/accuracies"] >= 0.9 and after["eval_loss"] < before["eval_loss"] - 0.2


def test_a_4bit_base_and_a_dora_adapter_run_on_gemma(gemma):
    """QLoRA's nf4 base: every projection in 4 bits, the norms (Gemma's offsets from 1) and the
    embedding kept, and the model computes what the full-precision model does with the
    dequantized weights put in; a fresh DoRA adapter changes nothing until trained, and its
    gradient reaches the magnitudes."""
    from prefopt import apply_lora
    from prefopt.quant import QuantLinear

    _, ours, d = gemma
    q = load_model(d, quantize="nf4")
    quant = {n: m for n, m in q.named_modules() if isinstance(m, QuantLinear)}
    assert len(quant) == 2 * 7 and not any("norm" in n for n in quant)
    same = load_model(d)
    with torch.no_grad():
        for n, m in quant.items():
            same.get_submodule(n).weight.copy_(m.dequantized(torch.float32))
        assert (q(IDS) - same(IDS)).abs().max().item() < 1e-4
        want = ours(IDS)
    dora = apply_lora(load_model(d), r=4, alpha=8, dropout=0.0, dora=True)
    out = dora(IDS)
    assert (out - want).abs().max().item() < 1e-5
    out.logsumexp(-1).mean().backward()
    assert all(p.grad is not None for n, p in dora.named_parameters() if "lora_magnitude" in n)


def _image_text_gemma(path, **text):
    """A tiny Gemma3ForConditionalGeneration (Gemma 3 4B+, MedGemma 4B) saved by transformers."""
    torch.manual_seed(0)
    from tests._tiny import hf_config

    cfg = transformers.Gemma3Config(
        text_config={**hf_config("gemma3").to_dict(), **text},
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=28, patch_size=14), mm_tokens_per_image=4)
    model = transformers.Gemma3ForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "language_model" in name and "norm" in name:
                p.copy_(0.3 * torch.randn_like(p))
    model.save_pretrained(path)
    return model


def test_the_text_model_of_an_image_and_text_gemma_loads_and_saves_text_only(tmp_path):
    """MedGemma 4B's layout: the language model's tensors under ``language_model.model.`` (as
    transformers writes them; ``model.language_model.`` in its modules, and in some files),
    beside a vision tower that is left unread; the text logits are the image+text model's on
    text, and a save writes a Gemma3ForCausalLM folder that transformers reads back the same."""
    from safetensors.torch import load_file, save_file

    from prefopt import save_model

    theirs = _image_text_gemma(tmp_path / "mm")
    ours = load_model(tmp_path / "mm")
    assert ours.config.text_model_of == "gemma3" and ours.config.window(0) == 4
    with torch.no_grad():
        want = theirs(input_ids=IDS).logits
        assert (ours(IDS) - want).abs().max().item() < 1e-5
    tensors = load_file(tmp_path / "mm" / "model.safetensors")
    assert any(k.startswith("vision_tower.") for k in tensors) and "language_model.model.norm.weight" in tensors
    other = {k.replace("language_model.model.", "model.language_model.").replace("vision_tower.", "model.vision_tower.")
             .replace("multi_modal_projector.", "model.multi_modal_projector."): v for k, v in tensors.items()}
    save_file(other, tmp_path / "mm" / "model.safetensors", metadata={"format": "pt"})
    with torch.no_grad():
        assert (load_model(tmp_path / "mm")(IDS) - want).abs().max().item() < 1e-5
    save_model(ours, tmp_path / "text")
    cfg = json.loads((tmp_path / "text" / "config.json").read_text())
    assert cfg["model_type"] == "gemma3_text" and cfg["architectures"] == ["Gemma3ForCausalLM"]
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "text", dtype=torch.float32).eval()
    with torch.no_grad():
        assert (back(IDS).logits - want).abs().max().item() < 1e-5


def test_a_sparse_text_config_takes_transformers_defaults(tmp_path):
    """Gemma 3 4B's config.json lists in text_config only what differs from Gemma3TextConfig's
    defaults; prefopt's copy of them is transformers' own."""
    from prefopt.model.config import GEMMA3_TEXT_DEFAULTS

    ref = transformers.Gemma3TextConfig()
    for key, value in GEMMA3_TEXT_DEFAULTS.items():
        if key == "rope_theta":
            assert value == ref.rope_parameters["full_attention"]["rope_theta"]
        elif key == "rope_local_base_freq":
            assert value == ref.rope_parameters["sliding_attention"]["rope_theta"]
        elif key == "sliding_window_pattern":
            assert ref.layer_types[value - 1] == "full_attention" and ref.layer_types[:value - 1] == [
                "sliding_attention"] * (value - 1)
        else:
            assert getattr(ref, key) == value, key
    sparse = {"model_type": "gemma3", "architectures": ["Gemma3ForConditionalGeneration"], "eos_token_id": [1, 106],
              "text_config": {"hidden_size": 2560, "intermediate_size": 10240, "num_hidden_layers": 34,
                              "rope_scaling": {"factor": 8.0, "rope_type": "linear"}, "sliding_window": 1024,
                              "model_type": "gemma3_text"}}
    cfg = ModelConfig.from_dict(sparse)
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.head_dim, cfg.vocab_size) == (2560, 34, 256, 262208)
    assert cfg.rope_scaling == {"factor": 8.0, "rope_type": "linear"} and cfg.eos_token_ids == [1, 106]
    assert [cfg.window(i) for i in range(6)] == [1024] * 5 + [None] and cfg.local_rope_theta == 10000.0


def test_a_chat_template_json_is_read_where_there_is_no_jinja_file(tmp_path):
    from prefopt import load_tokenizer
    from tests._tiny import CHATML, build_tokenizer

    build_tokenizer(tmp_path, template=CHATML)
    spec = json.loads((tmp_path / "tokenizer_config.json").read_text())
    del spec["chat_template"]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(spec))
    assert load_tokenizer(tmp_path).chat_template is None
    (tmp_path / "chat_template.json").write_text(json.dumps({"chat_template": CHATML}))
    assert load_tokenizer(tmp_path).chat_template == CHATML
