"""Export an HF-layout Llama-family (Mixtral, Qwen3-MoE, Qwen2-MoE too), Qwen2/3 or Gemma 3 model (with a LoRA adapter merged in, if
given) to a llama.cpp GGUF file, for serving a fine-tuned model with llama.cpp or Ollama on the
hospital's machines (needs the ``gguf`` extra). The inverse of
:func:`prefopt.convert.gguf.convert_gguf`:

- the hyper-parameters and the tokenizer (byte-level BPE: tokens, token types, merges;
  SentencePiece BPE: tokens, types, scores; special token ids, whether a BOS is added, the chat
  template; :func:`~.gguf_tokenizer.tokenizer_metadata`) go into the architecture's metadata
  (``llama.*``, ``qwen2.*``, ``qwen3.*`` or ``gemma3.*``) and ``tokenizer.*``, as llama.cpp's
  own converter writes them; Llama 3.1's RoPE scaling as its ``rope_freqs`` tensor (:func:`~.gguf_rope.rope_divisors`);
- a mixture of experts' experts as one ``(E, out, in)`` tensor per projection and layer
  (``ffn_{gate,up,down}_exps``), its router as ``ffn_gate_inp`` (Mixtral as ``llama`` with
  ``expert_count``; Qwen3-MoE as ``qwen3moe``; Qwen2-MoE as ``qwen2moe``, its shared expert as
  ``ffn_{gate,up,down}_shexp`` and that expert's gate as the vector ``ffn_gate_inp_shexp``);
- each weight gets its GGUF name, for the llama architecture q/k rows in llama.cpp's RoPE order
  (:func:`permute_qk`; qwen2/3 and gemma3 keep HF's; Gemma's norms as 1 + w), and the type asked
  for: ``f32``, ``f16``, ``bf16`` (a bfloat16 model's own values, exactly) or ``q8_0``
  (norms and biases stay f32; a matrix whose rows do not split into q8_0 blocks of 32 is written
  f16, as llama.cpp does);
- the model loads in its stored dtype (bf16 for most hub models), each tensor becomes float32
  only as it is written, and the file is written tensor by tensor under a temporary name and
  renamed into place: the model is in memory once, and a failed export leaves no partial file.
"""
from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import torch

from .._deps import progress, require
from ..fileio import atomic_path, read_json
from ..model.config import UnsupportedModelError
from . import gguf_gemma
from .gguf import _EXPERT_LEAVES, _GLOBAL_NAMES, _LAYER_NAMES, SMOLLM3_NO_ROPE_STEP, permute_qk, smollm3_no_rope_layers
from .gguf_rope import rope_divisors
from .gguf_tokenizer import tokenizer_metadata

TYPES = ("f32", "f16", "bf16", "q8_0")
# llama.cpp's general.file_type: ALL_F32, MOSTLY_F16, MOSTLY_BF16, MOSTLY_Q8_0
_FILE_TYPES = {"f32": 0, "f16": 1, "bf16": 32, "q8_0": 7}
_TO_GGUF = {hf: g for g, hf in _GLOBAL_NAMES.items()}
_ROPE_FREQS = "rope_freqs.weight"
_LAYER_TO_GGUF = {hf: g for g, hf in _LAYER_NAMES.items()}
_GEMMA_TO_GGUF = {hf: g for g, hf in gguf_gemma.LAYER_NAMES.items()}


def export_gguf(model_dir: str | Path, out_path: str | Path, *, adapter: str | Path | None = None,
                out_type: str = "f16", name: str | None = None, show_progress: bool = True) -> Path:
    """Write ``model_dir`` (an HF-layout folder, alias or hub id; ``adapter`` merged in) as the
    GGUF file ``out_path`` with its matrices in ``out_type`` (``f32``, ``f16`` or ``q8_0``)."""
    from ..model import resolve_model_dir
    from ..pretrained import load_model

    gguf = require("gguf", "exporting a GGUF file")
    if out_type not in TYPES:
        raise ValueError(f"GGUF type must be one of {TYPES} (got {out_type!r})")
    src = resolve_model_dir(model_dir)
    # the weights' own dtype (bf16 for most hub models: half of float32's memory); each tensor is
    # made float32 only as it is written, and a merge adds the update in float32
    model = load_model(src, dtype=_stored_dtype(src), adapter=adapter, merge=adapter is not None)
    cfg = model.config
    _check_exportable(cfg, src)
    tokenizer = tokenizer_metadata(src, cfg.vocab_size)
    out = Path(out_path)
    tensors = _with_experts_stacked([(n, t) for n, t in model.state_dict().items()
                                     if not (cfg.tie_word_embeddings and n == "lm_head.weight")])
    if cfg.rope_type == "llama3":  # llama.cpp keeps Llama 3.1's RoPE scaling as a divisor per frequency
        tensors.insert(0, (_ROPE_FREQS, torch.from_numpy(rope_divisors(cfg.rope_theta, cfg.head_dim, cfg.rope_scaling))))
    with atomic_path(out) as tmp:  # on the disk before its rename; a failed write leaves no file
        writer = gguf.GGUFWriter(str(tmp), _arch(cfg))
        default = Path(str(model_dir)).name + (f" + {adapter}" if adapter is not None else "")  # as given, not a snapshot
        _write_metadata(writer, cfg, tokenizer, name or default, out_type)
        plan = [(_gguf_name(n, src, _GEMMA_TO_GGUF if cfg.gemma else _LAYER_TO_GGUF),
                 _qtype(gguf, t, "f32" if n.endswith("ffn_gate_inp.weight") else out_type))  # routers stay f32,
                for n, t in tensors]                                                         # as llama.cpp keeps them
        for (g_name, qtype), (_, t) in zip(plan, tensors):
            shape, dtype, nbytes = _layout(gguf, t.shape, qtype)
            writer.add_tensor_info(g_name, shape, dtype, nbytes, raw_dtype=qtype if dtype == np.uint8 else None)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        bar = progress(list(zip(plan, tensors)), desc="writing GGUF", unit="tensor", disable=not show_progress)
        for (_, qtype), (hf_name, t) in bar:
            t = t.stack() if isinstance(t, _Stacked) else t  # a mixture of experts' projection: made as it is written
            writer.write_tensor_data(_encode(gguf, _gguf_order(hf_name, t, cfg), qtype))
        writer.close()
    return out


def _stored_dtype(src: Path) -> torch.dtype:
    """The dtype config.json says the weights are stored in; float32 where it says none."""
    d = read_json(src / "config.json") if (src / "config.json").is_file() else {}
    name = d.get("dtype") or d.get("torch_dtype")
    return {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(name, torch.float32)


def _check_exportable(cfg, src) -> None:
    """GGUF's ``llama`` architecture holds Llama and Mistral-style models without biases, its
    ``qwen2`` one Qwen2 (q/k/v biases); Llama 3.1's RoPE scaling only in the first. Neither has a
    sliding window: as llama.cpp's converter does with Mistral 7B v0.1's (and so BioMistral's),
    it is dropped, with a warning (the same model for contexts up to the window)."""
    if cfg.model_type not in ("llama", "mistral", "qwen2", "qwen3", "smollm3", "gemma3_text", "mixtral", "qwen3_moe",
                              "qwen2_moe"):
        raise UnsupportedModelError(f"{src}: model_type {cfg.model_type!r}: prefopt exports Llama, Mistral, Mixtral, "
                                    "SmolLM2/3, Qwen2/3, Qwen2-MoE, Qwen3-MoE and Gemma 3 to GGUF; for others, run "
                                    "llama.cpp's convert_hf_to_gguf.py on a `prefopt merge` folder")
    if cfg.model_type in ("qwen3_moe", "qwen2_moe"):
        renormalised = cfg.model_type == "qwen3_moe"  # llama.cpp's qwen3moe renormalises the top-k weights, qwen2moe not
        if cfg.norm_topk_prob != renormalised or cfg.mlp_only_layers or cfg.decoder_sparse_step != 1:
            raise UnsupportedModelError(f"{src}: llama.cpp's {_arch(cfg)} makes every layer a mixture of experts whose "
                                        f"top-k weights are {'' if renormalised else 'not '}renormalised; this model "
                                        "has dense layers (mlp_only_layers, decoder_sparse_step) or norm_topk_prob "
                                        f"{str(not renormalised).lower()}")
    if cfg.model_type == "smollm3" and cfg.no_rope_layers != smollm3_no_rope_layers(cfg.num_hidden_layers):
        raise UnsupportedModelError(f"{src}: no_rope_layers {cfg.no_rope_layers}: llama.cpp's smollm3 leaves RoPE out "
                                    f"of every {SMOLLM3_NO_ROPE_STEP}th layer, and of no other")
    if cfg.gemma:
        gguf_gemma.check_exportable(cfg, src)
        return
    if cfg.mlp_bias or (cfg.attention_bias and cfg.model_type not in ("qwen2", "qwen2_moe")):
        raise UnsupportedModelError(f"{src}: biases on the attention or MLP are not part of GGUF's {_arch(cfg)} "
                                    "architecture")
    if cfg.rope_type not in ("default", "linear", "llama3") or (cfg.rope_type == "llama3" and _arch(cfg) != "llama"):
        raise UnsupportedModelError(f"{src}: RoPE scaling {cfg.rope_type!r} is not exported for {cfg.model_type}; "
                                    "use llama.cpp's convert_hf_to_gguf.py on the merged folder")
    if cfg.sliding_window:
        warnings.warn(f"{src}: its sliding window ({cfg.sliding_window} tokens) is dropped, as llama.cpp's own "
                      f"converter drops Mistral 7B v0.1's: llama.cpp attends to the whole context, the same model up "
                      f"to {cfg.sliding_window} tokens", stacklevel=3)


class _Stacked:
    """A mixture of experts' projection of one layer as GGUF stores it, ``(E, out, in)``: the
    experts' weights stacked when written (their shape known before, for the file's header)."""

    def __init__(self, parts: list[torch.Tensor]):
        self.parts = parts
        self.shape = torch.Size((len(parts), *parts[0].shape))

    def dim(self) -> int:
        return len(self.shape)

    def stack(self) -> torch.Tensor:
        return torch.stack(self.parts)


def _with_experts_stacked(tensors: list[tuple[str, torch.Tensor]]) -> list[tuple[str, object]]:
    """``tensors`` with each layer's experts' gate, up and down weights as one :class:`_Stacked`
    (named ``blk.N.ffn_{gate,up,down}_exps.weight``) where the first of them was, a router's
    weight named ``blk.N.ffn_gate_inp.weight``, and Qwen2-MoE's shared expert gate, ``(1, D)``, as
    llama.cpp holds it, a vector named ``blk.N.ffn_gate_inp_shexp.weight`` (so f32, as the router);
    other tensors unchanged."""
    leaves = {leaf: kind for names in _EXPERT_LEAVES.values() for kind, leaf in names.items()}  # the import's, inverted
    experts = re.compile(r"model\.layers\.(\d+)\.(?:mlp|block_sparse_moe)\.experts\.(\d+)\.(\w+)\.weight")
    router = re.compile(r"model\.layers\.(\d+)\.(?:mlp|block_sparse_moe)\.gate\.weight")
    shared_gate = re.compile(r"model\.layers\.(\d+)\.mlp\.shared_expert_gate\.weight")
    out, stacks = [], {}
    for name, t in tensors:
        m = experts.fullmatch(name)
        if m:
            key = f"blk.{m.group(1)}.ffn_{leaves[m.group(3)]}_exps.weight"
            if key not in stacks:
                stacks[key] = []
                out.append((key, stacks[key]))
            stacks[key].append((int(m.group(2)), t))
            continue
        r, g = router.fullmatch(name), shared_gate.fullmatch(name)
        out.append((f"blk.{r.group(1)}.ffn_gate_inp.weight", t) if r else
                   (f"blk.{g.group(1)}.ffn_gate_inp_shexp.weight", t.reshape(-1)) if g else (name, t))
    return [(n, _Stacked([t for _, t in sorted(parts)]) if isinstance(parts, list) else parts) for n, parts in out]


def _gguf_name(hf_name: str, src, layer_names: dict[str, str]) -> str:
    if hf_name == _ROPE_FREQS or hf_name.startswith("blk."):  # a tensor already under its GGUF name
        return hf_name
    if hf_name in _TO_GGUF:
        return _TO_GGUF[hf_name]
    parts = hf_name.split(".")  # model.layers.N.<module>.<sub>.weight
    if len(parts) >= 5 and parts[:2] == ["model", "layers"]:
        module = ".".join(parts[3:-1])
        if module in layer_names:
            return f"blk.{parts[2]}.{layer_names[module]}.{parts[-1]}"
    raise UnsupportedModelError(f"{src}: tensor {hf_name!r} has no GGUF counterpart")


_GGUF_ARCH = {"qwen2": "qwen2", "qwen3": "qwen3", "qwen3_moe": "qwen3moe", "qwen2_moe": "qwen2moe", "smollm3": "smollm3",
             "gemma3_text": "gemma3"}


def _arch(cfg) -> str:
    """The GGUF architecture: ``qwen2``, ``qwen3``, ``smollm3``, ``gemma3`` for those, else ``llama``
    (llama.cpp's converter writes Mistral as llama too)."""
    return _GGUF_ARCH.get(cfg.model_type, "llama")


def _gguf_order(hf_name: str, t: torch.Tensor, cfg) -> np.ndarray:
    """The tensor as llama.cpp stores it: float32; for the llama architecture, q/k rows in its
    RoPE order (qwen2 keeps HF's order: llama.cpp reads it with NeoX-style RoPE)."""
    t = t.detach().float()
    if cfg.gemma and gguf_gemma.is_norm(hf_name):  # llama.cpp applies w; Gemma (1 + w)
        t = t + gguf_gemma.NORM_SHIFT
    llama = _arch(cfg) in ("llama", "smollm3")  # llama.cpp's SmolLM3 is converted as a Llama
    if llama and hf_name.endswith("self_attn.q_proj.weight"):
        t = permute_qk(t, cfg.num_attention_heads)
    elif llama and hf_name.endswith("self_attn.k_proj.weight"):
        t = permute_qk(t, cfg.num_key_value_heads or cfg.num_attention_heads)
    return np.ascontiguousarray(t.numpy())


def _qtype(gguf, t: torch.Tensor, out_type: str):
    q = gguf.GGMLQuantizationType
    if t.dim() == 1 or out_type == "f32":
        return q.F32
    if out_type == "bf16":
        return q.BF16
    if out_type == "q8_0" and t.shape[-1] % gguf.GGML_QUANT_SIZES[q.Q8_0][0] == 0:
        return q.Q8_0
    return q.F16


def _layout(gguf, shape, qtype) -> tuple[tuple[int, ...], np.dtype, int]:
    """``(shape, numpy dtype, bytes)`` of a tensor as the writer is told of it before its data."""
    q = gguf.GGMLQuantizationType
    n = int(np.prod(shape))
    if qtype == q.F32:
        return tuple(shape), np.dtype(np.float32), 4 * n
    if qtype == q.F16:
        return tuple(shape), np.dtype(np.float16), 2 * n
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    byte_shape = (*shape[:-1], shape[-1] // block * size)
    return byte_shape, np.dtype(np.uint8), int(np.prod(byte_shape))


def _encode(gguf, w: np.ndarray, qtype) -> np.ndarray:
    q = gguf.GGMLQuantizationType
    if qtype == q.F32:
        return w
    if qtype == q.F16:
        return w.astype(np.float16)
    return gguf.quants.quantize(w, qtype)


def _write_metadata(writer, cfg, tok: dict, name: str, out_type: str) -> None:
    head_dim = cfg.head_dim or cfg.hidden_size // cfg.num_attention_heads
    writer.add_type("model")
    writer.add_name(name)
    writer.add_file_type(_FILE_TYPES[out_type])
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    if cfg.num_experts:  # Mixtral (llama with experts of feed_forward_length), qwen3moe and qwen2moe
        writer.add_expert_count(cfg.num_experts)
        writer.add_expert_used_count(cfg.num_experts_per_tok)
        if cfg.model_type in ("qwen3_moe", "qwen2_moe"):
            writer.add_expert_feed_forward_length(cfg.moe_intermediate_size)
        if cfg.model_type == "qwen2_moe":
            writer.add_expert_shared_feed_forward_length(cfg.shared_expert_intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads or cfg.num_attention_heads)
    writer.add_rope_freq_base(float(cfg.rope_theta))
    writer.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_rope_dimension_count(head_dim)
    if head_dim != cfg.hidden_size // cfg.num_attention_heads or cfg.gemma:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    if cfg.gemma and cfg.sliding_window:
        writer.add_sliding_window(cfg.sliding_window)
    if cfg.rope_type == "linear":
        writer.add_rope_scaling_type("linear")
        writer.add_rope_scaling_factor(float(cfg.rope_scaling["factor"]))
    if out_type == "q8_0":
        writer.add_quantization_version(2)
    writer.add_tokenizer_model(tok["model"])
    if tok["model"] == "gpt2":
        writer.add_tokenizer_pre(tok["pre"])
    writer.add_add_space_prefix(tok["space_prefix"])
    writer.add_token_list(tok["tokens"])
    if tok["model"] == "llama":  # SentencePiece: the scores stand for the merges
        writer.add_token_scores(tok["scores"])
    writer.add_token_types(tok["types"])
    if tok["model"] == "gpt2":
        writer.add_token_merges(tok["merges"])
    writer.add_add_bos_token(tok["add_bos"])
    for key, add in (("bos", writer.add_bos_token_id), ("eos", writer.add_eos_token_id),
                     ("unk", writer.add_unk_token_id), ("pad", writer.add_pad_token_id)):
        if tok.get(key) is not None:
            add(tok[key])
    if tok.get("chat_template"):
        writer.add_chat_template(tok["chat_template"])
