"""``load_model`` with an optional LoRA adapter: the public entry point for loading."""
from __future__ import annotations

import warnings
from pathlib import Path

import torch

from .devices import resolve_device
from .lora import merge_and_unload, merged_state_dict
from .lora_files import adapter_base, base_mismatch, load_adapter, read_adapter_config
from .lora_stack import trained_on_top_of
from .model import checkpoint
from .model.transformer import Transformer
from .quant import quantize_model, quantized_layers


def load_model(
    name_or_path: str | Path,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    *,
    adapter: str | Path | None = None,
    merge: bool = False,
    revision: str | None = None,
    quantize: str | None = None,
) -> Transformer:
    """Load a model (folder, alias or hub id), optionally with a PEFT-layout LoRA adapter.

    Args:
        name_or_path: see :func:`prefopt.model.load_model`.
        dtype, device: parameter dtype and device.
        adapter: folder with ``adapter_config.json`` + ``adapter_model.safetensors``.
        merge: fold the adapter into the base weights after loading, leaving a plain model.
        quantize: "nf4" (or "nf4-dq", its scales in 8 bits too): the projections (and the adapter's
            layers) in 4 bits (``prefopt.quant``), quantized onto ``device`` one layer at a time from
            a load on the CPU (the full-precision weights never all sit on ``device``), then the
            adapter on top, as ``--quantize`` trains it; merged, its update stays beside the 4-bit
            codes (exact; a DoRA adapter stays unmerged, which computes the same).

    Returns:
        the model in eval mode; ``model(input_ids)`` gives logits ``(B, T, V)``.
    """
    if adapter is not None:
        refuse_bare_dpo_adapter(adapter)
    model = checkpoint.load_model(name_or_path, dtype=dtype, device="cpu" if quantize else device, revision=revision)
    if quantize:
        device = resolve_device(device)
        targets = read_adapter_config(adapter).target_modules if adapter is not None else ()
        quantize_model(model, quantized_layers(targets), quantize, device=device)
        model.to(device)  # the rest: embeddings, norms
    if adapter is not None:
        load_adapter(model, adapter)
        if note := base_mismatch(adapter, model.name_or_path, name_or_path):  # (the same shapes, other weights)
            warnings.warn(note, stacklevel=2)
        if merge and not (quantize and model.lora_config.dora):  # DoRA cannot go into 4 bits: it stays on top
            merge_and_unload(model)
    return model


def refuse_bare_dpo_adapter(adapter: str | Path) -> None:
    """Refuse a DPO adapter an older prefopt saved without the SFT adapter under it."""
    if sft := trained_on_top_of(adapter):
        raise ValueError(
            f"{adapter} holds a DPO update trained on top of the SFT adapter {sft}, saved on its own (before "
            f"prefopt stacked them); on the base model it would drop the SFT part. Stack the two once with "
            f"`prefopt stack-adapters {sft} {adapter} OUT` and load OUT")


def save_merged(model: Transformer, out_dir: str | Path, tokenizer=None, *, base_model: str | None = None) -> Path:
    """Save ``model`` with its adapters folded in, as a plain HF-layout folder; with an adapter
    loaded from a folder, also a model card (``README.md``) naming the base model (``base_model``,
    else the adapter's ``base_model_name_or_path``) and the adapter, then the adapter's own card."""
    out = checkpoint.save_model(model, out_dir, tokenizer, state_dict=merged_state_dict(model))
    source = getattr(model, "lora_source", None)
    if source:
        from .fileio import write_text_atomic
        from .train.card import FILE, merged_card

        base_model = base_model or adapter_base(source)
        dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
        write_text_atomic(Path(out) / FILE, merged_card(base_model or "the base model", source, dtype))
    return out
