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
