"""Tiny random models and tokenizers that the tests build themselves."""
from __future__ import annotations

import json
from pathlib import Path

import torch

CORPUS = [
    "The patient is a 54-year-old man with chest pain and shortness of breath.",
    "She reports fever, cough and fatigue for three days; temperature 38.9 C.",
    "Triage: urgent. Route to the on-call nurse. Blood pressure 150/90, heart rate 112.",
    "Question: what is the most likely diagnosis? Answer: community-acquired pneumonia.",
    "hello world, the quick brown fox jumps over the lazy dog",
]
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>", "<|eot_id|>",
            "<|start_header_id|>", "<|end_header_id|>"]
CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# ChatML for a model that reasons first, with a switch to answer at once (as Qwen3's templates have): a trained
# answer follows an empty reasoning block; with enable_thinking false the generation prompt holds that block too
THINKING = (
    "{% for m in messages %}{% if m['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\\n' + ('<think>\\n\\n</think>\\n\\n' if loop.last else '')"
    " + m['content'].split('</think>')[-1].lstrip('\\n') + '<|im_end|>\\n' }}"
    "{% else %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{% if enable_thinking is defined and enable_thinking is false %}{{ '<think>\\n\\n</think>\\n\\n' }}"
    "{% endif %}{% endif %}"
)
# DeepSeek-R1's way: the generation prompt opens a reasoning block, and a finished assistant turn keeps only the
# text after its reasoning, with no block; a tokenizer with bos "<|begin_of_text|>" and eos "<|eot_id|>" suits it
R1_STYLE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}{{ '<|start_header_id|>' + m['content'] }}"
    "{% elif m['role'] == 'assistant' %}{{ '<|end_header_id|>' + m['content'].split('</think>')[-1] + eos_token }}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|end_header_id|><think>\\n' }}{% endif %}"
)
# Llama 3 style: bos_token variable, trim filter, whitespace control, indentation, raise_exception
LLAMA3 = """{{- bos_token }}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "You are a careful clinical assistant." %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" + system_message + "<|eot_id|>" }}
{%- for message in messages %}
    {%- if message['role'] not in ['user', 'assistant'] %}
        {{- raise_exception('unknown role ' + message['role']) }}
    {%- endif %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

# Llama 3.1 style: today's date in every system prompt, from strftime_now unless date_string is given
LLAMA31 = LLAMA3.replace("""{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" + system_message""", """\
{%- if not date_string is defined %}
    {%- if strftime_now is defined %}
        {%- set date_string = strftime_now("%d %b %Y") %}
    {%- else %}
        {%- set date_string = "26 Jul 2024" %}
    {%- endif %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\nToday Date: " + date_string + "\\n\\n" + system_message""")
assert LLAMA31 != LLAMA3


def build_tokenizer(out: Path, *, template: str = CHATML, vocab_size: int = 400,
                    bos="<|im_start|>", eos="<|im_end|>") -> Path:
    """Train a small byte-level BPE and write tokenizer.json + tokenizer_config.json."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tk.decoder = decoders.ByteLevel()
    tk.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator(CORPUS * 20, trainer)
    out.mkdir(parents=True, exist_ok=True)
    tk.save(str(out / "tokenizer.json"))
    cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": bos, "eos_token": eos,
           "pad_token": eos, "unk_token": "<|endoftext|>", "chat_template": template,
           "clean_up_tokenization_spaces": False}
    (out / "tokenizer_config.json").write_text(json.dumps(cfg))
    return out


LLAMA2_CHAT = ("{% for m in messages %}{% if m['role'] == 'user' %}{{ bos_token + '[INST] ' + m['content'] + ' [/INST]' }}"
               "{% else %}{{ ' ' + m['content'] + ' ' + eos_token }}{% endif %}{% endfor %}")
SPM_BYTES = [f"<0x{b:02X}>" for b in range(256)]


def build_spm_tokenizer(out: Path, *, vocab_size: int = 480) -> Path:
    """Train a small SentencePiece-style BPE as Llama 2's ``tokenizer.json`` has it (``<unk>``,
    ``<s>``, ``</s>``, the 256 ``<0xXX>`` byte pieces, then pieces that never span two words;
    spaces as ``▁``, one put before each stretch of text, bytes falling back to the byte pieces,
    a BOS on every text) and write it with tokenizer_config.json."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    def spm(vocab=None, merges=None):
        tk = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True))
        tk.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
        return tk

    trainee = spm()  # trained with a split at each "▁" so that no piece spans two words, as SentencePiece's
    trainee.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="never", split=True)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"] + SPM_BYTES,
                                  show_progress=False)
    trainee.train_from_iterator(CORPUS * 20, trainer)
    model = json.loads(trainee.to_str())["model"]
    tk = spm(model["vocab"], [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]])
    tk.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                    decoders.Strip(" ", 1, 0)])
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ("<unk>", "<s>", "</s>")])
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                      special_tokens=[("<s>", 1)])
    out.mkdir(parents=True, exist_ok=True)
    tk.save(str(out / "tokenizer.json"))
    cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
           "unk_token": "<unk>", "chat_template": LLAMA2_CHAT, "clean_up_tokenization_spaces": False}
    (out / "tokenizer_config.json").write_text(json.dumps(cfg))
    return out


def hf_config(arch: str = "llama", **overrides):
    """A tiny transformers config of the given family."""
    import transformers

    base = dict(vocab_size=400, hidden_size=64, intermediate_size=112, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, pad_token_id=2, initializer_range=0.2)
    cls = {"llama": transformers.LlamaConfig, "mistral": transformers.MistralConfig,
           "qwen2": transformers.Qwen2Config, "qwen3": transformers.Qwen3Config,
           "smollm3": transformers.SmolLM3Config, "gemma3": transformers.Gemma3TextConfig,
           "qwen3_moe": transformers.Qwen3MoeConfig, "mixtral": transformers.MixtralConfig,
           "qwen2_moe": transformers.Qwen2MoeConfig, "olmoe": transformers.OlmoeConfig,
           "phi3": transformers.Phi3Config, "olmo2": transformers.Olmo2Config,
           "granite": transformers.GraniteConfig}[arch]
    if arch == "qwen3_moe":  # layer 0 a mixture of 4 experts (2 a token), layer 1 a dense MLP
        base.update(head_dim=16, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, norm_topk_prob=True,
                    decoder_sparse_step=1, mlp_only_layers=[1])
    if arch == "qwen2_moe":  # layer 0 a mixture of 4 experts (2 a token) and a shared expert, layer 1 a dense MLP
        base.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, shared_expert_intermediate_size=96,
                    norm_topk_prob=False, decoder_sparse_step=1, mlp_only_layers=[1])
    if arch == "olmoe":  # every layer a mixture of 4 experts of intermediate_size, 2 a token, not renormalised
        base.update(num_experts=4, num_experts_per_tok=2, intermediate_size=32, norm_topk_prob=False)
    if arch == "mixtral":  # every layer a mixture of 4 experts, 2 a token
        base.update(num_local_experts=4, num_experts_per_tok=2, intermediate_size=32, sliding_window=None)
    if arch == "qwen3":
        base["head_dim"] = 16  # transformers' default is 128
    if arch == "mistral":
        base["sliding_window"] = None
    if arch == "granite":  # its multipliers, as Granite 3's config.json sets them (the attention's: 1/hd)
        base.update(embedding_multiplier=12.0, residual_multiplier=0.22, attention_multiplier=0.0625,
                    logits_scaling=8.0)
    if arch == "phi3":  # LongRoPE from a pretrained context of 16 (so a 29-token test takes the long factors)
        base.update(original_max_position_embeddings=16, rope_scaling={
            "rope_type": "longrope", "short_factor": [1.0 + 0.15 * i for i in range(8)],
            "long_factor": [1.5 + 0.4 * i for i in range(8)]})
    if arch == "smollm3":  # four layers, the last without RoPE (transformers' default: every fourth)
        base.update(num_hidden_layers=4, tie_word_embeddings=True)
    if arch == "gemma3":  # one sliding layer (window 4, local RoPE base) and one full one (linear scaling)
        base.update(head_dim=16, query_pre_attn_scalar=24, sliding_window=4, hidden_activation="gelu_pytorch_tanh",
                    layer_types=["sliding_attention", "full_attention"], tie_word_embeddings=True,
                    rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                                     "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6}})
    base.update(overrides)
    return cls(**base)


def build_hf_model(out: Path, arch: str = "llama", seed: int = 0, tokenizer: bool = True, **overrides):
    """Save a tiny random transformers model (and tokenizer) to ``out``; return the HF model."""
    import transformers

    torch.manual_seed(seed)
    cfg = hf_config(arch, **overrides)
    model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    with torch.no_grad():  # make biases and norms non-trivial so a dropped term shows
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.copy_(1.0 + 0.3 * torch.randn_like(p) if "norm" in name else 0.3 * torch.randn_like(p))
            if name.endswith("mlp.gate.weight"):  # a router: clear preferences, so a wrong pick shows
                p.copy_(torch.randn_like(p))
    model.save_pretrained(out)
    if tokenizer:
        build_tokenizer(out)
    return model


def write_tiny_gguf(hf_dir: Path, path: Path, qtype: str = "F32", pre: str = "smollm", spm_scores: bool = True,
                    rope_scaling: str | None = None, experts: int = 0, add_bos: bool | None = False,
                    gemma_pattern: bool = False, gemma_scale: bool = False) -> Path:
    """Write ``hf_dir`` (a tiny llama, qwen2/3, smollm3 or gemma3 saved by :func:`build_hf_model`) as a
    llama.cpp GGUF file of that architecture, permuting llama's (and smollm3's) q/k rows the way llama.cpp's
    converter does
    (its qwen2 and gemma3 keep HF's order; gemma3's tensors named by gguf's own TensorNameMap, its
    norms stored as 1 + w, and only what its converter writes: ``gemma_pattern`` adds a per-layer
    sliding flag, ``gemma_scale`` the query scale) and quantizing 2-D weights to ``qtype``. A SentencePiece
    tokenizer goes in as llama.cpp writes one from ``tokenizer.model`` (``spm_scores``: scores,
    no merges) or from ``tokenizer.json`` alone (scores all -1000, and here the merges kept).
    ``add_bos``: a byte-level file's ``tokenizer.ggml.add_bos_token`` (None: the key left out)."""
    import gguf
    import numpy as np
    from safetensors.torch import load_file

    from prefopt.convert.gguf import permute_qk

    cfg = json.loads((hf_dir / "config.json").read_text())
    tok = json.loads((hf_dir / "tokenizer.json").read_text())
    tcfg = json.loads((hf_dir / "tokenizer_config.json").read_text())
    arch = {"mixtral": "llama", "qwen3_moe": "qwen3moe", "qwen2_moe": "qwen2moe"}.get(cfg["model_type"], cfg["model_type"])
    gemma = arch == "gemma3_text"
    w = gguf.GGUFWriter(str(path), "gemma3" if gemma else arch)
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    rope = cfg.get("rope_parameters") or {}
    rope = rope.get("full_attention", rope)  # Gemma 3's: the full layers' base (the sliding ones' is implied)
    w.add_rope_freq_base(rope.get("rope_theta", 10000.0))
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    w.add_rope_dimension_count(head_dim)
    if head_dim != cfg["hidden_size"] // cfg["num_attention_heads"] or gemma:  # Mistral NeMo: 128, not 5120 / 32
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    if gemma:
        w.add_sliding_window(cfg["sliding_window"])
        if rope.get("rope_type") == "linear":
            w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            w.add_rope_scaling_factor(rope["factor"])
        if gemma_pattern:
            w.add_sliding_window_pattern([t == "sliding_attention" for t in cfg["layer_types"]])
        if gemma_scale:
            w.add_float32("gemma3.attention.scale", cfg["query_pre_attn_scalar"] ** -0.5)
    w.add_vocab_size(cfg["vocab_size"])
    if experts:  # expert metadata alone, on a dense model's tensors
        w.add_expert_count(experts)
        w.add_expert_used_count(2)
    if cfg["model_type"] in ("mixtral", "qwen3_moe", "qwen2_moe"):  # as llama.cpp writes Mixtral (llama), qwen3moe
        w.add_expert_count(cfg.get("num_local_experts") or cfg["num_experts"])  # and qwen2moe
        w.add_expert_used_count(cfg["num_experts_per_tok"])
        if arch in ("qwen3moe", "qwen2moe"):
            w.add_expert_feed_forward_length(cfg["moe_intermediate_size"])
        if arch == "qwen2moe":
            w.add_expert_shared_feed_forward_length(cfg["shared_expert_intermediate_size"])
    if rope_scaling:  # as llama.cpp's converter writes a config's rope_scaling type (e.g. "yarn")
        w.add_rope_scaling_type(gguf.RopeScalingType(rope_scaling))
        w.add_rope_scaling_factor(4.0)
    vocab = sorted(tok["model"]["vocab"].items(), key=lambda kv: kv[1])
    vocab += [(a["content"], a["id"]) for a in tok["added_tokens"] if a["content"] not in tok["model"]["vocab"]]
    vocab.sort(key=lambda kv: kv[1])
    tokens = [t for t, _ in vocab] + [f"<unused{i}>" for i in range(cfg["vocab_size"] - len(vocab))]
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    if tok["model"].get("byte_fallback"):  # SentencePiece, as llama.cpp writes Llama 2's: scores, no merges
        _write_spm_vocab(w, tokens, merges, spm_scores)
    else:
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(pre)
        w.add_token_list(tokens)
        w.add_token_types([3 if t in SPECIALS else 1 for t in tokens])
        w.add_token_merges(merges)
        w.add_pad_token_id(tokens.index(tcfg["pad_token"]))
        if add_bos is not None:
            w.add_add_bos_token(add_bos)
    w.add_bos_token_id(tokens.index(tcfg["bos_token"]))
    w.add_eos_token_id(tokens.index(tcfg["eos_token"]))
    w.add_chat_template(tcfg["chat_template"])
    rope = cfg.get("rope_parameters") or {}
    if rope.get("rope_type") == "llama3":
        w.add_tensor("rope_freqs.weight", llama_cpp_rope_freqs(rope, head_dim))
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    layer = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_norm": "attn_q_norm",
             "self_attn.k_norm": "attn_k_norm", "self_attn.q_proj": "attn_q",
             "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
             "mlp.shared_expert.gate_proj": "ffn_gate_shexp", "mlp.shared_expert.up_proj": "ffn_up_shexp",
             "mlp.shared_expert.down_proj": "ffn_down_shexp", "mlp.shared_expert_gate": "ffn_gate_inp_shexp"}
    gemma_names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GEMMA3, cfg["num_hidden_layers"]) if gemma else None
    stacked: dict[str, dict[int, torch.Tensor]] = {}  # a mixture of experts' projections, stacked per layer
    leaves = {"w1": "gate", "w3": "up", "w2": "down", "gate_proj": "gate", "up_proj": "up", "down_proj": "down"}
    for name, t in load_file(hf_dir / "model.safetensors").items():
        parts = name.split(".")
        if ".experts." in name:  # model.layers.N.<mlp|block_sparse_moe>.experts.E.<leaf>.weight
            stacked.setdefault(f"blk.{parts[2]}.ffn_{leaves[parts[6]]}_exps.weight", {})[int(parts[5])] = t
            continue
        if name.endswith((".mlp.gate.weight", ".block_sparse_moe.gate.weight")):  # the router
            w.add_tensor(f"blk.{parts[2]}.ffn_gate_inp.weight", np.ascontiguousarray(t.float().numpy()))
            continue
        if name.endswith(".mlp.shared_expert_gate.weight"):  # Qwen2-MoE's: a vector of hidden_size in F32,
            w.add_tensor(f"blk.{parts[2]}.ffn_gate_inp_shexp.weight", t.float().reshape(-1).numpy())  # as llama.cpp's
            continue
        if gemma:  # the converter's own names; its norms stored as 1 + w
            gname = gemma_names.get_name(name, try_suffixes=(".weight",))
            t = t + 1.0 if name.endswith("norm.weight") else t
        elif name in names:
            gname = names[name]
        else:
            parts = name.split(".")  # model.layers.N.<module>.<leaf>.weight
            gname = f"blk.{parts[2]}.{layer['.'.join(parts[3:-1])]}.{parts[-1]}"
        if arch in ("llama", "smollm3") and name.endswith("q_proj.weight"):
            t = permute_qk(t, cfg["num_attention_heads"])
        elif arch in ("llama", "smollm3") and name.endswith("k_proj.weight"):
            t = permute_qk(t, cfg["num_key_value_heads"])
        arr = t.float().numpy()
        if t.ndim == 2 and qtype != "F32":
            q = gguf.GGMLQuantizationType[qtype]
            w.add_tensor(gname, gguf.quants.quantize(arr, q), raw_dtype=q)
        else:
            w.add_tensor(gname, np.ascontiguousarray(arr))
    for gname, by_expert in stacked.items():  # (E, out, in), experts in order
        arr = torch.stack([by_expert[e] for e in sorted(by_expert)]).float().numpy()
        if qtype != "F32":
            q = gguf.GGMLQuantizationType[qtype]
            w.add_tensor(gname, gguf.quants.quantize(arr, q), raw_dtype=q)
        else:
            w.add_tensor(gname, np.ascontiguousarray(arr))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def assert_reads_as_transformers(ours, path: Path, ids: torch.Tensor, source=None) -> None:
    """``ours`` (imported from the GGUF file ``path``) gives the logits transformers' own GGUF
    loader gives for it, an independent reading of the file, and, with ``source`` (the
    transformers model the file was written from, unquantized), that model's (< 1e-4 each).
    Skips the test where transformers is missing."""
    import pytest

    transformers = pytest.importorskip("transformers")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    with torch.no_grad():
        got = ours(ids)
        assert (got - theirs.eval()(ids).logits).abs().max().item() < 1e-4
        if source is not None:
            assert (got - source(ids).logits).abs().max().item() < 1e-4


def llama_cpp_rope_freqs(rope: dict, dim: int):
    """What llama.cpp's converter stores for Llama 3.1's RoPE scaling: a divisor per frequency (1
    where the wavelength is under original context / high_freq_factor, factor where it is over
    original context / low_freq_factor, a blend of the inverse between), in float32."""
    import math

    import numpy as np

    factor, lo, hi = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
    old = rope["original_max_position_embeddings"]
    out = []
    for i in range(0, dim, 2):
        wavelen = 2 * math.pi * rope["rope_theta"] ** (i / dim)
        if wavelen < old / hi:
            out.append(1.0)
        elif wavelen > old / lo:
            out.append(factor)
        else:
            smooth = (old / wavelen - lo) / (hi - lo)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def _write_spm_vocab(w, tokens: list[str], merges: list[str], scored: bool = True) -> None:
    """A SentencePiece vocabulary as llama.cpp's converter writes it: each piece's score (a
    merged piece's is minus its merge's rank, so earlier merges score higher; single characters
    below them all; special and byte pieces 0), its type (2 unknown, 3 control, 6 byte, 1 normal),
    ``<unk>``'s id, a BOS on every text and a space before it."""
    rank = {m.replace(" ", ""): k for k, m in enumerate(merges)}
    types = [2 if t == "<unk>" else 3 if t in ("<s>", "</s>") else 6 if t in SPM_BYTES else 1 for t in tokens]
    scores = [0.0 if k != 1 else -float(rank.get(t, len(merges) + i)) for i, (t, k) in enumerate(zip(tokens, types))]
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores if scored else [-1000.0] * len(tokens))
    if not scored:
        w.add_token_merges(merges)
    w.add_token_types(types)
    w.add_unk_token_id(tokens.index("<unk>"))
    w.add_add_bos_token(True)
    w.add_add_space_prefix(True)


def peft_lora(base_dir: Path, out: Path | None = None, **config):
    """A PEFT model on ``base_dir``'s transformers model with a random (non-zero) LoRA adapter of
    ``config`` (``peft.LoraConfig``'s keywords; r 4, alpha 8, no dropout unless given), in eval
    mode; saved to ``out`` where given. Skips the test where peft or transformers is missing."""
    import pytest

    peft = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    model = peft.get_peft_model(hf, peft.LoraConfig(**{"r": 4, "lora_alpha": 8, "lora_dropout": 0.0,
                                                       "init_lora_weights": False, **config})).eval()
    if out is not None:
        model.save_pretrained(out)
    return model


def randomize_lora(model, seed: int = 1) -> None:
    """Give every LoRA layer's B a random (non-zero) value: a fresh adapter is a no-op, so what an
    adapter changes would not show."""
    from prefopt.lora import lora_layers

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, m in lora_layers(model):
            m.lora_B.weight.copy_(torch.randn(m.lora_B.weight.shape, generator=g) * 0.1)


def save_random_adapter(model_dir, folder, seed: int = 1):
    """A small LoRA adapter (r 2 on q_proj and v_proj, B random by ``seed``) for the tiny model in
    ``model_dir``, saved in ``folder`` (again, where it holds one: a retrained adapter in place)."""
    from prefopt import apply_lora, load_model, save_adapter

    model = apply_lora(load_model(str(model_dir)), r=2, alpha=4, dropout=0.0, target_modules=["q_proj", "v_proj"])
    randomize_lora(model, seed)
    return save_adapter(model, folder, base_model=str(model_dir))
