"""Sequence log-probs of preference pairs with each prompt run once, for the reference precompute.

Chosen and rejected share their prompt, and in the medical tasks the prompt (a note, a
message, a question with its options) is most of the tokens. Without gradients the prompt
can run once per pair: its keys and values go into a :class:`~prefopt.model.KVCache`, the
chosen completions run against it, the cache is rewound to the prompt, and the rejected
completions run against the same keys and values.

Layout: prompts left-padded to ``Lp`` (so every prompt ends at column ``Lp - 1``, whose hidden
state predicts the first completion token), completions right-padded after them. The attention
mask covers both, and positions count real tokens only, so each row sees exactly the tokens and
positions of its unpadded ``prompt + completion`` sequence. The sums equal the full-sequence
forward's up to float rounding (the same sums in another order: up to ~1e-5 relative in fp32).

The cache holds ``2 · layers · rows · kv_heads · length · head_dim`` values, so pairs are taken
in groups whose cache fits ``kv_budget`` bytes (at least one pair per group).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from ..data.collate import pad_collate
from ..data.preference import PairExample
from ..data.sft import IGNORE, TokenizedExample, prompt_len
from ..kernels import sequence_logprobs
from ..model.generate import left_pad
from ..model.kv_cache import KVCache

KV_BUDGET = 512 * 2**20  # bytes of keys and values per group of pairs


def split_pair(pair: PairExample) -> tuple[list[int], TokenizedExample, TokenizedExample] | None:
    """``(prompt, chosen answer, rejected answer)``, the answers with their labels, or None when
    the two sides do not start with the same non-empty prompt followed by a non-empty answer."""
    c, r = pair.chosen, pair.rejected
    p = prompt_len(c.labels)
    if (p == 0 or p != prompt_len(r.labels) or c.input_ids[:p] != r.input_ids[:p]
            or p == len(c.input_ids) or p == len(r.input_ids)):
        return None
    return c.input_ids[:p], *(TokenizedExample(e.input_ids[p:], e.labels[p:]) for e in (c, r))


def shares_prompts(pairs: Sequence[PairExample]) -> bool:
    return all(split_pair(p) is not None for p in pairs)


@torch.no_grad()
def shared_prompt_logps(model: torch.nn.Module, pairs: Sequence[PairExample], pad_id: int, device: torch.device,
                        kv_budget: int = KV_BUDGET) -> tuple[torch.Tensor, torch.Tensor]:
    """Chosen and rejected sequence log-prob sums ``(B,)`` each, fp32, each prompt run once.

    ``model`` is a prefopt causal LM (or a wrapper with ``.module``); every pair must pass
    :func:`shares_prompts`.
    """
    parts = [split_pair(p) for p in pairs]
    if any(s is None for s in parts):
        raise ValueError("shared_prompt_logps needs pairs whose chosen and rejected start with the same prompt")
    core = getattr(model, "module", model)
    dtype = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else core.output_weight.dtype
    cfg = core.config
    per_position = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * dtype.itemsize
    groups, group, prompt, answer = [], [], 0, 0  # pairs, and the cache length they need
    for s in parts:
        p, a = max(prompt, len(s[0])), max(answer, *(len(e.input_ids) for e in s[1:]))
        if group and per_position * (len(group) + 1) * (p + a) > kv_budget:
            groups.append(group)
            group, p, a = [], len(s[0]), max(len(e.input_ids) for e in s[1:])
        group.append(s)
        prompt, answer = p, a
    groups.append(group)
    chosen, rejected = zip(*(_group(model, g, pad_id, device, dtype) for g in groups))
    return torch.cat(chosen), torch.cat(rejected)


def _group(model, parts, pad_id, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    core = getattr(model, "module", model)
    ids, mask = left_pad([s[0] for s in parts], pad_id, device)  # (B, Lp)
    Lp = ids.shape[1]
    cache = KVCache(core.config, len(parts), Lp + max(len(e.input_ids) for s in parts for e in s[1:]),
                    dtype=dtype, device=device)
    last = model(ids, mask, kv_cache=cache, return_hidden=True)[:, -1:]  # (B, 1, D): predicts the first answer token
    out = []
    for side in (1, 2):  # chosen, then rejected, against the same prompt cache
        cache.rewind(Lp)
        b = {k: v.to(device) for k, v in pad_collate([s[side] for s in parts], pad_id).items()}  # (B, La)
        hidden = model(b["input_ids"], torch.cat([mask, b["attention_mask"]], 1), kv_cache=cache, return_hidden=True)
        hidden = torch.cat([last, hidden[:, :-1]], 1)  # position j predicts answer token j
        out.append(sequence_logprobs(hidden, core.output_weight, b["labels"], ignore_index=IGNORE).sum(-1).float())
    return out[0], out[1]
