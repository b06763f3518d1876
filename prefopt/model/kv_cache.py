"""A preallocated key/value cache for incremental decoding."""
from __future__ import annotations

import torch

from .config import ModelConfig


class KVCache:
    """Keys and values for every layer, ``(B, Hkv, max_len, hd)`` each, filled left to right.

    All rows share one length: batched prompts are left-padded, so every row's
    next token is written at the same index.
    """

    def __init__(self, cfg: ModelConfig, batch_size: int, max_len: int, *, dtype, device):
        shape = (batch_size, cfg.num_key_value_heads, max_len, cfg.head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.num_hidden_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.num_hidden_layers)]
        self.max_len = max_len
        self.length = 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Store ``k``/``v`` ``(B, Hkv, T, hd)`` after the cached ones; return all so far."""
        end = self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache overflow: {end} tokens > max_len {self.max_len}")
        self.k[layer][:, :, self.length : end] = k
        self.v[layer][:, :, self.length : end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def reserve(self, max_len: int) -> None:
        """Room for ``max_len`` tokens in all: the entries so far copied into larger tensors where
        the cache is shorter (by a quarter more than asked, so a conversation growing turn by turn
        is not copied every turn)."""
        if max_len <= self.max_len:
            return
        size = max_len + max_len // 4
        for entries in (self.k, self.v):
            for i, t in enumerate(entries):
                grown = t.new_zeros((*t.shape[:2], size, t.shape[3]))
                grown[:, :, :self.length] = t[:, :, :self.length]
                entries[i] = grown
        self.max_len = size

    def advance(self, n: int) -> None:
        self.length += n

    def share(self, prefix: KVCache) -> None:
        """Start every row with the entries of ``prefix``, a one-row cache (a prompt start that
        every row has: computed once, copied into each)."""
        n = prefix.length
        if self.length or n > self.max_len:
            raise ValueError(f"a shared prefix of {n} tokens goes into an empty cache of at least that length")
        for own, theirs in ((self.k, prefix.k), (self.v, prefix.v)):
            for layer, t in zip(own, theirs):
                layer[:, :, :n] = t[:, :, :n]
        self.length = n

    def select(self, rows: torch.Tensor) -> None:
        """Keep only the batch ``rows`` (drop finished sequences)."""
        self.k = [t[rows] for t in self.k]
        self.v = [t[rows] for t in self.v]


class PromptCache:
    """The keys and values of one prompt and the answer to it, kept from one call of
    ``generate(..., prompt_cache=)`` to the next (``prefopt chat``: each turn's prompt begins with
    the last turn's prompt and answer, so only the tokens after what they share are run).

    ``ids`` are the tokens whose entries the cache holds. A call that is stopped part way (Ctrl-C)
    leaves ``ids`` at the tokens it kept from before, whose entries it did not touch.
    """

    def __init__(self):
        self.cache: KVCache | None = None
        self.ids: list[int] = []

    def start(self, cfg: ModelConfig, prompt: list[int], room: int, *, dtype, device) -> int:
        """Ready the cache for ``prompt`` and ``room`` tokens after it; returns how many of the
        prompt's first tokens it holds already (all but the last at most: one must run, for the
        next token's logits)."""
        n, limit = 0, min(len(self.ids), len(prompt) - 1)
        while n < limit and self.ids[n] == prompt[n]:
            n += 1
        c = self.cache
        if (c is None or c.k[0].dtype != dtype or c.k[0].device != torch.device(device)
                or len(c.k) != cfg.num_hidden_layers):
            self.cache, n = KVCache(cfg, 1, len(prompt) + room, dtype=dtype, device=device), 0
        else:
            c.length = n
            c.reserve(len(prompt) + room)
        self.ids = list(prompt[:n])
        return n
