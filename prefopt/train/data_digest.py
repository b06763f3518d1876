"""What a checkpoint was trained on: a digest of the training examples, in order.

A run resumes exactly only on the examples it started with. The data file may have been
edited since, or its text may tokenize differently (another tokenizer, ``max_length``, or a
chat template that prints today's date); the settings check in :mod:`.state` sees none of
that, so the checkpoint records this digest and a resume compares it.
"""
from __future__ import annotations

import dataclasses
import hashlib
from array import array
from collections.abc import Sequence

import torch


class _Unknown(Exception):
    """An item this module cannot hash reproducibly (its repr may hold a memory address)."""


def data_digest(items: Sequence) -> dict | None:
    """``{"examples": n, "digest": hex}`` over the items' token ids (and any other fields), or
    None for items of a kind it does not know (a custom trainer's): those go unchecked."""
    h = hashlib.blake2b(digest_size=16)
    try:
        for x in items:
            _feed(h, x)
    except _Unknown:
        return None
    return {"examples": len(items), "digest": h.hexdigest()}


def _feed(h, x) -> None:
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        h.update(type(x).__name__.encode())
        for f in dataclasses.fields(x):
            _feed(h, getattr(x, f.name))
    elif isinstance(x, array):  # token ids as TokenizedExample keeps them: one block, no per-item work
        h.update(b"a%s%d:" % (x.typecode.encode(), len(x)) + x.tobytes())
    elif isinstance(x, (list, tuple)):
        try:  # ids in a list: hashed as one block too
            block = array("q", x).tobytes()
        except (TypeError, OverflowError):
            h.update(b"[%d" % len(x))
            for v in x:
                _feed(h, v)
            h.update(b"]")
        else:
            h.update(b"#%d:" % len(x) + block)
    elif isinstance(x, dict):
        h.update(b"{%d" % len(x))
        for k in sorted(x, key=repr):
            _feed(h, k)
            _feed(h, x[k])
        h.update(b"}")
    elif isinstance(x, torch.Tensor):
        t = x.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif x is None or isinstance(x, (bool, int, float, str, bytes)):
        h.update(f"{type(x).__name__}:{x!r};".encode())
    else:
        raise _Unknown(type(x).__name__)


def shared_examples(train: Sequence, evals: Sequence) -> int:
    """How many of ``evals`` are also in ``train``, token for token (each item hashed as
    :func:`data_digest` hashes it); 0 for items of a kind it does not know."""
    def key(x) -> bytes | None:
        h = hashlib.blake2b(digest_size=16)
        try:
            _feed(h, x)
        except _Unknown:
            return None
        return h.digest()

    seen = {key(x) for x in train}
    return sum(1 for x in evals if (k := key(x)) is not None and k in seen)


def check_same_data(ckpt, saved: dict | None, current: dict | None) -> None:
    """Refuse to resume ``ckpt`` on other training examples than it was written with. A
    checkpoint without a digest (from before digests, or a custom trainer's items) passes."""
    if saved is None or current is None or saved == current:
        return
    n, m = saved["examples"], current["examples"]
    what = f"{n} examples then, {m} now" if n != m else f"{n} examples then and now, but other tokens"
    raise ValueError(
        f"{ckpt} was written for other training data ({what}): the data changed (a file edited, or files named in "
        "another order), or it tokenizes differently (another tokenizer, max_length, max_prompt_length or "
        "text_windows, chat_vars, or a chat template that prints today's date: pass "
        "the run's chat_date). A resumed run must see the examples it started with; resume on those, or start a "
        "new run (--overwrite or another --output-dir)")
