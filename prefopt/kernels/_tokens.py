"""The scored tokens of a batch, gathered without copying the whole hidden tensor.

The trainers pass views such as ``hidden[:, :-1]`` (position t predicts token t+1). Flattening
such a view with ``reshape`` copies every position, prompt and padding included, just to pick
the few scored ones: a copy of the whole ``(B, T, D)`` activation at the step's peak. Indexing
by (row, position) reads the scored rows alone, whatever the view's strides.

``check_inputs`` refuses what the kernels would misread, before any work: shapes that do not
line up, labels that are not integers, and scored labels outside the head's vocabulary. The
PyTorch paths would fail on some of these with an indexing or matmul error, but the Triton
kernels read a mismatched width with the wrong stride, and find no target column for a label
outside ``[0, V)``, and return wrong log-probs without a word.
"""
from __future__ import annotations

import torch


def scored(hidden: torch.Tensor, labels: torch.Tensor, ignore_index: int):
    """``(index, h, y)``: the positions where ``labels != ignore_index`` (a tuple of index
    tensors, one per label dimension, in row-major order), their hidden states ``(M, D)`` and
    labels ``(M,)``."""
    index = (labels != ignore_index).nonzero(as_tuple=True)
    return index, hidden[index], labels[index]


def check_shapes(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor) -> None:
    """``weight`` (V, D), ``hidden`` (..., D), ``labels`` integer and shaped like ``hidden[..., 0]``
    (no host sync)."""
    if weight.dim() != 2:
        raise ValueError(f"weight must be the (V, D) lm_head weight, got shape {tuple(weight.shape)}")
    if hidden.dim() < 2 or hidden.shape[-1] != weight.shape[1]:
        raise ValueError(f"hidden {tuple(hidden.shape)} must end in the lm_head's width D = {weight.shape[1]} "
                         f"(weight {tuple(weight.shape)})")
    if labels.shape != hidden.shape[:-1]:
        raise ValueError(f"labels {tuple(labels.shape)} must be shaped like hidden without its last dimension, "
                         f"{tuple(hidden.shape[:-1])}: one label per position, already aligned (position t "
                         "predicts labels[t]; for a causal LM, hidden[:, :-1] with labels[:, 1:])")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise TypeError(f"labels must be integer token ids, got {labels.dtype}")


def check_inputs(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, ignore_index: int) -> None:
    """``check_shapes``, then raise ``ValueError`` if a label other than ``ignore_index`` is outside
    ``[0, V)``, naming the first such label's position and value (one host sync)."""
    check_shapes(hidden, weight, labels)
    V = weight.shape[0]
    bad = (labels != ignore_index) & ((labels < 0) | (labels >= V))
    if bool(bad.any()):
        where = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(f"labels{list(where)} = {int(labels[where])}: not a token of the lm_head's vocabulary "
                         f"[0, {V}) nor ignore_index ({ignore_index}). Does the tokenizer have tokens the model's "
                         "head lacks, or is ignore_index not the one the labels use?")
