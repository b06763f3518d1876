"""Loading and saving HF-layout folders, both ways with transformers."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from prefopt import load_model, load_tokenizer, save_model
from prefopt.model import CheckpointError, ModelConfig, UnsupportedModelError
from prefopt.model.safetensors_io import iter_tensors
from tests._tiny import build_hf_model

transformers = pytest.importorskip("transformers")
IDS = torch.randint(0, 400, (2, 13), generator=torch.Generator().manual_seed(0))


def _hf_logits(path):
    m = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        return m(IDS).logits


@pytest.mark.parametrize("arch,tied", [("llama", False), ("llama", True), ("qwen2", False), ("mistral", False)])
def test_saved_by_prefopt_loads_in_transformers(tmp_path, arch, tied):
    build_hf_model(tmp_path / "src", arch=arch, tie_word_embeddings=tied)
    ours = load_model(tmp_path / "src")
    save_model(ours, tmp_path / "out", tokenizer=load_tokenizer(tmp_path / "src"))
    with torch.no_grad():
        want = ours(IDS)
    assert (_hf_logits(tmp_path / "out") - want).abs().max().item() < 1e-5
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
    assert tok.encode("chest pain 38.9 C") == load_tokenizer(tmp_path / "src").encode("chest pain 38.9 C")
    if tied:
        assert "lm_head.weight" not in load_file(tmp_path / "out" / "model.safetensors")


def test_saved_by_transformers_loads_in_prefopt(tmp_path):
    hf = build_hf_model(tmp_path, arch="qwen2")
    with torch.no_grad():
        assert (load_model(tmp_path)(IDS) - hf(IDS).logits).abs().max().item() < 1e-5


def test_sharded_round_trip(tmp_path):
    build_hf_model(tmp_path / "src")
    ours = load_model(tmp_path / "src")
    save_model(ours, tmp_path / "out", max_shard_bytes=200_000)
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) > 1 and not (tmp_path / "out" / "model.safetensors").exists()
    with torch.no_grad():
        assert torch.equal(load_model(tmp_path / "out")(IDS), ours(IDS))
        assert (_hf_logits(tmp_path / "out") - ours(IDS)).abs().max().item() < 1e-5
    # saving again unsharded removes the old shards and index
    save_model(ours, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").glob("model*")) == ["model.safetensors"]


def test_transformers_sharded_checkpoint_loads(tmp_path):
    hf = build_hf_model(tmp_path / "a", tokenizer=False)
    hf.save_pretrained(tmp_path / "b", max_shard_size="100KB")
    assert (tmp_path / "b" / "model.safetensors.index.json").exists()
    with torch.no_grad():
        assert (load_model(tmp_path / "b")(IDS) - hf(IDS).logits).abs().max().item() < 1e-5


def test_dtype_is_cast_while_loading(tmp_path):
    build_hf_model(tmp_path / "src", tokenizer=False)
    save_model(load_model(tmp_path / "src"), tmp_path / "bf16", dtype=torch.bfloat16)
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["dtype"] == "bfloat16"
    assert {t.dtype for _, t in iter_tensors(tmp_path / "bf16" / "model.safetensors")} == {torch.bfloat16}
    m = load_model(tmp_path / "bf16", dtype=torch.float32)
    assert {p.dtype for p in m.parameters()} == {torch.float32}
    assert not any(p.is_meta for p in m.parameters()) and not m.inv_freq.is_meta


def test_shape_mismatch_names_tensor_and_both_shapes(tmp_path):
    build_hf_model(tmp_path, tokenizer=False)
    sd = load_file(tmp_path / "model.safetensors")
    sd["model.layers.1.mlp.up_proj.weight"] = torch.zeros(100, 64)
    save_file(sd, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError) as e:
        load_model(tmp_path)
    msg = str(e.value)
    assert "model.layers.1.mlp.up_proj.weight" in msg and "(100, 64)" in msg and "(112, 64)" in msg


def test_missing_and_unexpected_tensors_are_named(tmp_path):
    build_hf_model(tmp_path, tokenizer=False)
    sd = load_file(tmp_path / "model.safetensors")
    del sd["model.norm.weight"]
    save_file(sd, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match="missing tensors: model.norm.weight"):
        load_model(tmp_path)
    sd["model.norm.weight"] = torch.ones(64)
    sd["model.layers.0.extra.weight"] = torch.ones(3)
    save_file(sd, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match="unexpected tensor 'model.layers.0.extra.weight'"):
        load_model(tmp_path)


def test_unsupported_architecture_is_named(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt_neox", "architectures": ["GPTNeoXForCausalLM"]}))
    with pytest.raises(UnsupportedModelError, match="gpt_neox"):
        load_model(tmp_path)
    with pytest.raises(UnsupportedModelError, match="yarn"):
        ModelConfig.from_dict({"model_type": "llama", "vocab_size": 8, "hidden_size": 8, "intermediate_size": 8,
                               "num_hidden_layers": 1, "num_attention_heads": 2,
                               "rope_scaling": {"rope_type": "yarn", "factor": 4.0}})


def test_pickle_checkpoints_are_refused(tmp_path):
    build_hf_model(tmp_path, tokenizer=False)
    (tmp_path / "model.safetensors").unlink()
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(CheckpointError, match="pickle"):
        load_model(tmp_path)


def test_config_reads_old_and_new_rope_spellings():
    base = {"model_type": "llama", "vocab_size": 8, "hidden_size": 8, "intermediate_size": 8,
            "num_hidden_layers": 1, "num_attention_heads": 2}
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192}
    old = ModelConfig.from_dict({**base, "rope_theta": 500000.0, "rope_scaling": scaling})
    new = ModelConfig.from_dict({**base, "rope_parameters": {"rope_theta": 500000.0, **scaling}})
    assert old.rope_theta == new.rope_theta == 500000.0
    assert old.rope_scaling == new.rope_scaling == scaling
    assert ModelConfig.from_dict({**base, "rope_parameters": {"rope_theta": 1e4, "rope_type": "default"}}).rope_scaling is None
    assert old.num_key_value_heads == 2 and old.head_dim == 4


def test_loading_peak_memory_stays_near_one_copy_of_the_weights(tmp_path):
    """Peak RSS growth while loading (fresh process) stays under 1.5x the fp32 weights."""
    import subprocess
    import sys

    from prefopt.model import Transformer

    cfg = ModelConfig(vocab_size=4000, hidden_size=512, intermediate_size=1376, num_hidden_layers=4,
                      num_attention_heads=8, num_key_value_heads=4)
    torch.manual_seed(0)
    save_model(Transformer(cfg), tmp_path, dtype=torch.bfloat16)  # bf16 on disk: loading also casts
    code = f"""
import re, torch
from prefopt import load_model
rss = lambda f: int(re.search(f + r':\\s+(\\d+)', open('/proc/self/status').read()).group(1)) * 1024
open('/proc/self/clear_refs', 'w').write('5')
before = rss('VmRSS')
m = load_model({str(tmp_path)!r}, dtype=torch.float32)
print(rss('VmHWM') - before, sum(p.numel() * 4 for p in m.parameters()))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    extra, weights = map(int, out.stdout.split())
    assert weights > 60e6
    assert extra < 1.5 * weights, f"extra peak {extra / 1e6:.0f} MB for {weights / 1e6:.0f} MB of weights"
