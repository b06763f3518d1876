"""How much memory answering a batch of prompts holds, worked out before any weight is loaded.

:func:`estimate_answers` builds the model from its ``config.json`` on fake tensors, as the
training estimate does (:mod:`.memory_estimate`, whose dispatch mode follows every tensor made and
freed), and runs what :func:`~prefopt.model.generate.generate` runs for a batch at its largest:
its own first step (the KV cache for the prompts and their answers, allocated whole, and a start
every prompt has, where ``shared`` says so, run once into it), the prompts' forward (a layer's
activations at a time, then the last position's logits), the cache's compaction right after it
(half the rows ended at their first token: each layer's keys and values for the rows still going
copied out beside the old, the prompts' last states still held), and the last decoding step (the
keys and the mask at their longest). A run whose rows all go to the end is never compacted and
holds at most that copy less.

Its uses: ``prefopt compare|study ... --estimate-memory`` (:mod:`prefopt.evaluate.compare_train`:
a stage's answers to the test set, on the model loaded for evaluation, its dtype, a 4-bit base
keeping the adapter on top, else merged in; and DPO's validation answers during training, on the
training model, beside AdamW's two moments of the trained weights, the gradients let go after
each step, under the trainer's bf16 autocast on CUDA), and ``prefopt eval|predict ...
--estimate-memory`` (:mod:`prefopt.evaluate.answer_memory`: a command's own records).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..devices import DTYPES
from ..fileio import size_text
from .config import TrainConfig
from .estimate_shards import local_bytes
from .memory_estimate import (
    LiveTensors,
    cublas_workspace,
    device_kind,
    fake_model,
    fake_tensors,
    held_beyond,
    layer_values,
    module_bytes,
    read_model_config,
    short_of,
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


def estimate_answers(config: TrainConfig, *, prompts: int, prompt_tokens: int, new_tokens: int, shared: int = 0,
                     device: str | None = None, dtype: str | None = None, training: bool = False,
                     model_config=None, autocast: bool | None = None) -> AnswerEstimate:
    """The peak memory of answering ``prompts`` prompts of ``prompt_tokens`` tokens at once, with
    answers of up to ``new_tokens``, on ``device`` (``"cpu"`` or ``"cuda"``; default the config's
    on this machine), from the model's ``config.json`` alone (or ``model_config``). ``shared``:
    the prompts' first tokens that every one of them has (a system prompt, a task's
    instructions), run once for the batch where ``generate`` would (at least 16 of them).

    ``training`` False: the model as an evaluation loads ``config``'s trained weights, in
    ``dtype`` (e.g. ``"bfloat16"``; default ``config.dtype``), on ``config.quantize``'s 4-bit base
    with the adapter on top, else with the adapter merged (the base model's size). True: the
    training model of ``config`` (its dtype, its adapter or every weight trained), with AdamW's
    moments held beside, on CUDA under bf16 autocast where the trainer's is on. ``autocast``: on
    CUDA, under bf16 autocast or not whatever ``training`` says (a trainer's evaluators answer
    under its autocast)."""
    if min(prompts, prompt_tokens, new_tokens) < 1 or not 0 <= shared < prompt_tokens:
        raise ValueError(f"prompts, prompt_tokens and new_tokens are at least 1 and shared below prompt_tokens; got "
                         f"{prompts}, {prompt_tokens}, {new_tokens}, {shared}")
    from ..model.generate import first_step, left_pad
    from ..model.kv_cache import KVCache

    kind = device_kind(device or config.device)
    cfg = read_model_config(config, model_config)
    autocast = kind == "cuda" and (training and config.bf16_autocast if autocast is None else autocast)
    dtype = config.dtype if training or dtype is None else dtype
    # the prompts, real (what depends on their values is worked out for real), each its own after the start they share
    batch = [[1] * shared + [3 + i % (cfg.vocab_size - 3)] * (prompt_tokens - shared) for i in range(prompts)]
    ids, mask = left_pad(batch, 0)
    with fake_tensors():
        # an evaluation's adapter is merged into the weights (nothing beside them) unless the base is in 4 bits
        model = fake_model(config, cfg, DTYPES[dtype], adapted=training or bool(config.quantize))
        moments = 2 * sum(local_bytes(p) for p in model.parameters() if p.requires_grad) if training else 0
        model.eval()
        live = LiveTensors(model)
        with live, torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            # generate's own first step: the cache, the shared start run into it; then the prompts' forward and,
            # where half the rows end at their first token, the others' entries copied out (its last hidden states
            # and logits still held)
            kv, step, step_mask = first_step(model, batch, ids, mask, new_tokens, 0, None)
            held = sum(t.nbytes for t in kv.k + kv.v)
            h = model(step, step_mask, kv_cache=kv, return_hidden=True)[:, -1]
            logits = model.logits(h).float()
            if prompts > 1:
                kv.select(torch.arange(prompts // 2))
            del kv, step, h, logits
            # no row ended: the last decoding step, every row's keys and mask at their longest
            kv = KVCache(cfg, prompts, prompt_tokens + new_tokens, dtype=model.output_weight.dtype, device="cpu")
            kv.length = prompt_tokens + new_tokens - 1
            last, longest = torch.ones((prompts, 1), dtype=torch.long), torch.ones((prompts, kv.length + 1),
                                                                                     dtype=torch.long)
            model.logits(model(last, longest, kv_cache=kv, return_hidden=True)[:, -1]).float().argmax(-1)
    workspace = cublas_workspace(kind) // 2  # (one thread runs GEMMs: no backward's)
    weights = module_bytes(model)
    # the prompts' token ids, held throughout, and their attention mask, where a shared start did not replace it
    own = ids.nbytes + mask.nbytes * (step_mask is mask)
    return AnswerEstimate(peak=weights + moments + workspace + own + live.peak, weights=weights, moments=moments,
                          cache=held, beyond=live.peak - held + own, workspace=workspace, prompts=prompts,
                          prompt_tokens=prompt_tokens, new_tokens=new_tokens, layers=cfg.num_hidden_layers,
                          device=kind, dtype=dtype, autocast=autocast)


def answer_fit_note(model, prompts: list[list[int]], batch_size: int, new_tokens: int) -> str | None:
    """A warning before answering where a batch of ``prompts`` (those
    :func:`~prefopt.model.length_batches.length_batches` makes of them: at most ``batch_size``,
    by length; each taken at its longest prompt's length, the start every prompt has run once)
    will not fit in the memory the loaded ``model``'s device has free, for the batch that lacks
    the most; None where all fit, where the estimate does not cover them or the free memory is
    not known. The estimate runs only where a quick generous bound (:func:`surely_answers`) does
    not fit, and draws no random number."""
    from ..model.generate import shared_start
    from ..model.length_batches import batch_shapes
    from ..quant import QuantLinear
    from .memory_estimate import free_bytes
    from .stop_signal import going_on

    if not prompts or not hasattr(getattr(model, "config", None), "sparse"):  # (a Transformer's ModelConfig)
        return None
    device = model.output_weight.device
    free = free_bytes(device)
    if free is None:
        return None
    shared = shared_start(prompts, config=None, length=None)  # (what every batch of them runs once at least)
    shapes = [(rows, longest) for rows, longest in
              batch_shapes([len(p) for p in prompts], batch_size, new_tokens, device.type, shared)
              if not surely_answers(model, device.type, rows, longest, new_tokens, free)]
    if not shapes:
        return None
    quantized = next((m for m in model.modules() if isinstance(m, QuantLinear)), None)
    config = TrainConfig(model="(loaded)", output_dir=".", quantize=None if quantized is None else
                         ("nf4-dq" if quantized.double else "nf4"))
    dtype = next((k for k, v in DTYPES.items() if v == model.output_weight.dtype), None)
    if dtype is None:
        return None
    autocast = torch.is_autocast_enabled(device.type)  # (a trainer's evaluators answer under its autocast)

    def short(rows: int, longest: int) -> tuple | None:
        return short_of(lambda: estimate_answers(config, prompts=rows, prompt_tokens=longest, new_tokens=new_tokens,
                                                 shared=shared, device=device.type, dtype=dtype,
                                                 model_config=model.config, autocast=autocast), free, device)

    found = [(lack[1], rows, longest, lack[2]) for rows, longest in shapes if (lack := short(rows, longest))]
    if not found:
        return None
    need, rows, longest, killed = max(found)
    return (f"answering {rows} prompt{'s' * (rows != 1)} of {longest} tokens at once (the batch that holds the most) "
            f"holds about {size_text(need)} beyond the weights loaded, and {device.type} has {size_text(free)} free: "
            f"it will likely run out of memory{killed}. {going_on().fewer_answers}")


def surely_answers(model, device: str, prompts: int, prompt_tokens: int, new_tokens: int, free: int) -> bool:
    """Whether a generous bound on what answering adds to the loaded ``model`` on a ``device``
    (``"cpu"``, ``"cuda"``) fits in ``free`` bytes, so the estimate need not run: the KV cache,
    exactly, and a quarter more for its compaction; for the prompts' forward, per token 8 D + 4 F
    + 4 (heads + 2 kv heads) x head_dim values of 4 bytes, the attention masks (5 bytes a query
    and key), and the last logits in float32 twice; two copies of the largest layer's weights (a
    4-bit one widened for a pass); doubled; and cuBLAS's workspace. tests/train/test_answer_estimate.py
    holds it above the estimate."""
    c = model.config
    size = model.output_weight.element_size()
    positions = prompt_tokens + new_tokens
    cache = 2 * c.num_hidden_layers * prompts * c.num_key_value_heads * positions * c.head_dim * size
    width = 8 * c.hidden_size + 4 * c.intermediate_size + 4 * (c.num_attention_heads + 2 * c.num_key_value_heads) \
        * c.head_dim
    forward = 4 * prompts * prompt_tokens * width + 5 * prompts * prompt_tokens * positions \
        + 8 * prompts * c.vocab_size
    layer = max(map(layer_values, model.model.layers))
    return 2 * (cache + cache // 4 + forward + 2 * 4 * layer) + cublas_workspace(device) // 2 <= free
