"""DPO after SFT as one adapter on the base model: the two low-rank updates side by side.

DPO after SFT trains a fresh adapter on the model with the SFT adapter merged in. Saved on its
own, that adapter is right only on top of that merged model, yet every reader (PEFT, vLLM,
``prefopt eval --adapter``, ``prefopt merge``) puts an adapter on the base model it names. So
the trainer saves the two stacked, one plain LoRA of rank r₁ + r₂ with scaling 1::

    s₁ B₁ A₁ + s₂ B₂ A₂ = [s₁B₁ | s₂B₂] · [A₁; A₂]        (lora_alpha = r = r₁ + r₂)

A layer that only one of them adapts gets zeros in the other's rows. ``stacked_on.json`` beside
the adapter names the adapters folded in, so a reader can tell a stacked adapter from a bare one.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .fileio import write_json_atomic
from .lora import LoRAConfig, lora_layers, read_adapter, write_adapter

STACK_FILE = "stacked_on.json"


def _updates(tensors: dict[str, torch.Tensor], scaling: float) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{module: (A, scaling · B)}`` in fp32 on the CPU, from adapter tensors under prefopt's names."""
    return {name.split(".lora_A.")[0]: (a.detach().float().cpu(),
                                       tensors[name.replace(".lora_A.", ".lora_B.")].detach().float().cpu() * scaling)
            for name, a in tensors.items() if ".lora_A." in name}


def stack_adapters(first: tuple[LoRAConfig, dict[str, torch.Tensor]], model: nn.Module
                   ) -> tuple[LoRAConfig, dict[str, torch.Tensor]]:
    """One adapter equal to ``first`` (config, tensors) followed by ``model``'s own LoRA layers,
    which were trained on the model with ``first`` merged in. Tensors in the model's LoRA dtype."""
    (cfg1, t1), cfg2 = first, model.lora_config
    layers = dict(lora_layers(model))
    dtype = next(iter(layers.values())).lora_A.weight.dtype
    one = _updates(t1, cfg1.scaling)
    two = _updates({f"{n}.lora_{x}.weight": getattr(m, f"lora_{x}").weight for n, m in layers.items() for x in "AB"},
                   cfg2.scaling)
    tensors = {}
    for module in sorted(set(one) | set(two)):
        a, b = one.get(module) or two[module]
        n_in, n_out = a.shape[1], b.shape[0]
        parts = [updates.get(module, (torch.zeros(r, n_in), torch.zeros(n_out, r)))
                 for updates, r in ((one, cfg1.r), (two, cfg2.r))]
        if parts[0][0].shape[1] != parts[1][0].shape[1] or parts[0][1].shape[0] != parts[1][1].shape[0]:
            raise ValueError(f"{module}: the two adapters disagree on its shape")
        tensors[f"{module}.lora_A.weight"] = torch.cat([p[0] for p in parts], 0).to(dtype)
        tensors[f"{module}.lora_B.weight"] = torch.cat([p[1] for p in parts], 1).to(dtype)
    r = cfg1.r + cfg2.r
    targets = tuple(sorted(set(cfg1.target_modules) | set(cfg2.target_modules)))
    return LoRAConfig(r=r, alpha=float(r), dropout=cfg2.dropout, target_modules=targets), tensors


def save_stacked_adapter(model: nn.Module, first_dir: str | Path, out_dir: str | Path, *,
                         base_model: str | None = None) -> Path:
    """Save ``model``'s adapter, trained on top of the merged adapter in ``first_dir``, as one
    adapter on the base model (see the module's docstring)."""
    first = read_adapter(first_dir)
    cfg, tensors = stack_adapters(first, model)
    out = write_adapter(tensors, cfg, out_dir, base_model=base_model)
    write_json_atomic(out / STACK_FILE, {
        "adapters": [str(Path(first_dir).resolve()), "this run's own adapter"],
        "ranks": [first[0].r, model.lora_config.r],
        "note": "one LoRA adapter on the base model: the adapters' updates side by side (alpha = r, scaling 1)",
    })
    return out


def is_stacked(adapter_dir: str | Path) -> bool:
    return (Path(adapter_dir) / STACK_FILE).is_file()


__all__ = ["STACK_FILE", "is_stacked", "save_stacked_adapter", "stack_adapters"]
