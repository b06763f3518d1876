"""Qwen3 GGUF files (llama.cpp's ``qwen3``: q/k norms, no biases, q/k rows in HF's order) both
ways: imported to the source model's logits and to what transformers' own GGUF loader gives,
and a fine-tuned Qwen3 exported and read back."""
import pytest
import torch

from prefopt import load_model
from prefopt.convert.gguf import convert_gguf
from tests._tiny import assert_reads_as_transformers, build_hf_model, write_tiny_gguf

gguf = pytest.importorskip("gguf")
IDS = torch.randint(3, 400, (2, 13), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("qtype", ["F32", "Q8_0"])
def test_a_qwen3_file_imports_as_transformers_reads_it(tmp_path, qtype):
    """Heads 128 wide (transformers' GGUF loader assumes Qwen3's 128; hidden 512 over 4 heads)."""
    hf = build_hf_model(tmp_path / "hf", arch="qwen3", hidden_size=512, head_dim=128, intermediate_size=128,
                        rope_theta=1e6)
    path = write_tiny_gguf(tmp_path / "hf", tmp_path / "q.gguf", qtype=qtype)
    assert gguf.GGUFReader(str(path)).fields["general.architecture"].contents() == "qwen3"
    ours = load_model(convert_gguf(path, tmp_path / "out", progress=False))
    assert ours.config.model_type == "qwen3" and not ours.config.attention_bias
    assert_reads_as_transformers(ours, path, IDS, source=hf if qtype == "F32" else None)


def test_a_fine_tuned_qwen3_exports_and_reads_back(tmp_path):
    from prefopt import apply_lora, save_adapter
    from prefopt.convert.gguf_export import export_gguf
    from prefopt.model.config import UnsupportedModelError
    from tests._tiny import randomize_lora

    build_hf_model(tmp_path / "hf", arch="qwen3", tie_word_embeddings=True)
    tuned = apply_lora(load_model(tmp_path / "hf"), r=4, alpha=8, dropout=0.0)
    randomize_lora(tuned)
    save_adapter(tuned, tmp_path / "ad", base_model=str(tmp_path / "hf"))
    path = export_gguf(tmp_path / "hf", tmp_path / "t.gguf", adapter=tmp_path / "ad", out_type="f32",
                       show_progress=False)
    names = {t.name for t in gguf.GGUFReader(str(path)).tensors}
    assert "blk.1.attn_k_norm.weight" in names and "output.weight" not in names
    with torch.no_grad():
        back = load_model(convert_gguf(path, tmp_path / "back", progress=False))
        assert (back(IDS) - tuned(IDS)).abs().max().item() < 1e-4
    build_hf_model(tmp_path / "bias", arch="qwen3", attention_bias=True)
    with pytest.raises(UnsupportedModelError, match="not part of GGUF's qwen3 architecture"):
        export_gguf(tmp_path / "bias", tmp_path / "b.gguf", show_progress=False)
