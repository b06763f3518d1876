"""GGUF export, checked three ways: against llama.cpp's own SmolLM2 file (metadata and every
tensor), through transformers' GGUF loader (an independent reader), and back through our import."""
import numpy as np
import pytest
import torch

from prefopt import apply_lora, load_model, load_tokenizer, save_adapter
from prefopt.cli import main
from prefopt.convert.gguf import convert_gguf
from prefopt.convert.gguf_export import export_gguf
from prefopt.lora import lora_layers
from prefopt.model import UnsupportedModelError
from tests._tiny import CORPUS, build_hf_model, randomize_lora

gguf = pytest.importorskip("gguf")
IDS = torch.randint(0, 400, (2, 21), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny llama, a LoRA adapter on it with a non-zero update, and the merged model's logits."""
    root = tmp_path_factory.mktemp("export")
    build_hf_model(root / "hf", tie_word_embeddings=False)
    model = apply_lora(load_model(root / "hf"), r=4, alpha=8, dropout=0.0)
    randomize_lora(model)
    with torch.no_grad():
        want = model(IDS)
        base = load_model(root / "hf")(IDS)
    save_adapter(model, root / "adapter", base_model=str(root / "hf"))
    assert (want - base).abs().max() > 1e-2  # the adapter changes the model, so merging it shows
    with torch.no_grad():  # the weights the export holds: W + (alpha / r) B A, folded in once
        merged = load_model(root / "hf", adapter=root / "adapter", merge=True)(IDS)
    assert (merged - want).abs().max() < 1e-4
    return root / "hf", root / "adapter", merged


def _types(path) -> dict[str, str]:
    return {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(path)).tensors}


def test_f32_export_with_an_adapter_round_trips_exactly(tiny, tmp_path):
    hf_dir, adapter, want = tiny
    path = export_gguf(hf_dir, tmp_path / "m.gguf", adapter=adapter, out_type="f32", show_progress=False)
    assert gguf.GGUFReader(str(path)).fields["general.name"].contents() == f"hf + {adapter}"  # what it was made of
    back = convert_gguf(path, tmp_path / "back", progress=False)
    with torch.no_grad():
        assert (load_model(back)(IDS) - want).abs().max().item() < 1e-5
    ours, orig = load_tokenizer(back), load_tokenizer(hf_dir)
    for text in CORPUS + ["12345 mg/dL <|im_start|>user\nhi<|im_end|>"]:
        assert ours.encode(text) == orig.encode(text)
    msgs = [{"role": "user", "content": "chest pain?"}]
    assert ours.apply_chat_template(msgs, add_generation_prompt=True) == orig.apply_chat_template(
        msgs, add_generation_prompt=True)
    assert not list(tmp_path.glob(".m.gguf.tmp-*"))


def test_transformers_reads_the_export_as_the_merged_model(tiny, tmp_path):
    """transformers' GGUF loader, written apart from prefopt, undoes the q/k permutation and reads
    the metadata its own way: its logits are the merged model's."""
    transformers = pytest.importorskip("transformers")
    hf_dir, adapter, want = tiny
    export_gguf(hf_dir, tmp_path / "m.gguf", adapter=adapter, out_type="f32", show_progress=False)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="m.gguf", dtype=torch.float32)
    with torch.no_grad():
        assert (theirs.eval()(IDS).logits - want).abs().max().item() < 1e-4


@pytest.mark.parametrize("out_type, matrix, tolerance", [("f16", "F16", 5e-3), ("q8_0", "Q8_0", 0.1)])
def test_smaller_types_keep_norms_f32_and_stay_close(tiny, tmp_path, out_type, matrix, tolerance):
    hf_dir, adapter, want = tiny
    f32 = export_gguf(hf_dir, tmp_path / "f32.gguf", adapter=adapter, out_type="f32", show_progress=False)
    path = export_gguf(hf_dir, tmp_path / f"{out_type}.gguf", adapter=adapter, out_type=out_type, show_progress=False)
    types = _types(path)
    assert {types[n] for n in types if "norm" in n} == {"F32"}
    assert types["blk.0.attn_q.weight"] == matrix and types["token_embd.weight"] == matrix
    assert types["blk.0.ffn_down.weight"] == "F16"  # its rows (112) do not split into q8_0's blocks of 32
    assert path.stat().st_size < 0.6 * f32.stat().st_size
    with torch.no_grad():
        got = load_model(convert_gguf(path, tmp_path / "back", progress=False))(IDS)
    assert 0 < (got - want).abs().max().item() < tolerance * want.abs().max().item()  # as test_gguf's q8_0 import


def test_smollm2_export_matches_llama_cpps_own_file(smollm_dir, tmp_path):
    """Our import of llama.cpp's SmolLM2 file, exported again: the same metadata (tokens, types,
    merges, special ids, pre-tokenizer, chat template, hyper-parameters) and, tensor by tensor,
    the same names, shapes and values as the original's dequantized weights."""
    from tests.conftest import smollm_gguf_path

    out = export_gguf(smollm_dir, tmp_path / "smol.gguf", out_type="f32", show_progress=False)
    theirs, ours = gguf.GGUFReader(str(smollm_gguf_path())), gguf.GGUFReader(str(out))
    fields = [{k: f.contents() for k, f in r.fields.items() if not k.startswith(("GGUF.", "general."))}
              for r in (theirs, ours)]
    assert fields[0].keys() == fields[1].keys() and len(fields[0]) == 22
    for key in fields[0]:
        assert fields[0][key] == fields[1][key], key
    mine = {t.name: t for t in ours.tensors}
    assert sorted(mine) == sorted(t.name for t in theirs.tensors)
    for t in theirs.tensors:
        assert mine[t.name].shape.tolist() == t.shape.tolist()
        assert np.array_equal(gguf.quants.dequantize(t.data, t.tensor_type).reshape(-1),
                              np.asarray(mine[t.name].data, np.float32).reshape(-1)), t.name


def test_what_cannot_be_exported_is_refused_by_name(tmp_path):
    build_hf_model(tmp_path / "small", vocab_size=300)  # the tokenizer has ids up to 399
    with pytest.raises(UnsupportedModelError, match=r"token id 3\d\d has no row in the model's embedding \(300 rows\)"):
        export_gguf(tmp_path / "small", tmp_path / "s.gguf", show_progress=False)
    build_hf_model(tmp_path / "mlpbias", mlp_bias=True)
    with pytest.raises(UnsupportedModelError, match="biases on the attention or MLP"):
        export_gguf(tmp_path / "mlpbias", tmp_path / "b.gguf", show_progress=False)
    with pytest.raises(ValueError, match="GGUF type must be one of"):
        export_gguf(tmp_path / "small", tmp_path / "w.gguf", out_type="q4_0")
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".*tmp*"))


def test_cli_export_never_loses_a_file(tiny, tmp_path, capsys, monkeypatch):
    hf_dir, adapter, want = tiny
    out = tmp_path / "m.gguf"
    argv = ["export-gguf", "--model", str(hf_dir), "--adapter", str(adapter), "--output", str(out), "--type", "f32"]
    assert main(argv) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    first = out.read_bytes()
    assert main(argv) == 2 and "exists; pass --overwrite" in capsys.readouterr().err
    assert main([*argv[:-2], "--type", "q8_0", "--output", str(tmp_path)]) == 2
    assert "a folder; name the .gguf file" in capsys.readouterr().err

    def broken(*a):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("prefopt.convert.gguf_export._encode", broken)
    assert main([*argv, "--overwrite"]) == 2 and "No space left on device" in capsys.readouterr().err
    assert out.read_bytes() == first and not list(tmp_path.glob(".m.gguf.tmp-*"))  # the earlier file stays whole


@pytest.mark.parametrize("out_type, max_kl, min_agree", [("f16", 1e-4, 1.0), ("q8_0", 1e-2, 0.95)])
def test_smollm2_exported_smaller_predicts_as_the_full_model(smollm_dir, tmp_path, out_type, max_kl, min_agree):
    """On the real model, a clinical prompt: f16 and q8_0 change next-token distributions little
    (measured 2026-12-01: KL 3e-6 and 0.0023 nats a token, top token the same at 100% and 98%)."""
    tok = load_tokenizer(smollm_dir)
    ids = torch.tensor([tok.apply_chat_template([{"role": "user", "content": "A 67-year-old man has chest pain "
                                                  "radiating to the left arm. Urgency?"}], add_generation_prompt=True)])
    path = export_gguf(smollm_dir, tmp_path / "s.gguf", out_type=out_type, show_progress=False)
    with torch.no_grad():
        ref = load_model(smollm_dir)(ids).log_softmax(-1)
        got = load_model(convert_gguf(path, tmp_path / "back", progress=False))(ids).log_softmax(-1)
    kl = (ref.exp() * (ref - got)).sum(-1).mean().item()
    assert 0 < kl < max_kl
    assert (got.argmax(-1) == ref.argmax(-1)).float().mean().item() >= min_agree


def _tokenizer(out, style: str) -> None:
    """A small byte-level BPE in the style of GPT-2 (byte-level's own split), Llama 3 (its split
    regex, a BOS added to every text), Qwen2 or Tekken (their split regexes), with
    tokenizer_config.json."""
    import json

    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    from prefopt.convert.gguf_tokenizer import _LLAMA3_SPLIT, _QWEN2_SPLIT, _TEKKEN_SPLIT
    from tests._tiny import CHATML, SPECIALS

    tk = Tokenizer(models.BPE())
    regex = {"llama3": _LLAMA3_SPLIT, "qwen2": _QWEN2_SPLIT, "tekken": _TEKKEN_SPLIT}.get(style)
    if regex:
        tk.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(regex), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    else:
        tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=380, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(CORPUS * 20, trainer)
    tk.add_tokens([AddedToken("<note>", special=False, normalized=False)])  # a user-defined token
    bos = "<|begin_of_text|>"
    if style == "llama3":
        tk.post_processor = processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, tk.token_to_id(bos))])
    else:
        tk.post_processor = processors.ByteLevel(trim_offsets=False)
    tk.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": bos, "eos_token": "<|eot_id|>",
        "pad_token": "<|eot_id|>", "chat_template": CHATML}))


@pytest.mark.parametrize("style, pre", [("llama3", "llama-bpe"), ("gpt2", "gpt2"), ("qwen2", "qwen2"),
                                        ("tekken", "tekken")])
def test_other_tokenizer_styles_survive_export_and_import(tmp_path, style, pre):
    """Llama 3's split regex with a BOS on every text, GPT-2's plain byte-level split, Qwen2's
    (single digits) and Tekken's (case runs apart): named for llama.cpp as its converter names
    them, and read back to the same ids, BOS included."""
    build_hf_model(tmp_path / "hf", tokenizer=False)
    _tokenizer(tmp_path / "hf", style)
    path = export_gguf(tmp_path / "hf", tmp_path / "m.gguf", out_type="f32", show_progress=False)
    fields = gguf.GGUFReader(str(path)).fields
    assert fields["tokenizer.ggml.pre"].contents() == pre
    assert fields["tokenizer.ggml.add_bos_token"].contents() is (style == "llama3")
    types = fields["tokenizer.ggml.token_type"].contents()
    tokens = fields["tokenizer.ggml.tokens"].contents()
    assert types[tokens.index("<note>")] == 4 and types[tokens.index("<|eot_id|>")] == 3
    assert types[-1] == 5 and tokens[-1] == "[PAD399]"  # rows past the tokenizer: unused
    ours, orig = load_tokenizer(convert_gguf(path, tmp_path / "back", progress=False)), load_tokenizer(tmp_path / "hf")
    for text in CORPUS + ["I'll see 12345 mg/dL, they've <note> it\n\n  done", "don't  stop\r\n", "PatientHas BP"]:
        assert ours.encode(text) == orig.encode(text), text
    assert (orig.encode("a")[0] == orig.bos_token_id) is (style == "llama3")


def test_a_bf16_folder_is_exported_from_its_own_weights(tiny, tmp_path, monkeypatch):
    """A folder stored in bfloat16 loads as bfloat16 (half of float32's memory) and exports its
    values exactly (f32 holds every bf16 value)."""
    from prefopt import save_model
    from prefopt.pretrained import load_model as real_load

    hf_dir, _, _ = tiny
    save_model(load_model(hf_dir), tmp_path / "bf16", load_tokenizer(hf_dir), dtype=torch.bfloat16)
    loaded = []
    monkeypatch.setattr("prefopt.pretrained.load_model",
                        lambda *a, **k: loaded.append(k["dtype"]) or real_load(*a, **k))
    path = export_gguf(tmp_path / "bf16", tmp_path / "m.gguf", out_type="f32", show_progress=False)
    assert loaded == [torch.bfloat16]
    with torch.no_grad():
        want = load_model(tmp_path / "bf16")(IDS)  # the bf16 values, as float32
        assert torch.equal(load_model(convert_gguf(path, tmp_path / "back", progress=False))(IDS), want)


@pytest.mark.parametrize("tied", [False, True])
def test_qwen2_exports_as_its_own_architecture_and_transformers_reads_it(tmp_path, tied):
    """Qwen2 (q/k/v biases, no q/k permutation: llama.cpp's qwen2 reads HF's row order) read by
    transformers' GGUF loader: the same logits as prefopt's model, and its tokenizer from the
    file splits text as the source's does."""
    transformers = pytest.importorskip("transformers")
    build_hf_model(tmp_path / "hf", arch="qwen2", tokenizer=False, tie_word_embeddings=tied)
    _tokenizer(tmp_path / "hf", "qwen2")
    export_gguf(tmp_path / "hf", tmp_path / "q.gguf", out_type="f32", show_progress=False)
    reader = gguf.GGUFReader(str(tmp_path / "q.gguf"))
    assert reader.fields["general.architecture"].contents() == "qwen2"
    assert reader.fields["tokenizer.ggml.pre"].contents() == "qwen2"
    assert "blk.0.attn_q.bias" in {t.name for t in reader.tensors}
    assert ("output.weight" in {t.name for t in reader.tensors}) is not tied
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="q.gguf", dtype=torch.float32)
    with torch.no_grad():
        want = load_model(tmp_path / "hf")(IDS)
        assert (theirs.eval()(IDS).logits - want).abs().max().item() < 1e-4
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file="q.gguf")
    orig = load_tokenizer(tmp_path / "hf")
    back = convert_gguf(tmp_path / "q.gguf", tmp_path / "back", progress=False)  # and prefopt reads it back
    with torch.no_grad():
        assert (load_model(back)(IDS) - want).abs().max().item() < 1e-5
    ours = load_tokenizer(back)
    for text in CORPUS + ["I'll see 12345 mg/dL, they've it\n\n  done"]:
        assert tok(text, add_special_tokens=False)["input_ids"] == orig.encode(text) == ours.encode(text), text


def test_llama31_rope_scaling_is_exported_as_llama_cpp_s_rope_freqs(tmp_path):
    """Llama 3.1's RoPE scaling goes into the file as llama.cpp's converter writes it (the
    'rope_freqs' divisors, here against the test's own copy of that converter's loop) and comes
    back from prefopt's import with the source's logits over 200 positions."""
    from tests._tiny import llama_cpp_rope_freqs

    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    build_hf_model(tmp_path / "hf", max_position_embeddings=16384, rope_parameters=rope)
    path = export_gguf(tmp_path / "hf", tmp_path / "m.gguf", out_type="f32", show_progress=False)
    freqs = {t.name: t for t in gguf.GGUFReader(str(path)).tensors}["rope_freqs.weight"]
    want = llama_cpp_rope_freqs(rope, 16)
    assert np.allclose(np.asarray(freqs.data), want, rtol=1e-6) and want.max() == 8.0 and want.min() == 1.0
    long = torch.randint(0, 400, (1, 200), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = load_model(convert_gguf(path, tmp_path / "back", progress=False))(long)
        assert (got - load_model(tmp_path / "hf")(long)).abs().max().item() < 1e-4


def test_a_sliding_window_is_dropped_as_llama_cpp_drops_mistral_s_with_a_warning(tmp_path):
    """Mistral 7B v0.1 (BioMistral's base) has a 4096-token window; GGUF has none, and llama.cpp's
    converter drops it. So does the export, saying so: the model read back equals the source up to
    the window's length and attends further past it."""
    build_hf_model(tmp_path / "hf", arch="mistral", sliding_window=64, max_position_embeddings=512)
    with pytest.warns(UserWarning, match=r"sliding window \(64 tokens\) is dropped.*the same model up to 64 tokens"):
        path = export_gguf(tmp_path / "hf", tmp_path / "m.gguf", out_type="f32", show_progress=False)
    back = load_model(convert_gguf(path, tmp_path / "back", progress=False))
    source = load_model(tmp_path / "hf")
    assert back.config.sliding_window is None and source.config.sliding_window == 64
    long = torch.randint(0, 400, (1, 100), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got, want = back(long), source(long)
    assert (got[:, :64] - want[:, :64]).abs().max().item() < 1e-5  # within the window: the same model
    assert (got[:, 64:] - want[:, 64:]).abs().max().item() > 1e-3  # past it: attends further


def test_bf16_export_holds_a_bf16_model_exactly_in_half_of_f32(tiny, tmp_path):
    """--type bf16: a bfloat16 model's matrices as they are (f16 would round them: 3 fewer exponent
    bits, 3 more mantissa bits); imported back as bfloat16 (auto), the same logits bit for bit;
    transformers' GGUF loader reads it too."""
    from prefopt import save_model

    hf_dir, _, _ = tiny
    save_model(load_model(hf_dir), tmp_path / "src", load_tokenizer(hf_dir), dtype=torch.bfloat16)
    path = export_gguf(tmp_path / "src", tmp_path / "m.gguf", out_type="bf16", show_progress=False)
    kinds = _types(path)
    assert kinds["blk.0.attn_q.weight"] == "BF16" and kinds["blk.0.attn_norm.weight"] == "F32"
    assert gguf.GGUFReader(str(path)).fields["general.file_type"].contents() == 32  # MOSTLY_BF16
    f16 = export_gguf(tmp_path / "src", tmp_path / "h.gguf", out_type="f16", show_progress=False)
    assert abs(path.stat().st_size - f16.stat().st_size) < 4096
    back = convert_gguf(path, tmp_path / "back", progress=False)
    with torch.no_grad():
        want = load_model(tmp_path / "src")(IDS)
        assert torch.equal(load_model(back)(IDS), want)
        assert not torch.equal(load_model(convert_gguf(f16, tmp_path / "h", progress=False))(IDS), want)
    transformers = pytest.importorskip("transformers")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="m.gguf", dtype=torch.float32)
    with torch.no_grad():
        assert (theirs.eval()(IDS).logits - want).abs().max().item() < 1e-4


def test_the_command_offers_every_type_the_exporter_writes():
    from prefopt.cli import build_parser
    from prefopt.convert.gguf_export import TYPES

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["export-gguf"]
    assert next(a for a in sub._actions if a.dest == "type").choices == TYPES


@pytest.mark.parametrize("arch, gguf_arch", [("mixtral", "llama"), ("qwen3_moe", "qwen3moe"), ("qwen2_moe", "qwen2moe")])
def test_a_mixture_of_experts_exports_with_its_experts_stacked(arch, gguf_arch, tmp_path):
    """Each layer's experts as llama.cpp stores them, one ``(E, out, in)`` tensor per projection,
    the router f32 (also in a q8_0 file), the expert counts in the metadata, every tensor under a
    name llama.cpp knows; with an adapter on the attention and on the experts' tensors (PEFT's
    target_parameters) merged in, the file imports back to the merged model's logits. (transformers' GGUF loader is no independent reader here: it has no
    Mixtral, and for qwen3moe reads neither the experts' width nor their renormalisation.)"""
    extra = {"mlp_only_layers": []} if arch in ("qwen3_moe", "qwen2_moe") else {}
    build_hf_model(tmp_path / "hf", arch=arch, tie_word_embeddings=False, **extra)
    # attention (Qwen2-MoE: and shared expert) adapted by name, every expert's gate_up and down tensors too
    model = apply_lora(load_model(tmp_path / "hf"), r=4, alpha=8, dropout=0.0,
                       target_parameters=("gate_up_proj", "down_proj"))
    assert sum(".expert_adapters." in n for n, _ in lora_layers(model)) == 4
    randomize_lora(model)
    save_adapter(model, tmp_path / "adapter", base_model=str(tmp_path / "hf"))
    with torch.no_grad():  # the weights the export holds: the adapter folded in once
        want = load_model(tmp_path / "hf", adapter=tmp_path / "adapter", merge=True)(IDS)
        assert (want - model(IDS)).abs().max() < 1e-4 and (want - load_model(tmp_path / "hf")(IDS)).abs().max() > 1e-2
    path = export_gguf(tmp_path / "hf", tmp_path / "m.gguf", adapter=tmp_path / "adapter", out_type="f32",
                       show_progress=False)
    reader = gguf.GGUFReader(str(path))
    fields = {k: f.contents() for k, f in reader.fields.items() if k.startswith(gguf_arch + ".expert")}
    assert fields[f"{gguf_arch}.expert_count"] == 4 and fields[f"{gguf_arch}.expert_used_count"] == 2
    shapes = {t.name: tuple(int(d) for d in reversed(t.shape.tolist())) for t in reader.tensors}
    assert shapes["blk.1.ffn_gate_exps.weight"] == (4, 32, 64) and shapes["blk.1.ffn_down_exps.weight"] == (4, 64, 32)
    assert shapes["blk.0.ffn_gate_inp.weight"] == (4, 64) and not any(".experts." in n for n in shapes)
    # every tensor under a name llama.cpp's own table has for the architecture (gguf-py's MODEL_TENSORS)
    if arch == "qwen2_moe":  # the shared expert, and its gate as a vector (llama.cpp's {n_embd})
        assert fields["qwen2moe.expert_shared_feed_forward_length"] == 96
        assert shapes["blk.0.ffn_up_shexp.weight"] == (96, 64) and shapes["blk.1.ffn_gate_inp_shexp.weight"] == (64,)
    kind = {"llama": gguf.MODEL_ARCH.LLAMA, "qwen3moe": gguf.MODEL_ARCH.QWEN3MOE,
            "qwen2moe": gguf.MODEL_ARCH.QWEN2MOE}[gguf_arch]
    known = {gguf.TENSOR_NAMES[t].format(bid=b) + suffix for t in gguf.MODEL_TENSORS[kind] for b in range(2)
             for suffix in (".weight", *((".bias",) if arch == "qwen2_moe" else ()))}  # q/k/v biases
    assert set(shapes) <= known, set(shapes) - known
    back = convert_gguf(path, tmp_path / "back", progress=False)
    with torch.no_grad():
        assert (load_model(back)(IDS) - want).abs().max().item() < 1e-5
    small = _types(export_gguf(tmp_path / "hf", tmp_path / "q.gguf", out_type="q8_0", show_progress=False))
    assert small["blk.0.ffn_gate_inp.weight"] == "F32" and small["blk.0.ffn_up_exps.weight"] == "Q8_0"
    if arch == "qwen2_moe":
        assert small["blk.0.ffn_gate_inp_shexp.weight"] == "F32" and small["blk.0.ffn_up_shexp.weight"] == "Q8_0"


def test_a_mixture_of_experts_llama_cpp_cannot_hold_is_refused(tmp_path):
    build_hf_model(tmp_path / "q2", arch="qwen2_moe")  # layer 1 a dense MLP: llama.cpp's qwen2moe has none
    with pytest.raises(UnsupportedModelError, match="llama.cpp's qwen2moe makes every layer a mixture of experts whose "
                                                    "top-k weights are not renormalised"):
        export_gguf(tmp_path / "q2", tmp_path / "q2.gguf", show_progress=False)
    build_hf_model(tmp_path / "dense", arch="qwen3_moe")  # layer 1 a dense MLP: llama.cpp's qwen3moe has none
    with pytest.raises(UnsupportedModelError, match="llama.cpp's qwen3moe makes every layer a mixture of experts"):
        export_gguf(tmp_path / "dense", tmp_path / "d.gguf", show_progress=False)


def test_named_chat_templates_are_exported_as_llama_cpp_names_them(tmp_path):
    """A tokenizer with named templates (Hermes: default and tool_use): the default becomes
    tokenizer.chat_template and each other its own tokenizer.chat_template.NAME, as llama.cpp's
    converter writes them; the import reads them all back."""
    import json

    from tests._tiny import CHATML

    build_hf_model(tmp_path / "hf")
    cfg_path = tmp_path / "hf" / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["chat_template"] = [{"name": "tool_use", "template": "TOOLS " + CHATML}, {"name": "default", "template": CHATML}]
    cfg_path.write_text(json.dumps(cfg))
    path = export_gguf(tmp_path / "hf", tmp_path / "m.gguf", out_type="f32", show_progress=False)
    fields = gguf.GGUFReader(str(path)).fields
    assert fields["tokenizer.chat_template"].contents() == CHATML
    assert fields["tokenizer.chat_template.tool_use"].contents() == "TOOLS " + CHATML
    assert fields["tokenizer.chat_templates"].contents() == ["tool_use"]
    back = load_tokenizer(convert_gguf(path, tmp_path / "back", progress=False))
    assert back.chat_template == CHATML and back.named_templates == {"default": CHATML, "tool_use": "TOOLS " + CHATML}
