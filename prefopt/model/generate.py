"""Text generation with a KV cache: greedy or temperature/top-p sampling, batched with left padding."""
from __future__ import annotations

import hashlib
import json
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from numbers import Integral

import torch
import torch.nn.functional as F

from .kv_cache import KVCache, PromptCache
from .repeats import RepeatGuard, check_repeat_options

# Finished rows leave the batch once they are 1/COMPACT_AT of it. A decoding step reads every weight
# whatever the batch, so on a CPU it costs nearly as much for 8 rows as for 16 (68 against 80 ms on
# SmolLM2) and more for 13-15 than for 16 (its matrix kernels favour multiples of 4): halving pays,
# dropping a row or two does not (benchmarks/bench_generate.py).
COMPACT_AT = 2
MIN_SHARED = 16  # a prompt start of at least this many tokens that every row has is computed once


class PastContext(UserWarning):
    """A prompt and its answer run past the model's context (``max_position_embeddings``): what
    :func:`generate` warns of; ``prefopt predict`` says it record by record instead."""


@contextmanager
def eval_mode(model) -> Iterator:
    """``model`` in eval mode (no dropout) inside the block; each module's own mode back after."""
    with modes_kept(model):
        yield model.eval()


@contextmanager
def modes_kept(model) -> Iterator:
    """Each module of ``model`` back in the mode (train or eval) it had on entry, an error or not."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield model
    finally:
        for m, was in modes:
            m.training = was


def shared_start(prompts: Sequence[Sequence[int]], config, length: int | None) -> int:
    """How many tokens every prompt starts with (a system prompt, a task's instructions), to be run
    once for the batch (:func:`generate`); 0 where fewer than :data:`MIN_SHARED`, for one prompt,
    or for a sliding-window model whose window the batch (``length`` positions) could run past:
    its window counts cache columns, and the padding then sits between the start and the rest
    (``length`` None: the rows' masks apply the window by position, as an explicit mask does).
    Each prompt keeps at least one token of its own."""
    window = getattr(config, "sliding_window", None)
    if len(prompts) < 2 or (window is not None and length is not None and length > window):
        return 0
    first, n = prompts[0], min(len(p) for p in prompts) - 1
    for p in prompts[1:]:
        n = next((i for i in range(n) if p[i] != first[i]), n)
    return n if n >= MIN_SHARED else 0


def run_shared_start(model, start: Sequence[int], cache: KVCache) -> None:
    """Run ``start``, the tokens every row of the empty ``cache`` begins with, once, and copy its
    keys and values into every row."""
    one = KVCache(model.config, 1, len(start), dtype=cache.k[0].dtype, device=cache.k[0].device)
    model(torch.tensor([list(start)], device=cache.k[0].device), kv_cache=one, return_hidden=True)
    cache.share(one)


def _prefill_start(model, prompts: Sequence[Sequence[int]], n: int, cache: KVCache, pad_token_id: int, device
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the prompts' shared first ``n`` tokens once into every row of ``cache``
    (:func:`run_shared_start`), and return the rest of each prompt, left-padded, with the
    attention mask of the whole: ``[start | padding | rest]``. Positions count real tokens only,
    so each row's are those of its prompt unpadded."""
    run_shared_start(model, prompts[0][:n], cache)
    rest, rest_mask = left_pad([p[n:] for p in prompts], pad_token_id, device)
    return rest, torch.cat([torch.ones((len(prompts), n), dtype=rest_mask.dtype, device=device), rest_mask], 1)


ENCODE = "tok.encode(text), or tok.apply_chat_template(messages, add_generation_prompt=True)"


def check_prompts(prompts, vocab_size: int) -> list[list[int]]:
    """``prompts`` as a list of int lists, checked: a non-empty list of prompts, each token ids
    (a list, a tuple, or a 1-D tensor or array) in ``[0, vocab_size)``; a clear error for text,
    one flat list, a 2-D tensor, a non-integer id or one the model has no embedding for."""
    if hasattr(prompts, "shape"):  # a tensor or an array
        raise TypeError(f"prompts: a list of token-id lists, not a {type(prompts).__name__} (a (B, T) tensor or "
                        "array without padding: list(ids))")
    if isinstance(prompts, str) or (prompts and all(isinstance(p, str) for p in prompts)):
        raise TypeError(f"prompts are token ids, not text: {ENCODE} for each")
    if not prompts:
        raise ValueError("no prompts")
    if all(isinstance(p, Integral) for p in prompts):
        raise TypeError("prompts: a list of prompts, each a list of token ids; for one prompt, [ids]")
    out = []
    for i, p in enumerate(prompts):
        if getattr(p, "ndim", 1) != 1 or isinstance(p, str):
            raise TypeError(f"prompt {i}: token ids ({ENCODE}), got {type(p).__name__}"
                            + (f" of {p.ndim} dimensions" if hasattr(p, "ndim") else ""))
        ids = p.tolist() if hasattr(p, "tolist") else list(p)
        if odd := [t for t in ids if not isinstance(t, Integral)]:  # a list: a 0.0 or None found is still found
            raise TypeError(f"prompt {i}: token ids are integers ({ENCODE}), got {type(odd[0]).__name__} {odd[0]!r}")
        if bad := [t for t in ids if not 0 <= t < vocab_size]:
            raise ValueError(f"prompt {i}: token id {bad[0]} is outside the model's vocabulary (0-{vocab_size - 1}): "
                             "a tokenizer of another model?")
        out.append(ids)
    return out


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token lists into ``input_ids`` and ``attention_mask``, both ``(B, T)``."""
    T = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), T), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((len(prompts), T), dtype=torch.long, device=device)
    for i, p in enumerate(prompts):
        if not p:
            raise ValueError(f"prompt {i} is empty")
        ids[i, T - len(p):] = torch.tensor(list(p), dtype=torch.long)
        mask[i, T - len(p):] = 1
    return ids, mask


def row_seeds(seed: int | Sequence[int] | None, prompts: Sequence[Sequence[int]]) -> list[int] | None:
    """A seed for each prompt, from ``seed``, the prompt's tokens and how many times the same prompt
    came before it in ``prompts``: a row's sample then depends on neither the batch it runs in (its
    size, the other prompts, their order) nor its place, and a repeated prompt gets other samples.
    ``seed`` None gives None; a list (one seed per prompt, made here before) is taken as it is."""
    if seed is None:
        return None
    if not isinstance(seed, int):
        if len(seed) != len(prompts):
            raise ValueError(f"seed: {len(seed)} seeds for {len(prompts)} prompts")
        return list(seed)
    seen: Counter = Counter()
    out = []
    for p in prompts:
        key = tuple(p)
        digest = hashlib.sha256(json.dumps([seed, list(key), seen[key]]).encode()).digest()
        seen[key] += 1
        out.append(int.from_bytes(digest[:8], "little") >> 1)  # a non-negative int64
    return out


def sample_next(logits: torch.Tensor, *, temperature: float, top_p: float, generator) -> torch.Tensor:
    """One token per row of ``logits`` ``(B, V)``: greedy when ``temperature == 0``. ``generator``:
    None, one ``torch.Generator``, or a list of one per row (each row drawn from its own)."""
    if temperature == 0:
        return logits.argmax(-1)
    probs = F.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, idx = probs.sort(dim=-1, descending=True)
        # drop a token when the mass before it already reaches top_p (the first always stays)
        drop = sorted_p.cumsum(-1) - sorted_p >= top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, idx, sorted_p)
    if isinstance(generator, (list, tuple)):
        return torch.cat([torch.multinomial(p, 1, generator=g) for p, g in zip(probs, generator, strict=True)])
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def first_step(model, prompts: Sequence[Sequence[int]], ids: torch.Tensor, mask: torch.Tensor, max_new_tokens: int,
               pad_token_id: int, prompt_cache: PromptCache | None) -> tuple[KVCache, torch.Tensor, torch.Tensor]:
    """The KV cache for :func:`generate` and what its first step runs: the token ids and the
    attention mask. The whole left-padded batch; or with a ``prompt_cache``, what of the one prompt
    it does not hold yet; or, after a start every prompt has run once (:func:`shared_start`), the
    rest of each prompt. (Also what the memory estimate of answering runs,
    ``prefopt.train.answer_estimate``.)"""
    B, T = ids.shape
    dtype, device = model.output_weight.dtype, ids.device
    if prompt_cache is not None:
        if B != 1:
            raise ValueError(f"prompt_cache serves one prompt at a time, got {B}")
        held = prompt_cache.start(model.config, list(prompts[0]), max_new_tokens, dtype=dtype, device=device)
        return prompt_cache.cache, ids[:, held:], mask
    cache = KVCache(model.config, B, T + max_new_tokens, dtype=dtype, device=device)
    shared = shared_start(prompts, model.config, T + max_new_tokens)
    if shared:
        return cache, *_prefill_start(model, prompts, shared, cache, pad_token_id, device)
    return cache, ids, mask


def _past_pretrained_context(model, cache: KVCache, mask: torch.Tensor) -> bool:
    """Whether the next step takes a row past a LongRoPE model's pretrained context (Phi-3's
    ``original_max_position_embeddings``) while the cache holds that row's entries made within
    it, with the short factors (a row's factors are its own: ``Transformer._rotary``). The whole
    batch then runs again, that row with the long factors, as transformers' Phi-3 drops its cache
    there, so that the answer is the one a model without a cache gives. ``model``: a LongRoPE one;
    ``mask``: the attention mask with the step's tokens."""
    long_from = model._long_from
    if cache.length == 0:
        return False
    return bool(((mask[:, :cache.length].sum(1) <= long_from) & (mask.sum(1) > long_from)).any())


MAX_NEW_TOKENS = 128  # generate's default answer length


@torch.no_grad()
def generate(
    model,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int = MAX_NEW_TOKENS,
    temperature: float = 0.0,
    top_p: float = 1.0,
    repetition_penalty: float = 1.0,
    no_repeat_ngram_size: int = 0,
    repeat_scope: str = "all",
    eos_token_ids: Sequence[int] = (),
    pad_token_id: int = 0,
    seed: int | Sequence[int] | None = None,
    stop: Callable[[int, list[int]], bool] | None = None,
    on_step: Callable[[list[list[int]]], None] | None = None,
    compact: bool = True,
    prompt_cache: PromptCache | None = None,
) -> list[list[int]]:
    """Continue each prompt; return the new tokens of each (EOS included when produced).

    Args:
        model: a :class:`~prefopt.model.Transformer`.
        prompts: token-id lists, any lengths; they are left-padded into one batch.
        max_new_tokens: the most tokens added to each prompt.
        temperature: 0 for greedy decoding, else sampling at this temperature.
        top_p: nucleus sampling mass (with ``temperature > 0``).
        repetition_penalty: above 1, tokens already in the row become less likely; small models
            decoding greedily often loop on a sentence until the token cap, and 1.1-1.3 breaks such
            loops (:mod:`prefopt.model.repeats`).
        no_repeat_ngram_size: n > 0 bans any token that would complete an n-gram already in the row.
        repeat_scope: what both count as the row: ``"all"`` (prompt and output, as transformers) or
            ``"output"`` (the generated tokens only, so copying from the prompt is not penalised).
        eos_token_ids: a row stops after producing any of these.
        seed: seeds sampling, so the same call gives the same text: each row draws from its own
            generator, seeded by :func:`row_seeds` (or by ``seed[i]``, a list of one per prompt), so
            a prompt's text does not depend on the prompts batched with it (up to float rounding
            in the batched forward, which can tip a near tie).
        stop: ``stop(row, new_tokens) -> bool``; a row also stops when it returns True.
        on_step: called with every row's tokens so far after each step (for streaming).
        compact: drop finished rows from the batch (and from the KV cache) once they are half of it
            or more, so the rows still going no longer carry them through every step
            (``benchmarks/bench_generate.py``: the time saved grows with the spread of answer
            lengths). False keeps every row to the end, computing padding for finished ones, as
            before 2026-12-02. Either way a row's tokens are the same up to float rounding (a
            smaller batch can round a near tie the other way, as batching itself can).
        prompt_cache: a :class:`~prefopt.model.kv_cache.PromptCache` kept between calls, for one
            prompt at a time: the tokens this prompt shares with the last call's prompt and answer
            are not run again (``prefopt chat``, whose every turn repeats the conversation so far).

    A start every prompt has (a system prompt, a task's instructions; :func:`shared_start`) is run
    once, not once per row, and its keys and values copied into each row of the KV cache.

    The model runs in eval mode (no dropout: a model just trained is still in train mode), each of
    its modules put back in its own mode after.
    """
    if max_new_tokens < 1:
        raise ValueError("max_new_tokens must be at least 1")
    if temperature < 0 or not 0 < top_p <= 1:
        raise ValueError("temperature must be >= 0 and top_p in (0, 1]")
    check_repeat_options(repetition_penalty, no_repeat_ngram_size, repeat_scope)
    prompts = check_prompts(prompts, model.config.vocab_size)
    device = model.output_weight.device
    ids, mask = left_pad(prompts, pad_token_id, device)
    B, T = ids.shape
    context = getattr(model.config, "max_position_embeddings", None)
    if context and T + max_new_tokens > context:
        warnings.warn(PastContext(f"a prompt of {T} tokens plus {max_new_tokens} new ones runs past the model's "
                                  f"context of {context} positions (max_position_embeddings), which it was never "
                                  "trained on; the output may degrade. Shorten the prompt or max_new_tokens."),
                      stacklevel=2)
    with eval_mode(model):  # no dropout: a model just trained is still in train mode
        cache, step_ids, mask = first_step(model, prompts, ids, mask, max_new_tokens, pad_token_id, prompt_cache)
        seeds = row_seeds(seed, prompts) if temperature > 0 else None
        gen = None if seeds is None else [torch.Generator(device=device).manual_seed(s) for s in seeds]
        eos = torch.tensor(list(eos_token_ids) or [-1], device=device)
        out: list[list[int]] = [[] for _ in range(B)]
        done = torch.zeros(B, dtype=torch.bool, device=device)
        guard = RepeatGuard(prompts, model.output_weight.shape[0], repetition_penalty=repetition_penalty,
                            no_repeat_ngram_size=no_repeat_ngram_size, scope=repeat_scope, device=device)
        live = list(range(B))  # the prompt each batch row answers; finished rows leave the batch
        # each row's tokens so far, what a rebuild of the cache runs: kept only for a model that may need one
        seq = ids if getattr(model, "_long_from", None) is not None else None
        for step in range(max_new_tokens):
            if seq is not None and _past_pretrained_context(model, cache, mask):
                cache = KVCache(model.config, len(live), seq.shape[1] + max_new_tokens - step, dtype=cache.k[0].dtype,
                                device=device)
                step_ids = seq
                if prompt_cache is not None:  # (a stop now leaves it holding nothing it has not rebuilt)
                    prompt_cache.cache, prompt_cache.ids = cache, []
            h = model(step_ids, mask, kv_cache=cache, return_hidden=True)[:, -1]  # (rows, D)
            logits = model.logits(h).float()  # (rows, V)
            if guard.active:
                logits = guard.apply(logits)
            nxt = sample_next(logits, temperature=temperature, top_p=top_p, generator=gen)
            nxt = torch.where(done, torch.full_like(nxt, pad_token_id), nxt)
            going = (~done).nonzero().flatten().tolist()
            for j in going:
                out[live[j]].append(int(nxt[j]))
            if guard.active:
                guard.add([out[live[j]][-1] for j in going], going)
            done |= torch.isin(nxt, eos)
            if stop is not None:
                for j in (~done).nonzero().flatten().tolist():
                    if stop(live[j], out[live[j]]):
                        done[j] = True
            if on_step is not None:
                on_step(out)
            if bool(done.all()):
                break
            step_ids = nxt[:, None]
            seq = None if seq is None else torch.cat([seq, step_ids], dim=1)
            mask = torch.cat([mask, torch.ones((len(live), 1), dtype=mask.dtype, device=device)], dim=1)
            if compact and int(done.sum()) * COMPACT_AT >= len(live):
                keep = (~done).nonzero().flatten()
                cache.select(keep)
                guard.select(keep.tolist())
                mask, step_ids, done = mask[keep], step_ids[keep], done[keep]
                seq = None if seq is None else seq[keep]
                gen = None if gen is None else [gen[j] for j in keep.tolist()]
                live = [live[j] for j in keep.tolist()]
        if prompt_cache is not None:  # the cache holds the prompt and every new token but the last (never run)
            prompt_cache.ids = list(prompts[0]) + out[0][:-1]
        return out
