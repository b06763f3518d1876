"""Gemma 3 in GGUF (architecture ``gemma3``: Gemma 3, MedGemma), as llama.cpp's converter writes it
and llama.cpp reads it back.

The file holds less than ``config.json``; llama.cpp fills the rest in by rule, and so does the
import:
- every RMSNorm weight is stored as ``1 + w`` (Gemma applies ``(1 + w)``; llama.cpp plain ``w``),
  so 1 is taken off again;
- which layers slide: ``attention.sliding_window_pattern`` where the file has it (a period, or a
  flag per layer), else every 6th layer full, the rest sliding, as in every Gemma 3;
- the sliding layers' RoPE base: ``rope.freq_base_swa``, else 10,000;
- the query scale: ``attention.scale`` where written, else 1/sqrt(hidden / heads) for the 62-layer
  model (Gemma 3 27B, MedGemma 27B: ``query_pre_attn_scalar`` 168) and 1/sqrt(head_dim) for the
  others (256), as llama.cpp decides it;
- q/k rows are in Hugging Face's order (no permutation to undo), and the embedding is the head.
"""
from __future__ import annotations

from ..model.config import FULL, SLIDING, UnsupportedModelError

LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
NORM_SHIFT = 1.0  # llama.cpp's converter stores each Gemma norm weight plus this
EVERY = 6  # llama.cpp's Gemma 3 pattern where the file names none: five sliding layers, then a full one
LAYERS_27B = 62  # llama.cpp knows Gemma 3 27B by its layer count


def settings(meta, a: str, *, hidden: int, n_head: int, head_dim: int, n_layer: int) -> dict:
    """The Gemma 3 fields of :class:`~prefopt.model.config.ModelConfig` for a ``gemma3`` file."""
    pattern = meta.get(a + "attention.sliding_window_pattern", EVERY)
    if isinstance(pattern, int):
        layer_types = [FULL if (i + 1) % pattern == 0 else SLIDING for i in range(n_layer)]
    else:  # a flag per layer: True where it slides
        layer_types = [SLIDING if flag else FULL for flag in pattern]
        if len(layer_types) != n_layer:
            raise ValueError(f"{meta.path}: {a}attention.sliding_window_pattern has {len(layer_types)} flags for "
                             f"{n_layer} layers")
    scale = meta.get(a + "attention.scale")
    if scale is not None:  # stored in float32: 168 comes back as 167.99999...
        scalar = float(scale) ** -2
        scalar = round(scalar) if abs(scalar - round(scalar)) < 1e-4 * scalar else scalar
    else:
        scalar = hidden // n_head if n_layer == LAYERS_27B else head_dim
    for key in ("final_logit_softcapping", "attn_logit_softcapping"):
        if meta.get(a + key) is not None:
            raise UnsupportedModelError(f"{meta.path}: {a}{key}: logit soft-capping (Gemma 2) is not supported")
    return dict(layer_types=layer_types, sliding_window=meta.get(a + "attention.sliding_window"),
                local_rope_theta=float(meta.get(a + "rope.freq_base_swa", 10000.0)), query_pre_attn_scalar=scalar,
                hidden_act="gelu_pytorch_tanh")


def is_norm(hf_name: str) -> bool:
    """Whether a (Hugging Face) tensor name is one of Gemma's norm weights, stored shifted."""
    return hf_name.endswith("norm.weight")


def check_exportable(cfg, src) -> None:
    """Refuse, naming the setting, a Gemma 3 model llama.cpp would read otherwise than it is:
    llama.cpp takes the sliding pattern, the sliding layers' RoPE base and the query scale from
    its rules above, not from the file."""
    if cfg.sliding_window:
        rule = [FULL if (i + 1) % EVERY == 0 else SLIDING for i in range(cfg.num_hidden_layers)]
        if cfg.layer_types != rule:
            raise UnsupportedModelError(f"{src}: layer_types {cfg.layer_types}: llama.cpp runs Gemma 3 with every "
                                        f"{EVERY}th layer full and the rest sliding")
        if cfg.local_rope_theta != 10000.0:
            raise UnsupportedModelError(f"{src}: the sliding layers' RoPE base {cfg.local_rope_theta:g}: llama.cpp "
                                        "uses 10000 for Gemma 3")
    elif any(t == SLIDING for t in cfg.layer_types):
        raise UnsupportedModelError(f"{src}: sliding layers without a sliding_window")
    rule = cfg.hidden_size // cfg.num_attention_heads if cfg.num_hidden_layers == LAYERS_27B else cfg.head_dim
    if cfg.query_pre_attn_scalar != rule:
        raise UnsupportedModelError(f"{src}: query_pre_attn_scalar {cfg.query_pre_attn_scalar:g}: llama.cpp scales a "
                                    f"{cfg.num_hidden_layers}-layer Gemma 3's queries by {rule}")
