"""A block of tokens through the lm_head with the Triton row kernels, its logits one vocabulary
slab at a time: the one-pass loss's per-block work on CUDA (``onepass.py``).

Per block of ``m`` tokens and each slab of the vocabulary (``onepass.blocking``): cuBLAS's fp32
logits of the slab and its split parts (``_rows.parts``: each split's logsumexp and the label's
logit there), and, once the last slab's are written, the row's logsumexp and the label's
log-prob from all of them (``_rows.join``). ``onehot − softmax`` goes into the caller's rows:
the last slab's directly, each earlier one's by its own logsumexp (the dlogits kernel joins the
slab's parts; the row's was not known yet), then rescaled (``_rows.rescale``); with
``FUSED_PARTS``, by each split's own, written by the kernel that finds it. One slab of logits
is alive at a time; a single slab is ``_rows.lse`` and ``_rows.dlogits``.

On a GPU the host issues each of these operations, and on an H200 at Llama 3's head the host
was the bottleneck (docs/benchmarks.md, 2026-12-04): so everything that does not change from
block to block (the slabs' labels and weight views, the buffers' views for a block's size, the
logsumexp's scratch) is made once, not once a block.
"""
from __future__ import annotations

import torch

from . import _rows
from ._backward import mm_acc

# Each slab but the last: its softmax by its splits' own logsumexps written in the read that finds
# them (``_rows.parts(.., out=)``), not by a second read of its fp32 logits (``_rows.dlogits``),
# then rescaled per split. About 1.6 ms less memory traffic at Llama 3's head and N=16384 on an
# H200 by arithmetic; not yet measured on a GPU, so off by default (bench_logprobs --fused-slabs).
FUSED_PARTS = False


class RowBlocks:
    """``blocks(hb, a, b, logp, into)``: tokens ``a:b`` (``hb`` their hidden states, ``labels``
    theirs) through ``w`` (V, D) in ``slabs`` ((first, end) columns), fp32 logits (``acc``),
    ``onehot − softmax`` in ``dtype``; blocks of at most ``rows`` tokens."""

    def __init__(self, w: torch.Tensor, labels: torch.Tensor, slabs: list[tuple[int, int]], rows: int,
                 acc: torch.dtype, dtype: torch.dtype):
        device, n = w.device, min(labels.numel(), rows)
        self.V, self.slabs, self.acc, self.dtype = w.shape[0], slabs, acc, dtype
        self.weights = [w[c0:c1].T for c0, c1 in slabs]
        self.labels = [labels if c0 == 0 else labels - c0 for c0, _ in slabs]  # each slab's, all tokens at once
        self.lse = torch.empty(n, dtype=acc, device=device)
        self.ones = torch.ones(n, dtype=acc, device=device)  # the row kernels' g
        self._views: dict[int, dict] = {}

    def _at(self, m: int) -> dict:
        """Buffers for a block of ``m`` tokens, made once per size: one slab, ``_rows.lse``'s
        scratch; several, every slab's split parts side by side (``_rows.SPLITS`` rows each, a
        power of two of slabs; −inf and 0 where none is written), joined once for the row."""
        v = self._views.get(m)
        if v is None:
            device = self.lse.device
            v = dict(lse=self.lse[:m], ones=self.ones[:m])
            if len(self.slabs) == 1:
                scratch = torch.empty(2, _rows.SPLITS, m, dtype=self.acc, device=device)
                v["scratch"] = (scratch[0], scratch[1])
            else:
                rows, S = _rows.SPLITS << (len(self.slabs) - 1).bit_length(), _rows.SPLITS
                parts = torch.zeros(2, rows, m, dtype=self.acc, device=device)
                parts[0] = float("-inf")
                v.update(parts=(parts[0], parts[1]), no_label=torch.full((m,), -1, dtype=self.labels[0].dtype,
                                                                         device=device),
                         slab=[(parts[0, k * S:(k + 1) * S], parts[1, k * S:(k + 1) * S])
                               for k in range(len(self.slabs))])
            self._views[m] = v
        return v

    def __call__(self, hb: torch.Tensor, a: int, b: int, logp: torch.Tensor, into: torch.Tensor | None,
                 grads: bool = True) -> torch.Tensor | None:
        """Tokens a:b's log-probs into ``logp`` (their (b − a,) rows) and, with ``grads``, their
        ``onehot − softmax`` into ``into`` ((b − a, V)) or a new tensor (into the fp32 logits
        themselves where they are one slab in the compute dtype); returns it."""
        v = self._at(b - a)
        if len(self.slabs) == 1:
            y = self.labels[0][a:b]
            x = mm_acc(hb, self.weights[0], self.acc)
            _rows.lse(x, y, out=(v["lse"], logp), scratch=v["scratch"])
            if not grads:
                return None
            return _rows.dlogits(x, y, v["lse"], v["ones"], into if into is not None or x.dtype != self.dtype else x,
                                 self.dtype)
        if grads and into is None:
            into = torch.empty(b - a, self.V, dtype=self.dtype, device=hb.device)
        last = len(self.slabs) - 1
        ys = [y[a:b] for y in self.labels]
        cols = [into[:, c0:c1] for c0, c1 in self.slabs] if grads else None
        fused = grads and FUSED_PARTS
        for k in range(last + 1):
            x = mm_acc(hb, self.weights[k], self.acc)
            _rows.parts(x, ys[k], v["slab"][k], cols[k] if fused and k < last else None)
            if k == last:  # the row's logsumexp and its label's log-prob, from every slab's parts
                _rows.join(*v["parts"], out=(v["lse"], logp))
            if grads and k == last:  # the last slab by the row's logsumexp
                _rows.dlogits(x, ys[k], v["lse"], v["ones"], cols[k])
            elif grads and not fused:  # the others by their own (their parts, joined in the kernel), no one-hot
                _rows.dlogits(x, v["no_label"], v["slab"][k][0], v["ones"], cols[k])
            del x  # before the next slab's: one slab of logits alive at a time
        if grads:
            for k in range(last):
                _rows.rescale(cols[k], ys[k], v["slab"][k][0], v["lse"], per_split=fused)
        return into
