"""The DPO reference's on-disk cache, opened under a fingerprint of the reference it stands for."""
from __future__ import annotations

from pathlib import Path

from ..devices import resolve_device
from ..lora import is_adapter_key
from ..refcache import RefCache, reference_fingerprint
from .config import autocast_on


def _rounding(config, start: int) -> dict:
    """What sets the reference's rounding beyond the weights: under bf16 autocast, also the
    pairs' layout (one packed row a pair, all in one row after a shared start of ``start`` tokens,
    or two stacked sequences round differently in bf16; in fp32 they agree to ~1e-6, so a cache
    serves all three)."""
    if not autocast_on(resolve_device(config.device), config):
        return {}
    layout = "packed" if getattr(config, "share_prompt", True) else "stacked"
    return {"autocast": "bfloat16", "pairs": f"one row after a {start}-token start" if start else layout}


def _weighting(config) -> dict:
    """LD-DPO's α where set: the cache holds its weighted sums (a cache without it stays valid for DPO)."""
    ld = getattr(config, "ld_alpha", None)
    return {} if ld is None else {"ld_alpha": float(ld)}


def reference_cache_for(config, model, ref_model, model_dir: Path | None = None, *,
                        root: str | Path | None = None, start: int = 0) -> RefCache:
    """Open the cache at ``root`` (default ``config.ref_cache``) under the fingerprint of this
    run's reference: ``ref_model``, or ``model`` with its adapters disabled. ``model_dir``
    (default: ``config.model`` resolved) holds the tokenizer files that go into it; ``start``:
    the prompt start the pairs share where they run after it (``DPOConfig.share_start``)."""
    if model_dir is None:
        from ..model import resolve_model_dir

        model_dir = resolve_model_dir(config.model)
    ref = ref_model if ref_model is not None else model
    named = [(n, t) for n, t in ref.state_dict().items() if not is_adapter_key(n)]  # DoRA's magnitudes too
    fp = reference_fingerprint(
        config=ref.config.to_hf_dict(), named_tensors=named, dtype=config.dtype,
        tokenizer_files=[model_dir / "tokenizer.json", model_dir / "tokenizer_config.json",
                         model_dir / "chat_template.jinja"],
        max_length=config.max_length, max_prompt_length=config.max_prompt_length,
        extra={"reference": "model" if ref_model is not None else "adapter-disabled", **_rounding(config, start),
               **_weighting(config)},
    )
    return RefCache(root if root is not None else config.ref_cache, fp)


__all__ = ["reference_cache_for"]
