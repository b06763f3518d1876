"""Per-token log-probs from final hidden states, without materialising ``(N, V)`` logits.

``sequence_logprobs(hidden, weight, labels)`` dispatches to an implementation:

- ``triton`` (the default on CUDA when triton is installed): a fused Triton kernel that tiles
  over tokens and vocabulary and keeps only per-token logsumexp; see ``triton_logprobs.py``.
- ``chunked`` (the CPU path): tiles over tokens with a custom autograd function; memory
  O(chunk × V).
- ``naive``: full logits, ``log_softmax``, gather; the reference for tests and benchmarks.

Set ``PREFOPT_LOGPROBS=triton|chunked|naive`` or pass ``impl=`` to force one (``auto``, the
default, picks as above). ``fused_preference_loss`` (in ``fused.py``) puts a preference loss
on top for the stacked ``[chosen; rejected]`` layout, and ``nll_sum`` SFT's summed NLL; both
form the lm_head gradients in the forward (``onepass.py``) on CUDA, and on a CPU with a
trainable head, unless an implementation is forced.
"""
from __future__ import annotations

import os

import torch

from ._tokens import check_inputs, scored
from .chunked import chunked_logprobs
from .fused import fused_preference_loss, nll_sum
from .naive import naive_logprobs
from .triton_logprobs import available as triton_available
from .triton_logprobs import triton_logprobs

IMPLS = {"chunked": chunked_logprobs, "naive": naive_logprobs, "triton": triton_logprobs}


def requested_impl(impl: str | None = None) -> str:
    """The implementation asked for: ``impl``, else ``$PREFOPT_LOGPROBS``, else ``auto`` (none forced)."""
    return impl or os.environ.get("PREFOPT_LOGPROBS") or "auto"


def resolve_impl(device: torch.device, impl: str | None = None) -> str:
    """The implementation name to use: :func:`requested_impl`, ``auto`` resolved for ``device``."""
    name = requested_impl(impl)
    if name == "auto":
        return "triton" if device.type == "cuda" and triton_available(device) else "chunked"
    if name not in IMPLS:
        source = "" if impl else " (from $PREFOPT_LOGPROBS)"
        raise ValueError(f"unknown log-prob implementation {name!r}{source}; choose from {sorted(IMPLS)} or 'auto'")
    return name


def sequence_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    ignore_index: int = -100,
    impl: str | None = None,
) -> torch.Tensor:
    """Log-prob of each label under ``softmax(hidden @ weight.T)``.

    Args:
        hidden: ``(N, D)`` or ``(R, T, D)`` final hidden states, already aligned with ``labels``
            (position t predicts ``labels[t]``).
        weight: ``(V, D)`` lm_head weight; may be frozen.
        labels: ``(N,)`` or ``(R, T)`` token ids, ``ignore_index`` where no log-prob is wanted.
            Ignored positions are dropped before any matmul, so only scored tokens cost work.
        impl: ``auto`` (default), ``triton``, ``chunked`` or ``naive``.

    Under ``torch.autocast`` the product runs in autocast's dtype (bf16 on CUDA training with
    fp32 parameters), as ``F.linear`` would; gradients come back in the inputs' dtypes.

    Returns:
        fp32 log-probs shaped like ``labels``, 0 at ignored positions. ``.sum(-1)`` gives
        per-sequence totals; ``(labels != ignore_index).sum(-1)`` the token counts.
    """
    name = resolve_impl(hidden.device, impl)
    device = hidden.device.type
    if torch.is_autocast_enabled(device):  # the lm_head matmul in autocast's dtype, as F.linear would
        dt = torch.get_autocast_dtype(device)
        hidden, weight = hidden.to(dt), weight.to(dt)
    check_inputs(hidden, weight, labels, ignore_index)
    index, h, y = scored(hidden, labels, ignore_index)  # the scored tokens, before any matmul
    if not y.numel():
        return torch.zeros(labels.shape, dtype=torch.float32, device=labels.device) + 0 * hidden.sum()  # keeps the graph
    with torch.autocast(device, enabled=False):
        picked = IMPLS[name](h, weight, y)
    return torch.zeros(labels.shape, dtype=picked.dtype, device=labels.device).index_put(index, picked)


__all__ = ["IMPLS", "chunked_logprobs", "fused_preference_loss", "naive_logprobs", "nll_sum", "requested_impl",
           "resolve_impl", "sequence_logprobs", "triton_logprobs"]
