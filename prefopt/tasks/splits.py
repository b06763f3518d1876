"""Seeded, stratified train/validation/test splits that never leak.

Records with the same prompt text are one group and go to one split together (duplicated
messages are common in clinical exports); groups are stratified by label, so each split keeps
the class mix. The same seed always gives the same split.
"""
from __future__ import annotations

import random
from collections import defaultdict

from .base import Record


def split_records(records: list[Record], *, test: int | float = 0.2, val: int | float = 0.0, seed: int = 0,
                  max_train: int | None = None) -> dict[str, list[Record]]:
    """``{"train", "val", "test"}``. ``test``/``val`` are fractions (< 1) or counts (≥ 1) of groups."""
    groups: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        groups[" ".join(r.prompt.split())].append(r)
    strata: dict[str, list[list[Record]]] = defaultdict(list)
    for g in groups.values():
        strata[g[0].stratum()].append(g)
    n_groups = len(groups)

    def count(x):
        return int(x) if x >= 1 else round(x * n_groups)

    n_test, n_val = count(test), count(val)
    if n_test + n_val >= n_groups:
        raise ValueError(f"split: test ({n_test}) + val ({n_val}) leave no training data out of {n_groups} groups")
    rng = random.Random(seed)
    order = []  # round-robin over shuffled strata: every prefix is stratified
    pools = []
    for key in sorted(strata):
        gs = strata[key][:]
        rng.shuffle(gs)
        pools.append(gs)
    while any(pools):
        for p in pools:
            if p:
                order.append(p.pop())
    rng.shuffle(pools)  # keep rng use stable
    out = {"test": order[:n_test], "val": order[n_test:n_test + n_val], "train": order[n_test + n_val:]}
    flat = {k: [r for g in v for r in g] for k, v in out.items()}
    rng.shuffle(flat["train"])
    if max_train is not None:
        flat["train"] = flat["train"][:max_train]
    return flat
