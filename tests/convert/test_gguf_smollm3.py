"""SmolLM3 GGUF files (llama.cpp's ``smollm3``: a Llama, q/k rows permuted as llama's, every 4th
layer without RoPE) both ways: imported to the source model's logits, and a fine-tuned SmolLM3
exported and read back. transformers' GGUF loader does not read smollm3, so the source model is
the reference."""
import pytest
import torch

from prefopt import load_model
from prefopt.convert.gguf import convert_gguf
from tests._tiny import build_hf_model, write_tiny_gguf

gguf = pytest.importorskip("gguf")
IDS = torch.randint(3, 400, (2, 13), generator=torch.Generator().manual_seed(0))


def test_a_smollm3_file_imports_to_the_source_model(tmp_path):
    hf = build_hf_model(tmp_path / "hf", arch="smollm3", num_hidden_layers=8, rope_theta=5e6)
    path = write_tiny_gguf(tmp_path / "hf", tmp_path / "s.gguf")
    assert gguf.GGUFReader(str(path)).fields["general.architecture"].contents() == "smollm3"
    ours = load_model(convert_gguf(path, tmp_path / "out", progress=False))
    assert ours.config.model_type == "smollm3" and ours.config.no_rope_layers == [1, 1, 1, 0] * 2
    with torch.no_grad():
        want = hf(IDS).logits
        assert (ours(IDS) - want).abs().max().item() < 1e-4  # quantized types: arch-independent, tested in test_gguf


def test_a_fine_tuned_smollm3_exports_and_reads_back(tmp_path):
    from prefopt import apply_lora, save_adapter
    from prefopt.convert.gguf_export import export_gguf
    from prefopt.model.config import UnsupportedModelError
    from tests._tiny import randomize_lora

    build_hf_model(tmp_path / "hf", arch="smollm3")
    tuned = apply_lora(load_model(tmp_path / "hf"), r=4, alpha=8, dropout=0.0)
    randomize_lora(tuned)
    save_adapter(tuned, tmp_path / "ad", base_model=str(tmp_path / "hf"))
    path = export_gguf(tmp_path / "hf", tmp_path / "t.gguf", adapter=tmp_path / "ad", out_type="f32",
                       show_progress=False)
    assert gguf.GGUFReader(str(path)).fields["general.architecture"].contents() == "smollm3"
    with torch.no_grad():
        back = load_model(convert_gguf(path, tmp_path / "back", progress=False))
        assert back.config.no_rope_layers == [1, 1, 1, 0]
        assert (back(IDS) - tuned(IDS)).abs().max().item() < 1e-4
    build_hf_model(tmp_path / "other", arch="smollm3", no_rope_layers=[1, 0, 1, 0])
    with pytest.raises(UnsupportedModelError, match=r"no_rope_layers \[1, 0, 1, 0\]: llama.cpp's smollm3 leaves RoPE "
                                                    "out of every 4th layer"):
        export_gguf(tmp_path / "other", tmp_path / "o.gguf", show_progress=False)
