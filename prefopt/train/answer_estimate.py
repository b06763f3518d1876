"""How much memory answering a batch of prompts holds, worked out before any weight is loaded.

:func:`estimate_answers` builds the model from its ``config.json`` on fake tensors, as the
training estimate does (:mod:`.memory_estimate`, whose dispatch mode follows every tensor made and
freed), and runs what :func:`~prefopt.model.generate.generate` runs for a batch at its largest:
the KV cache for the prompts and their answers, allocated whole before the first step; the
prompts' forward into it (the prefill: a layer's activations at a time, then the last position's
logits); a decoding step; and the cache's compaction once half the rows have finished (each
layer's keys and values for the rows still going are copied out beside the old). The prompts
are taken to share no start (a start they all have runs once: less).

Two uses (``prefopt compare ... --estimate-memory``, :mod:`prefopt.evaluate.compare_train`): a
stage's answers to the test set, on the model loaded for evaluation (its dtype; a 4-bit base
keeps the adapter on top, else it is merged in); and answers during training (DPO's validation
items), on the training model, beside AdamW's two moments of the trained weights (the gradients
are let go after each step) and, on CUDA, under the trainer's bf16 autocast.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..devices import DTYPES
from ..fileio import size_text
from .config import TrainConfig
from .memory_estimate import (
    LiveTensors,
    cublas_workspace,
    device_kind,
    fake_model,
    fake_tensors,
    held_beyond,
    module_bytes,
    read_model_config,
    where,
)


@dataclass(frozen=True)
class AnswerEstimate:
    """Bytes answering holds at once (``peak``) and what makes it up: ``weights`` (the model's,
    an adapter's included), ``moments`` (AdamW's, held beside a training model: 0 else), ``cache``
    (the KV cache, made before the first step), ``beyond`` (the most the steps hold beside the
    weights and the cache), ``workspace`` (cuBLAS's, on CUDA); and what it assumed."""

    peak: int
    weights: int
    moments: int
    cache: int
    beyond: int
    workspace: int
    prompts: int
    prompt_tokens: int
    new_tokens: int
    layers: int
    device: str
    dtype: str
    autocast: bool = False

    def lines(self) -> list[str]:
        """The estimate in words, for the console."""
        return [
            f"memory estimate {where(self.device, self.autocast)}, {self.dtype} weights, {self.prompts} "
            f"prompt{'s' * (self.prompts != 1)} of {self.prompt_tokens} tokens at once and answers of up to "
            f"{self.new_tokens}:",
            f"  weights      {size_text(self.weights)}"
            + (f", and AdamW's two moments of the trained ones ({size_text(self.moments)})" if self.moments else ""),
            f"  KV cache     {size_text(self.cache)}: keys and values of {self.layers} layers for "
            f"{self.prompt_tokens + self.new_tokens} tokens a prompt",
            f"  steps        {size_text(self.beyond)} at most beside them (the prompts' forward, a layer at a time)",
            *([f"  workspace    {size_text(self.workspace)} for cuBLAS"] if self.workspace else []),
            f"  peak         {size_text(self.peak)} of tensors at once; add {held_beyond(self.device)}",
        ]


def estimate_answers(config: TrainConfig, *, prompts: int, prompt_tokens: int, new_tokens: int,
                     device: str | None = None, dtype: str | None = None, training: bool = False,
                     model_config=None) -> AnswerEstimate:
    """The peak memory of answering ``prompts`` prompts of ``prompt_tokens`` tokens at once, with
    answers of up to ``new_tokens``, on ``device`` (``"cpu"`` or ``"cuda"``; default the config's
    on this machine), from the model's ``config.json`` alone (or ``model_config``).

    ``training`` False: the model as an evaluation loads ``config``'s trained weights, in
    ``dtype`` (e.g. ``"bfloat16"``; default ``config.dtype``), on ``config.quantize``'s 4-bit base
    with the adapter on top, else with the adapter merged (the base model's size). True: the
    training model of ``config`` (its dtype, its adapter or every weight trained), with AdamW's
    moments held beside, under bf16 autocast where the trainer's is on."""
    if min(prompts, prompt_tokens, new_tokens) < 1:
        raise ValueError(f"prompts, prompt_tokens and new_tokens are at least 1; got {prompts}, {prompt_tokens}, "
                         f"{new_tokens}")
    from ..model.kv_cache import KVCache

    kind = device_kind(device or config.device)
    cfg = read_model_config(config, model_config)
    autocast = training and kind == "cuda" and config.bf16_autocast
    dtype = config.dtype if training or dtype is None else dtype
    # the batch's own tensors, real (what depends on their values is worked out for real): the prompts, and the last
    # decoding step's token and mask
    ids, last = torch.ones((prompts, prompt_tokens), dtype=torch.long), torch.ones((prompts, 1), dtype=torch.long)
    masks = [torch.ones((prompts, prompt_tokens + n), dtype=torch.long) for n in (0, new_tokens)]
    with fake_tensors():
        # an evaluation's adapter is merged into the weights (nothing beside them) unless the base is in 4 bits
        model = fake_model(config, cfg, DTYPES[dtype], adapted=training or bool(config.quantize))
        moments = 2 * sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad) if training \
            else 0
        model.eval()
        live = LiveTensors(model)

        def cache() -> KVCache:
            return KVCache(cfg, prompts, prompt_tokens + new_tokens, dtype=model.output_weight.dtype, device="cpu")

        with live, torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            kv = cache()
            held = live.now
            # the prompts' forward, and where half the rows end at their first token, the others' entries copied out
            # (its last hidden states and logits still held)
            h = model(ids, masks[0], kv_cache=kv, return_hidden=True)[:, -1]
            logits = model.logits(h).float()
            if prompts > 1:
                kv.select(torch.arange(prompts // 2))
            del kv, h, logits
            # no row ended: the last decoding step, every row's keys and mask at their longest
            kv = cache()
            kv.length = prompt_tokens + new_tokens - 1
            model.logits(model(last, masks[1], kv_cache=kv, return_hidden=True)[:, -1]).float().argmax(-1)
    workspace = cublas_workspace(kind) // 2  # (one thread runs GEMMs: no backward's)
    weights = module_bytes(model)
    batch = ids.nbytes + masks[0].nbytes  # the prompts' token ids and attention mask, held throughout
    return AnswerEstimate(peak=weights + moments + workspace + batch + live.peak, weights=weights, moments=moments,
                          cache=held, beyond=live.peak - held + batch, workspace=workspace, prompts=prompts,
                          prompt_tokens=prompt_tokens, new_tokens=new_tokens, layers=cfg.num_hidden_layers,
                          device=kind, dtype=dtype, autocast=autocast)
