"""A decoder-only transformer for the Llama family (Qwen2/3 included; Qwen3-MoE, Qwen2-MoE, OLMoE and Mixtral, mixtures of
experts), and Gemma 3, in plain PyTorch.

Module names follow Hugging Face's (``model.layers.0.self_attn.q_proj`` ...), so a
checkpoint's state dict loads with no key mapping::

    Transformer
    ├── model
    │   ├── embed_tokens            (V, D)
    │   ├── layers[i]
    │   │   ├── input_layernorm     RMSNorm
    │   │   ├── self_attn           q/k/v/o_proj, GQA through SDPA, RoPE (Qwen3, Gemma 3: q_norm, k_norm per
    │   │   │                       head; OLMoE: over the whole projection)
    │   │   ├── post_attention_layernorm
    │   │   ├── (Gemma 3: pre_feedforward_layernorm, post_feedforward_layernorm)
    │   │   └── mlp                 gate/up/down_proj (SwiGLU; Gemma 3: GeGLU); a mixture of experts
    │   │                           (Qwen3-MoE: mlp.gate + mlp.experts[e].*_proj; Qwen2-MoE: also
    │   │                           mlp.shared_expert.*_proj + mlp.shared_expert_gate; Mixtral:
    │   │                           block_sparse_moe.gate + block_sparse_moe.experts[e].w1/w2/w3)
    │   └── norm
    └── lm_head                     (V, D); absent when tied to embed_tokens

Llama's ``post_attention_layernorm`` normalises the MLP's input; Gemma 3's normalises the
attention's output before the residual (its ``pre_feedforward_layernorm`` is the MLP's input
norm, ``post_feedforward_layernorm`` its output's). Gemma 3 also scales the embeddings by
sqrt(hidden), keeps its norms as ``1 + weight`` (applied in fp32), scales queries by
``query_pre_attn_scalar``, and alternates sliding-window layers (local RoPE base) with
full-attention ones.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .config import ModelConfig
from .kv_cache import KVCache
from .rope import apply_rope, longrope_from, rope_attention_factor, rope_cos_sin, rope_inv_freq
from .swiglu import geglu, swiglu


class RMSNorm(nn.Module):
    """``weight * x / rms(x)``, the weight applied after the cast back to ``x``'s dtype, as Llama's;
    ``wide``: before it, in fp32, as OLMo 2's; ``gemma``: ``(1 + weight) * x / rms(x)`` (weights
    stored as offsets from 1, zeros at init), also in fp32, as Gemma's."""

    def __init__(self, dim: int, eps: float, gemma: bool = False, wide: bool = False):
        super().__init__()
        self.eps, self.gemma, self.wide = eps, gemma, wide
        self.weight = nn.Parameter(torch.zeros(dim) if gemma else torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.gemma:
            return (h * (1.0 + self.weight.float())).to(x.dtype)
        if self.wide:
            return (self.weight * h).to(x.dtype)
        return self.weight * h.to(x.dtype)


class Packed:
    """Sequences laid end to end in one row (``Transformer.forward(..., packed=lengths)``): each
    ``(start, end, mask, lead)`` span attends causally within itself, ``mask`` None or, for a span
    longer than a sliding window, its own ``(1, 1, n, n)`` window mask. With ``start`` (``packed_start``)
    the row begins with ``start`` tokens that every sequence begins with, run once: a span of its
    own, and every sequence's span also reads their keys (``lead``), its mask ``(1, 1, n, start + n)``
    and its positions counted after them.

    A sequence given as ``(prompt, answer, answer, ...)`` lengths instead of one is a prompt and
    its answers laid after it (DPO's chosen and rejected): each answer sees the prompt and its own
    earlier tokens, never another answer, its positions continuing the prompt's (:func:`_tree_span`)."""

    def __init__(self, lengths, window: int | None, device, start: int = 0):
        def alone(n):  # causal (None), or its own window mask where the span is longer than the window
            return _attention_mask(None, n, n, window, device) if window is not None and n > window else None

        self.spans = [(0, start, alone(start), 0)] if start else []
        self._positions = [torch.arange(start, device=device)] if start else []
        end = start
        for n in lengths.tolist() if isinstance(lengths, torch.Tensor) else lengths:
            parts = [int(x) for x in n] if isinstance(n, (list, tuple)) else [int(n)]  # a prompt [and its answers]
            if start or len(parts) > 1:  # it reads the start's keys, or its answers do not see each other
                m, pos = _tree_span(parts, start, window, device)
            else:  # a sequence alone: causal
                m, pos = alone(parts[0]), torch.arange(parts[0], device=device)
            n = len(pos)
            self.spans.append((end, end + n, m, start))
            self._positions.append(pos)
            end += n
        self.total = end

    def positions(self, device) -> torch.Tensor:
        """``(1, total)``: each sequence's positions from 0 (after a shared start, from it)."""
        return torch.cat(self._positions).to(device)[None]


def _tree_span(parts: list[int], start: int, window: int | None, device) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``(1, 1, n, start + n)`` mask and ``(n,)`` positions of a packed span that is a prompt
    of ``parts[0]`` tokens followed by answers of ``parts[1:]`` tokens (none: a causal sequence),
    after a shared start of ``start``: each token sees the start, the prompt's tokens up to itself,
    and its own answer's earlier tokens; each answer's positions continue the prompt's. A sliding
    window applies by position distance."""
    p, answers = parts[0], parts[1:]
    side = torch.cat([torch.zeros(p, dtype=torch.long)]
                     + [torch.full((a,), k + 1, dtype=torch.long) for k, a in enumerate(answers)])
    pos = start + torch.cat([torch.arange(p)] + [p + torch.arange(a) for a in answers])
    col = torch.arange(len(side))
    own = (col[None] <= col[:, None]) & ((side[None] == 0) | (side[None] == side[:, None]))
    mask = torch.cat([torch.ones(len(side), start, dtype=torch.bool), own], 1)
    if window is not None:
        mask &= pos[:, None] - torch.cat([torch.arange(start), pos])[None] < window
    return mask[None, None].to(device), pos.to(device)


def _span_keys(t: torch.Tensor, a: int, b: int, lead: int) -> torch.Tensor:
    """A :class:`Packed` span's keys (or values) ``[a, b)`` of ``t`` ``(B, H, T, hd)``, after the
    row's first ``lead`` (a start the sequences share)."""
    return t[:, :, a:b] if not lead else torch.cat([t[:, :, :lead], t[:, :, a:b]], 2)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head, self.n_kv, self.hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        D, b = cfg.hidden_size, cfg.attention_bias
        self.fused = cfg.fused_projections
        if self.fused:  # Phi-3: the three in one, as its checkpoints (and PEFT's adapters for them) name it
            self.qkv_proj = nn.Linear(D, (self.n_head + 2 * self.n_kv) * self.hd, bias=b)
        else:
            self.q_proj = nn.Linear(D, self.n_head * self.hd, bias=b)
            self.k_proj = nn.Linear(D, self.n_kv * self.hd, bias=b)
            self.v_proj = nn.Linear(D, self.n_kv * self.hd, bias=b)
        # attention_bias puts a bias on o_proj too, but in Qwen2, Qwen2-MoE (q/k/v only) and Mistral
        self.o_proj = nn.Linear(self.n_head * self.hd, D,
                                bias=cfg.attention_bias and cfg.model_type not in ("qwen2", "qwen2_moe", "mistral"))
        self.scale = cfg.query_pre_attn_scalar ** -0.5 if cfg.query_pre_attn_scalar else None  # None: 1/sqrt(hd)
        if cfg.attention_multiplier is not None:  # Granite's own
            self.scale = cfg.attention_multiplier
        # q/k norms: per head (Qwen3, Gemma 3), or one over all heads' queries (keys) before the split (OLMoE)
        self.head_qk_norm, self.whole_qk_norm = cfg.qk_norm, cfg.qk_norm_whole
        if self.head_qk_norm:
            self.q_norm = RMSNorm(self.hd, cfg.rms_norm_eps, gemma=cfg.gemma)
            self.k_norm = RMSNorm(self.hd, cfg.rms_norm_eps, gemma=cfg.gemma)
        if self.whole_qk_norm:
            self.q_norm = RMSNorm(self.n_head * self.hd, cfg.rms_norm_eps, wide=cfg.post_norms)
            self.k_norm = RMSNorm(self.n_kv * self.hd, cfg.rms_norm_eps, wide=cfg.post_norms)

    def forward(self, x, cos, sin, mask, kv_cache: KVCache | None = None):
        B, T, _ = x.shape
        if self.fused:
            q, k, v = self.qkv_proj(x).split([self.n_head * self.hd, self.n_kv * self.hd, self.n_kv * self.hd], -1)
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        if self.whole_qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q = q.view(B, T, self.n_head, self.hd).transpose(1, 2)  # (B, H, T, hd)
        k = k.view(B, T, self.n_kv, self.hd).transpose(1, 2)  # (B, Hkv, T, hd)
        v = v.view(B, T, self.n_kv, self.hd).transpose(1, 2)
        if self.head_qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        if cos is not None:  # None: a layer without positions (SmolLM3's NoPE layers)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer_idx, k, v)  # (B, Hkv, S, hd)
        gqa = self.n_kv != self.n_head
        if isinstance(mask, Packed):  # each sequence of the row attends within itself only (and a shared start)
            y = torch.cat([F.scaled_dot_product_attention(q[:, :, a:b], _span_keys(k, a, b, lead),
                                                          _span_keys(v, a, b, lead), attn_mask=m, is_causal=m is None,
                                                          enable_gqa=gqa, scale=self.scale)
                           for a, b, m, lead in mask.spans], dim=2)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None, enable_gqa=gqa,
                                               scale=self.scale)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_head * self.hd))  # y: (B, H, T, hd)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig, size: int | None = None):
        super().__init__()
        D, F_, b = cfg.hidden_size, size or cfg.intermediate_size, cfg.mlp_bias
        self.fused = cfg.fused_projections
        if self.fused:  # Phi-3: the gate's rows, then the up projection's, in one
            self.gate_up_proj = nn.Linear(D, 2 * F_, bias=b)
        else:
            self.gate_proj = nn.Linear(D, F_, bias=b)
            self.up_proj = nn.Linear(D, F_, bias=b)
        self.down_proj = nn.Linear(F_, D, bias=b)
        self.geglu = cfg.gemma

    def forward(self, x):
        if self.fused:
            return self.down_proj(swiglu(*self.gate_up_proj(x).chunk(2, dim=-1)))
        if self.geglu:
            return self.down_proj(geglu(self.gate_proj(x), self.up_proj(x)))
        return self.down_proj(swiglu(self.gate_proj(x), self.up_proj(x)))


class MixtralExpert(nn.Module):
    """One of Mixtral's experts: SwiGLU under its checkpoint's names (w1 gate, w3 up, w2 down)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        D, F_ = cfg.hidden_size, cfg.moe_intermediate_size
        self.w1 = nn.Linear(D, F_, bias=False)
        self.w3 = nn.Linear(D, F_, bias=False)
        self.w2 = nn.Linear(F_, D, bias=False)

    def forward(self, x):
        return self.w2(swiglu(self.w1(x), self.w3(x)))


class SparseMoE(nn.Module):
    """A mixture of experts (Qwen3-MoE, Qwen2-MoE, OLMoE, Mixtral): the router (``gate``) rates every expert
    per token (softmax in fp32), each token goes through its ``num_experts_per_tok`` best, and their
    outputs are summed with those weights (renormalised to sum to 1 where ``norm_topk_prob``). Each
    expert runs on its tokens alone. Qwen2-MoE adds a ``shared_expert`` every token goes through,
    scaled by ``sigmoid(shared_expert_gate(x))``. LoRA by module name leaves the router and the routed
    experts frozen (``no_adapters``), as PEFT on transformers 5 does: there the MLP projections' names
    mean Qwen3-MoE's, OLMoE's and Mixtral's fused experts (so this whole block is frozen) but Qwen2-MoE's
    shared expert, which then takes adapters. The routed experts take adapters as PEFT's
    ``target_parameters`` (``expert_adapters``: ``prefopt.lora_experts``)."""

    no_adapters = True

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.top_k, self.renormalise = cfg.num_experts_per_tok, cfg.norm_topk_prob
        self.gate = nn.Linear(cfg.hidden_size, cfg.num_experts, bias=False)
        self.experts = nn.ModuleList(MixtralExpert(cfg) if cfg.model_type == "mixtral"
                                     else MLP(cfg, cfg.moe_intermediate_size) for _ in range(cfg.num_experts))
        if cfg.shared_expert_intermediate_size:
            self.shared_expert = MLP(cfg, cfg.shared_expert_intermediate_size)
            self.shared_expert_gate = nn.Linear(cfg.hidden_size, 1, bias=False)
            self.no_adapters = False  # the shared expert and its gate may take adapters; the rest not
            self.gate.no_adapters = self.experts.no_adapters = True

    def forward(self, x):
        h = x.reshape(-1, x.shape[-1])
        weights, chosen = torch.softmax(self.gate(h).float(), dim=-1).topk(self.top_k, dim=-1)
        if self.renormalise:
            weights = weights / weights.sum(-1, keepdim=True)
        weights = weights.to(h.dtype)
        out = torch.zeros_like(h)
        adapters = getattr(self, "expert_adapters", None)  # LoRA on the experts (prefopt.lora_experts)
        run = adapters.runner() if adapters is not None else lambda e, expert, x: expert(x)
        for e in chosen.unique().tolist():  # in place: no (tokens, hidden) copy per expert
            rows, slot = torch.where(chosen == e)
            y = run(e, self.experts[e], h[rows])
            out.index_add_(0, rows, y * weights[rows, slot, None])
        if hasattr(self, "shared_expert"):
            out += torch.sigmoid(self.shared_expert_gate(h)) * self.shared_expert(h)
        return out.reshape(x.shape)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        g, self.post_only, self.residual = cfg.gemma, cfg.post_norms, cfg.residual_multiplier
        if not self.post_only:  # (OLMo 2 has none before the attention)
            self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, g)
        self.self_attn = Attention(cfg, layer_idx)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, g, wide=self.post_only)
        if g:
            self.pre_feedforward_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, g)
        if g or self.post_only:
            self.post_feedforward_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, g, wide=self.post_only)
        self.ffn_name = cfg.ffn_name  # "mlp"; Mixtral's "block_sparse_moe"
        setattr(self, self.ffn_name, SparseMoE(cfg) if cfg.sparse(layer_idx) else MLP(cfg))

    def forward(self, x, cos, sin, mask, kv_cache=None):
        ffn = getattr(self, self.ffn_name)
        if self.post_only:  # OLMo 2: each sublayer's output normed, then added
            x = x + self.post_attention_layernorm(self.self_attn(x, cos, sin, mask, kv_cache))
            return x + self.post_feedforward_layernorm(ffn(x))
        if hasattr(self, "pre_feedforward_layernorm"):  # Gemma 3: norms around both sublayers
            x = x + self.post_attention_layernorm(self.self_attn(self.input_layernorm(x), cos, sin, mask, kv_cache))
            return x + self.post_feedforward_layernorm(ffn(self.pre_feedforward_layernorm(x)))
        if self.residual != 1:  # Granite: each sublayer's output scaled before it joins the residual
            x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, kv_cache) * self.residual
            return x + ffn(self.post_attention_layernorm(x)) * self.residual
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, kv_cache)
        return x + ffn(self.post_attention_layernorm(x))


class Backbone(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        # passing _weight skips Embedding's normal_ init, which costs ~1 s of imports on the meta device
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size, _weight=torch.empty(cfg.vocab_size, cfg.hidden_size))
        if not self.embed_tokens.weight.is_meta:
            nn.init.normal_(self.embed_tokens.weight)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg.gemma, wide=cfg.post_norms)


class Transformer(nn.Module):
    """Llama-family causal LM.

    ``model(input_ids)`` returns logits ``(B, T, V)``; ``model(input_ids,
    return_hidden=True)`` returns the final-normed hidden states ``(B, T, D)``
    instead, so log-probs can be computed against :attr:`output_weight` without
    materialising logits.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.model = Backbone(cfg)
        if not cfg.tie_word_embeddings:
            self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.gradient_checkpointing = False
        self.register_buffer("inv_freq", rope_inv_freq(cfg), persistent=False)
        self._long_from, self._rope_scale = longrope_from(cfg), rope_attention_factor(cfg)
        if self._long_from is not None:  # LongRoPE (Phi-3): other frequencies past the pretrained context
            self.register_buffer("inv_freq_long", rope_inv_freq(cfg, long=True), persistent=False)
        if cfg.local_rope_theta is not None:  # Gemma 3's sliding layers: their own RoPE base, no scaling
            self.register_buffer("inv_freq_local", rope_inv_freq(cfg, local=True), persistent=False)
        self._windows = [cfg.window(i) for i in range(cfg.num_hidden_layers)]
        self._local = [cfg.local_rope(i) for i in range(cfg.num_hidden_layers)]
        self._rope = [cfg.uses_rope(i) for i in range(cfg.num_hidden_layers)]

    @property
    def output_weight(self) -> torch.Tensor:
        """The ``(V, D)`` lm_head weight (the embedding matrix when tied), without any adapter on it:
        for logits use :meth:`logits`, for the fused log-prob kernels :meth:`head`."""
        return self.model.embed_tokens.weight if self.config.tie_word_embeddings else self.lm_head.weight

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """The logits ``(..., V)`` of final hidden states ``h`` (``forward(..., return_hidden=True)``),
        through the lm_head and any adapter on it."""
        if self.config.logits_scaling != 1:  # Granite: the logits divided by it
            return self._logits(h) / self.config.logits_scaling
        return self._logits(h)

    def _logits(self, h: torch.Tensor) -> torch.Tensor:
        return F.linear(h, self.model.embed_tokens.weight) if self.config.tie_word_embeddings else self.lm_head(h)

    def head(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(h', W')`` whose product ``h' W'ᵀ`` is :meth:`logits`, for kernels that take the hidden
        states and one ``(V, D')`` weight (``prefopt.kernels``): ``h`` and the lm_head weight, or
        where an adapter sits on the lm_head (``--lora-targets ... lm_head``) both widened by its
        rank (``LoRALinear.fused_operands``), so that the adapter is trained and applied there too.
        Granite's ``logits_scaling`` divides ``h'`` (the logits are linear in it)."""
        if self.config.logits_scaling != 1:
            h = h / self.config.logits_scaling
        if self.config.tie_word_embeddings:
            return h, self.model.embed_tokens.weight
        fused = getattr(self.lm_head, "fused_operands", None)
        return fused(h) if fused is not None else (h, self.lm_head.weight)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        *,
        kv_cache: KVCache | None = None,
        return_hidden: bool = False,
        packed=None,
        packed_start: int = 0,
    ) -> torch.Tensor:
        """Run the model.

        Args:
            input_ids: ``(B, T)`` token ids.
            attention_mask: ``(B, S)`` with 1 for real tokens and 0 for padding, left or
                right. ``S = T``, or with a ``kv_cache`` the cached length plus ``T``.
                Or a boolean ``(B, 1, T, T)``: which keys each query may see, for layouts a
                causal mask cannot express (a prompt shared by two answers); it then needs
                ``position_ids``, and a sliding window is applied by position distance. With a
                ``kv_cache`` it is ``(B, 1, T, cached + T)``, the cached entries taken as a
                prompt start at positions ``0 .. cached - 1`` (one that every row shares).
            position_ids: ``(B, T)``; by default counted over real tokens only, so a
                left-padded row gives the same result as the unpadded one.
            kv_cache: a :class:`KVCache` to read and extend (generation).
            return_hidden: return final hidden states ``(B, T, D)`` instead of logits.
            packed: the lengths of sequences laid end to end in one row (``B = 1``, ``T`` their
                sum; no padding, ``attention_mask`` and ``position_ids`` left out): each attends
                within itself only, its positions counted from 0, as if it ran alone. SFT batches
                run so (``TrainConfig.pack``): no compute is spent on padding.
            packed_start: with ``packed``, the row begins with this many tokens that every
                sequence begins with, run once; each sequence (``packed`` then gives the lengths
                of the rest of each) attends to them and to itself, its positions counted after
                them (``TrainConfig.share_start``). A sequence given as lengths ``(prompt, answer,
                answer, ...)`` is a prompt whose answers each see it and themselves only (DPO's
                pairs after a shared start).

        Returns:
            logits ``(B, T, V)`` in the model's dtype, or hidden states ``(B, T, D)``.
        """
        B, T = input_ids.shape
        past = kv_cache.length if kv_cache is not None else 0
        dev = input_ids.device
        if packed_start and packed is None:
            raise ValueError("packed_start is the length of a start that packed sequences share: give packed too")
        if packed is not None:
            masks = {w: Packed(packed, w, dev, packed_start) for w in set(self._windows)}
            total = next(iter(masks.values())).total
            if B != 1 or total != T or kv_cache is not None or position_ids is not None \
                    or (attention_mask is not None and not bool(attention_mask.all())):
                raise ValueError(f"packed sequences ({total} tokens) run as one row of exactly them, without "
                                 f"padding, position_ids or a KV cache; got input_ids of shape {(B, T)}")
            position_ids = next(iter(masks.values())).positions(dev)
        elif attention_mask is not None and attention_mask.dim() == 4:
            masks = {w: _explicit_mask(attention_mask, position_ids, kv_cache, w) for w in set(self._windows)}
        else:
            if position_ids is None:
                position_ids = _positions(attention_mask, past, T, dev)
            masks = {w: _attention_mask(attention_mask, T, past + T, w, dev) for w in set(self._windows)}
        x = self.model.embed_tokens(input_ids)  # (B, T, D)
        if self.config.gemma:  # the scale rounded to the model's dtype first, as Gemma's own code does
            x = x * torch.tensor(self.config.hidden_size ** 0.5, dtype=x.dtype)
        if self.config.embedding_multiplier != 1:  # Granite
            x = x * self.config.embedding_multiplier
        rope = {False: self._rotary(position_ids, x.dtype, masks if packed is not None and not packed_start else None)}
        if any(self._local):
            rope[True] = rope_cos_sin(self.inv_freq_local, position_ids, x.dtype)
        ckpt = self._checkpointed() if self.training and torch.is_grad_enabled() else range(0)
        for i, (layer, window, local, rotate) in enumerate(zip(self.model.layers, self._windows, self._local,
                                                                self._rope)):
            cos, sin = rope[local] if rotate else (None, None)
            if i in ckpt:
                x = checkpoint(layer, x, cos, sin, masks[window], kv_cache, use_reentrant=False)
            else:
                x = layer(x, cos, sin, masks[window], kv_cache)
        if kv_cache is not None:
            kv_cache.advance(T)
        h = self.model.norm(x)
        return h if return_hidden else self.logits(h)

    def _rotary(self, position_ids: torch.Tensor, dtype: torch.dtype, packed: dict | None) -> tuple:
        """cos and sin at ``position_ids``. LongRoPE (Phi-3) takes its long factors for a sequence
        whose furthest position is past the pretrained context: each row of a batch, and each of
        the sequences ``packed`` in a row (their :class:`Packed` masks), by its own, so that a
        sequence's logits are those it has alone, whatever it is batched with (transformers
        decides for a batch by its furthest row; for a sequence alone the two agree). Chosen on the
        device (no sync; a memory estimate's fake tensors hold no positions to read)."""
        short = rope_cos_sin(self.inv_freq, position_ids, dtype, self._rope_scale)
        if self._long_from is None or not position_ids.numel():
            return short
        long = rope_cos_sin(self.inv_freq_long, position_ids, dtype, self._rope_scale)
        if packed is None:
            past = (position_ids.amax(dim=1) + 1 > self._long_from)[:, None, None]
        else:
            ends = torch.zeros_like(position_ids[0])
            for a, b, _, _ in next(iter(packed.values())).spans:
                ends[a:b] = position_ids[0, a:b].max() + 1
            past = (ends > self._long_from)[None, :, None]
        return torch.where(past, long[0], short[0]), torch.where(past, long[1], short[1])

    def checkpointed_layers(self) -> int:
        """How many layers recompute their activations in the backward (``gradient_checkpointing``:
        True for all, False for none, or a number of them): the lowest ones the backward reaches
        (:meth:`backward_layers`)."""
        return len(self._checkpointed())

    def _checkpointed(self) -> range:
        """The layers that recompute their activations: the lowest ``gradient_checkpointing`` of
        those the backward reaches (below them nothing is kept anyway: ``--lora-layers``)."""
        n = self.gradient_checkpointing
        if not n:  # (no scan of the parameters in every forward of a run without it)
            return range(0)
        reached = self.backward_layers()
        first = len(self.model.layers) - reached
        return range(first, first + (reached if n is True else min(int(n), reached)))

    def backward_layers(self) -> int:
        """How many layers the backward goes through: from the first with a trainable parameter
        (every one where the embeddings train) to the top."""
        layers = self.model.layers
        if any(p.requires_grad for p in self.model.embed_tokens.parameters()):
            return len(layers)
        first = next((i for i, layer in enumerate(layers) if any(p.requires_grad for p in layer.parameters())),
                     len(layers))
        return len(layers) - first

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def _positions(attention_mask, past: int, T: int, device) -> torch.Tensor:
    if attention_mask is None:
        return torch.arange(past, past + T, device=device)[None]
    pos = attention_mask.long().cumsum(-1) - 1  # (B, S): index among real tokens
    return pos[:, -T:].clamp(min=0)


def _attention_mask(attention_mask, T: int, S: int, window: int | None, device) -> torch.Tensor | None:
    """Boolean ``(B|1, 1, T, S)`` mask, True where a query may attend; None means plain causal."""
    if attention_mask is None and T == S and (window is None or window >= T):
        return None
    q = torch.arange(S - T, S, device=device)[:, None]  # (T, 1): query positions in the key axis
    k = torch.arange(S, device=device)[None]  # (1, S)
    allowed = k <= q
    if window is not None:
        allowed &= q - k < window
    allowed = allowed[None, None]  # (1, 1, T, S)
    if attention_mask is not None:
        allowed = allowed & attention_mask.bool()[:, None, None, :]
        # a padding query sees no key at all; letting it see itself keeps SDPA finite
        allowed = allowed | (k == q)[None, None]
    return allowed


def _explicit_mask(allowed, position_ids, kv_cache, window: int | None) -> torch.Tensor:
    """A caller's ``(B, 1, T, past + T)`` "may attend" mask (``past``: the entries a ``kv_cache``
    holds, a prompt start at positions ``0 .. past - 1``), with the sliding window applied by
    position distance and each query always seeing itself (keeps SDPA finite on padding)."""
    B, T = allowed.shape[0], allowed.shape[-2]
    past = kv_cache.length if kv_cache is not None else 0
    if position_ids is None or allowed.dtype != torch.bool or allowed.shape[-1] != past + T:
        raise ValueError(f"a boolean (B, 1, T, cached + T) attention mask needs position_ids; got one of shape "
                         f"{tuple(allowed.shape)} for {T} tokens after {past} cached, positions "
                         f"{'given' if position_ids is not None else 'not given'}")
    dev = allowed.device
    if window is not None:
        keys = torch.cat([torch.arange(past, device=dev).expand(B, past), position_ids], 1)  # (B, past + T)
        allowed = allowed & (position_ids[:, None, :, None] - keys[:, None, None, :] < window)
    itself = torch.zeros(T, past + T, dtype=torch.bool, device=dev)
    itself[:, past:] = torch.eye(T, dtype=torch.bool, device=dev)
    return allowed | itself
