"""The scored tokens of a batch, gathered without copying the whole hidden tensor.

The trainers pass views such as ``hidden[:, :-1]`` (position t predicts token t+1). Flattening
such a view with ``reshape`` copies every position, prompt and padding included, just to pick
the few scored ones: a copy of the whole ``(B, T, D)`` activation at the step's peak. Indexing
by (row, position) reads the scored rows alone, whatever the view's strides.
"""
from __future__ import annotations

import torch


def scored(hidden: torch.Tensor, labels: torch.Tensor, ignore_index: int):
    """``(index, h, y)``: the positions where ``labels != ignore_index`` (a tuple of index
    tensors, one per label dimension, in row-major order), their hidden states ``(M, D)`` and
    labels ``(M,)``."""
    index = (labels != ignore_index).nonzero(as_tuple=True)
    return index, hidden[index], labels[index]
