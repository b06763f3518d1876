"""The raw Triton kernels behind ``triton_logprobs`` and the one-pass loss (imported only when
triton is installed).

``triton.jit`` picks compiled or interpreted kernels when this module is first imported, from
``TRITON_INTERPRET``: compiled for CUDA, interpreted (CPU tensors, for tests) when it is ``1``.
``UPCAST`` is set only when interpreted: the interpreter keeps bf16 as raw 16-bit integers, so
half-precision tiles are widened to fp32 (exactly) right after loading.
"""
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction


@triton.jit
def _logits_tile(H, W, rows, cols, row_ok, col_ok, D,
                 BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr,
                 IEEE: tl.constexpr, UPCAST: tl.constexpr):
    """``H[rows] · W[cols]ᵀ`` as a ``BLOCK_N × BLOCK_V`` fp32 tile, ``BLOCK_D`` columns of D at a time."""
    logits = tl.zeros([BLOCK_N, BLOCK_V], tl.float32)
    h_rows = rows.to(tl.int64)[:, None] * D
    w_rows = cols.to(tl.int64)[:, None] * D
    for d0 in range(0, D, BLOCK_D):
        ds = d0 + tl.arange(0, BLOCK_D)
        d_ok = ds < D
        h = tl.load(H + h_rows + ds[None, :], mask=row_ok[:, None] & d_ok[None, :], other=0.0)
        w = tl.load(W + w_rows + ds[None, :], mask=col_ok[:, None] & d_ok[None, :], other=0.0)
        if UPCAST:
            h, w = h.to(tl.float32), w.to(tl.float32)
        if IEEE:
            logits = tl.dot(h, tl.trans(w), logits, input_precision="ieee")
        else:
            logits = tl.dot(h, tl.trans(w), logits)
    return logits


@triton.jit
def _fwd(H, W, Y, M, S, TGT, N, V, D, V_PER_SPLIT,
         BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr, IEEE: tl.constexpr,
         UPCAST: tl.constexpr, VOCAB_FIRST: tl.constexpr):
    """Program ``(token block, vocabulary split)``: running max, sum-exp and target logit over the
    split's ``V_PER_SPLIT`` columns, written to row ``split`` of ``M``, ``S``, ``TGT`` ((splits, N)).
    ``VOCAB_FIRST``: the grid is ``(splits, token blocks)``, so programs launched together share a
    few token blocks (their hidden states stay in L2); else ``(token blocks, splits)``."""
    if VOCAB_FIRST:
        split, block = tl.program_id(0), tl.program_id(1)
    else:
        block, split = tl.program_id(0), tl.program_id(1)
    rows = block * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    y = tl.load(Y + rows, mask=row_ok, other=-1)
    m = tl.full([BLOCK_N], float("-inf"), tl.float32)
    s = tl.zeros([BLOCK_N], tl.float32)
    target = tl.zeros([BLOCK_N], tl.float32)
    v_end = tl.minimum(V, (split + 1) * V_PER_SPLIT)
    for v0 in range(split * V_PER_SPLIT, v_end, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        col_ok = cols < v_end
        logits = _logits_tile(H, W, rows, cols, row_ok, col_ok, D, BLOCK_N, BLOCK_V, BLOCK_D, IEEE, UPCAST)
        logits = tl.where(col_ok[None, :], logits, float("-inf"))
        m_new = tl.maximum(m, tl.max(logits, 1))
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(logits - m_new[:, None]), 1)
        m = m_new
        target += tl.sum(tl.where((cols[None, :] == y[:, None]) & col_ok[None, :], logits, 0.0), 1)
    out = split * N + rows
    tl.store(M + out, m, mask=row_ok)
    tl.store(S + out, s, mask=row_ok)
    tl.store(TGT + out, target, mask=row_ok)


@triton.jit
def _dlogits(H, W, Y, LSE, G, DL, N, V, D,
             BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr, IEEE: tl.constexpr,
             UPCAST: tl.constexpr, VOCAB_FIRST: tl.constexpr):
    """Program ``(token block, vocabulary tile)``: recompute the tile and write
    ``g · (onehot(y) − softmax)`` into ``DL`` ((N, V), the input dtype, or fp32 when interpreted).
    ``VOCAB_FIRST``: the grid is ``(vocabulary tiles, token blocks)``, as in ``_fwd``."""
    if VOCAB_FIRST:
        tile, block = tl.program_id(0), tl.program_id(1)
    else:
        block, tile = tl.program_id(0), tl.program_id(1)
    rows = block * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tile * BLOCK_V + tl.arange(0, BLOCK_V)
    row_ok = rows < N
    col_ok = cols < V
    logits = _logits_tile(H, W, rows, cols, row_ok, col_ok, D, BLOCK_N, BLOCK_V, BLOCK_D, IEEE, UPCAST)
    y = tl.load(Y + rows, mask=row_ok, other=-1)
    lse = tl.load(LSE + rows, mask=row_ok, other=0.0)
    g = tl.load(G + rows, mask=row_ok, other=0.0)
    d = g[:, None] * (tl.where(cols[None, :] == y[:, None], 1.0, 0.0) - tl.exp(logits - lse[:, None]))
    tl.store(DL + rows.to(tl.int64)[:, None] * V + cols[None, :], d.to(DL.dtype.element_ty),
             mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def _split_lse(X, row, V, y, v0, v_end, BLOCK_V: tl.constexpr):
    """``(logsumexp, the label's logit)`` of columns ``v0:v_end`` of row ``row`` of the fp32 logits
    ``X`` ((rows, V)), ``BLOCK_V`` at a time with an online max and sum-exp: −inf where there are
    no columns, and 0 for a label outside them (read once, not picked out of every tile: two
    reductions a tile, not three)."""
    zeros = tl.zeros([BLOCK_V], tl.float32)
    m = tl.max(zeros + float("-inf"), 0)  # fp32 scalars, carried through the loop
    s = tl.sum(zeros, 0)
    for c0 in range(v0, v_end, BLOCK_V):
        cols = c0 + tl.arange(0, BLOCK_V)
        x = tl.load(X + row * V + cols, mask=cols < v_end, other=float("-inf"))
        m_new = tl.maximum(m, tl.max(x, 0))  # finite from the first tile on
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), 0)
        m = m_new
    target = tl.load(X + row * V + y, mask=(y >= v0) & (y < v_end), other=0.0)  # (a label past V: no logit)
    return m + tl.log(tl.maximum(s, 1.0)), target  # s >= 1 where there are columns; else -inf + 0


@triton.jit
def _row_lse(X, Y, LSE, TGT, V, V_PER_SPLIT, BLOCK_V: tl.constexpr):
    """Program ``(row, split)``: one read of the split's ``V_PER_SPLIT`` columns of the row's fp32
    logits ``X`` ((rows, V)), ``BLOCK_V`` at a time (``_split_lse``); writes the split's logsumexp
    (−inf where it has no columns) and the label's logit where the split holds it (else 0) to row
    ``split`` of ``LSE`` and ``TGT`` ((splits, rows)). Splits put several programs on each row: one
    program a row left a block of 128 rows on 128 of an H200's 132 SMs, latency-bound (77 µs a
    block of 128 × 128256 logits, 0.85 TB/s)."""
    row, split = tl.program_id(0).to(tl.int64), tl.program_id(1)
    v_end = tl.minimum(V, (split + 1) * V_PER_SPLIT)
    lse, target = _split_lse(X, row, V, tl.load(Y + row), split * V_PER_SPLIT, v_end, BLOCK_V)
    out = split * tl.num_programs(0) + row
    tl.store(LSE + out, lse)
    tl.store(TGT + out, target)


@triton.jit
def _row_lse_exp(X, Y, LSE, TGT, DL, V, V_PER_SPLIT, DL_STRIDE, BLOCK_V: tl.constexpr):
    """``_row_lse``, then a second pass over the split's columns (just read: in cache) writing
    ``−exp(x − lse_split)`` into ``DL`` (rows ``DL_STRIDE`` apart; the compute dtype, or fp32 when
    interpreted): a vocabulary slab's softmax by each split's own logsumexp, for ``_row_rescale``
    (``PER_SPLIT``) to make the row's once every slab is known. One read of the slab's logits
    from memory where ``_row_lse`` and ``_row_dlogits`` take two."""
    row, split = tl.program_id(0).to(tl.int64), tl.program_id(1)
    v0 = split * V_PER_SPLIT
    v_end = tl.minimum(V, v0 + V_PER_SPLIT)
    lse, target = _split_lse(X, row, V, tl.load(Y + row), v0, v_end, BLOCK_V)
    out = split * tl.num_programs(0) + row
    tl.store(LSE + out, lse)
    tl.store(TGT + out, target)
    for c0 in range(v0, v_end, BLOCK_V):
        cols = c0 + tl.arange(0, BLOCK_V)
        ok = cols < v_end
        x = tl.load(X + row * V + cols, mask=ok, other=float("-inf"))
        tl.store(DL + row * DL_STRIDE + cols, (-tl.exp(x - lse)).to(DL.dtype.element_ty), mask=ok)


@triton.jit
def _row_join(LSE_PARTS, TGT_PARTS, LSE, LOGP, n, PART_STRIDE, SPLITS: tl.constexpr, BLOCK_R: tl.constexpr):
    """Program ``block``: ``BLOCK_R`` rows' logsumexp and label log-prob from their ``SPLITS``
    parts (a row of ``PART_STRIDE`` each, as ``_row_lse`` wrote them: logsumexps, −inf for none,
    and the label's logit where the part holds it, else 0)."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    ok = rows < n
    at = tl.arange(0, SPLITS)[:, None] * PART_STRIDE + rows[None, :]
    parts = tl.load(LSE_PARTS + at, mask=ok[None, :], other=float("-inf"))
    m = tl.max(parts, 0)
    m = tl.where(m == float("-inf"), 0.0, m)  # (masked rows only: every real row has a finite part,
    lse = m + tl.log(tl.maximum(tl.sum(tl.exp(parts - m[None, :]), 0), 1.0))  # and so a sum >= 1)
    target = tl.sum(tl.load(TGT_PARTS + at, mask=ok[None, :], other=0.0), 0)
    tl.store(LSE + rows, lse, mask=ok)
    tl.store(LOGP + rows, target - lse, mask=ok)


@triton.jit
def _lse_at(LSE, row, PARTS: tl.constexpr, PART_STRIDE):
    """Row ``row``'s logsumexp: ``LSE[row]``, or with ``PARTS`` > 0 the logsumexp of its ``PARTS``
    split parts (``PART_STRIDE`` apart, −inf for an empty one), as ``_row_lse`` wrote them."""
    if PARTS == 0:  # (a compile-time branch: the other is not built; an early return would not prune it)
        lse = tl.load(LSE + row)
    else:
        parts = tl.load(LSE + tl.arange(0, PARTS).to(tl.int64) * PART_STRIDE + row)
        m = tl.max(parts, 0)
        lse = m + tl.log(tl.sum(tl.exp(parts - m), 0))
    return lse


@triton.jit
def _row_dlogits(X, Y, LSE, G, DL, V, DL_STRIDE, PART_STRIDE, BLOCK_V: tl.constexpr, PARTS: tl.constexpr):
    """Program ``(row, vocabulary tile)``: ``g · (onehot(y) − exp(x − lse))`` from the fp32 logits
    ``X`` ((rows, V)) into ``DL`` (rows ``DL_STRIDE`` apart: a column slab of a wider tensor; the
    input dtype, or fp32 when interpreted); the row's ``lse`` as ``_lse_at`` reads it."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V)
    ok = cols < V
    x = tl.load(X + row * V + cols, mask=ok, other=0.0)
    y, g = tl.load(Y + row), tl.load(G + row)
    lse = _lse_at(LSE, row, PARTS, PART_STRIDE)
    d = g * (tl.where(cols == y, 1.0, 0.0) - tl.exp(x - lse))
    tl.store(DL + row * DL_STRIDE + cols, d.to(DL.dtype.element_ty), mask=ok)


@triton.jit
def _row_rescale(DL, Y, PART, LSE, V, DL_STRIDE, PART_STRIDE, V_PER_SPLIT, BLOCK_V: tl.constexpr,
                 PARTS: tl.constexpr, PER_SPLIT: tl.constexpr):
    """Program ``(row, vocabulary tile)``: a column slab of ``DL`` (rows ``DL_STRIDE`` apart, ``V``
    wide) that holds ``−exp(x − part)``, the slab's softmax by its own logsumexp ``part``
    (``_lse_at(PART, ...)``) or, with ``PER_SPLIT``, each column's by its split's (``PART`` row
    ``column // V_PER_SPLIT``, as ``_row_lse_exp`` wrote them), becomes ``onehot(y) − exp(x − lse)``
    by the row's full ``lse``: times ``exp(part − lse)``, plus the label's one-hot where the slab
    holds it."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V)
    ok = cols < V
    at = DL + row * DL_STRIDE + cols
    d = tl.load(at, mask=ok, other=0.0).to(tl.float32)
    if PER_SPLIT:
        part = tl.load(PART + (cols // V_PER_SPLIT).to(tl.int64) * PART_STRIDE + row, mask=ok, other=0.0)
    else:
        part = _lse_at(PART, row, PARTS, PART_STRIDE)
    c = tl.exp(part - tl.load(LSE + row))
    d = d * c + tl.where(cols == tl.load(Y + row), 1.0, 0.0)
    tl.store(at, d.to(DL.dtype.element_ty), mask=ok)


@triton.jit
def _scale(X, S, n, BLOCK: tl.constexpr):
    """Program ``block``: its ``BLOCK`` elements of ``X`` (``n`` in all) times the fp32 scalar
    ``S[0]``, in fp32, rounded once to ``X``'s dtype. Where ``S[0]`` is 1 (a summed loss's own
    backward) nothing is read or written: ``x · 1`` rounds back to ``x``."""
    s = tl.load(S)
    if s != 1.0:
        i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        ok = i < n
        x = tl.load(X + i, mask=ok, other=0.0).to(tl.float32)
        tl.store(X + i, (x * s).to(X.dtype.element_ty), mask=ok)


INTERPRETED = isinstance(_fwd, InterpretedFunction)  # as triton.jit chose at import
