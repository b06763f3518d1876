"""LoRA adapter files in PEFT's layout, read and written.

An adapter folder holds ``adapter_config.json`` and ``adapter_model.safetensors`` with keys
``base_model.model.<module>.lora_A.weight`` (``lora_B``; DoRA's ``lora_magnitude_vector``), so
PEFT, vLLM and others read what prefopt writes, and prefopt reads what they write. Whatever an
adapter holds that prefopt cannot put on a model (other adapter kinds, trained biases, whole
trained layers, a head or embedding changed with it) is refused with the file and the reason,
never dropped.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from . import lora_experts
from .fileio import read_json, sha256_of, write_json_atomic
from .lora import PEFT_PREFIX, LoRAConfig, QLoRALinear, apply_lora, layer_index, lora_state_dict
from .model.digest import weights_sha256
from .model.safetensors_io import iter_tensors, read_header, read_metadata, save_file_atomic

BASE_SHA256 = "prefopt_base_sha256"  # adapter_model.safetensors' metadata: the digest of the weights it was trained on
MERGE_IN_PEFT = ("to use it, load it in PEFT, merge it (merge_and_unload), save that model (save_pretrained) and "
                 "pass its folder as the model")


def write_adapter(tensors: dict[str, torch.Tensor], cfg: LoRAConfig, out_dir: str | Path, *,
                  base_model: str | None = None, base_sha256: str | None = None) -> Path:
    """Write adapter tensors (prefopt's module names) and their config in PEFT's layout;
    ``base_sha256``, the digest of the base weights they were trained on
    (:func:`~prefopt.model.digest.weights_sha256` of the folder the model was loaded from), in
    the weights file's metadata where given, for :func:`base_mismatch`."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out}: a file, where the adapter's folder would go")
    out.mkdir(parents=True, exist_ok=True)
    save_file_atomic(dict(_peft_tensor(k, v, cfg) for k, v in tensors.items()), out / "adapter_model.safetensors",
                     metadata={"format": "pt", **({BASE_SHA256: base_sha256} if base_sha256 else {})})
    write_json_atomic(out / "adapter_config.json", _peft_config(cfg, base_model))
    return out


def _peft_tensor(k: str, v: torch.Tensor, cfg: LoRAConfig) -> tuple[str, torch.Tensor]:
    """A tensor's PEFT key and layout, from prefopt's key and layout."""
    if lora_experts.is_expert_key(k):
        return PEFT_PREFIX + lora_experts.peft_key(k, cfg.target_parameters), lora_experts.to_peft(
            v, k.rsplit(".", 2)[-2])
    return PEFT_PREFIX + k.replace(".lora_magnitude", ".lora_magnitude_vector"), v


def _peft_config(cfg: LoRAConfig, base_model: str | None) -> dict:
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": cfg.r,
        "lora_alpha": cfg.alpha,
        "lora_dropout": cfg.dropout,
        "target_modules": sorted(cfg.target_modules) or None,
        # as PEFT writes it (sorted); it ignores layers_to_transform for these, and prefopt refuses the two together
        "target_parameters": sorted(f"{lora_experts.PEFT_EXPERTS}.{p}" for p in cfg.target_parameters) or None,
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "modules_to_save": None,
        "use_rslora": cfg.rslora,
        "use_dora": cfg.dora,
        "layers_to_transform": list(cfg.layers) if cfg.layers is not None else None,
        "layers_pattern": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "revision": None,
    }


RUN_ADAPTERS = {"final": "the last step's", "best": "the best evaluation's"}


def run_adapters(folder: str | Path) -> list[tuple[Path, str]]:
    """The adapters a training run's folder (``prefopt sft|dpo --output``, or a ``prefopt
    compare`` stage's, which trains in ``train/``) saved: ``(path, what it holds)`` for each of
    ``final/`` and ``best/`` that is there."""
    found = []
    for run in (Path(folder), Path(folder) / "train"):
        found += [(run / name, why) for name, why in RUN_ADAPTERS.items()
                  if (run / name / "adapter_config.json").is_file()]
    return found


def read_adapter_config(adapter_dir: str | Path) -> LoRAConfig:
    path = Path(adapter_dir) / "adapter_config.json"
    if Path(adapter_dir).is_file():  # the adapter's weights file, or config, given for its folder
        inside = Path(adapter_dir).parent
        folder = (f": pass its folder, {inside}" if (inside / "adapter_config.json").is_file()
                  else " (a PEFT adapter is a folder holding adapter_config.json and adapter_model.safetensors)")
        raise FileNotFoundError(f"{adapter_dir}: a file, not an adapter folder{folder}")
    if not Path(adapter_dir).is_dir():
        old = Path(str(adapter_dir).rstrip("/") + ".old")
        raise FileNotFoundError(f"{adapter_dir}: no such adapter folder" + (
            f"; {old} holds the copy an interrupted save left: rename it to {Path(adapter_dir).name}"
            if (old / "adapter_config.json").is_file() else ""))
    if not path.is_file():
        if (Path(adapter_dir) / "config.json").is_file():  # a model (a merged one, say) passed as the adapter
            raise FileNotFoundError(f"{adapter_dir}: a model folder, not an adapter: pass it as the model "
                                    "(--model), not as an adapter")  # (--adapter or DPO's --sft-adapter)
        inside = run_adapters(adapter_dir)
        if inside:  # a training run's (or a compare stage's) folder, passed for the adapter it saved
            raise FileNotFoundError(f"{adapter_dir}: a training run's folder, not an adapter: its adapter is "
                                    + " or ".join(f"{a} ({why})" for a, why in inside))
        raise FileNotFoundError(f"{adapter_dir}: no adapter_config.json (is this a PEFT LoRA adapter?)")
    d = read_json(path)
    unsupported = {k: d[k] for k in ("fan_in_fan_out",) if d.get(k)}
    if d.get("peft_type", "LORA") != "LORA" or unsupported or d.get("rank_pattern") or d.get("alpha_pattern"):
        raise ValueError(
            f"{path}: only LoRA adapters (rsLoRA and DoRA too) are supported (peft_type LORA, no fan_in_fan_out, "
            f"no per-module rank or alpha); got peft_type={d.get('peft_type')!r} {unsupported}"
        )
    if d.get("bias", "none") != "none":
        raise ValueError(f"{path}: adapters that train biases (bias={d['bias']!r}) are not supported")
    pattern = d.get("layers_pattern")
    if pattern not in (None, "", [], "layers", ["layers"]):
        raise ValueError(f"{path}: this adapter counts its layers under another name (layers_pattern={pattern!r}), "
                         "which prefopt does not load; " + MERGE_IN_PEFT)
    layers = d.get("layers_to_transform")
    layers = None if layers in (None, []) else (layers,) if isinstance(layers, int) else tuple(layers)
    if d.get("lora_bias"):
        raise ValueError(f"{path}: this adapter trains a bias beside its B matrices (lora_bias), which prefopt does "
                         "not load; " + MERGE_IN_PEFT)
    if d.get("modules_to_save"):
        raise ValueError(f"{path}: this adapter also holds whole trained layers (modules_to_save="
                         f"{d['modules_to_save']!r}), which prefopt does not load; " + MERGE_IN_PEFT)
    targets = d.get("target_modules") or ()
    parts = _expert_parts(path, d)
    if parts and layers is not None:
        raise ValueError(f"{path}: this adapter names layers_to_transform={list(layers)} and adapts the experts' "
                         f"{', '.join(parts)} (target_parameters), which PEFT adapts in every layer all the same; "
                         "prefopt does not load the two together; " + MERGE_IN_PEFT)
    if _picked_by_path(d):
        targets, layers = _adapted_in_file(Path(adapter_dir), d)
        # with the experts (every layer's): the picked modules in every layer, which load_adapter checks in the file
        layers = None if parts else layers
    if not targets and not parts:
        raise ValueError(f"{path}: the adapter names no target_modules and no target_parameters")
    return LoRAConfig(r=d["r"], alpha=d["lora_alpha"], dropout=d.get("lora_dropout", 0.0), target_modules=tuple(targets),
                      rslora=bool(d.get("use_rslora", False)), dora=bool(d.get("use_dora", False)), layers=layers,
                      target_parameters=parts, expert_modules=_expert_modules(Path(adapter_dir)))


def _expert_modules(adapter_dir: Path) -> bool:
    """Whether an adapter file holds tensors on single experts' projections (``experts.3.w1``): made
    by PEFT on transformers 4, whose experts were modules, where target names matched inside them."""
    path = adapter_dir / "adapter_model.safetensors"
    return path.is_file() and any(re.search(r"\.experts\.\d+\.", k) for k in read_header(path))


def _expert_parts(path: Path, d: dict) -> tuple[str, ...]:
    """The experts' tensors a PEFT config's ``target_parameters`` adapts (``mlp.experts.down_proj``,
    matched as a name ending, as PEFT does); any other parameter is refused by name."""
    parts = []
    for name in d.get("target_parameters") or ():
        leaf = name.rsplit(".", 1)[-1]
        if leaf not in lora_experts.EXPERT_PARTS or name.count(".") and name.rsplit(".", 2)[-2] != "experts":
            raise ValueError(f"{path}: target_parameters {name!r} is not a mixture of experts' "
                             f"{' or '.join(lora_experts.EXPERT_PARTS)}, the parameters prefopt adapts; "
                             + MERGE_IN_PEFT)
        parts.append(leaf)
    return tuple(p for p in lora_experts.EXPERT_PARTS if p in parts)


def _picked_by_path(d: dict) -> bool:
    """Whether a PEFT config picks its layers by more than their own names: a regex
    ``target_modules`` (matched against each full module name), names with dots in them
    (``self_attn.q_proj``, ``model.layers.3.mlp.up_proj``: matched as name endings), or
    ``exclude_modules``."""
    targets = d.get("target_modules")
    return (isinstance(targets, str) or any("." in t for t in targets or ())
            or d.get("exclude_modules") not in (None, [], ""))


def _adapted_in_file(adapter_dir: Path, d: dict) -> tuple[tuple[str, ...], tuple[int, ...] | None]:
    """The layer names and transformer layers of the modules an adapter file holds LoRA tensors for,
    where its config picks them by path (:func:`_picked_by_path`): PEFT wrote tensors for exactly
    the modules it matched. prefopt adapts each of those names in each of those layers;
    :func:`load_adapter` refuses a file where some of those combinations are left out."""
    path = adapter_dir / "adapter_model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"{adapter_dir}: no adapter_model.safetensors (only safetensors adapters are read)")
    modules = {k.removeprefix(PEFT_PREFIX).split(".lora_A")[0] for k in read_header(path)
               if ".lora_A." in k and f".{lora_experts.PEFT_EXPERTS}." not in k}  # not the experts' tensors
    if not modules:
        raise ValueError(f"{path}: no LoRA tensors (lora_A) in the file; its adapter_config.json picks "
                         f"target_modules={d.get('target_modules')!r}, exclude_modules={d.get('exclude_modules')!r}")
    names = tuple(sorted({m.rsplit(".", 1)[-1] for m in modules}))
    layers = {layer_index(m) for m in modules}
    return names, None if None in layers else tuple(sorted(layers))


def read_adapter(adapter_dir: str | Path) -> tuple[LoRAConfig, dict[str, torch.Tensor]]:
    """The config and tensors of a PEFT-layout adapter, the tensors under prefopt's module names.
    Copies of base weights that PEFT saves beside an adapter on the lm_head or the embedding
    (``save_embedding_layers``; ``<module>.base_layer.weight``) are left out: :func:`load_adapter`
    checks them against the model's (:func:`check_base_copies`)."""
    cfg = read_adapter_config(adapter_dir)
    path = Path(adapter_dir) / "adapter_model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"{adapter_dir}: no adapter_model.safetensors (only safetensors adapters are read)")
    tensors = {}
    header = read_header(path)
    names = set(header) - set(_base_copies(header))
    for key, t in iter_tensors(path, names):
        if ".lora_embedding_" in key:
            raise ValueError(f"{path}: {key!r} is an adapter on an embedding layer, which prefopt does not load; "
                             + MERGE_IN_PEFT)
        name = key.removeprefix(PEFT_PREFIX).replace(".lora_A.default.", ".lora_A.").replace(".lora_B.default.", ".lora_B.")
        expert = lora_experts.prefopt_key(name, cfg.target_parameters)
        if expert is not None:  # an experts' tensor: (E·r, in) / (out, r·E) in the file
            tensors[expert] = lora_experts.from_peft(t, expert.rsplit(".", 2)[-2], cfg.r)
            continue
        for peft_name in (".lora_magnitude_vector.default.weight", ".lora_magnitude_vector"):  # DoRA's, by PEFT version
            if name.endswith(peft_name):
                name = name.removesuffix(peft_name) + ".lora_magnitude"
        tensors[name] = t
    return cfg, tensors


def load_adapter(model: nn.Module, adapter_dir: str | Path) -> nn.Module:
    """Apply the adapter in ``adapter_dir`` (PEFT layout) to ``model``; check every key and shape."""
    cfg, tensors = read_adapter(adapter_dir)
    apply_lora(model, cfg.r, cfg.alpha, cfg.dropout, cfg.target_modules, strict=False, rslora=cfg.rslora,
               dora=cfg.dora, layers=cfg.layers, target_parameters=cfg.target_parameters,
               expert_modules=cfg.expert_modules)
    path = Path(adapter_dir) / "adapter_model.safetensors"
    own = lora_state_dict(model)
    ffn = getattr(getattr(model, "config", None), "ffn_name", "mlp")
    loaded = {}
    for name, t in tensors.items():
        name = lora_experts.rename_mixture(name, ffn)  # Mixtral's block_sparse_moe, where PEFT's keys say mlp
        if name not in own:
            raise ValueError(f"{path}: adapter tensor {PEFT_PREFIX + name!r} matches no LoRA layer of the model"
                             + _trained_on(adapter_dir))
        if own[name].shape != t.shape:
            raise ValueError(f"{path}: {PEFT_PREFIX + name!r} has shape {tuple(t.shape)}, "
                             f"the model expects {tuple(own[name].shape)}" + _trained_on(adapter_dir))
        loaded[name] = t.to(own[name].dtype)
    missing = sorted(set(own) - set(loaded))
    if missing and _picked_by_path(read_json(Path(adapter_dir) / "adapter_config.json")):
        module = missing[0].split(".lora_")[0]
        raise ValueError(f"{path}: this adapter leaves out {module}, though it adapts {module.rsplit('.', 1)[-1]} in "
                         f"other layers ({len(missing)} tensors in all; picked by its target_modules or "
                         "exclude_modules). prefopt adapts a layer name in every layer or in a set of layers "
                         "(layers_to_transform), and does not load this one; " + MERGE_IN_PEFT)
    if missing:
        raise ValueError(f"{path}: missing adapter tensors, e.g. {missing[0]!r} ({len(missing)} in all)")
    check_base_copies(model, path)
    model.load_state_dict(loaded, strict=False)
    model.lora_source = str(Path(adapter_dir).resolve())
    return model


def _base_copies(header: dict) -> dict[str, str]:
    """``{file key: module}`` of the base weights PEFT copied into an adapter file (its header)."""
    suffix = ".base_layer.weight"
    return {k: k.removeprefix(PEFT_PREFIX).removesuffix(suffix) for k in header if k.endswith(suffix)}


def check_base_copies(model: nn.Module, path: str | Path) -> None:
    """PEFT saves a copy of the base weights of an lm_head (or embedding) it put an adapter on, for
    a model whose vocabulary was resized or whose head was trained with it. prefopt reads adapters
    only, so a copy that differs from ``model``'s own weights (after rounding to their dtype) is
    refused, not silently dropped. A 4-bit layer cannot be compared bit for bit and is let be."""
    copies = _base_copies(read_header(path))
    if not copies:
        return
    modules = dict(model.named_modules())
    for key, t in iter_tensors(path, set(copies)):
        layer = modules.get(copies[key])
        if isinstance(layer, QLoRALinear):
            continue
        own = getattr(layer, "weight", None)
        if own is None or own.shape != t.shape or not torch.equal(t.to(own.dtype), own.detach().cpu()):
            raise ValueError(f"{path}: {key!r} is a copy of the model's {copies[key]} weights (PEFT's "
                             "save_embedding_layers) that differs from this model's: it was trained or resized "
                             "with the adapter, and prefopt loads adapters only; " + MERGE_IN_PEFT)


def adapter_base(adapter_dir: str | Path) -> str | None:
    """The base model an adapter folder's ``adapter_config.json`` names (PEFT's
    ``base_model_name_or_path``); None where it names none, or cannot be read."""
    try:
        return read_json(Path(adapter_dir) / "adapter_config.json").get("base_model_name_or_path")
    except (OSError, ValueError):
        return None


def adapter_sha256(adapter_dir: str | Path | None) -> str | None:
    """The SHA-256 of an adapter folder's ``adapter_model.safetensors``: which weights these are,
    wherever the folder is now and whatever was saved to its path since (a calibration's adapter;
    the record of an evaluation, a prediction or make-pairs; the stamp a stopped prediction or
    make-pairs goes on under); None without one."""
    path = Path(adapter_dir) / "adapter_model.safetensors" if adapter_dir else None
    return sha256_of(path) if path is not None and path.is_file() else None


def base_mismatch(adapter_dir: str | Path, model: str | Path, name: str | Path | None = None) -> str | None:
    """Why the model loaded from the folder ``model`` (``name``: as it was named, an alias, a hub
    id, a GGUF file) is not the base an adapter was trained on, where its weights file records the
    digest of that base's weights (:data:`BASE_SHA256`; prefopt writes it) and ``model``'s
    weights differ (a base model other than the one the adapter was trained and evaluated on, of
    the same shapes: loaded without complaint, it answers otherwise); None where they match or
    either digest is unknown (another tool's adapter)."""
    path = Path(adapter_dir) / "adapter_model.safetensors"
    try:
        trained = read_metadata(path).get(BASE_SHA256)
    except (OSError, ValueError):
        return None
    given = weights_sha256(model) if trained else None
    if given is None or given == trained:
        return None
    base = adapter_base(adapter_dir)
    return (f"{adapter_dir} was trained on other base weights than {name or model}'s ("
            + (f"on {base}, its adapter_config.json says; " if base else "") + f"SHA-256 {trained[:12]} there, "
            f"{given[:12]} here): of the same shapes, it loads, but its answers are not the ones it was evaluated "
            "with. Load it on the model it was trained on (a copy of that model's files is the same model)")


def _trained_on(adapter_dir: str | Path) -> str:
    """``; it was trained on 'M' ...``: the base model its adapter_config.json names, for the error
    of an adapter that does not fit the model it was given."""
    base = adapter_base(adapter_dir)
    return (f"; the adapter was trained on {base!r} (its adapter_config.json's base_model_name_or_path): load it on "
            "that model" if base else "; it was trained on another base model")


__all__ = ["BASE_SHA256", "MERGE_IN_PEFT", "adapter_base", "adapter_sha256", "base_mismatch", "check_base_copies",
           "load_adapter", "read_adapter", "read_adapter_config", "write_adapter"]
