"""Import a llama.cpp GGUF file into an HF-layout folder (needs the ``gguf`` extra).

Architectures: ``llama`` (Llama 2/3, Mistral, SmolLM2, as llama.cpp's converter writes them;
with ``expert_count``, Mixtral), ``qwen2`` (Qwen2/2.5: q/k/v biases, rows in HF's order), ``qwen3``
(q/k norms, no biases, HF's order), ``qwen3moe`` (Qwen3-MoE), ``qwen2moe`` (Qwen1.5-MoE, Qwen2-57B-A14B:
a shared expert too) and ``gemma3`` (Gemma 3, MedGemma:
``gguf_gemma``). A mixture of experts' stacked ``ffn_*_exps`` tensors are split into one weight
per expert, under the checkpoint's names. What it does:
- reads the model hyper-parameters from the GGUF metadata into ``config.json``;
- dequantizes every tensor (Q4_0/Q4_1/Q8_0/K-quants... via ``gguf.quants``) to float;
- for ``llama``, undoes llama.cpp's q/k row permutation, which reorders each head's rows from
  HF's rotate-half RoPE layout into interleaved pairs (``qwen2`` files keep HF's order);
- renames tensors to HF names (``blk.3.attn_q.weight`` → ``model.layers.3.self_attn.q_proj.weight``);
- reads Llama 3.1's RoPE scaling back from the ``rope_freqs`` tensor (``gguf_rope``);
- rebuilds ``tokenizer.json`` (byte-level or SentencePiece BPE) and ``tokenizer_config.json``
  (special tokens, chat template) from the ``tokenizer.ggml.*`` metadata (``gguf_tokenizer``).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from .._deps import progress, require
from ..fileio import read_json
from ..model.checkpoint import write_config_files
from ..model.config import SUPPORTED_ARCHITECTURES, ModelConfig, UnsupportedModelError, no_rope_every
from ..model.safetensors_io import ShardWriter
from . import gguf_gemma
from .gguf_rope import llama3_scaling
from .gguf_tokenizer import write_tokenizer

_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",  # Qwen3
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "ffn_gate_shexp": "mlp.shared_expert.gate_proj",  # Qwen2-MoE's shared expert and its gate
    "ffn_up_shexp": "mlp.shared_expert.up_proj",
    "ffn_down_shexp": "mlp.shared_expert.down_proj",
    "ffn_gate_inp_shexp": "mlp.shared_expert_gate",
}
_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
EXACT_UP_TO = 1_000_000_000  # parameters: a quantized file imports to float32 (exact) up to this, bfloat16 past it
# GGUF architecture -> prefopt model_type
_ARCHITECTURES = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "qwen3moe": "qwen3_moe", "qwen2moe": "qwen2_moe",
                  "smollm3": "smollm3", "gemma3": "gemma3_text"}
# a mixture of experts' tensors: its router, and each projection of every expert stacked (E, out, in)
_EXPERTS = re.compile(r"blk\.(\d+)\.ffn_(gate|up|down)_exps\.weight")
_ROUTER = re.compile(r"blk\.(\d+)\.ffn_gate_inp\.weight")
_QWEN_EXPERT = {"gate": "gate_proj", "up": "up_proj", "down": "down_proj"}
_EXPERT_LEAVES = {"mixtral": {"gate": "w1", "up": "w3", "down": "w2"}, "qwen3_moe": _QWEN_EXPERT, "qwen2_moe": _QWEN_EXPERT}
# llama.cpp's smollm3 leaves RoPE out of every 4th layer, a fixed step (the released SmolLM3's)
SMOLLM3_NO_ROPE_STEP = 4


def convert_gguf(gguf_path: str | Path, out_dir: str | Path, *, dtype: torch.dtype | str = "auto",
                 progress: bool = True) -> Path:
    """Write an HF-layout folder for ``gguf_path`` into ``out_dir`` and return it.

    Args:
        gguf_path: a llama.cpp GGUF file of the ``llama`` or ``qwen2`` architecture.
        out_dir: the folder to write (created).
        dtype: dtype of the saved weights, or ``"auto"`` (:func:`import_dtype`): the matrices' own
            float type for an unquantized file; for a quantized one float32, which keeps the
            dequantized values exact, up to a billion parameters, bfloat16 past that.
    """
    gguf = require("gguf", "importing a GGUF file")
    if not Path(gguf_path).is_file():
        raise FileNotFoundError(f"{gguf_path}: no such GGUF file")
    try:
        reader = gguf.GGUFReader(str(gguf_path))
    except ValueError as e:  # gguf says "GGUF magic invalid", naming no file
        raise ValueError(f"{gguf_path}: not a GGUF file, or a damaged one ({e})") from None
    meta = _Metadata(reader, gguf_path)
    if dtype == "auto":
        dtype = import_dtype(gguf, reader)
    names = {t.name: t for t in reader.tensors}
    freqs = names.get("rope_freqs.weight")  # Llama 3.1's RoPE scaling, as llama.cpp stores it
    cfg = _config(meta, tied="output.weight" not in names,
                  rope_freqs=None if freqs is None else np.asarray(_dequantize(gguf, freqs), dtype=np.float32))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    writer = ShardWriter(out)
    tensors = reader.tensors
    bar = _bar(tensors, progress)
    permuted = cfg.model_type in ("llama", "smollm3", "mixtral")  # llama.cpp's qwen2/3 and gemma3 keep HF's q/k rows
    for t in bar:
        experts = _EXPERTS.fullmatch(t.name) if cfg.num_experts else None
        router = _ROUTER.fullmatch(t.name) if cfg.num_experts else None
        moe = experts or router  # a tensor _moe_tensors splits or renames
        if cfg.num_experts and not moe and re.fullmatch(r"blk\.\d+\.ffn_(gate|up|down)\..*", t.name):
            raise UnsupportedModelError(f"{gguf_path}: tensor {t.name!r}: a mixture of experts ({cfg.num_experts} "
                                        "experts) written with a dense MLP or one tensor per expert (an early "
                                        "llama.cpp layout), which prefopt does not read; convert the model again with "
                                        "a current llama.cpp")
        name = None if moe else _hf_name(t.name, gguf_path, gguf_gemma.LAYER_NAMES if cfg.gemma else _LAYER_NAMES)
        if name is None and not moe:
            continue
        w = _values(gguf, t, cfg.gemma)
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))  # GGUF lists dims innermost first
        if tuple(w.shape) != shape:
            raise ValueError(f"{gguf_path}: tensor {t.name!r} dequantized to {tuple(w.shape)}, expected {shape}")
        if moe:
            for hf_name, part in _moe_tensors(cfg, experts, router, w):
                writer.add(hf_name, part.to(dtype))
            continue
        if name.endswith("shared_expert_gate.weight"):  # llama.cpp reads it as a vector of hidden_size
            w = w.reshape(1, cfg.hidden_size)
        if permuted and name.endswith("self_attn.q_proj.weight"):
            w = unpermute_qk(w, cfg.num_attention_heads)
        elif permuted and name.endswith("self_attn.k_proj.weight"):
            w = unpermute_qk(w, cfg.num_key_value_heads)
        writer.add(name, w.to(dtype))
    writer.close()
    write_config_files(out, cfg, dtype)
    write_tokenizer(meta, out)
    return out


def import_dtype(gguf, reader) -> torch.dtype:
    """The dtype an import stores a file's weights in where none is asked for. An unquantized
    file's matrices are F32, F16 or BF16: that type, where it also holds the file's vectors (norms,
    biases: F32 in any file) exactly, else float32; every value is kept. A quantized file's
    dequantized values need float32 to be exact: kept up to ``EXACT_UP_TO`` parameters (SmolLM2's
    135M: 513 MiB); past it, bfloat16 halves the disk and memory (an 8B model: 16 GB, not 32). Its
    rounding, at most 2**-9 of a weight, is half Q8_0's own rounding bound and a thirty-second of
    Q4_0's; on SmolLM2's Q4_1 file, stored bfloat16, the next-token distribution moves by KL 1e-4
    nats a token (a Q8_0 export of it: 0.0023), the top token never."""
    q = gguf.GGMLQuantizationType
    floats = {q.F32: torch.float32, q.F16: torch.float16, q.BF16: torch.bfloat16}
    kinds = {t.tensor_type for t in reader.tensors if len(t.shape) > 1}  # matrices
    if not kinds <= set(floats):
        return torch.float32 if sum(int(t.n_elements) for t in reader.tensors) <= EXACT_UP_TO else torch.bfloat16
    own = {floats[k] for k in kinds}
    dtype = own.pop() if len(own) == 1 else torch.float32
    gemma = "general.architecture" in reader.fields and reader.fields["general.architecture"].contents() == "gemma3"
    for t in reader.tensors:
        if len(t.shape) == 1 and dtype != torch.float32:
            v = _values(gguf, t, gemma)
            if not torch.equal(v.to(dtype).float(), v):
                return torch.float32
    return dtype


def describe_import(out: str | Path) -> str:
    """One line on an imported folder: architecture, size, weights' dtype, tokenizer, RoPE scaling."""
    out = Path(out)
    cfg = ModelConfig.from_hf(out)  # both spellings of the RoPE settings
    model = read_json(out / "tokenizer.json")["model"]
    scaling = "" if cfg.rope_scaling is None else f"; RoPE scaling {cfg.rope_type} x{cfg.rope_scaling['factor']:g}"
    mib = sum(f.stat().st_size for f in out.glob("*.safetensors")) / 2**20
    tokenizer = "SentencePiece" if model.get("byte_fallback") else "byte-level BPE"
    return (f"{SUPPORTED_ARCHITECTURES[cfg.model_type]}, {cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, "
            f"{cfg.vocab_size:,} tokens; {cfg.raw.get('dtype', 'float32')} weights, {mib:,.0f} MiB; {tokenizer} "
            f"tokenizer{scaling}")


def _bar(items, show):
    return progress(items, desc="converting GGUF", unit="tensor") if show else items


def unpermute_qk(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Undo llama.cpp's q/k permutation of a ``(n_head * hd, D)`` weight.

    llama.cpp's converter maps HF's row order (per head: first half, second half) to
    interleaved pairs: ``w.view(n_head, 2, hd // 2, D).transpose(1, 2)``. This inverts it.
    """
    rows, cols = w.shape
    hd = rows // n_head
    return w.view(n_head, hd // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def permute_qk(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """llama.cpp's permutation (HF → GGUF), the inverse of :func:`unpermute_qk`."""
    rows, cols = w.shape
    hd = rows // n_head
    return w.view(n_head, 2, hd // 2, cols).transpose(1, 2).reshape(rows, cols)


def _values(gguf, t, gemma: bool) -> torch.Tensor:
    """A tensor's values as the import keeps them: dequantized to a writable float32 copy; a Gemma
    norm weight, stored as 1 + w, back to w."""
    w = torch.from_numpy(np.array(_dequantize(gguf, t), dtype=np.float32))
    return w - gguf_gemma.NORM_SHIFT if gemma and gguf_gemma.is_norm(t.name) else w


def _dequantize(gguf, t) -> np.ndarray:
    if t.tensor_type in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
        return np.asarray(t.data, dtype=np.float32)
    return gguf.quants.dequantize(t.data, t.tensor_type)


def _moe_tensors(cfg: ModelConfig, experts, router, w: torch.Tensor):
    """``(HF name, tensor)`` for a mixture of experts' router, or for each expert's slice of a
    stacked ``ffn_*_exps`` tensor (``(E, out, in)``: expert e's weight is ``w[e]``)."""
    block = f"model.layers.{(experts or router).group(1)}.{cfg.ffn_name}"
    if router:
        yield f"{block}.gate.weight", w
        return
    if w.shape[0] != cfg.num_experts:
        raise ValueError(f"{experts.group(0)}: {w.shape[0]} experts stacked, the metadata says {cfg.num_experts}")
    leaf = _EXPERT_LEAVES[cfg.model_type][experts.group(2)]
    for e in range(cfg.num_experts):
        yield f"{block}.experts.{e}.{leaf}.weight", w[e].clone()


def _hf_name(gguf_name: str, path, layer_names: dict[str, str]) -> str | None:
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    m = re.fullmatch(r"blk\.(\d+)\.(\w+)\.(weight|bias)", gguf_name)
    if m and m.group(2) in layer_names:
        return f"model.layers.{m.group(1)}.{layer_names[m.group(2)]}.{m.group(3)}"
    if gguf_name == "rope_freqs.weight":
        return None  # read into config.json's rope_scaling (gguf_rope)
    raise UnsupportedModelError(f"{path}: tensor {gguf_name!r} has no Hugging Face counterpart in prefopt")


class _Metadata:
    def __init__(self, reader, path):
        self.fields, self.path = reader.fields, path

    def get(self, key, default=None):
        f = self.fields.get(key)
        return default if f is None else f.contents()

    def need(self, key):
        v = self.get(key)
        if v is None:
            raise ValueError(f"{self.path}: GGUF metadata has no {key!r}")
        return v


def _f32(x) -> float:
    """A float32 metadata value as the decimal it was written from (9.99999974e-06 -> 1e-05)."""
    return float(str(np.float32(x)))


def _config(meta: _Metadata, *, tied: bool, rope_freqs: np.ndarray | None = None) -> ModelConfig:
    arch = meta.need("general.architecture")
    if arch not in _ARCHITECTURES:
        raise UnsupportedModelError(
            f"{meta.path}: GGUF architecture {arch!r} is not supported; prefopt imports {sorted(_ARCHITECTURES)}"
        )
    a = f"{arch}."
    moe = _experts(meta, a, arch)
    n_head = meta.need(a + "attention.head_count")
    hidden = meta.need(a + "embedding_length")
    head_dim = meta.get(a + "attention.key_length", hidden // n_head)
    rot = meta.get(a + "rope.dimension_count", head_dim)
    if rot != head_dim:
        raise UnsupportedModelError(f"{meta.path}: partial rotary ({rot} of {head_dim}) is not supported")
    tokens = meta.need("tokenizer.ggml.tokens")
    theta = _f32(meta.get(a + "rope.freq_base", 10000.0))
    scaling = None
    kind = meta.get(a + "rope.scaling.type", "none")
    if kind == "linear":
        scaling = {"rope_type": "linear", "factor": float(meta.need(a + "rope.scaling.factor"))}
    elif kind != "none":  # YaRN, LongRoPE: not implemented; dropping one would change every position's angle
        raise UnsupportedModelError(f"{meta.path}: RoPE scaling {kind!r} is not supported (prefopt implements "
                                    "linear and Llama 3.1's); import from the original HF checkpoint without it")
    if rope_freqs is not None:
        if scaling is not None:
            raise UnsupportedModelError(f"{meta.path}: has both linear RoPE scaling and a 'rope_freqs' tensor")
        scaling = llama3_scaling(rope_freqs, theta, rot, meta.path,
                                 original_context=meta.get(a + "rope.scaling.original_context_length", 8192))
    layers = meta.need(a + "block_count")
    gemma = gguf_gemma.settings(meta, a, hidden=hidden, n_head=n_head, head_dim=head_dim, n_layer=layers) \
        if arch == "gemma3" else {}
    return ModelConfig(
        vocab_size=meta.get(a + "vocab_size", len(tokens)),
        hidden_size=hidden,
        intermediate_size=meta.get(a + "feed_forward_length") or moe.get("moe_intermediate_size")
        or meta.need(a + "feed_forward_length"),
        num_hidden_layers=layers,
        num_attention_heads=n_head,
        num_key_value_heads=meta.get(a + "attention.head_count_kv", n_head),
        head_dim=head_dim,
        rms_norm_eps=_f32(meta.need(a + "attention.layer_norm_rms_epsilon")),
        rope_theta=theta,
        rope_scaling=scaling,
        max_position_embeddings=meta.get(a + "context_length", 2048),
        tie_word_embeddings=tied,
        attention_bias=arch in ("qwen2", "qwen2moe"),  # Qwen2's q/k/v always carry one; llama.cpp's qwen3 has none
        model_type="mixtral" if arch == "llama" and moe else _ARCHITECTURES[arch],
        bos_token_id=meta.get("tokenizer.ggml.bos_token_id"),
        eos_token_id=meta.get("tokenizer.ggml.eos_token_id"),
        pad_token_id=meta.get("tokenizer.ggml.padding_token_id"),
        no_rope_layers=smollm3_no_rope_layers(layers) if arch == "smollm3" else None,
        **gemma,
        **moe,
    )


def _experts(meta: _Metadata, a: str, arch: str) -> dict:
    """A mixture of experts' settings: Mixtral (written as ``llama`` with ``expert_count``, its
    experts of ``feed_forward_length``), ``qwen3moe`` or ``qwen2moe`` (``expert_feed_forward_length``;
    Qwen2-MoE's shared expert ``expert_shared_feed_forward_length``). llama.cpp renormalises the
    top-k weights of Mixtral and qwen3moe, not qwen2moe's (``expert_weights_norm``, where a file
    says otherwise). llama.cpp's qwen2moe makes every layer a mixture."""
    count = meta.get(a + "expert_count")
    if not count:
        if arch in ("qwen3moe", "qwen2moe"):
            raise ValueError(f"{meta.path}: a {arch} file without {a}expert_count")
        return {}
    if arch not in ("llama", "qwen3moe", "qwen2moe"):
        raise UnsupportedModelError(f"{meta.path}: a mixture of experts written as {arch!r} is not supported; "
                                    "prefopt imports Mixtral (llama with experts), qwen3moe and qwen2moe")
    size = meta.need(a + "feed_forward_length") if arch == "llama" else meta.need(a + "expert_feed_forward_length")
    out = dict(num_experts=int(count), num_experts_per_tok=int(meta.need(a + "expert_used_count")),
               moe_intermediate_size=int(size),
               norm_topk_prob=bool(meta.get(a + "expert_weights_norm", arch != "qwen2moe")))
    if arch == "qwen2moe":
        out["shared_expert_intermediate_size"] = int(meta.need(a + "expert_shared_feed_forward_length"))
    return out


def smollm3_no_rope_layers(n_layer: int) -> list[int]:
    """llama.cpp's SmolLM3 layers, 1 where RoPE applies: all but every :data:`SMOLLM3_NO_ROPE_STEP`-th."""
    return no_rope_every(n_layer, SMOLLM3_NO_ROPE_STEP)
