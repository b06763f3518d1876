"""LoRA on the routed experts of a mixture of experts (PEFT's ``target_parameters``).

transformers 5 keeps a mixture's experts as two 3-D tensors per layer, ``mlp.experts.gate_up_proj``
``(E, 2I, H)`` (each expert's gate rows, then its up rows) and ``mlp.experts.down_proj`` ``(E, H, I)``,
and PEFT adapts them as parameters: one rank-``r`` update per expert and tensor,
``ΔW_e = s · B_e A_e``. The gate and up projections of an expert share one ``A_e`` (a rank-``r``
update of their stacked ``2I x H`` matrix). prefopt keeps its experts as modules
(``prefopt.model.transformer.SparseMoE``); an :class:`ExpertLoRA` holds one tensor's updates for
every expert, ``A`` as ``(E, r, in)`` and ``B`` as ``(E, out, r)``, and the mixture runs each expert
with them (:meth:`ExpertAdapters.runner`).

PEFT's file layout (:func:`to_peft`, :func:`from_peft`): ``lora_A.weight`` is ``(E·r, in)``, expert
``e``'s rows ``e·r … e·r + r - 1``; ``lora_B.weight`` is ``(out, r·E)``, expert ``e``'s columns
``e, e + E, …``. With both tensors adapted, PEFT wraps the experts twice, gate_up innermost: its keys
are ``mlp.experts.base_layer.lora_A.weight`` (gate_up) and ``mlp.experts.lora_A.weight`` (down).
PEFT takes no dropout, DoRA or ``layers_to_transform`` on them, nor does prefopt.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .model.swiglu import geglu, swiglu
from .quant import STAYS_MERGED

EXPERT_PARTS = ("gate_up_proj", "down_proj")  # PEFT's (transformers') names of the experts' tensors
PEFT_EXPERTS = "mlp.experts"  # where transformers 5 keeps them (Mixtral too; prefopt: block_sparse_moe)
CONTAINER = "expert_adapters"  # the SparseMoE attribute holding them, under prefopt's names


def conflicts(dropout: float, dora: bool, layers) -> str | None:
    """What LoRA on the experts cannot take, as PEFT refuses it with ``target_parameters``, in words
    (None: nothing): dropout (the input cannot be factored out of an expert's update), DoRA, and
    some layers only (PEFT adapts the experts of every layer whatever ``layers_to_transform`` says)."""
    found = [what for what, bad in (("dropout: set lora_dropout to 0", dropout), ("DoRA", dora),
                                    ("lora_layers (PEFT adapts the experts of every layer)", layers is not None))
             if bad]
    return f"LoRA on the experts takes no {'; no '.join(found)} (PEFT refuses them too)" if found else None


class _Factor(nn.Module):
    """One stacked factor, under the ``weight`` key as a linear layer's."""

    def __init__(self, shape: tuple[int, ...], like: torch.Tensor):
        super().__init__()
        from .lora import adapter_dtype

        self.weight = nn.Parameter(torch.zeros(shape, dtype=adapter_dtype(like.dtype), device=like.device))


def _projections(expert: nn.Module) -> tuple[str, str, str]:
    """An expert's gate, up and down projections' names (Mixtral's checkpoint: w1, w3, w2)."""
    return ("w1", "w3", "w2") if hasattr(expert, "w1") else ("gate_proj", "up_proj", "down_proj")


class ExpertLoRA(nn.Module):
    """One of the experts' tensors (``gate_up_proj`` or ``down_proj``) adapted in every expert:
    ``lora_A.weight`` ``(E, r, in)``, ``lora_B.weight`` ``(E, out, r)``, B starting at zero. Answers
    to what :class:`prefopt.lora.LoRALinear` does (``merged``, ``disabled``, ``merge``, ``unmerge``)."""

    lora_magnitude = None  # no DoRA on the experts (PEFT has none either)

    def __init__(self, moe: nn.Module, part: str, r: int, alpha: float, rslora: bool = False):
        super().__init__()
        from .lora import lora_scaling

        expert = moe.experts[0]
        gate, _, down = (getattr(expert, n) for n in _projections(expert))
        gate = getattr(gate, "base_layer", gate)  # under a QLoRA layer: its 4-bit base, as _layers reads it
        quantized = hasattr(gate, "codes")  # a 4-bit layer: its dtype and the codes' device (no dequantized copy)
        like = torch.empty(0, dtype=gate.dtype, device=gate.codes.device) if quantized else gate.weight
        E = len(moe.experts)
        self.part, self.num_experts = part, E
        if part == "gate_up_proj":
            self.in_features, self.out_features = gate.in_features, 2 * gate.out_features
        else:
            self.in_features, self.out_features = down.in_features, down.out_features
        self.lora_A = _Factor((E, r, self.in_features), like)
        self.lora_B = _Factor((E, self.out_features, r), like)
        self.r, self.alpha, self.rslora, self.scaling = r, alpha, rslora, lora_scaling(r, alpha, rslora)
        self.merged = self.disabled = False
        self._moe = (moe,)  # not a submodule: the experts' weights stay the mixture's keys
        self.reset_lora()

    def reset_lora(self) -> None:
        """PEFT's init: each ``(E·r, in)`` A Kaiming-uniform as one matrix, B zero."""
        A = self.lora_A.weight
        if not A.is_meta:
            nn.init.kaiming_uniform_(A.data.view(-1, A.shape[-1]), a=math.sqrt(5))
            nn.init.zeros_(self.lora_B.weight)

    @property
    def active(self) -> bool:
        return not (self.merged or self.disabled)

    def per_expert(self) -> list:
        """One function per expert, ``x -> s · x A_eᵀ B_eᵀ`` (its update of its tokens ``x``). The
        factors are split once (``unbind``): indexing them per expert would make the backward write
        a whole ``(E, r, in)`` gradient for each expert."""
        s = self.scaling  # (factors kept in float32 over a 16-bit base are taken in x's dtype: lora.adapter_dtype)
        return [lambda x, a=a, b=b: F.linear(F.linear(x, a.to(x.dtype)), b.to(x.dtype)) * s
                for a, b in zip(self.lora_A.weight.unbind(0), self.lora_B.weight.unbind(0))]

    def delta(self) -> torch.Tensor:
        """Every expert's ``s · B_e A_e``, ``(E, out, in)`` in fp32."""
        return torch.bmm(self.lora_B.weight.float(), self.lora_A.weight.float()) * self.scaling

    def _targets(self) -> list[tuple[str, int, int]]:
        """``(projection, first row, last row + 1)`` of the update's rows in each expert."""
        names = _projections(self._moe[0].experts[0])
        if self.part == "down_proj":
            return [(names[2], 0, self.out_features)]
        half = self.out_features // 2
        return [(names[0], 0, half), (names[1], half, self.out_features)]

    def weight_deltas(self, prefix: str) -> dict[str, torch.Tensor]:
        """``{state-dict key of an expert's projection weight: its update}`` (fp32), ``prefix`` the
        mixture's name."""
        d = self.delta()
        return {f"{prefix}.experts.{e}.{name}.weight": d[e, lo:hi]
                for e in range(self.num_experts) for name, lo, hi in self._targets()}

    def _layers(self):
        """``(expert, projection layer, first row, last row + 1)`` for each expert and projection the
        update covers; a 4-bit projection as its ``QuantLinear`` (under a QLoRA layer: its base)."""
        for e, expert in enumerate(self._moe[0].experts):
            for name, lo, hi in self._targets():
                layer = getattr(expert, name)
                yield e, getattr(layer, "base_layer", layer), lo, hi

    @torch.no_grad()
    def _fold(self, sign: float) -> None:
        """Add (``sign`` 1) or take away (-1) each expert's update in its weights; a 4-bit layer keeps
        it beside its codes as its factors (QLoRA's merge), for good."""
        for e, layer, lo, hi in self._layers():
            a, b = self.lora_A.weight[e], self.lora_B.weight[e, lo:hi] * (sign * self.scaling)
            if hasattr(layer, "add_update"):
                layer.add_update(a, b)
            else:
                layer.weight.data = (layer.weight.float() + b.float() @ a.float()).to(layer.weight.dtype)

    def merge(self) -> None:
        """Fold each expert's update into its weights; a second call does nothing."""
        if not self.merged:
            self._fold(1.0)
            self.merged = True

    @property
    def stays_merged(self) -> bool:
        """Merged into 4-bit experts (beside their codes), for good."""
        return self.merged and any(hasattr(layer, "add_update") for _, layer, _, _ in self._layers())

    def unmerge(self) -> None:
        if not self.merged:
            return
        if self.stays_merged:
            raise RuntimeError(STAYS_MERGED)
        self._fold(-1.0)
        self.merged = False

    def extra_repr(self) -> str:
        return (f"{self.part}: experts={self.num_experts}, in={self.in_features}, out={self.out_features}, r={self.r}, "
                f"alpha={self.alpha}, scaling={self.scaling:g}, merged={self.merged}")


class ExpertAdapters(nn.ModuleDict):
    """A mixture's :class:`ExpertLoRA` by part (``gate_up_proj``, ``down_proj``); runs the experts with them."""

    def runner(self):
        """``run(e, expert, x)``: expert ``e``'s output for its tokens ``x``, its adapted tensors'
        updates added; made once per forward of the mixture."""
        gate_up, down = (self[p].per_expert() if p in self and self[p].active else None for p in EXPERT_PARTS)

        def run(e: int, expert: nn.Module, x: torch.Tensor) -> torch.Tensor:
            if gate_up is None and down is None:
                return expert(x)
            g_name, u_name, d_name = _projections(expert)
            g, u = getattr(expert, g_name)(x), getattr(expert, u_name)(x)
            if gate_up is not None:
                dg, du = gate_up[e](x).chunk(2, dim=-1)
                g, u = g + dg, u + du
            h = geglu(g, u) if getattr(expert, "geglu", False) else swiglu(g, u)
            y = getattr(expert, d_name)(h)
            return y if down is None else y + down[e](h)

        return run


def attach(model: nn.Module, parts: tuple[str, ...], r: int, alpha: float, rslora: bool = False) -> None:
    """Put :class:`ExpertLoRA` on ``parts`` (``EXPERT_PARTS``, checked by ``LoRAConfig``) of every
    mixture of experts in ``model``; a model with none: an error naming its kind. (``apply_lora``
    refuses a model that has adapters already, these included.)"""
    from .model.transformer import SparseMoE

    mixtures = [(n, m) for n, m in model.named_modules() if isinstance(m, SparseMoE)]
    if not mixtures:
        kind = getattr(getattr(model, "config", None), "model_type", "this model")
        raise ValueError(f"LoRA on the experts ({', '.join(parts)}): {kind} has no mixture of experts")
    for _, moe in mixtures:
        adapters = ExpertAdapters({p: ExpertLoRA(moe, p, r, alpha, rslora) for p in EXPERT_PARTS if p in parts})
        adapters.train(moe.training)
        setattr(moe, CONTAINER, adapters)


def strip(model: nn.Module) -> None:
    """Take every mixture's adapters off (after a merge)."""
    for m in [m for m in model.modules() if isinstance(getattr(m, CONTAINER, None), ExpertAdapters)]:
        delattr(m, CONTAINER)


# ---- PEFT's file layout -------------------------------------------------------------------------------------------

def peft_key(name: str, parts: tuple[str, ...]) -> str:
    """The PEFT key (less ``base_model.model.``) of a prefopt expert-adapter key such as
    ``model.layers.0.block_sparse_moe.expert_adapters.gate_up_proj.lora_A.weight``."""
    mixture, rest = name.split(f".{CONTAINER}.")
    part, leaf = rest.split(".", 1)
    layers = mixture.rsplit(".", 1)[0]
    inner = "base_layer." if part == "gate_up_proj" and "down_proj" in parts else ""
    return f"{layers}.{PEFT_EXPERTS}.{inner}{leaf}"


def prefopt_key(key: str, parts: tuple[str, ...]) -> str | None:
    """The prefopt key of a PEFT expert-adapter key (less ``base_model.model.``), the mixture under
    ``mlp`` (:func:`rename_mixture` puts it under the model's own name); None for any other key."""
    marker = f".{PEFT_EXPERTS}."
    if marker not in key or not parts:
        return None
    layers, rest = key.split(marker, 1)
    nested = rest.startswith("base_layer.")
    rest = rest.removeprefix("base_layer.")
    if rest not in ("lora_A.weight", "lora_B.weight"):
        return None
    part = parts[0] if len(parts) == 1 else "gate_up_proj" if nested else "down_proj"
    return f"{layers}.mlp.{CONTAINER}.{part}.{rest}"


def rename_mixture(name: str, ffn_name: str) -> str:
    """An expert-adapter key with its mixture under the model's name for it (Mixtral's ``block_sparse_moe``)."""
    return name.replace(f".mlp.{CONTAINER}.", f".{ffn_name}.{CONTAINER}.", 1)


def to_peft(t: torch.Tensor, leaf: str) -> torch.Tensor:
    """prefopt's ``(E, r, in)`` A or ``(E, out, r)`` B as PEFT stores it: ``(E·r, in)``, ``(out, r·E)``."""
    if leaf.startswith("lora_A"):
        return t.reshape(-1, t.shape[-1]).contiguous()
    return t.permute(1, 2, 0).reshape(t.shape[1], -1).contiguous()


def from_peft(t: torch.Tensor, leaf: str, r: int) -> torch.Tensor:
    """The inverse of :func:`to_peft` for rank ``r``."""
    if leaf.startswith("lora_A"):
        return t.reshape(-1, r, t.shape[-1])
    return t.reshape(t.shape[0], r, -1).permute(2, 0, 1).contiguous()


def is_expert_key(name: str) -> bool:
    return f".{CONTAINER}." in name


__all__ = ["EXPERT_PARTS", "ExpertAdapters", "ExpertLoRA", "attach", "from_peft", "is_expert_key", "peft_key",
           "prefopt_key", "rename_mixture", "strip", "to_peft"]
