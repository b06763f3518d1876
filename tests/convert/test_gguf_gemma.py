"""Gemma 3 GGUF files (Gemma 3, MedGemma from llama.cpp or Ollama) imported: written here as
llama.cpp's converter writes them (gguf's own tensor names, norms stored as 1 + w, only the keys
it writes), read back to the source model's logits, and by transformers' own GGUF loader."""
import json

import pytest
import torch

from prefopt import load_model
from prefopt.convert.gguf import convert_gguf
from tests._tiny import assert_reads_as_transformers, build_hf_model, write_tiny_gguf

gguf = pytest.importorskip("gguf")
IDS = torch.randint(3, 400, (2, 13), generator=torch.Generator().manual_seed(0))


def _gemma(path, **kw):
    return build_hf_model(path, arch="gemma3", **kw)


def test_the_file_gives_the_source_models_logits_with_its_layer_pattern_and_query_scale(tmp_path):
    """Two layers, sliding then full, written as a per-layer flag; the query scale (24, not the
    head width 16) written as attention.scale; RoPE's linear scaling; the norms' +1 taken off."""
    hf = _gemma(tmp_path / "hf")
    path = write_tiny_gguf(tmp_path / "hf", tmp_path / "g.gguf", gemma_pattern=True, gemma_scale=True)
    assert gguf.GGUFReader(str(path)).fields["general.architecture"].contents() == "gemma3"
    out = convert_gguf(path, tmp_path / "out", progress=False)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "gemma3_text" and cfg["layer_types"] == ["sliding_attention", "full_attention"]
    assert cfg["query_pre_attn_scalar"] == 24 and cfg["rope_scaling"] == {"rope_type": "linear",
                                                                                         "factor": 8.0}
    with torch.no_grad():
        want = hf(IDS).logits
        assert (load_model(out)(IDS) - want).abs().max().item() < 1e-4
        theirs = pytest.importorskip("transformers").AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
        assert (theirs.eval()(IDS).logits - want).abs().max().item() < 1e-4  # the folder, as transformers reads it


def test_a_file_without_the_optional_keys_takes_llama_cpps_rules(tmp_path):
    """Six layers, no pattern and no scale in the file (as the converter writes Gemma 3): every
    6th layer full, the query scale 1/sqrt(head width); transformers' GGUF loader agrees (its
    defaults are those rules for a model whose head width is 256)."""
    hf = _gemma(tmp_path / "hf", num_hidden_layers=6, head_dim=256, query_pre_attn_scalar=256, intermediate_size=128,
                layer_types=["sliding_attention"] * 5 + ["full_attention"],
                rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                                 "full_attention": {"rope_type": "default", "rope_theta": 1e6}})
    for qtype in ("F32", "Q8_0"):
        path = write_tiny_gguf(tmp_path / "hf", tmp_path / f"{qtype}.gguf", qtype=qtype)
        ours = load_model(convert_gguf(path, tmp_path / qtype, progress=False))
        assert [ours.config.window(i) for i in range(6)] == [4] * 5 + [None]
        assert ours.config.query_pre_attn_scalar == 256
        assert_reads_as_transformers(ours, path, IDS, source=hf if qtype == "F32" else None)


def test_the_27b_query_scale_rule(tmp_path):
    """llama.cpp knows Gemma 3 27B (and MedGemma 27B) by its 62 layers and scales its queries by
    hidden / heads (5376 / 32 = 168, its query_pre_attn_scalar), not by the head width (128)."""
    from prefopt.convert.gguf_gemma import settings

    class Meta:
        path = "m.gguf"

        def get(self, key, default=None):
            return default

    assert settings(Meta(), "gemma3.", hidden=5376, n_head=32, head_dim=128, n_layer=62)["query_pre_attn_scalar"] == 168
    got = settings(Meta(), "gemma3.", hidden=2560, n_head=8, head_dim=256, n_layer=34)
    assert got["query_pre_attn_scalar"] == 256 and got["layer_types"][:6] == ["sliding_attention"] * 5 + [
        "full_attention"] and got["local_rope_theta"] == 10000.0


def test_a_fine_tuned_gemma_exports_for_llama_cpp_and_reads_back(tmp_path):
    """Six layers laid out as llama.cpp runs Gemma 3, a LoRA adapter merged in: the export reads
    back to the merged model's logits, in prefopt and in transformers' GGUF loader; its keys are
    the converter's (norms stored as 1 + w, the window, key length, no q/k permutation)."""
    from prefopt import apply_lora, save_adapter
    from prefopt.convert.gguf_export import export_gguf
    from tests._tiny import randomize_lora

    _gemma(tmp_path / "hf", num_hidden_layers=6, head_dim=256, query_pre_attn_scalar=256, intermediate_size=128,
           layer_types=["sliding_attention"] * 5 + ["full_attention"],
           rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                            "full_attention": {"rope_type": "default", "rope_theta": 1e6}})
    tuned = apply_lora(load_model(tmp_path / "hf"), r=4, alpha=8, dropout=0.0)
    randomize_lora(tuned)
    save_adapter(tuned, tmp_path / "ad", base_model=str(tmp_path / "hf"))
    path = export_gguf(tmp_path / "hf", tmp_path / "t.gguf", adapter=tmp_path / "ad", out_type="f32",
                       show_progress=False)
    reader = gguf.GGUFReader(str(path))
    assert reader.fields["general.architecture"].contents() == "gemma3"
    assert reader.fields["gemma3.attention.sliding_window"].contents() == 4
    norm = next(t for t in reader.tensors if t.name == "blk.0.attn_q_norm.weight")
    assert torch.allclose(torch.from_numpy(norm.data.copy()) - 1, tuned.model.layers[0].self_attn.q_norm.weight)
    with torch.no_grad():
        want = tuned(IDS)
        assert (load_model(convert_gguf(path, tmp_path / "back", progress=False))(IDS) - want).abs().max() < 1e-4
        transformers = pytest.importorskip("transformers")
        theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="t.gguf", dtype=torch.float32)
        assert (theirs.eval()(IDS).logits - want).abs().max().item() < 1e-4


def test_a_gemma_llama_cpp_would_run_otherwise_is_refused_by_name(tmp_path):
    """llama.cpp takes Gemma 3's layer pattern and query scale from its rules, not from the file."""
    from prefopt.convert.gguf_export import export_gguf
    from prefopt.model.config import UnsupportedModelError

    _gemma(tmp_path / "hf")  # two layers, sliding then full; query scale 24 for heads 16 wide
    with pytest.raises(UnsupportedModelError, match="every 6th layer full"):
        export_gguf(tmp_path / "hf", tmp_path / "g.gguf", show_progress=False)
    _gemma(tmp_path / "six", num_hidden_layers=6, layer_types=["sliding_attention"] * 5 + ["full_attention"])
    with pytest.raises(UnsupportedModelError, match="query_pre_attn_scalar 24: llama.cpp scales a 6-layer"):
        export_gguf(tmp_path / "six", tmp_path / "g.gguf", show_progress=False)
    assert not (tmp_path / "g.gguf").exists()


def test_a_bfloat16_gemma_file_imports_in_bfloat16(tmp_path):
    """A Gemma stored in bfloat16: its norms are in the file as 1 + w (float32), which bfloat16
    would round, but the w kept fits it exactly: the import stays bfloat16 and changes no value."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    _gemma(tmp_path / "hf")
    weights = load_file(tmp_path / "hf" / "model.safetensors")
    save_file({k: v.to(torch.bfloat16).float() for k, v in weights.items()}, tmp_path / "hf" / "model.safetensors",
              metadata={"format": "pt"})
    path = write_tiny_gguf(tmp_path / "hf", tmp_path / "g.gguf", qtype="BF16")
    shifted = [torch.from_numpy(t.data.copy()) for t in gguf.GGUFReader(str(path)).tensors if "norm" in t.name]
    assert any(not torch.equal(v.bfloat16().float(), v) for v in shifted)  # 1 + w does not fit bfloat16
    out = convert_gguf(path, tmp_path / "out", progress=False)
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
        kept = {k: f.get_tensor(k).float() for k in f.keys()}
    want = load_file(tmp_path / "hf" / "model.safetensors")
    assert all(torch.equal(kept[k], want[k]) for k in want)
