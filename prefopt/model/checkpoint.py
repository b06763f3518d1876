"""Load and save Hugging Face-layout model folders (``config.json`` + safetensors).

Loading builds the model on the meta device and assigns each tensor as it is read,
cast to the requested dtype, so peak memory stays near one copy of the weights.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..devices import resolve_device
from ..fileio import read_json, write_json_atomic
from ..hints import first_few
from .config import ModelConfig
from .hub import resolve_model_dir
from .safetensors_io import ShardWriter, iter_tensors, read_header
from .transformer import Transformer

_PICKLE_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "consolidated.00.pth")
# tensors some checkpoints carry that the model recomputes or shares
_IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)
# an image+text Gemma 3's language model, under transformers' newer names and its first ones
_TEXT_MODEL_PREFIXES = (("model.language_model.", "model."), ("language_model.model.", "model."),
                        ("language_model.lm_head.", "lm_head."), ("lm_head.", "lm_head."))


def text_model_name(name: str) -> str | None:
    """The text model's name for a tensor of an image+text checkpoint; None for the image side
    (vision tower, projector)."""
    for prefix, to in _TEXT_MODEL_PREFIXES:
        if name.startswith(prefix):
            return to + name[len(prefix):]
    return None


class CheckpointError(ValueError):
    """A checkpoint does not fit the model it describes."""


def weight_files(model_dir: Path) -> list[Path]:
    """The safetensors files of a folder: one file, or the shards named by the index."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json(index)["weight_map"]
        return [model_dir / f for f in sorted(set(weight_map.values()))]
    single = model_dir / "model.safetensors"
    if single.is_file():
        return [single]
    pickles = [f for f in _PICKLE_FILES if (model_dir / f).exists()]
    if pickles:
        raise CheckpointError(
            f"{model_dir}: holds only pickle weights ({', '.join(pickles)}). prefopt loads safetensors "
            "only, since unpickling can run arbitrary code. Convert them on a trusted machine, e.g. "
            "transformers' `model.save_pretrained(dir, safe_serialization=True)`."
        )
    raise CheckpointError(f"{model_dir}: no model.safetensors or model.safetensors.index.json found")


def load_model(
    name_or_path: str | Path,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    *,
    revision: str | None = None,
) -> Transformer:
    """Load a Llama-family model from a folder, an alias (``smollm2-135m``) or a hub id.

    Args:
        name_or_path: local HF-layout folder, a prefopt alias, or a Hugging Face Hub
            repo id (resolved through ``huggingface_hub``, cache first).
        dtype: parameter dtype; floating tensors are cast while loading.
        device: where the parameters live: ``"auto"`` (a CUDA GPU if one is visible), ``"cpu"``,
            ``"cuda"``, ``"cuda:N"`` or ``"mps"`` (:func:`prefopt.devices.resolve_device`).

    Returns:
        a :class:`~prefopt.model.Transformer` in eval mode. ``model(input_ids)`` gives
        logits ``(B, T, V)``; ``model(input_ids, return_hidden=True)`` gives ``(B, T, D)``.
    """
    device = resolve_device(device)
    model = empty_model(name_or_path, revision=revision)
    load_weights(model, weight_files(Path(model.name_or_path)), dtype=dtype, device=device)
    for name, buf in list(model.named_buffers(recurse=False)):  # RoPE's inverse frequencies (Gemma 3: two)
        setattr(model, name, buf.to(device))
    return model


def empty_model(name_or_path: str | Path, dtype: torch.dtype = torch.float32, *, revision: str | None = None,
                ) -> Transformer:
    """The model ``config.json`` describes, in eval mode, its parameters ``dtype`` on the meta
    device (no storage; no weight read) and its RoPE frequencies computed on the CPU: for
    :func:`load_weights`, or for an FSDP2 rank that receives its share of rank 0's weights
    (``prefopt.train.distributed.receives_weights``)."""
    model_dir = resolve_model_dir(name_or_path, revision=revision)
    with torch.device("meta"):
        model = Transformer(ModelConfig.from_hf(model_dir))
    for p in model.parameters():
        p.data = p.data.to(dtype)
    model.name_or_path = str(model_dir)
    return model.eval()


def load_weights(model: torch.nn.Module, files: list[Path], *, dtype: torch.dtype, device) -> None:
    """Assign every tensor of ``files`` to ``model`` (built on meta), checking names and shapes."""
    expected = {k: v.shape for k, v in model.state_dict().items()}
    cfg = getattr(model, "config", None)
    tied = getattr(cfg, "tie_word_embeddings", False)
    text_only = getattr(cfg, "text_model_of", None) is not None  # the language model of an image+text one
    seen: set[str] = set()
    for path in files:
        shard: dict[str, torch.Tensor] = {}
        names = {n: to for n in read_header(path) if (to := text_model_name(n))} if text_only else None
        for name, t in iter_tensors(path, set(names) if text_only else None):
            name = names[name] if text_only else name
            if name.endswith(_IGNORED_SUFFIXES) or (tied and name == "lm_head.weight"):
                continue
            if name not in expected:
                raise CheckpointError(f"{path}: unexpected tensor {name!r}; the model has no such parameter")
            if tuple(t.shape) != tuple(expected[name]):
                raise CheckpointError(
                    f"{path}: tensor {name!r} has shape {tuple(t.shape)} in the file but "
                    f"{tuple(expected[name])} in the model (check config.json)"
                )
            shard[name] = t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype)
            seen.add(name)
        model.load_state_dict(shard, strict=False, assign=True)
        del shard
    missing = sorted(set(expected) - seen)
    if missing:
        shown = first_few(missing, 5)
        raise CheckpointError(f"{files[0].parent}: missing tensors: {shown}")


def save_model(
    model: Transformer,
    out_dir: str | Path,
    tokenizer=None,
    *,
    max_shard_bytes: int = 5 * 1024**3,
    dtype: torch.dtype | None = None,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write ``model`` as an HF-layout folder that ``transformers`` loads unchanged.

    ``state_dict`` replaces ``model.state_dict()`` (e.g. with LoRA adapters merged in).

    Files: ``config.json``, ``generation_config.json``, ``model.safetensors`` (or shards
    plus ``model.safetensors.index.json``) and, given a tokenizer, its files. Each file is
    written atomically; shards left by an earlier save are removed.
    """
    if state_dict is None and getattr(model, "quantized", None):
        raise ValueError(f"the model's weights are {model.quantized} (4-bit, prefopt.quant): they are not saved; save "
                         "its adapter, or load the model in full precision to save it")
    out = Path(out_dir)
    writer = ShardWriter(out, max_shard_bytes)
    first_dtype = None
    for k, v in (state_dict if state_dict is not None else model.state_dict()).items():
        if k.endswith(_IGNORED_SUFFIXES):
            continue
        if dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        first_dtype = first_dtype or v.dtype
        writer.add(k, v)
    writer.close()
    write_config_files(out, model.config, first_dtype)
    if tokenizer is not None:
        tokenizer.save(out)
    return out


def write_config_files(out: Path, cfg: ModelConfig, dtype: torch.dtype) -> None:
    """Write ``config.json`` and ``generation_config.json`` for weights stored in ``dtype``."""
    cfg_dict = cfg.to_hf_dict()
    cfg_dict["dtype"] = str(dtype).removeprefix("torch.")
    cfg_dict.pop("torch_dtype", None)
    write_json_atomic(out / "config.json", cfg_dict)
    gen = {"bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id}
    if cfg.pad_token_id is not None:
        gen["pad_token_id"] = cfg.pad_token_id
    write_json_atomic(out / "generation_config.json", gen)
