"""Model configuration, read from a Hugging Face ``config.json``.

One dataclass covers the Llama family (Llama 2/3/3.1/3.2, Mistral, Qwen2/2.5, Qwen3,
SmolLM2, SmolLM3: every fourth layer without RoPE) and Gemma 3's text model (Gemma 3,
MedGemma 27B text). It holds only what those files hold; derived fields are set in
``__post_init__``. Both spellings of the RoPE settings are read:
the older top-level ``rope_theta`` / ``rope_scaling`` (Gemma 3: and ``rope_local_base_freq``)
and the newer ``rope_parameters`` (Gemma 3: one per layer type).
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..fileio import read_json

# model_type -> architecture name used in config.json's "architectures"
SUPPORTED_ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "smollm3": "SmolLM3ForCausalLM",
    "gemma3_text": "Gemma3ForCausalLM",
    "qwen3_moe": "Qwen3MoeForCausalLM",
    "qwen2_moe": "Qwen2MoeForCausalLM",
    "olmoe": "OlmoeForCausalLM",
    "mixtral": "MixtralForCausalLM",
    "phi3": "Phi3ForCausalLM",
    "olmo2": "Olmo2ForCausalLM",
    "granite": "GraniteForCausalLM",
}
SLIDING, FULL = "sliding_attention", "full_attention"  # Gemma 3's layer types
# transformers' Gemma3TextConfig defaults: an image+text Gemma 3 config.json (Gemma3ForConditionalGeneration)
# may list in its text_config only what differs from them (tests check them against transformers)
GEMMA3_TEXT_DEFAULTS = {
    "vocab_size": 262208, "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26,
    "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh",
    "max_position_embeddings": 131072, "rms_norm_eps": 1e-6, "pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2,
    "tie_word_embeddings": True, "attention_bias": False, "query_pre_attn_scalar": 256, "sliding_window": 4096,
    "rope_theta": 1_000_000.0, "rope_local_base_freq": 10000.0, "sliding_window_pattern": 6,
}
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3", "longrope")
MOE = ("qwen3_moe", "qwen2_moe", "olmoe", "mixtral")  # mixtures of experts (transformer.SparseMoE)


class UnsupportedModelError(ValueError):
    """The checkpoint describes a model prefopt does not implement."""


@dataclass
class ModelConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # bias on q/k/v (Qwen2 always has it)
    mlp_bias: bool = False
    sliding_window: int | None = None
    model_type: str = "llama"
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    hidden_act: str = "silu"
    # Gemma 3: each layer's attention (SLIDING: within sliding_window, RoPE base local_rope_theta;
    # FULL: all positions, rope_theta and rope_scaling), and the query scale's denominator
    layer_types: list[str] | None = None
    local_rope_theta: float | None = None
    query_pre_attn_scalar: float | None = None
    # SmolLM3: per layer, 1 where it applies RoPE and 0 where it does not (NoPE), as its config.json lists them
    no_rope_layers: list[int] | None = None
    # a mixture of experts (Qwen3-MoE, Mixtral): each token through the num_experts_per_tok of num_experts
    # experts its router rates highest (their weights renormalised to sum to 1 where norm_topk_prob); Qwen3-MoE
    # makes every decoder_sparse_step-th layer sparse but mlp_only_layers (dense MLPs of intermediate_size)
    num_experts: int | None = None
    num_experts_per_tok: int | None = None
    moe_intermediate_size: int | None = None
    norm_topk_prob: bool = False
    decoder_sparse_step: int = 1
    mlp_only_layers: list[int] | None = None
    # Qwen2-MoE (Qwen1.5-MoE, Qwen2-57B-A14B): beside the routed experts, one shared expert of this size that
    # every token goes through, its output scaled by sigmoid(shared_expert_gate(x))
    shared_expert_intermediate_size: int | None = None
    # RoPE on the first fraction of each head's dimensions only, the rest passed through (Phi-4-mini: 0.75)
    partial_rotary_factor: float = 1.0
    # Granite: the embeddings multiplied by embedding_multiplier, each sublayer's output by residual_multiplier
    # before it joins the residual, attention scores by attention_multiplier (not 1/sqrt(head_dim)), the
    # logits divided by logits_scaling
    embedding_multiplier: float = 1.0
    residual_multiplier: float = 1.0
    attention_multiplier: float | None = None
    logits_scaling: float = 1.0
    # "gemma3": read from an image+text checkpoint, whose language model's tensors carry its prefix
    text_model_of: str | None = field(default=None, compare=False)
    # the file's own dict, kept so a save writes back what was read
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.model_type not in SUPPORTED_ARCHITECTURES:
            raise UnsupportedModelError(
                f"unsupported model_type {self.model_type!r}: prefopt implements "
                f"{sorted(SUPPORTED_ARCHITECTURES)} (Llama 2/3, Mistral, Mixtral, OLMoE, Qwen2/3, Qwen2-MoE, "
                "Qwen3-MoE, SmolLM2/3, Gemma 3, Phi-3/3.5/4-mini, OLMo 2, Granite 3)"
            )
        act = "gelu_pytorch_tanh" if self.gemma else "silu"
        if self.hidden_act != act:
            raise UnsupportedModelError(f"unsupported hidden_act {self.hidden_act!r} for {self.model_type}: only "
                                        f"{act!r} ({'GeGLU' if self.gemma else 'SwiGLU'})")
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads={self.num_key_value_heads}"
            )
        if self.model_type in MOE and not (self.num_experts and 0 < (self.num_experts_per_tok or 0) <= self.num_experts):
            raise UnsupportedModelError(f"{self.model_type}: num_experts_per_tok={self.num_experts_per_tok} of "
                                        f"num_experts={self.num_experts} experts")
        if self.model_type == "qwen2_moe" and not self.shared_expert_intermediate_size:
            raise UnsupportedModelError("qwen2_moe: shared_expert_intermediate_size must be a positive number "
                                        f"(got {self.shared_expert_intermediate_size!r})")
        rope_type = (self.rope_scaling or {}).get("rope_type", (self.rope_scaling or {}).get("type", "default"))
        if rope_type not in SUPPORTED_ROPE_TYPES:
            raise UnsupportedModelError(
                f"unsupported rope_scaling type {rope_type!r}: prefopt implements {SUPPORTED_ROPE_TYPES}"
            )
        if not 0 < self.partial_rotary_factor <= 1 or self.rotary_dim % 2:
            raise UnsupportedModelError(f"partial_rotary_factor={self.partial_rotary_factor}: RoPE on "
                                        f"{self.rotary_dim} of {self.head_dim} dimensions (a positive even number)")

    @property
    def rotary_dim(self) -> int:
        """The dimensions of each head that RoPE rotates (the first; all but where partial_rotary_factor < 1)."""
        return int(self.head_dim * self.partial_rotary_factor)

    @property
    def fused_projections(self) -> bool:
        """Phi-3's layout: one ``qkv_proj`` for the queries, keys and values, one ``gate_up_proj``
        for the MLP's gate and up projections (each the parts stacked in that order)."""
        return self.model_type == "phi3"

    @property
    def qk_norm(self) -> bool:
        """An RMSNorm on each head's queries and keys before RoPE (Qwen3, Qwen3-MoE, Gemma 3)."""
        return self.model_type in ("qwen3", "qwen3_moe", "gemma3_text")

    @property
    def qk_norm_whole(self) -> bool:
        """An RMSNorm over the whole query and key projections, all heads at once (OLMoE, OLMo 2)."""
        return self.model_type in ("olmoe", "olmo2")

    @property
    def post_norms(self) -> bool:
        """OLMo 2's layout: no norm before attention or the MLP, one on each one's output before it
        joins the residual (``post_attention_layernorm``, ``post_feedforward_layernorm``), each
        multiplying by its weight in fp32."""
        return self.model_type == "olmo2"

    def sparse(self, layer: int) -> bool:
        """Whether layer ``layer``'s MLP is a mixture of experts."""
        return (self.model_type in MOE and layer not in (self.mlp_only_layers or [])
                and (layer + 1) % self.decoder_sparse_step == 0)

    @property
    def ffn_name(self) -> str:
        """The MLP's module name in a layer (Mixtral's checkpoints call it ``block_sparse_moe``)."""
        return "block_sparse_moe" if self.model_type == "mixtral" else "mlp"

    @property
    def gemma(self) -> bool:
        """Gemma 3's layout: (1 + w) norms, q/k norms, norms after attention and MLP too, GeGLU,
        embeddings scaled by sqrt(hidden), sliding and full attention layers."""
        return self.model_type == "gemma3_text"

    def window(self, layer: int) -> int | None:
        """Layer ``layer``'s sliding window (None: it attends to every earlier position)."""
        if self.layer_types is not None and self.layer_types[layer] != SLIDING:
            return None
        return self.sliding_window

    def uses_rope(self, layer: int) -> bool:
        """Whether layer ``layer`` rotates its queries and keys (SmolLM3's NoPE layers do not)."""
        return self.no_rope_layers is None or bool(self.no_rope_layers[layer])

    def local_rope(self, layer: int) -> bool:
        """Whether layer ``layer`` takes the local RoPE (Gemma 3's sliding layers)."""
        return self.layer_types is not None and self.layer_types[layer] == SLIDING

    @property
    def rope_type(self) -> str:
        s = self.rope_scaling or {}
        return s.get("rope_type", s.get("type", "default"))

    @property
    def eos_token_ids(self) -> list[int]:
        if self.eos_token_id is None:
            return []
        return list(self.eos_token_id) if isinstance(self.eos_token_id, (list, tuple)) else [self.eos_token_id]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        model_type = d.get("model_type")
        if model_type == "gemma3":  # image + text (Gemma 3 4B-27B, MedGemma 4B): its language model alone
            top = {k: d[k] for k in ("eos_token_id", "bos_token_id", "pad_token_id", "tie_word_embeddings") if k in d}
            cfg = cls.from_dict({**GEMMA3_TEXT_DEFAULTS, **d.get("text_config", {}), **top,
                                 "model_type": "gemma3_text", "architectures": ["Gemma3ForCausalLM"]})
            cfg.text_model_of = "gemma3"
            return cfg
        if model_type not in SUPPORTED_ARCHITECTURES:
            archs = d.get("architectures") or []
            raise UnsupportedModelError(
                f"unsupported architecture {model_type or archs!r}: prefopt implements "
                f"{sorted(SUPPORTED_ARCHITECTURES.values())}"
            )
        known = {f.name for f in fields(cls)} - {"raw", "rope_theta", "rope_scaling", "sliding_window"}
        kw: dict[str, Any] = {k: d[k] for k in known if k in d}
        if model_type == "gemma3_text":
            return cls(**{**kw, **_gemma3(d)}, raw=dict(d))
        # RoPE: the newer "rope_parameters" folds theta and scaling into one dict.
        rp = d.get("rope_parameters")
        if rp:
            kw["rope_theta"] = rp.get("rope_theta", d.get("rope_theta", 10000.0))
            scaling = {k: v for k, v in rp.items() if k != "rope_theta"}
            kw["rope_scaling"] = scaling if scaling.get("rope_type", "default") != "default" else None
        else:
            kw["rope_theta"] = d.get("rope_theta", 10000.0)
            kw["rope_scaling"] = d.get("rope_scaling")
        if kw["rope_scaling"] is not None and (
            kw["rope_scaling"].get("rope_type", kw["rope_scaling"].get("type")) == "default"
        ):
            kw["rope_scaling"] = None
        if model_type == "smollm3":
            kw.update(_smollm3(d))
        elif model_type == "mixtral":
            kw.update(_mixtral(d))
        elif model_type in ("olmoe", "olmo2"):
            kw.update(_olmoe(d))
        elif model_type == "phi3":
            kw.update(_phi3(d, kw["rope_scaling"]))
        elif model_type == "granite":  # (transformers' defaults where its config.json leaves one out: 1)
            kw.update(sliding_window=None, attention_multiplier=d.get("attention_multiplier", 1.0))
        elif model_type in ("qwen2", "qwen3", "qwen3_moe", "qwen2_moe"):
            if model_type == "qwen2":
                kw["attention_bias"] = True  # q/k/v projections always carry a bias
            if model_type == "qwen2_moe":
                kw["attention_bias"] = d.get("qkv_bias", True)  # on q/k/v (transformers 5's name; 4.x: always)
            kw["sliding_window"] = d.get("sliding_window") if d.get("use_sliding_window") else None
            if kw["sliding_window"] is not None and d.get("max_window_layers", 0) < d["num_hidden_layers"]:
                raise UnsupportedModelError("Qwen2/3 with sliding window on only some layers is not supported")
            if model_type in ("qwen3_moe", "qwen2_moe"):  # transformers 5 writes num_local_experts, 4.x num_experts
                kw["num_experts"] = d.get("num_experts", d.get("num_local_experts"))
        else:
            kw["sliding_window"] = d.get("sliding_window")
        return cls(**kw, raw=dict(d))

    @classmethod
    def from_hf(cls, path: str | Path) -> ModelConfig:
        """Read ``config.json`` from a folder (or the file itself)."""
        p = Path(path)
        if p.is_dir():
            p = p / "config.json"
        try:
            d = read_json(p)
        except FileNotFoundError:
            raise FileNotFoundError(f"{p}: no config.json; is this a Hugging Face model folder?") from None
        return cls.from_dict(d)

    def to_hf_dict(self) -> dict[str, Any]:
        """A ``config.json`` dict that ``transformers`` loads."""
        d = dict(self.raw)
        d.update(
            model_type=self.model_type,
            architectures=[SUPPORTED_ARCHITECTURES[self.model_type]],
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads,
            head_dim=self.head_dim,
            rms_norm_eps=self.rms_norm_eps,
            max_position_embeddings=self.max_position_embeddings,
            tie_word_embeddings=self.tie_word_embeddings,
            **{"hidden_activation" if self.gemma else "hidden_act": self.hidden_act},
            bos_token_id=self.bos_token_id,
            eos_token_id=self.eos_token_id,
            pad_token_id=self.pad_token_id,
        )
        if "rope_parameters" not in d:
            d["rope_theta"] = self.rope_theta
            d["rope_scaling"] = self.rope_scaling
        if self.model_type == "llama":
            d.update(attention_bias=self.attention_bias, mlp_bias=self.mlp_bias)
        if self.model_type in ("qwen3", "qwen3_moe", "smollm3"):
            d.update(attention_bias=self.attention_bias)
        if self.no_rope_layers is not None:
            d.update(no_rope_layers=self.no_rope_layers)
        if self.model_type == "mixtral":  # its experts are of intermediate_size
            d.update(num_local_experts=self.num_experts, num_experts_per_tok=self.num_experts_per_tok)
        if self.model_type == "olmoe":  # so are OLMoE's
            d.update(num_experts=self.num_experts, num_experts_per_tok=self.num_experts_per_tok,
                     norm_topk_prob=self.norm_topk_prob, attention_bias=self.attention_bias)
        if self.model_type in ("qwen3_moe", "qwen2_moe"):  # the Hub's names (transformers 5 reads num_experts too)
            d.update(num_experts=self.num_experts, num_experts_per_tok=self.num_experts_per_tok,
                     moe_intermediate_size=self.moe_intermediate_size, norm_topk_prob=self.norm_topk_prob,
                     decoder_sparse_step=self.decoder_sparse_step, mlp_only_layers=self.mlp_only_layers or [])
            d.pop("num_local_experts", None)
        if self.model_type == "phi3":
            d.update(partial_rotary_factor=self.partial_rotary_factor, sliding_window=self.sliding_window)
        if self.model_type == "granite":
            d.update(embedding_multiplier=self.embedding_multiplier, residual_multiplier=self.residual_multiplier,
                     attention_multiplier=self.attention_multiplier, logits_scaling=self.logits_scaling,
                     attention_bias=self.attention_bias, mlp_bias=self.mlp_bias)
        if self.model_type == "qwen2_moe":
            d.update(shared_expert_intermediate_size=self.shared_expert_intermediate_size, qkv_bias=self.attention_bias)
        if self.gemma:  # what a config built from a GGUF file has in no raw dict
            d.update(layer_types=self.layer_types, sliding_window=self.sliding_window,
                     query_pre_attn_scalar=self.query_pre_attn_scalar)
            if "rope_parameters" not in d:
                d["rope_local_base_freq"] = self.local_rope_theta
        return d


def no_rope_every(n_layers: int, every: int) -> list[int]:
    """SmolLM3's layers with RoPE left out of every ``every``-th (1 where it applies), as
    transformers makes them from ``no_rope_layer_interval`` and llama.cpp's smollm3 fixes them."""
    return [int((i + 1) % every != 0) for i in range(n_layers)]


def _olmoe(d: dict[str, Any]) -> dict[str, Any]:
    """OLMoE's settings: every layer a mixture of ``num_experts`` experts of ``intermediate_size``
    (top-k weights not renormalised unless ``norm_topk_prob``), q/k norms over the whole
    projections; its ``clip_qkv`` (clamping q, k, v) is refused, as no released OLMoE sets it.
    OLMo 2's, dense: the q/k norms, the same refusal, no sliding window."""
    if d.get("clip_qkv") is not None:
        raise UnsupportedModelError(f"{d['model_type']}: clip_qkv={d['clip_qkv']} (clamping q, k and v) is not "
                                    "supported")
    if d["model_type"] == "olmo2":
        return {"sliding_window": None}
    return {"num_experts": d.get("num_experts"), "moe_intermediate_size": d.get("intermediate_size"),
            "norm_topk_prob": bool(d.get("norm_topk_prob", False)), "sliding_window": None}


def _phi3(d: dict[str, Any], scaling: dict[str, Any] | None) -> dict[str, Any]:
    """Phi-3's settings (Phi-3, Phi-3.5 and Phi-4-mini): LongRoPE (its config's ``su`` and
    ``yarn`` read as transformers reads them, as ``longrope``) with the pretrained context it
    scales from, RoPE on a fraction of each head, the sliding window; no biases. Dropout, which
    its configs set to 0, is refused where it is not."""
    for key in ("resid_pdrop", "embd_pdrop", "attention_dropout"):
        if d.get(key):
            raise UnsupportedModelError(f"phi3: {key}={d[key]} (dropout in the model) is not supported; set it to 0")
    rope = dict(scaling or {})
    if rope.get("rope_type", rope.get("type")) in ("su", "yarn", "longrope"):
        rope.pop("type", None)
        rope["rope_type"] = "longrope"
        rope.setdefault("original_max_position_embeddings",
                        d.get("original_max_position_embeddings", d.get("max_position_embeddings")))
    rp = d.get("rope_parameters") or {}
    return dict(rope_scaling=rope or None, sliding_window=d.get("sliding_window"),
                partial_rotary_factor=float(rp.get("partial_rotary_factor", d.get("partial_rotary_factor", 1.0))))


def _mixtral(d: dict[str, Any]) -> dict[str, Any]:
    """Mixtral's settings: every layer a mixture of ``num_local_experts`` experts of
    ``intermediate_size``, the top-k weights renormalised; training-time router jitter is refused."""
    if d.get("router_jitter_noise"):
        raise UnsupportedModelError(f"router_jitter_noise={d['router_jitter_noise']}: Mixtral's training-time "
                                    "router noise is not supported (set it to 0)")
    return dict(num_experts=d.get("num_local_experts"), moe_intermediate_size=d["intermediate_size"],
                norm_topk_prob=True, sliding_window=d.get("sliding_window"))


def _smollm3(d: dict[str, Any]) -> dict[str, Any]:
    """SmolLM3's settings: the layers without RoPE (listed, else every ``no_rope_layer_interval``-th,
    as transformers makes them); its sliding window (off in the released models) is refused."""
    n = d["num_hidden_layers"]
    every = d.get("no_rope_layer_interval", 4)
    layers = d.get("no_rope_layers") or no_rope_every(n, every)
    if len(layers) != n or set(layers) - {0, 1}:
        raise UnsupportedModelError(f"no_rope_layers {layers}: expected {n} of 0 / 1")
    if d.get("use_sliding_window"):
        raise UnsupportedModelError("SmolLM3 with use_sliding_window is not supported")
    return dict(no_rope_layers=[int(x) for x in layers], sliding_window=None)


def _gemma3(d: dict[str, Any]) -> dict[str, Any]:
    """The Gemma 3 settings of a ``config.json``, in either spelling; refuses what prefopt does
    not run (Gemma 2's logit soft-capping, bidirectional attention)."""
    for key in ("final_logit_softcapping", "attn_logit_softcapping"):
        if d.get(key) is not None:
            raise UnsupportedModelError(f"{key}={d[key]}: logit soft-capping (Gemma 2) is not supported")
    if d.get("use_bidirectional_attention"):
        raise UnsupportedModelError("use_bidirectional_attention: prefopt runs causal language models only")
    n = d["num_hidden_layers"]
    every = d.get("sliding_window_pattern", d.get("_sliding_window_pattern", 6))
    layer_types = d.get("layer_types") or [FULL if (i + 1) % every == 0 else SLIDING for i in range(n)]
    if len(layer_types) != n or set(layer_types) - {SLIDING, FULL}:
        raise UnsupportedModelError(f"layer_types {layer_types}: expected {n} of {SLIDING!r} / {FULL!r}")
    rp = d.get("rope_parameters") or {}
    if FULL in rp or SLIDING in rp:  # one RoPE per layer type
        full, local = dict(rp.get(FULL, {})), dict(rp.get(SLIDING, {}))
    else:
        full = {"rope_theta": d.get("rope_theta", 1e6), **(d.get("rope_scaling") or {})}
        local = {"rope_theta": d.get("rope_local_base_freq", 10000.0)}
    if local.get("rope_type", local.get("type", "default")) != "default":
        raise UnsupportedModelError(f"RoPE scaling on the sliding layers ({local}) is not supported")
    theta = full.pop("rope_theta", 1e6)
    scaling = full if full.get("rope_type", full.get("type", "default")) != "default" else None
    return dict(rope_theta=theta, rope_scaling=scaling, local_rope_theta=local.get("rope_theta", 10000.0),
                layer_types=list(layer_types), sliding_window=d.get("sliding_window"),
                hidden_act=d.get("hidden_activation") or d.get("hidden_act") or "gelu_pytorch_tanh",
                query_pre_attn_scalar=d.get("query_pre_attn_scalar", d.get("head_dim", 256)),
                tie_word_embeddings=d.get("tie_word_embeddings", True))
