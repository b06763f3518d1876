"""DPO after SFT as one adapter on the base model: the two low-rank updates side by side.

DPO after SFT trains a fresh adapter on the model with the SFT adapter merged in. Saved on its
own, that adapter is right only on top of that merged model, yet every reader (PEFT, vLLM,
``prefopt eval --adapter``, ``prefopt merge``) puts an adapter on the base model it names. So
the trainer saves the two stacked, one plain LoRA of rank r₁ + r₂ with scaling 1::

    s₁ B₁ A₁ + s₂ B₂ A₂ = [s₁B₁ | s₂B₂] · [A₁; A₂]        (lora_alpha = r = r₁ + r₂)

A layer that only one of them adapts gets zeros in the other's rows. A mixture's experts
(``prefopt.lora_experts``: A ``(E, r, in)``, B ``(E, out, r)``) stack the same way, expert by expert. Where either is DoRA the
stack is one DoRA adapter (:func:`stack_parts`: each row's scale is carried into the updates
after it, and the magnitudes are the final weight's row norms). ``stacked_on.json`` beside the
adapter names the adapters folded in, so a reader can tell a stacked adapter from a bare one.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .fileio import read_json, write_json_atomic
from .lora import LoRAConfig, LoRALinear, layer_text, lora_state_dict
from .lora_files import BASE_SHA256, adapter_base, read_adapter, write_adapter
from .model.digest import weights_sha256
from .model.safetensors_io import read_metadata

STACK_FILE = "stacked_on.json"
DORA_NEEDS_WEIGHTS = ("stacking a DoRA adapter needs the model's weights (each row's magnitude is a norm of "
                      "them): prefopt stacks one when it saves it (save_adapter, as sft and dpo do); from files, "
                      "merge the first adapter into the model (prefopt merge) and pass that folder as the model")


def _updates(tensors: dict[str, torch.Tensor], scaling: float) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{module: (A, scaling · B)}`` in fp32 on the CPU, from adapter tensors under prefopt's names."""
    return {name.split(".lora_A.")[0]: (a.detach().float().cpu(),
                                       tensors[name.replace(".lora_A.", ".lora_B.")].detach().float().cpu() * scaling)
            for name, a in tensors.items() if ".lora_A." in name}


def stack_parts(parts: list[tuple[LoRAConfig, dict[str, torch.Tensor]]], *,
                row_scales: list[dict[str, torch.Tensor]] | None = None,
                magnitudes: dict[str, torch.Tensor] | None = None) -> tuple[LoRAConfig, dict[str, torch.Tensor]]:
    """One adapter on the base model equal to ``parts`` applied in order (each a config and its
    tensors under prefopt's names, each trained on the model with the ones before it merged in).
    Tensors in the last part's dtype.

    Plain LoRA parts stack into one LoRA. With a DoRA part the model after each merge is
    ``c ⊙ (W₀ + ΔW')`` row by row (``c`` = 1 until a DoRA part merges, then times its
    ``m / ‖W + ΔW‖``), so the stack is one DoRA adapter: each part's update enters ``ΔW'`` divided
    row-wise by the ``c`` before it, and its magnitude is the final weight's row norm. For that,
    ``row_scales`` holds each part's ``{module: m / ‖W + ΔW‖}`` at its merge (``MergedAdapter.
    row_scales``; empty for LoRA) and ``magnitudes`` the final weight's row norms per module."""
    dora = any(cfg.dora for cfg, _ in parts)
    if dora and any(cfg.target_parameters for cfg, _ in parts):
        raise ValueError("a DoRA adapter and one on the experts (target_parameters) cannot be one adapter: PEFT takes "
                         "no DoRA on the experts; train both as plain LoRA")
    if dora and magnitudes is None:
        raise ValueError(DORA_NEEDS_WEIGHTS)
    row_scales = row_scales or [{} for _ in parts]
    dtype = next(iter(parts[-1][1].values())).dtype
    updates = [_updates(tensors, cfg.scaling) for cfg, tensors in parts]
    shapes = {}  # module: (leading dims (the experts'), in, out)
    for one in updates:
        for module, (a, b) in one.items():
            shape = (tuple(a.shape[:-2]), a.shape[-1], b.shape[-2])
            if shapes.setdefault(module, shape) != shape:
                raise ValueError(f"{module}: the adapters disagree on its shape")
    tensors = {}
    for module, (lead, n_in, n_out) in sorted(shapes.items()):
        a_parts, b_parts, c = [], [], torch.ones(n_out)
        for (cfg, _), one, scales in zip(parts, updates, row_scales):
            a, b = one.get(module, (torch.zeros(*lead, cfg.r, n_in), torch.zeros(*lead, n_out, cfg.r)))
            a_parts.append(a)
            b_parts.append(b / c[:, None])
            if module in scales:
                c = c * scales[module]
        tensors[f"{module}.lora_A.weight"] = torch.cat(a_parts, -2).to(dtype)
        tensors[f"{module}.lora_B.weight"] = torch.cat(b_parts, -1).to(dtype)
        if dora:
            tensors[f"{module}.lora_magnitude"] = magnitudes[module].float().cpu().to(dtype)
    r = sum(cfg.r for cfg, _ in parts)
    targets = tuple(sorted(set().union(*(cfg.target_modules for cfg, _ in parts))))
    experts = tuple(set().union(*(cfg.target_parameters for cfg, _ in parts)))
    # dropout is the last one's, but none with the experts' tensors (PEFT would refuse the file)
    return LoRAConfig(r=r, alpha=float(r), dropout=0.0 if experts else parts[-1][0].dropout, target_modules=targets,
                      dora=dora, layers=same_layers([cfg.layers for cfg, _ in parts]),
                      target_parameters=experts, expert_modules=any(cfg.expert_modules for cfg, _ in parts)), tensors


def same_layers(scopes: list[tuple[int, ...] | None]) -> tuple[int, ...] | None:
    """The transformer layers adapters stacked as one cover (each adapter's ``LoRAConfig.layers``,
    None: every layer): the same for all of them (PEFT's ``layers_to_transform`` is one list for
    every target, so adapters over different layers would need tensors for layers none of them
    trained)."""
    layers = set(scopes)
    if len(layers) > 1:
        raise ValueError(f"the adapters cover different transformer layers ({' and '.join(map(layer_text, layers))}): "
                         "one adapter holding both cannot say so; train them over the same layers (--lora-layers)")
    return layers.pop()


def stack_adapters(first: tuple[LoRAConfig, dict[str, torch.Tensor]], second: tuple[LoRAConfig, dict[str, torch.Tensor]]
                   ) -> tuple[LoRAConfig, dict[str, torch.Tensor]]:
    """One adapter equal to ``first`` followed by ``second`` (each a config and its tensors under
    prefopt's names), ``second`` having been trained on the model with ``first`` merged in; plain
    LoRA only (DoRA: :func:`stack_parts`, with the model's row norms)."""
    return stack_parts([first, second])


def _write(parts: list[tuple[LoRAConfig, dict[str, torch.Tensor]]], sources: list[str], out_dir,
           base_model: str | None, base_sha256: str | None, **dora) -> Path:
    """``parts`` stacked in order (each trained on the model with the ones before it merged in),
    written as one adapter plus ``stacked_on.json``; ``dora``: :func:`stack_parts`' row scales and
    magnitudes."""
    cfg, tensors = stack_parts(parts, **dora)
    out = write_adapter(tensors, cfg, out_dir, base_model=base_model, base_sha256=base_sha256)
    kind = "DoRA" if cfg.dora else "LoRA"
    write_json_atomic(out / STACK_FILE, {
        "adapters": [*sources, f"the adapter trained on top of {'it' if len(sources) == 1 else 'them'}"],
        "ranks": [c.r for c, _ in parts],
        "note": f"one {kind} adapter on the base model: the adapters' updates side by side (alpha = r, scaling 1)",
    })
    return out


def _row_norms(model: nn.Module, modules) -> dict[str, torch.Tensor]:
    """Each of ``modules``' weight row norms as the model computes with it (its adapter included), fp32."""
    out = {}
    for name in modules:
        layer = model.get_submodule(name)
        with torch.no_grad():
            w = layer.weight.float()
            if isinstance(layer, LoRALinear) and not layer.merged:
                w = w + layer.delta_weight()
            out[name] = w.norm(dim=1).cpu()
    return out


def save_adapter(model: nn.Module, out_dir: str | Path, *, base_model: str | None = None, stack: bool = True) -> Path:
    """Write ``model``'s adapter in PEFT's layout (``adapter_config.json`` +
    ``adapter_model.safetensors``); ``base_model`` defaults to the model's own name. The weights
    file's metadata records the digest of the base weights, those of the folder the model was
    loaded from (:func:`~prefopt.lora_files.base_mismatch` warns where they are put on others).

    Where adapters were merged into the model before this one was applied (DPO after SFT:
    ``load_model(base, adapter=sft, merge=True)`` or ``merge_and_unload``), the file holds their
    updates and this one's side by side, so it is right on the base model it names, and
    ``stacked_on.json`` lists them. ``stack=False`` writes this adapter's update alone, which is
    right only on a model with the others merged in."""
    cfg: LoRAConfig = getattr(model, "lora_config", None)
    if cfg is None:
        raise ValueError("the model has no LoRA adapters (apply_lora first)")
    base_model = base_model or getattr(model, "name_or_path", None)
    base_sha256 = weights_sha256(getattr(model, "name_or_path", None))  # (the files its weights were loaded from)
    merged = getattr(model, "merged_adapters", []) if stack else []
    if not merged:
        return write_adapter(lora_state_dict(model), cfg, out_dir, base_model=base_model, base_sha256=base_sha256)
    parts = [(m.config, m.tensors) for m in merged] + [(cfg, lora_state_dict(model))]
    dora = {}
    if any(c.dora for c, _ in parts):
        modules = {k.split(".lora_A.")[0] for _, tensors in parts for k in tensors if ".lora_A." in k}
        dora = {"row_scales": [m.row_scales for m in merged] + [{}], "magnitudes": _row_norms(model, modules)}
    return _write(parts, [m.source or "an adapter merged in memory" for m in merged], out_dir, base_model,
                  base_sha256, **dora)


def restack(first_dir: str | Path, second_dir: str | Path, out_dir: str | Path) -> Path:
    """Stack two saved adapters, the second trained on the model with the first merged in: for
    DPO adapters saved on their own, before prefopt stacked them."""
    parts = [read_adapter(first_dir), read_adapter(second_dir)]  # each checked, in order, before anything else
    return _write(parts, [str(Path(first_dir).resolve())], out_dir, adapter_base(second_dir),
                  read_metadata(Path(first_dir) / "adapter_model.safetensors").get(BASE_SHA256))


def run_config(weights_dir: str | Path) -> dict | None:
    """The settings of the prefopt run that saved ``weights_dir`` (its ``final/`` or ``best/``):
    the run's ``train_config.json`` beside it; None where it is not there (weights copied
    elsewhere, or not a prefopt run's)."""
    weights_dir = Path(weights_dir)
    config = weights_dir.parent / "train_config.json"
    if weights_dir.name not in ("final", "best") or not config.is_file():
        return None
    return read_json(config)


def trained_on_top_of(adapter_dir: str | Path) -> str | None:
    """The SFT adapter that a bare (unstacked) DPO adapter was trained on top of, read from its
    run's ``train_config.json``; None for any other adapter."""
    adapter_dir = Path(adapter_dir)
    d = run_config(adapter_dir) if adapter_dir.name == "final" and not is_stacked(adapter_dir) else None
    return d.get("sft_adapter") if d and d.get("lora") else None


def is_stacked(adapter_dir: str | Path) -> bool:
    return (Path(adapter_dir) / STACK_FILE).is_file()


__all__ = ["STACK_FILE", "is_stacked", "restack", "run_config", "save_adapter", "stack_adapters", "stack_parts",
           "trained_on_top_of"]
