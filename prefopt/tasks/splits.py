"""Seeded, stratified train/validation/test splits that never leak.

Records with the same prompt text are one group and go to one split together (duplicated
messages are common in clinical exports); with ``group_by``, so are records with the same value
in that column (one patient's messages: a model tested on a patient it trained on is scored too
kindly). Groups are stratified by label: each split takes its share of every class in proportion
to the class's size (largest-remainder rounding), so each split keeps the class mix. The same
seed always gives the same split.
"""
from __future__ import annotations

import random
from collections import defaultdict

from .base import Record


def _group_key(r: Record) -> str:
    return " ".join(r.prompt.split())


def group_value(r: Record, column: str) -> str:
    """``r``'s cell in ``column`` (its row as read: ``meta["row"]``), the group it belongs to; a
    record without the column, or with it empty, is a ValueError that names it (it could not be
    kept with its group)."""
    row = r.meta.get("row")
    if not isinstance(row, dict) or column not in row:
        have = f" (have: {', '.join(map(str, row))})" if isinstance(row, dict) else ""
        raise ValueError(f"group_by {column!r}: record {r.id!r} has no such column{have}")
    value = "" if row[column] is None else str(row[column]).strip()
    if not value:
        raise ValueError(f"group_by {column!r}: record {r.id!r} has it empty; every record must name its group (a "
                         "patient) to be kept with the others")
    return value


def _groups(records: list[Record], group_by: str | None = None) -> list[list[Record]]:
    """The records that must go to one split together, in the order of each group's first record:
    the same prompt text (up to whitespace), and with ``group_by`` the same value in that column,
    joined through each other (a patient's messages, and any other patient's that repeats one)."""
    parent: dict[tuple[str, str], tuple[str, str]] = {}

    def root(key):
        while parent[key] != key:
            parent[key] = key = parent[parent[key]]
        return key

    first = []
    for r in records:
        keys = [("text", _group_key(r))] + ([("column", group_value(r, group_by))] if group_by else [])
        for key in keys:
            parent.setdefault(key, key)
        top = root(keys[0])
        for key in keys[1:]:
            if (other := root(key)) != top:
                parent[other] = top
        first.append(keys[0])
    groups: dict[tuple[str, str], list[Record]] = defaultdict(list)
    for r, key in zip(records, first):
        groups[root(key)].append(r)
    return list(groups.values())


def count_groups(records: list[Record], group_by: str | None = None) -> int:
    """How many groups :func:`split_records` deals out (:func:`_groups`)."""
    return len(_groups(records, group_by))


def mixed_labels(records: list[Record]) -> str | None:
    """Where texts recur with different labels (a multi-label abstract listed once per class, a
    message labelled twice), a line that says how many and the first: each such group goes to one
    split whole, so the model trains on both labels, and a test item's other row counts one of
    them wrong whatever it answers. None where none does."""
    groups: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        if r.labels:
            groups[_group_key(r)].append(r)
    mixed = [g for g in groups.values() if len({tuple(sorted(r.labels.items())) for r in g}) > 1]
    if not mixed:
        return None
    a = mixed[0][0]
    b = next(r for r in mixed[0] if r.labels != a.labels)
    shown = "; ".join(f"{r.id} {', '.join(r.labels.values())!r}" for r in (a, b))
    n = len(mixed)
    return (f"{n} text{'s recur' if n > 1 else ' recurs'} with different labels ({sum(map(len, mixed))} rows; the "
            f"first: {shown}): the model is trained on both, and where such a text is tested one of its rows "
            "counts as wrong whatever the answer")


def split_records(records: list[Record], *, test: int | float = 0.2, val: int | float = 0.0, seed: int = 0,
                  max_train: int | None = None, group_by: str | None = None) -> dict[str, list[Record]]:
    """``{"train", "val", "test"}``. ``test``/``val`` are fractions (< 1) or counts (≥ 1) of groups
    (:func:`_groups`; ``group_by``: a column whose value keeps records together, a patient's id)."""
    groups = _groups(records, group_by)
    strata: dict[str, list[list[Record]]] = defaultdict(list)
    for g in groups:
        strata[g[0].stratum()].append(g)
    n_groups = len(groups)

    def count(x):
        return int(x) if x >= 1 else round(x * n_groups)

    n_test, n_val = count(test), count(val)
    if n_test + n_val >= n_groups:
        what = (f"groups (records with the same {group_by!r}, or the same text)" if group_by else
                "records (a text that recurs counted once)")
        raise ValueError(f"split: test ({n_test}) + val ({n_val}) leave no training data out of {n_groups} {what}: "
                         "hold fewer out (compare: --set test=N, --set val=N; eval: --test N)")
    rng = random.Random(seed)
    keys = sorted(strata)
    for key in keys:
        rng.shuffle(strata[key])
    sizes = {k: len(strata[k]) for k in keys}
    take_test = _allocate(sizes, n_test)
    left = {k: sizes[k] - take_test[k] for k in keys}
    take_val = _allocate(left, n_val)
    out = {"test": [], "val": [], "train": []}
    for k in keys:
        gs, t, v = strata[k], take_test[k], take_val[k]
        out["test"] += gs[:t]
        out["val"] += gs[t:t + v]
        out["train"] += gs[t + v:]
    flat = {k: [r for g in v for r in g] for k, v in out.items()}
    rng.shuffle(flat["train"])
    if max_train is not None:
        flat["train"] = flat["train"][:max_train]
    return flat


def split_with_test(records: list[Record], tested: list[Record], *, val: int | float = 0.0, seed: int = 0,
                    max_train: int | None = None, group_by: str | None = None
                    ) -> tuple[dict[str, list[Record]], int]:
    """``({"train", "val", "test"}, how many of records were left out)`` where the test set is given
    (``tested``: a later period's records, another site's): ``test`` is ``tested`` as it is, and
    ``records`` make train and val (:func:`split_records`) less those whose prompt a test record
    has too (up to whitespace: the same text), or with ``group_by`` its value in that column (the
    same patient), which would leak into training."""
    shared = {id(r) for r in overlapping(records, tested, group_by)}
    kept = [r for r in records if id(r) not in shared]
    if not kept:
        raise ValueError(f"split: every one of the {len(records)} training records is also a test record (the same "
                         f"text{f' or {group_by}' if group_by else ''}); nothing is left to train on")
    splits = split_records(kept, test=0, val=val, seed=seed, max_train=max_train, group_by=group_by)
    return {**splits, "test": list(tested)}, len(records) - len(kept)


def overlapping(records: list[Record], tested: list[Record], group_by: str | None = None) -> list[Record]:
    """The records of ``records`` whose prompt a record of ``tested`` has too (up to whitespace),
    or with ``group_by`` whose value in that column one has (the same patient): those a model
    trained on ``records`` would be tested on again."""
    texts = {_group_key(r) for r in tested}
    values = {group_value(r, group_by) for r in tested} if group_by else set()
    return [r for r in records if _group_key(r) in texts or (group_by and group_value(r, group_by) in values)]


def sample_records(records: list[Record], k: int, *, seed: int = 0) -> list[Record]:
    """At most ``k`` records, a seeded sample that keeps the class mix (each label stratum gets
    its share, largest remainder), in the order they came. ``records[:k]`` would not: a split's
    test list runs class by class, and data files are often sorted by label."""
    if k >= len(records):
        return list(records)
    strata: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        strata[r.stratum()].append(i)
    take = _allocate({key: len(v) for key, v in strata.items()}, k)
    rng = random.Random(seed)
    keep = sorted(i for key in sorted(strata) for i in rng.sample(strata[key], take[key]))
    return [records[i] for i in keep]


def _allocate(sizes: dict[str, int], total: int) -> dict[str, int]:
    """Split ``total`` over the strata in proportion to ``sizes`` (largest remainder), capped by size."""
    n = sum(sizes.values())
    if not n or not total:
        return dict.fromkeys(sizes, 0)
    exact = {k: total * v / n for k, v in sizes.items()}
    take = {k: min(sizes[k], int(exact[k])) for k in sizes}
    for k in sorted(sizes, key=lambda k: (-(exact[k] - int(exact[k])), k)):
        if sum(take.values()) >= total:
            break
        if take[k] < sizes[k]:
            take[k] += 1
    return take
