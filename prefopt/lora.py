"""LoRA: low-rank adapters as a drop-in replacement for ``nn.Linear``.

``LoRALinear`` keeps the ``weight`` (and ``bias``) of the layer it replaces, so a base
checkpoint loads into an adapted model unchanged. The adapter adds ``lora_B(lora_A(x))``
scaled by ``alpha / r`` (rank-stabilised LoRA, PEFT's ``use_rslora``: ``alpha / sqrt(r)``)::

    y = x Wᵀ + b + (α/r) · B A x        A: (r, in)  B: (out, r), B starts at zero

DoRA (PEFT's ``use_dora``) also learns each output row's magnitude ``m``, and scales each row
of ``W + ΔW`` to it: ``W' = m / ‖W + ΔW‖ · (W + ΔW)``, the norm taken as a constant.

A mixture of experts' routed experts take adapters on their stacked tensors (PEFT's
``target_parameters``) through ``prefopt.lora_experts``. Adapter files (PEFT's layout) are read
and written by ``prefopt.lora_files``; ``prefopt.lora_stack.save_adapter`` saves a model's
adapter (with any merged before it).
"""
from __future__ import annotations

import math
import re
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from . import lora_experts
from .lora_ops import dora_linear, lora_linear
from .quant import FUSED, PROJECTIONS, STAYS_MERGED, QuantLinear

DEFAULT_TARGETS = PROJECTIONS  # every attention and MLP projection
ALL_LINEAR = "all-linear"  # PEFT's name for every linear layer but the output head
PEFT_PREFIX = "base_model.model."


@dataclass
class LoRAConfig:
    r: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    target_modules: tuple[str, ...] = DEFAULT_TARGETS
    rslora: bool = False  # rank-stabilised: the update scaled by alpha / sqrt(r) (Kalajdzievski 2023)
    dora: bool = False  # weight-decomposed (Liu et al. 2024; PEFT's use_dora): a magnitude per output row too
    layers: tuple[int, ...] | None = None  # the transformer layers adapted (PEFT's layers_to_transform); None: all
    # a mixture of experts' expert tensors adapted (PEFT's target_parameters): gate_up_proj, down_proj (lora_experts)
    target_parameters: tuple[str, ...] = ()
    # an adapter made on transformers 4, whose experts were modules (experts.3.w1): names match inside them too
    expert_modules: bool = False

    def __post_init__(self):
        if self.r < 1:
            raise ValueError(f"LoRA rank r must be >= 1, got {self.r}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout}")
        self.target_modules = tuple(self.target_modules or ())
        bad = [p for p in self.target_parameters if p not in lora_experts.EXPERT_PARTS]
        if bad:
            raise ValueError(f"LoRA target_parameters {bad}: prefopt adapts the experts' "
                             f"{' and '.join(lora_experts.EXPERT_PARTS)}")
        self.target_parameters = tuple(p for p in lora_experts.EXPERT_PARTS if p in self.target_parameters)
        if not self.target_modules and not self.target_parameters:
            raise ValueError("LoRA target_modules is empty")
        if self.layers is not None:
            self.layers = tuple(sorted(set(self.layers)))
            if not self.layers or any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in self.layers):
                raise ValueError(f"LoRA layers must be layer numbers >= 0, got {self.layers!r}")

    @property
    def scaling(self) -> float:
        return lora_scaling(self.r, self.alpha, self.rslora)


def adapter_dtype(base_dtype: torch.dtype) -> torch.dtype:
    """The dtype an adapter's factors are kept and trained in: float32 over a 16-bit base (as PEFT's
    ``autocast_adapter_dtype``), so that AdamW's small steps are not rounded away (in bfloat16, on
    a tiny model, 97% of A's entries never moved in 3 steps at lr 1e-5); the base's own dtype
    otherwise. The forward computes in the activations' dtype (or autocast's) all the same."""
    return torch.float32 if base_dtype in (torch.bfloat16, torch.float16) else base_dtype


def lora_scaling(r: int, alpha: float, rslora: bool = False) -> float:
    """What the update ``B A`` is multiplied by: ``alpha / r``, or ``alpha / sqrt(r)`` (rsLoRA)."""
    return alpha / math.sqrt(r) if rslora else alpha / r


class LoRALinear(nn.Module):
    """``nn.Linear`` plus a rank-``r`` adapter. Keeps the ``weight``/``bias`` keys."""

    stays_merged = False  # a merge here can be undone (not so in 4 bits: QLoRALinear)

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0, rslora: bool = False,
                 dora: bool = False):
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self._keep_base(base)
        self.bias = base.bias
        factory = dict(device=base.weight.device, dtype=adapter_dtype(base.weight.dtype))
        self.lora_A = nn.Linear(self.in_features, r, bias=False, **factory)
        self.lora_B = nn.Linear(r, self.out_features, bias=False, **factory)
        self.r, self.alpha, self.rslora, self.scaling = r, alpha, rslora, lora_scaling(r, alpha, rslora)
        self.dropout = float(dropout)  # applied to the adapter's input in training mode
        self.merged = False
        self.disabled = False
        # DoRA: each output row's magnitude (PEFT's lora_magnitude_vector); None for plain LoRA
        self.lora_magnitude = nn.Parameter(base.weight.detach().float().norm(dim=1).to(factory["dtype"]),
                                           requires_grad=False) if dora else None  # apply_lora makes it trainable
        self._merged_norm = None  # DoRA: the row norms a merge divided by, for its unmerge
        self._norm_cache = None  # DoRA: (what it was computed from, the row norms of W + ΔW)
        self.reset_lora()

    def _keep_base(self, base: nn.Module) -> None:
        self.weight = base.weight

    def _weight_source(self):
        """What the fused ops read the base weight from (a quantized layer: its codes, not a copy)."""
        return self.weight

    def _base_key(self) -> tuple:
        """What tells whether the base weight changed (for DoRA's kept norms)."""
        return self.weight.data_ptr(), self.weight._version

    def _frozen_base(self) -> bool:
        """Whether the base weight and bias take no gradient (then the fused ops run)."""
        return not (self.weight.requires_grad or (self.bias is not None and self.bias.requires_grad))

    def reset_lora(self) -> None:
        """PEFT's default init: A Kaiming-uniform, B zero (so the adapter starts as a no-op)."""
        if self.lora_A.weight.is_meta:
            return
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    def lora_delta(self) -> torch.Tensor:
        """scaling · B A (α/r, or α/√r for rsLoRA), shaped like ``weight``; computed in fp32."""
        return (self.lora_B.weight.float() @ self.lora_A.weight.float()) * self.scaling

    def delta_weight(self) -> torch.Tensor:
        """What the adapter adds to ``weight`` (of the unmerged layer), in fp32: ``lora_delta``, or
        for DoRA ``m / ‖W + ΔW‖ · (W + ΔW) − W``, each row scaled to its magnitude ``m``."""
        delta = self.lora_delta()
        if self.lora_magnitude is None:
            return delta
        w = self.weight.float()
        return (self.lora_magnitude.float() / self._dora_norm())[:, None] * (w + delta) - w

    def _dora_norm(self) -> torch.Tensor:
        """Each row's norm of ``W + ΔW``, a constant (DoRA's section 4.3; PEFT detaches it too), kept
        until ``W``, A or B change (their version counters: an optimizer step or a load bumps them),
        so that generating token by token does not recompute it at every step (3x the time)."""
        key = (self._base_key(), *((t.data_ptr(), t._version) for t in (self.lora_A.weight, self.lora_B.weight)))
        if self._norm_cache is None or self._norm_cache[0] != key:  # in fp32 whatever autocast is on, so kept
            with torch.no_grad(), torch.autocast(self.lora_A.weight.device.type, enabled=False):  # values never differ
                self._norm_cache = (key, (self.weight.float() + self.lora_delta()).norm(dim=1))
        return self._norm_cache[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged or self.disabled:
            return F.linear(x, self.weight, self.bias)
        p = self.dropout if self.training else 0.0
        frozen = self._frozen_base()
        if self.lora_magnitude is not None and frozen:
            return dora_linear(x, self._weight_source(), self.bias, self.lora_A.weight, self.lora_B.weight,
                               self.lora_magnitude, self._dora_norm(), self.scaling, p)
        if self.lora_magnitude is not None:  # DoRA on a trainable base, as PEFT computes it: plain autograd
            scale = (self.lora_magnitude.float() / self._dora_norm()).to(x.dtype)
            xd = F.dropout(x, p, self.training)
            lora = self._adapter(xd) * self.scaling
            return F.linear(x, self.weight, self.bias) + (scale - 1) * F.linear(xd, self.weight) + scale * lora
        if frozen:
            return lora_linear(x, self._weight_source(), self.bias, self.lora_A.weight, self.lora_B.weight,
                               self.scaling, p)
        y = F.linear(x, self.weight, self.bias)  # a trainable base: plain autograd
        return y + self._adapter(F.dropout(x, p, self.training)) * self.scaling

    def _adapter(self, x: torch.Tensor) -> torch.Tensor:
        """``x Aᵀ Bᵀ`` in ``x``'s dtype (the factors may be kept wider: :func:`adapter_dtype`)."""
        return F.linear(F.linear(x, self.lora_A.weight.to(x.dtype)), self.lora_B.weight.to(x.dtype))

    def fused_operands(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x', w')`` whose product ``x' w'ᵀ`` is this layer's output (less its bias), for a
        product taken elsewhere as one matmul: the lm_head's, by the fused log-prob kernels, which
        take the hidden states and one weight. The adapter widens both by its rank:
        ``[x, s·drop(x) Aᵀ]`` and ``[W, B]``; DoRA's row scale ``c = m / ‖W + ΔW‖`` gives
        ``[c·W, c·B]``, and with dropout in training (PEFT's ``x Wᵀ + (c−1)·drop(x) Wᵀ +
        c·s·drop(x) Aᵀ Bᵀ``) ``[x, drop(x), s·drop(x) Aᵀ]`` and ``[W, (c−1)·W, c·B]``. Autograd
        takes the gradients to A, B and m through them; ``w'`` is a new weight-sized tensor."""
        w = self.weight
        if self.merged or self.disabled:
            return x, w
        p = self.dropout if self.training else 0.0
        xd = F.dropout(x, p, self.training) if p else x
        low = (F.linear(xd, self.lora_A.weight.to(xd.dtype)) * self.scaling).to(x.dtype)
        b = self.lora_B.weight.to(w.dtype)
        if self.lora_magnitude is None:
            return torch.cat([x, low], -1), torch.cat([w, b], -1)
        c = (self.lora_magnitude.float() / self._dora_norm()).to(w.dtype)[:, None]
        if not p:
            return torch.cat([x, low], -1), torch.cat([c * w, c * b], -1)
        return torch.cat([x, xd, low], -1), torch.cat([w, (c - 1) * w, c * b], -1)

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the adapter into ``weight``; a second call does nothing."""
        if self.merged:
            return
        if self.lora_magnitude is not None:
            self._merged_norm = self._dora_norm()  # of the unmerged weight, as the merge divides by it
        self.weight.data = (self.weight.float() + self.delta_weight()).to(self.weight.dtype)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if not self.merged:
            return
        if self.lora_magnitude is not None:  # W' = (m / n) · (W + ΔW), so W = W' · n / m − ΔW
            w = self.weight.float() * (self._merged_norm / self.lora_magnitude.float())[:, None] - self.lora_delta()
            self.weight.data, self._merged_norm = w.to(self.weight.dtype), None
        else:
            self.weight.data = (self.weight.float() - self.delta_weight()).to(self.weight.dtype)
        self.merged = False

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, r={self.r}, alpha={self.alpha}, "
                f"scaling={self.scaling:g}, merged={self.merged}")


class QLoRALinear(LoRALinear):
    """A :class:`LoRALinear` on a 4-bit base (``prefopt.quant.QuantLinear``; QLoRA). ``weight`` is
    the base's dequantized weight, made on each access; the fused ops dequantize it in the forward
    and again in the backward, so only the codes stay in memory. A merge keeps the update beside
    the codes as its factors (``QuantLinear.add_update``), exact and for good (no unmerge); a DoRA
    adapter, which rescales whole rows, cannot merge into 4 bits."""

    def _keep_base(self, base: QuantLinear) -> None:
        self.base_layer = base

    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.weight

    def _weight_source(self):
        return self.base_layer

    def _base_key(self) -> tuple:
        q = self.base_layer
        return q.codes.data_ptr(), q.codes._version, None if q.update_a is None else q.update_a.data_ptr()

    def _frozen_base(self) -> bool:  # 4-bit codes take no gradient; asking the weight would dequantize it
        return self.bias is None or not self.bias.requires_grad

    @torch.no_grad()
    def merge(self) -> None:
        if self.merged:
            return
        if self.lora_magnitude is not None:
            raise RuntimeError(QUANTIZED_DORA_MERGE)
        self.base_layer.add_update(self.lora_A.weight, self.lora_B.weight * self.scaling)
        self.merged = True

    @property
    def stays_merged(self) -> bool:
        return self.merged

    def unmerge(self) -> None:
        if self.merged:
            raise RuntimeError(STAYS_MERGED)


TIED_HEAD = ("lm_head: this model's output head is its input embedding (tie_word_embeddings), which prefopt puts no "
             "adapter on (merged, it would change the input embedding too); leave lm_head out of the LoRA targets")


def _tied(model: nn.Module) -> bool:
    return bool(getattr(getattr(model, "config", None), "tie_word_embeddings", False))


_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def layer_index(name: str) -> int | None:
    """The transformer layer a module's full name is in (``model.layers.3.self_attn.q_proj``: 3),
    as PEFT's ``layers_to_transform`` reads it; None outside the layers (the lm_head)."""
    m = _LAYER.search(name)
    return None if m is None else int(m.group(1))


def parse_layers(spec: str | None) -> tuple[int, ...] | None:
    """``"16-31"``, ``"0,2,4"`` or ``"0-3,8"`` as layer numbers; None stays None (every layer)."""
    if spec is None:
        return None
    out = []
    for part in str(spec).replace(" ", "").split(","):
        lo, dash, hi = part.partition("-")
        if not lo.isdigit() or (dash and not hi.isdigit()) or (dash and int(hi) < int(lo)):
            raise ValueError(f"layers: {spec!r} is not layer numbers such as 16-31 or 0,2,4")
        out += range(int(lo), int(hi) + 1) if dash else [int(lo)]
    return tuple(sorted(set(out)))


def describe(cfg: LoRAConfig) -> str:
    """``"LoRA r16 (alpha 32) on q_proj, v_proj in layers 22-29"``: what an adapter is, in words."""
    kind = "DoRA" if cfg.dora else "LoRA"
    scale = f"alpha {cfg.alpha:g}" + (", rsLoRA" if cfg.rslora else "")
    where = f" in {layer_text(cfg.layers)}" if cfg.layers is not None else ""
    experts = [f"the experts' {', '.join(cfg.target_parameters)}"] if cfg.target_parameters else []
    return f"{kind} r{cfg.r} ({scale}) on {', '.join([*cfg.target_modules, *experts])}{where}"


def layer_text(layers: Iterable[int] | None) -> str:
    """``(0, 1, 2, 5)`` as ``"layers 0-2, 5"``, ``(3,)`` as ``"layer 3"``, None as ``"every layer"``."""
    if layers is None:
        return "every layer"
    layers = sorted(set(layers))
    runs: list[list[int]] = []
    for i in layers:
        if runs and i == runs[-1][-1] + 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    spans = ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs)
    return f"layer{'s' if len(layers) > 1 else ''} {spans}"


QUANTIZED_MERGE = ("a 4-bit (quantized) model cannot be exported or saved whole: load it in full precision "
                   "(load_model without quantize, or prefopt merge) to fold adapters into its weights")
QUANTIZED_DORA_MERGE = ("a DoRA adapter rescales whole rows of the weight, which 4-bit layers cannot take in: load the "
                        "model in full precision to merge it (or keep it unmerged on the 4-bit model)")


def apply_lora(
    model: nn.Module,
    r: int = 16,
    alpha: float = 32.0,
    dropout: float = 0.05,
    target_modules: Iterable[str] = DEFAULT_TARGETS,
    *,
    strict: bool = True,
    rslora: bool = False,
    dora: bool = False,
    layers: Iterable[int] | None = None,
    target_parameters: Iterable[str] = (),
    expert_modules: bool = False,
) -> nn.Module:
    """Replace each ``nn.Linear`` whose name ends in one of ``target_modules`` with a
    :class:`LoRALinear`, and freeze every other parameter. Returns ``model``.

    ``"all-linear"`` (PEFT's shorthand) stands for every linear layer but the lm_head.
    Every name must match some layer (``strict``): a misspelt one would otherwise leave that
    layer untrained without a word. :func:`prefopt.lora_files.load_adapter` is lenient, as PEFT is: an adapter's
    tensors, checked key by key, say which layers it holds. ``rslora``: scale the update by
    ``alpha / sqrt(r)`` instead of ``alpha / r`` (PEFT's ``use_rslora``). ``dora``: DoRA layers,
    each output row's magnitude trained with A and B (PEFT's ``use_dora``). ``layers``: adapt
    only the named layers in these transformer layers (PEFT's ``layers_to_transform``; a module
    outside the layers, such as the lm_head, then gets none); the backward pass then stops at the
    lowest of them, so training the top layers only saves memory and time. ``target_parameters``:
    also adapt a mixture of experts' routed experts, ``gate_up_proj`` and/or ``down_proj`` of
    every expert (PEFT's ``target_parameters``; ``prefopt.lora_experts``): no dropout, DoRA or
    ``layers`` with them, as in PEFT. ``expert_modules``: names match inside a mixture of experts
    too (each expert's ``w1``, ``gate_proj``...; the router's ``gate``), as PEFT on transformers 4
    matched them, whose experts were modules: for adapters made there (``load_adapter`` tells them
    by their keys).
    """
    if held := [name for name, _ in lora_layers(model)]:
        raise ValueError(f"the model already has LoRA adapters ({len(held)} layers, e.g. {held[0]}); a new one goes on "
                         "a model without: merge_and_unload(model) first to build on the one it has, or load the "
                         "model again")
    layers = None if layers is None else tuple(layers)
    target_parameters = tuple(target_parameters)
    if target_parameters and (why := lora_experts.conflicts(dropout, dora, layers)):
        raise ValueError(why)
    n_layers = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    if layers and n_layers is not None and max(layers) >= n_layers:
        raise ValueError(f"LoRA on {layer_text(layers)}: the model has layers 0-{n_layers - 1}")
    frozen = () if expert_modules else _without_adapters(model)
    linear = {name.rsplit(".", 1)[-1] for name, c in model.named_modules()
              if type(c) in (nn.Linear, QuantLinear) and (layers is None or layer_index(name) in layers)
              and not f"{name}.".startswith(frozen)}
    target_modules = tuple(target_modules)
    mlp_names_are_experts = not expert_modules and any(getattr(m, "no_adapters", False) and hasattr(m, "experts")
                                                       for m in model.modules())
    if mlp_names_are_experts:  # a mixture of experts: its MLP projections name its experts, which adapt nothing here
        experts = (_names_in(model) - linear) | set(MLP_PROJECTIONS)
        dropped = [t for t in target_modules if t in experts]
        target_modules = tuple(t for t in target_modules if t not in dropped)
        linear -= set(MLP_PROJECTIONS)  # all-linear: not a dense layer's MLP either (PEFT would not read it)
        if dropped and not target_parameters:
            warnings.warn(f"LoRA: {', '.join(dropped)} name this model's experts (a mixture of experts), which get "
                          "no adapter, nor does their router (nor a dense layer's MLP: PEFT reads those names as "
                          "the experts'); the adapter covers the attention", stacklevel=2)
    target_modules = _fused_targets(target_modules, linear)
    if ALL_LINEAR in target_modules:  # PEFT's shorthand: every linear layer but the output head
        target_modules = tuple(dict.fromkeys([*(t for t in target_modules if t != ALL_LINEAR),
                                              *sorted(linear - {"lm_head"})]))
    cfg = LoRAConfig(r=r, alpha=alpha, dropout=dropout, target_modules=target_modules, rslora=rslora, dora=dora,
                     layers=layers, target_parameters=target_parameters, expert_modules=expert_modules)
    unmatched = [t for t in cfg.target_modules if t not in linear]
    if "lm_head" in unmatched and _tied(model):
        raise ValueError(TIED_HEAD)
    if unmatched and (strict or len(unmatched) == len(cfg.target_modules)):
        where = f" in {layer_text(cfg.layers)}" if cfg.layers else ""
        raise ValueError(f"no nn.Linear named {unmatched} found in the model{where}; its linear layers{where} are "
                         f"{sorted(linear)}")
    for prefix, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            full = f"{prefix}.{child_name}" if prefix else child_name
            if (cfg.layers is not None and layer_index(full) not in cfg.layers) or f"{full}.".startswith(frozen) or (
                    mlp_names_are_experts and child_name in MLP_PROJECTIONS):
                continue
            if type(child) in (nn.Linear, QuantLinear) and child_name in cfg.target_modules:
                layer = QLoRALinear if type(child) is QuantLinear else LoRALinear
                lora = layer(child, cfg.r, cfg.alpha, cfg.dropout, cfg.rslora, cfg.dora)
                lora.train(child.training)  # an eval-mode model stays in eval mode (no dropout)
                setattr(module, child_name, lora)
    if cfg.target_parameters:
        lora_experts.attach(model, cfg.target_parameters, cfg.r, cfg.alpha, cfg.rslora)
    for name, p in model.named_parameters():
        p.requires_grad_(is_adapter_key(name))
    model.lora_config = cfg
    model.lora_source = None  # a fresh adapter; load_adapter names the folder it came from
    return model


MLP_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")


def _fused_targets(targets: tuple[str, ...], linear: set[str]) -> tuple[str, ...]:
    """``targets`` on a model whose layers hold several projections in one (Phi-3's ``qkv_proj``
    and ``gate_up_proj``: :data:`prefopt.quant.FUSED`): a projection's name (the default targets,
    ``--lora-targets q_proj,v_proj``) stands for the layer that holds it, whose adapter covers all
    of it, as PEFT's on such a model must; said where only part of a layer was named."""
    fused = {t: FUSED[t] for t in targets if t not in linear and FUSED.get(t) in linear}
    if not fused:
        return targets
    for layer in dict.fromkeys(fused.values()):
        named = [t for t, f in fused.items() if f == layer]
        whole = [t for t, f in FUSED.items() if f == layer]
        if len(named) < len(whole):
            warnings.warn(f"LoRA: {', '.join(named)} {'is' if len(named) == 1 else 'are'} part of this model's "
                          f"{layer} (one layer for {', '.join(whole)}): the adapter goes on the whole {layer}, as "
                          "PEFT's would", stacklevel=3)
    return tuple(dict.fromkeys(fused.get(t, t) for t in targets))


def _without_adapters(model: nn.Module) -> tuple[str, ...]:
    """The name prefixes (``"model.layers.0.mlp."``) of the modules LoRA leaves alone, those marked
    ``no_adapters``: a mixture of experts' router and experts (``prefopt.model.transformer.SparseMoE``),
    which PEFT on transformers 5 (its experts fused into 3-D tensors) does not adapt either. A name
    with its trailing dot: ``f"{name}.".startswith(prefixes)`` holds for such a module and those in it."""
    return tuple(f"{name}." for name, m in model.named_modules() if getattr(m, "no_adapters", False))


def _names_in(model: nn.Module) -> set[str]:
    return {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if type(m) in (nn.Linear, QuantLinear)}


def lora_layers(model: nn.Module) -> Iterator[tuple[str, LoRALinear | lora_experts.ExpertLoRA]]:
    """Every adapted layer: each :class:`LoRALinear`, and each experts' tensor adapted
    (:class:`prefopt.lora_experts.ExpertLoRA`, which answers to ``merged``, ``disabled``, ``merge``)."""
    for name, m in model.named_modules():
        if isinstance(m, (LoRALinear, lora_experts.ExpertLoRA)):
            yield name, m


@contextmanager
def disable_adapter(model: nn.Module):
    """Run the base model: inside the block every adapter is bypassed."""
    layers = [m for _, m in lora_layers(model)]
    if any(m.merged for m in layers):
        raise RuntimeError("disable_adapter() on a merged model: unmerge_lora(model) first")
    previous = [m.disabled for m in layers]
    for m in layers:
        m.disabled = True
    try:
        yield model
    finally:
        for m, was in zip(layers, previous):
            m.disabled = was


def merge_lora(model: nn.Module) -> nn.Module:
    """Merge every adapter into its base weight, in place (guarded by each layer's ``merged``)."""
    for _, m in lora_layers(model):
        m.merge()
    return model


def unmerge_lora(model: nn.Module) -> nn.Module:
    """Take every merged adapter back out of its base weight, in place, so that it trains (or is
    disabled) again; undoes :func:`merge_lora`. An adapter merged into a 4-bit layer stays merged
    (a ``RuntimeError`` says so, before any layer is changed)."""
    layers = [m for _, m in lora_layers(model) if m.merged]
    if any(m.stays_merged for m in layers):
        raise RuntimeError(STAYS_MERGED)
    for m in layers:
        m.unmerge()
    return model


@dataclass
class MergedAdapter:
    """An adapter folded into the model's weights, kept (on the CPU) so that an adapter trained
    on top of it can be saved with it (``prefopt.lora_stack.save_adapter``)."""
    config: LoRAConfig
    tensors: dict[str, torch.Tensor]  # under prefopt's module names
    source: str | None  # the folder it was loaded from, if any
    # DoRA: each layer's row scale at the merge, m / ‖W + ΔW‖ (fp32), which the stacking needs
    row_scales: dict[str, torch.Tensor] = field(default_factory=dict)


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Fold every adapter into its weight and put a plain ``nn.Linear`` back in its place.

    The result has no LoRA left, so a fresh adapter can be applied on top (DPO after SFT). The
    folded adapter is kept in ``model.merged_adapters``, so that ``save_adapter`` writes the
    next one together with it, an adapter that is right on the base model.
    """
    cfg = getattr(model, "lora_config", None)
    tensors = {k: v.detach().to("cpu", copy=True) for k, v in lora_state_dict(model).items()}
    row_scales = {}
    for _, m in lora_layers(model):
        if isinstance(m, lora_experts.ExpertLoRA):
            m.merge()
    lora_experts.strip(model)
    for prefix, module in list(model.named_modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, QLoRALinear):  # the update goes beside the 4-bit codes
                child.merge()
                setattr(module, name, child.base_layer)
            elif isinstance(child, LoRALinear):
                child.merge()
                if child.lora_magnitude is not None:
                    scale = child.lora_magnitude.detach().float() / child._merged_norm
                    row_scales[f"{prefix}.{name}" if prefix else name] = scale.cpu()
                plain = nn.Linear(child.in_features, child.out_features, bias=child.bias is not None,
                                  device="meta")
                plain.weight, plain.bias = child.weight, child.bias
                plain.train(child.training)
                setattr(module, name, plain)
    if cfg is not None:
        model.merged_adapters = [*getattr(model, "merged_adapters", []),
                                 MergedAdapter(cfg, tensors, getattr(model, "lora_source", None), row_scales)]
        del model.lora_config
    return model


def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The base model's state dict with every adapter folded in, for export; ``model`` is unchanged."""
    if any(isinstance(m, QuantLinear) for m in model.modules()):
        raise RuntimeError(QUANTIZED_MERGE)
    out = {}
    deltas = {}
    for n, m in lora_layers(model):
        if isinstance(m, lora_experts.ExpertLoRA) and not m.merged:
            deltas.update(m.weight_deltas(n.split(f".{lora_experts.CONTAINER}.")[0]))
        elif not m.merged:
            deltas[f"{n}.weight"] = m.delta_weight()
    for k, v in model.state_dict().items():
        if is_adapter_key(k):
            continue
        out[k] = (v.float() + deltas[k]).to(v.dtype) if k in deltas else v
    return out


def is_adapter_key(k: str) -> bool:
    """Whether a state-dict key is an adapter tensor (A, B, or a DoRA magnitude), not a base weight."""
    return ".lora_A." in k or ".lora_B." in k or k.endswith(".lora_magnitude")


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the adapter tensors (DoRA's magnitudes too), under prefopt's own module names."""
    return {k: v for k, v in model.state_dict().items() if is_adapter_key(k)}


__all__ = [
    "LoRAConfig", "LoRALinear", "MergedAdapter", "QLoRALinear", "apply_lora", "disable_adapter", "is_adapter_key",
    "lora_layers", "lora_scaling", "lora_state_dict", "merge_and_unload", "merge_lora", "merged_state_dict",
]
