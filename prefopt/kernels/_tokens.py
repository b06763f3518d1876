"""The scored tokens of a batch, gathered without copying the whole hidden tensor.

The trainers pass views such as ``hidden[:, :-1]`` (position t predicts token t+1). Flattening
such a view with ``reshape`` copies every position, prompt and padding included, just to pick
the few scored ones: a copy of the whole ``(B, T, D)`` activation at the step's peak. Indexing
by (row, position) reads the scored rows alone, whatever the view's strides.

``check_labels`` refuses a scored label outside the head's vocabulary before any work: the
PyTorch paths would fail with an indexing error, but the Triton kernels would find no target
column and return a wrong log-prob without a word.
"""
from __future__ import annotations

import torch


def scored(hidden: torch.Tensor, labels: torch.Tensor, ignore_index: int):
    """``(index, h, y)``: the positions where ``labels != ignore_index`` (a tuple of index
    tensors, one per label dimension, in row-major order), their hidden states ``(M, D)`` and
    labels ``(M,)``."""
    index = (labels != ignore_index).nonzero(as_tuple=True)
    return index, hidden[index], labels[index]


def check_labels(labels: torch.Tensor, V: int, ignore_index: int) -> None:
    """Raise ``ValueError`` if a label other than ``ignore_index`` is outside ``[0, V)``, naming
    the first such label's value and position (one host sync)."""
    bad = (labels != ignore_index) & ((labels < 0) | (labels >= V))
    if bool(bad.any()):
        where = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(f"labels{list(where)} = {int(labels[where])}: not a token of the lm_head's vocabulary "
                         f"[0, {V}) nor ignore_index ({ignore_index}). Does the tokenizer have tokens the model's "
                         "head lacks, or is ignore_index not the one the labels use?")
