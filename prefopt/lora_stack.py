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

import functools
import json
from pathlib import Path

import torch
from torch import nn

from .fileio import write_json_atomic
from .lora import LoRAConfig, adapter_base, lora_state_dict, read_adapter, write_adapter

STACK_FILE = "stacked_on.json"
DORA_STACK = ("a DoRA adapter scales the base weights row by row, so no single LoRA adapter equals it stacked with "
              "another: merge it into the model first (prefopt merge) and train on the merged folder (--model)")


def _updates(tensors: dict[str, torch.Tensor], scaling: float) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{module: (A, scaling · B)}`` in fp32 on the CPU, from adapter tensors under prefopt's names."""
    return {name.split(".lora_A.")[0]: (a.detach().float().cpu(),
                                       tensors[name.replace(".lora_A.", ".lora_B.")].detach().float().cpu() * scaling)
            for name, a in tensors.items() if ".lora_A." in name}


def stack_adapters(first: tuple[LoRAConfig, dict[str, torch.Tensor]], second: tuple[LoRAConfig, dict[str, torch.Tensor]]
                   ) -> tuple[LoRAConfig, dict[str, torch.Tensor]]:
    """One adapter equal to ``first`` followed by ``second`` (each a config and its tensors under
    prefopt's names), ``second`` having been trained on the model with ``first`` merged in.
    Tensors in ``second``'s dtype."""
    (cfg1, t1), (cfg2, t2) = first, second
    if cfg1.dora or cfg2.dora:
        raise ValueError(DORA_STACK)
    dtype = next(iter(t2.values())).dtype
    one, two = _updates(t1, cfg1.scaling), _updates(t2, cfg2.scaling)
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


def _write(parts: list[tuple[LoRAConfig, dict[str, torch.Tensor]]], sources: list[str], out_dir,
           base_model: str | None) -> Path:
    """``parts`` stacked in order (each trained on the model with the ones before it merged in),
    written as one adapter plus ``stacked_on.json``."""
    cfg, tensors = functools.reduce(stack_adapters, parts)
    out = write_adapter(tensors, cfg, out_dir, base_model=base_model)
    write_json_atomic(out / STACK_FILE, {
        "adapters": [*sources, f"the adapter trained on top of {'it' if len(sources) == 1 else 'them'}"],
        "ranks": [c.r for c, _ in parts],
        "note": "one LoRA adapter on the base model: the adapters' updates side by side (alpha = r, scaling 1)",
    })
    return out


def save_adapter(model: nn.Module, out_dir: str | Path, *, base_model: str | None = None, stack: bool = True) -> Path:
    """Write ``model``'s adapter in PEFT's layout (``adapter_config.json`` +
    ``adapter_model.safetensors``); ``base_model`` defaults to the model's own name.

    Where adapters were merged into the model before this one was applied (DPO after SFT:
    ``load_model(base, adapter=sft, merge=True)`` or ``merge_and_unload``), the file holds their
    updates and this one's side by side, so it is right on the base model it names, and
    ``stacked_on.json`` lists them. ``stack=False`` writes this adapter's update alone, which is
    right only on a model with the others merged in."""
    cfg: LoRAConfig = getattr(model, "lora_config", None)
    if cfg is None:
        raise ValueError("the model has no LoRA adapters (apply_lora first)")
    base_model = base_model or getattr(model, "name_or_path", None)
    merged = getattr(model, "merged_adapters", []) if stack else []
    if not merged:
        return write_adapter(lora_state_dict(model), cfg, out_dir, base_model=base_model)
    parts = [(m.config, m.tensors) for m in merged] + [(cfg, lora_state_dict(model))]
    return _write(parts, [m.source or "an adapter merged in memory" for m in merged], out_dir, base_model)


def restack(first_dir: str | Path, second_dir: str | Path, out_dir: str | Path) -> Path:
    """Stack two saved adapters, the second trained on the model with the first merged in: for
    DPO adapters saved on their own, before prefopt stacked them."""
    parts = [read_adapter(first_dir), read_adapter(second_dir)]  # each checked, in order, before anything else
    return _write(parts, [str(Path(first_dir).resolve())], out_dir, adapter_base(second_dir))


def trained_on_top_of(adapter_dir: str | Path) -> str | None:
    """The SFT adapter that a bare (unstacked) DPO adapter was trained on top of, read from its
    run's ``train_config.json``; None for any other adapter."""
    adapter_dir = Path(adapter_dir)
    config = adapter_dir.parent / "train_config.json"
    if is_stacked(adapter_dir) or adapter_dir.name != "final" or not config.is_file():
        return None
    d = json.loads(config.read_text())
    return d.get("sft_adapter") if d.get("lora") else None


def is_stacked(adapter_dir: str | Path) -> bool:
    return (Path(adapter_dir) / STACK_FILE).is_file()


__all__ = ["STACK_FILE", "is_stacked", "restack", "save_adapter", "stack_adapters", "trained_on_top_of"]
