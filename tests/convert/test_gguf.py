"""GGUF import on tiny files written by the test, checked against the source and transformers."""
import json

import pytest
import torch

from prefopt import load_model, load_tokenizer
from prefopt.cli import main
from prefopt.convert.gguf import convert_gguf, describe_import, permute_qk, unpermute_qk
from prefopt.model import UnsupportedModelError
from tests._tiny import CORPUS, build_hf_model, write_tiny_gguf

gguf = pytest.importorskip("gguf")
IDS = torch.randint(0, 400, (2, 21), generator=torch.Generator().manual_seed(0))


@pytest.fixture
def src(tmp_path):
    hf = build_hf_model(tmp_path / "hf", intermediate_size=128, tie_word_embeddings=False)
    return hf, tmp_path / "hf"


def test_unpermute_inverts_llama_cpp_permutation():
    w = torch.randn(4 * 8, 5)
    assert torch.equal(unpermute_qk(permute_qk(w, 4), 4), w)
    assert not torch.equal(permute_qk(w, 4), w)


def test_f32_gguf_reproduces_the_source_model(src, tmp_path):
    hf, hf_dir = src
    out = convert_gguf(write_tiny_gguf(hf_dir, tmp_path / "m.gguf"), tmp_path / "out", progress=False)
    with torch.no_grad():
        assert (load_model(out)(IDS) - hf(IDS).logits).abs().max().item() < 1e-5
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["rms_norm_eps"] == 1e-05 and cfg["num_key_value_heads"] == 2 and not cfg["tie_word_embeddings"]


def test_a_head_width_other_than_hidden_over_heads_is_read_from_key_length(tmp_path):
    """Mistral NeMo's heads are 128 wide though its hidden size is 5120 over 32 heads: llama.cpp
    writes ``attention.key_length``; the import reads it (and the q/k permutation is undone per
    head of that width), and the export writes it back."""
    from prefopt.convert.gguf_export import export_gguf

    hf = build_hf_model(tmp_path / "hf", head_dim=24, rope_theta=1e6)  # 64 / 4 heads would be 16
    out = convert_gguf(write_tiny_gguf(tmp_path / "hf", tmp_path / "m.gguf"), tmp_path / "out", progress=False)
    assert json.loads((out / "config.json").read_text())["head_dim"] == 24
    with torch.no_grad():
        want = hf(IDS).logits
        assert (load_model(out)(IDS) - want).abs().max().item() < 1e-5
        again = export_gguf(out, tmp_path / "again.gguf", out_type="f32", show_progress=False)
        assert gguf.GGUFReader(str(again)).fields["llama.attention.key_length"].contents() == 24
        assert (load_model(convert_gguf(again, tmp_path / "back", progress=False))(IDS) - want).abs().max() < 1e-5


def test_q8_gguf_matches_transformers_own_gguf_loader(src, tmp_path):
    transformers = pytest.importorskip("transformers")
    hf, hf_dir = src
    path = write_tiny_gguf(hf_dir, tmp_path / "m.gguf", qtype="Q8_0")
    ours = load_model(convert_gguf(path, tmp_path / "out", progress=False))
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="m.gguf", dtype=torch.float32)
    with torch.no_grad():
        got, want, orig = ours(IDS), theirs.eval()(IDS).logits, hf(IDS).logits
    assert (got - want).abs().max().item() < 1e-4  # same dequantized weights, same permutation undone
    assert 0 < (got - orig).abs().max().item() < 0.1 * orig.abs().max().item()  # quantization error, small


def test_tokenizer_rebuilt_from_metadata(src, tmp_path):
    _, hf_dir = src
    out = convert_gguf(write_tiny_gguf(hf_dir, tmp_path / "m.gguf"), tmp_path / "out", progress=False)
    ours, orig = load_tokenizer(out), load_tokenizer(hf_dir)
    for text in CORPUS + ["12345 mg/dL <|im_start|>user\nhi<|im_end|>"]:
        assert ours.encode(text) == orig.encode(text)
        assert ours.decode(ours.encode(text), skip_special_tokens=False) == text
    assert (ours.bos_token, ours.eos_token, ours.pad_token) == ("<|im_start|>", "<|im_end|>", "<|im_end|>")
    msgs = [{"role": "user", "content": "chest pain?"}]
    assert ours.apply_chat_template(msgs, add_generation_prompt=True) == orig.apply_chat_template(
        msgs, add_generation_prompt=True)


def test_unknown_pre_tokenizer_is_refused_by_name(src, tmp_path):
    _, hf_dir = src
    path = write_tiny_gguf(hf_dir, tmp_path / "m.gguf", pre="mystery")
    with pytest.raises(UnsupportedModelError, match="mystery"):
        convert_gguf(path, tmp_path / "out", progress=False)


def test_cli_convert_gguf(src, tmp_path, capsys):
    hf, hf_dir = src
    path = write_tiny_gguf(hf_dir, tmp_path / "m.gguf")
    assert main(["convert-gguf", str(path), str(tmp_path / "cli")]) == 0
    assert capsys.readouterr().out == (f"wrote {tmp_path / 'cli'}: LlamaForCausalLM, 2 layers, hidden 64, 400 tokens; "
                                       "float32 weights, 0 MiB; byte-level BPE tokenizer\n")
    with torch.no_grad():
        assert (load_model(tmp_path / "cli")(IDS) - hf(IDS).logits).abs().max().item() < 1e-5


def test_a_missing_or_broken_gguf_file_is_named(src, tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.gguf: no such GGUF file"):
        convert_gguf(tmp_path / "nothing.gguf", tmp_path / "out", progress=False)
    (tmp_path / "notes.gguf").write_text("not a model")
    good = write_tiny_gguf(src[1], tmp_path / "m.gguf")
    (tmp_path / "cut.gguf").write_bytes(good.read_bytes()[:1000])  # a download that stopped early
    for name in ("notes.gguf", "cut.gguf"):
        with pytest.raises(ValueError, match=f"{name}: not a GGUF file, or a damaged one"):
            convert_gguf(tmp_path / name, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("tied", [False, True])
def test_qwen2_gguf_imports_with_its_biases_and_hf_row_order(tmp_path, tied):
    """llama.cpp's qwen2 architecture: q/k/v biases, q/k rows left in HF's order (no permutation
    to undo) and Qwen2's RoPE base, read from ``qwen2.*`` metadata."""
    hf = build_hf_model(tmp_path / "hf", arch="qwen2", rope_theta=1e6, tie_word_embeddings=tied)
    path = write_tiny_gguf(tmp_path / "hf", tmp_path / "q.gguf")
    assert gguf.GGUFReader(str(path)).fields["general.architecture"].contents() == "qwen2"
    out = convert_gguf(path, tmp_path / "out", progress=False)
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["model_type"], cfg["architectures"], cfg["tie_word_embeddings"]) == ("qwen2", ["Qwen2ForCausalLM"], tied)
    assert cfg.get("rope_theta", cfg.get("rope_parameters", {}).get("rope_theta")) == 1e6
    with torch.no_grad():
        want = hf(IDS).logits
        assert (load_model(out)(IDS) - want).abs().max().item() < 1e-5
    transformers = pytest.importorskip("transformers")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()  # the folder, as HF reads it
    with torch.no_grad():
        assert (theirs(IDS).logits - want).abs().max().item() < 1e-5


def test_q8_qwen2_gguf_matches_transformers_own_gguf_loader(tmp_path):
    transformers = pytest.importorskip("transformers")
    build_hf_model(tmp_path / "hf", arch="qwen2", rope_theta=1e6, intermediate_size=128, tie_word_embeddings=False)
    path = write_tiny_gguf(tmp_path / "hf", tmp_path / "q.gguf", qtype="Q8_0")
    ours = load_model(convert_gguf(path, tmp_path / "out", progress=False))
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="q.gguf", dtype=torch.float32)
    with torch.no_grad():
        assert (ours(IDS) - theirs.eval()(IDS).logits).abs().max().item() < 1e-4


def test_an_architecture_prefopt_does_not_implement_is_refused_by_name(src, tmp_path):
    path = write_tiny_gguf(src[1], tmp_path / "m.gguf")
    data = path.read_bytes()
    # same length, so the file stays well-formed: "llama" -> "gemma" in general.architecture and its keys
    (tmp_path / "g.gguf").write_bytes(data.replace(b"llama", b"gemma"))
    with pytest.raises(UnsupportedModelError, match=r"g\.gguf: GGUF architecture 'gemma' is not supported; "
                                                    r"prefopt imports \['gemma3', 'llama', 'qwen2', 'qwen2moe', 'qwen3', 'qwen3moe', 'smollm3'\]"):
        convert_gguf(tmp_path / "g.gguf", tmp_path / "out", progress=False)


LONG = torch.randint(0, 400, (1, 200), generator=torch.Generator().manual_seed(1))  # low frequencies turn


@pytest.mark.parametrize("rope, want", [
    # Llama 3.1's own settings: read back as they were
    ({"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
     {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
    # other settings: the file fixes only their effect, found again with an 8192 original context
    ({"factor": 16.0, "low_freq_factor": 2.0, "high_freq_factor": 16.0, "original_max_position_embeddings": 2048},
     {"factor": 16.0, "low_freq_factor": 8.0, "high_freq_factor": 64.0, "original_max_position_embeddings": 8192}),
])
def test_llama31_rope_scaling_is_read_back_from_rope_freqs(tmp_path, rope, want):
    """llama.cpp stores Llama 3.1's RoPE scaling as a 'rope_freqs' tensor (a divisor per
    frequency); the import finds settings that give the same divisors, so the model turns each
    position as the source does (200 positions, where the scaled low frequencies show: without
    the scaling the logits differ by 1.6)."""
    hf = build_hf_model(tmp_path / "hf", intermediate_size=128, tie_word_embeddings=False, max_position_embeddings=16384,
                        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, **rope})
    path = write_tiny_gguf(tmp_path / "hf", tmp_path / "m.gguf")
    assert "rope_freqs.weight" in {t.name for t in gguf.GGUFReader(str(path)).tensors}
    out = convert_gguf(path, tmp_path / "out", progress=False)
    cfg = json.loads((out / "config.json").read_text())
    scaling = cfg.get("rope_scaling") or cfg.get("rope_parameters")
    assert {k: scaling[k] for k in want} == want and scaling["rope_type"] == "llama3"
    assert describe_import(out).endswith(f"byte-level BPE tokenizer; RoPE scaling llama3 x{want['factor']:g}")
    with torch.no_grad():
        want_logits = hf(LONG).logits
        assert (load_model(out)(LONG) - want_logits).abs().max().item() < 1e-4
        transformers = pytest.importorskip("transformers")
        theirs = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
        assert (theirs(LONG).logits - want_logits).abs().max().item() < 1e-4


def test_rope_freqs_that_are_not_llama31_scaling_are_refused_by_name(tmp_path):
    from prefopt.convert.gguf_rope import llama3_scaling

    assert llama3_scaling([1.0] * 8, 500000.0, 16, "m.gguf") is None  # no scaling
    with pytest.raises(UnsupportedModelError, match=r"m\.gguf: its 'rope_freqs.weight' is not Llama 3\.1-style"):
        llama3_scaling([1, 1, 8, 1, 1, 1, 8, 8], 500000.0, 16, "m.gguf")  # not monotone in wavelength
    with pytest.raises(UnsupportedModelError, match=r"m\.gguf: 'rope_freqs.weight' has 3 values; the model rotates 8"):
        llama3_scaling([1, 2, 3], 500000.0, 16, "m.gguf")


def _stored(out) -> set:
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as f:
        return {f.get_slice(k).get_dtype() for k in f.keys()}


@pytest.mark.parametrize("qtype, vectors, want", [
    ("F32", None, "F32"),
    ("F16", torch.float16, "F16"), ("BF16", torch.bfloat16, "BF16"),  # a model stored in 16 bits: its norms fit
    ("F16", None, "F32"),  # norms that float16 would round: float32 keeps them
    ("Q8_0", None, "F32"),
])
def test_auto_dtype_keeps_every_value_and_halves_big_quantized_models(src, tmp_path, monkeypatch, qtype, vectors,
                                                                       want):
    """Unquantized files import in their matrices' own type where it holds the file's vectors
    (norms: F32 in any file) too, else float32: no value changes. A quantized file imports in
    float32 (exact) up to a billion parameters, bfloat16 past that."""
    from safetensors.torch import load_file, save_file

    import prefopt.convert.gguf as conv

    if vectors is not None:  # as a model saved in 16 bits has them
        weights = load_file(src[1] / "model.safetensors")
        save_file({k: v.to(vectors).float() for k, v in weights.items()}, src[1] / "model.safetensors",
                  metadata={"format": "pt"})
    path = write_tiny_gguf(src[1], tmp_path / "m.gguf", qtype=qtype)
    auto = conv.convert_gguf(path, tmp_path / "auto", progress=False)
    exact = conv.convert_gguf(path, tmp_path / "f32", dtype=torch.float32, progress=False)
    assert _stored(auto) == {want} and _stored(exact) == {"F32"}
    with torch.no_grad():
        ref = load_model(exact)(IDS)
        assert torch.equal(load_model(auto)(IDS), ref)  # no value changed
    if qtype == "Q8_0":  # a big model: bfloat16, within rounding of the exact import
        monkeypatch.setattr(conv, "EXACT_UP_TO", 1000)
        big = conv.convert_gguf(path, tmp_path / "big", progress=False)
        assert _stored(big) == {"BF16"} and json.loads((big / "config.json").read_text())["dtype"] == "bfloat16"
        with torch.no_grad():
            got = load_model(big)(IDS)
        assert 0 < (got - ref).abs().max().item() < 0.02 * ref.abs().max().item()


@pytest.mark.parametrize("kind", ["yarn", "longrope"])
def test_rope_scaling_prefopt_does_not_implement_is_refused_not_dropped(src, tmp_path, kind):
    """Qwen2.5's long-context GGUFs may carry YaRN: dropped, every position would turn differently."""
    path = write_tiny_gguf(src[1], tmp_path / "m.gguf", rope_scaling=kind)
    with pytest.raises(UnsupportedModelError, match=rf"m\.gguf: RoPE scaling '{kind}' is not supported"):
        convert_gguf(path, tmp_path / "out", progress=False)
    linear = convert_gguf(write_tiny_gguf(src[1], tmp_path / "l.gguf", rope_scaling="linear"), tmp_path / "lin",
                          progress=False)
    cfg = json.loads((linear / "config.json").read_text())
    scaling = cfg.get("rope_scaling") or cfg.get("rope_parameters")
    assert scaling["rope_type"] == "linear" and scaling["factor"] == 4.0


@pytest.mark.parametrize("arch, qtype", [("mixtral", "F32"), ("qwen3_moe", "F32"), ("qwen2_moe", "F32"),
                                         ("mixtral", "Q8_0"), ("qwen2_moe", "Q8_0")])
def test_a_mixture_of_experts_imports_with_each_expert_split_out(arch, qtype, tmp_path):
    """Mixtral (llama.cpp's ``llama`` with experts), ``qwen3moe`` and ``qwen2moe`` (its shared expert
    and gate too, top-k weights not renormalised): the stacked ``ffn_*_exps`` tensors become one weight
    per expert under the checkpoint's names, the router its ``gate``, and the model gives the source's
    logits (Q8_0: its rounding); transformers reads the folder."""
    transformers = pytest.importorskip("transformers")
    hf = build_hf_model(tmp_path / "hf", arch=arch, mlp_only_layers=[]) if arch in ("qwen3_moe", "qwen2_moe") else \
        build_hf_model(tmp_path / "hf", arch=arch)
    out = convert_gguf(write_tiny_gguf(tmp_path / "hf", tmp_path / "m.gguf", qtype=qtype), tmp_path / "out",
                       progress=False)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == arch and cfg["num_experts_per_tok"] == 2
    assert cfg.get("num_local_experts", cfg.get("num_experts")) == 4
    ours = load_model(out)
    with torch.no_grad():
        if qtype == "F32":
            assert (ours(IDS) - hf(IDS).logits).abs().max().item() < 1e-5
        back = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
        assert (back(IDS).logits - ours(IDS)).abs().max().item() < 1e-4
    # every expert's weight is the source's (Q8_0: to its rounding; routing near a tie may then flip, so the
    # quantized model's logits are not compared)
    source = {n: p for n, p in _source_weights(tmp_path / "hf").items() if ".experts." in n}
    mine = dict(ours.state_dict())
    assert len(source) == 3 * 4 * 2 and all((mine[n] - w).abs().max() < (1e-7 if qtype == "F32" else 0.02)
                                            for n, w in source.items())
    if arch == "qwen2_moe":
        assert cfg["norm_topk_prob"] is False and cfg["shared_expert_intermediate_size"] == 96
        shared = {n: p for n, p in _source_weights(tmp_path / "hf").items() if ".shared_expert" in n}
        assert len(shared) == 4 * 2 and mine["model.layers.0.mlp.shared_expert_gate.weight"].shape == (1, 64)
        assert all((mine[n] - w).abs().max() < (1e-7 if qtype == "F32" else 0.02) for n, w in shared.items())


def _source_weights(folder):
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


def test_a_mixture_of_experts_in_a_layout_prefopt_does_not_read_is_refused_by_name(src, tmp_path):
    path = write_tiny_gguf(src[1], tmp_path / "mixtral.gguf", experts=8)  # expert metadata, dense tensors
    with pytest.raises(UnsupportedModelError, match=r"mixtral\.gguf: tensor 'blk\.0\.ffn_\w+\.weight': a mixture of "
                                                    r"experts \(8 experts\) written with a dense MLP"):
        convert_gguf(path, tmp_path / "out", progress=False)
