"""The raw Triton kernels behind ``triton_logprobs`` (imported only when triton is installed).

Left undecorated: ``triton_logprobs`` wraps them in ``triton.jit`` for CUDA tensors, or in
Triton's interpreter for CPU tensors (tests). ``UPCAST`` is set only there: the interpreter
keeps bf16 as raw 16-bit integers, so half-precision tiles are widened to fp32 (exactly) right
after loading, and ``dlogits`` is still rounded to the input dtype as on the GPU.
"""
import triton.language as tl


def _fwd(H, W, Y, LSE, OUT, N, V, D,
         BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    y = tl.load(Y + rows, mask=row_ok, other=0)
    m = tl.full([BLOCK_N], float("-inf"), tl.float32)
    s = tl.zeros([BLOCK_N], tl.float32)
    target = tl.zeros([BLOCK_N], tl.float32)
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        col_ok = cols < V
        logits = tl.zeros([BLOCK_N, BLOCK_V], tl.float32)
        for d0 in range(0, D, BLOCK_D):
            ds = d0 + tl.arange(0, BLOCK_D)
            d_ok = ds < D
            h = tl.load(H + rows[:, None] * D + ds[None, :], mask=row_ok[:, None] & d_ok[None, :], other=0.0)
            w = tl.load(W + cols[:, None] * D + ds[None, :], mask=col_ok[:, None] & d_ok[None, :], other=0.0)
            if UPCAST:
                h, w = h.to(tl.float32), w.to(tl.float32)
            if IEEE:
                logits = tl.dot(h, tl.trans(w), logits, input_precision="ieee")
            else:
                logits = tl.dot(h, tl.trans(w), logits)
        logits = tl.where(col_ok[None, :], logits, float("-inf"))
        m_new = tl.maximum(m, tl.max(logits, 1))
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(logits - m_new[:, None]), 1)
        m = m_new
        target += tl.sum(tl.where(cols[None, :] == y[:, None], logits, 0.0), 1)
    lse = m + tl.log(s)
    tl.store(LSE + rows, lse, mask=row_ok)
    tl.store(OUT + rows, target - lse, mask=row_ok)


def _bwd(H, W, Y, LSE, G, GH, GW, N, V, D,
         NEED_H: tl.constexpr, NEED_W: tl.constexpr,
         BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V)
    row_ok = rows < N
    col_ok = cols < V
    logits = tl.zeros([BLOCK_N, BLOCK_V], tl.float32)
    for d0 in range(0, D, BLOCK_D):
        ds = d0 + tl.arange(0, BLOCK_D)
        d_ok = ds < D
        h = tl.load(H + rows[:, None] * D + ds[None, :], mask=row_ok[:, None] & d_ok[None, :], other=0.0)
        w = tl.load(W + cols[:, None] * D + ds[None, :], mask=col_ok[:, None] & d_ok[None, :], other=0.0)
        if UPCAST:
            h, w = h.to(tl.float32), w.to(tl.float32)
        if IEEE:
            logits = tl.dot(h, tl.trans(w), logits, input_precision="ieee")
        else:
            logits = tl.dot(h, tl.trans(w), logits)
    y = tl.load(Y + rows, mask=row_ok, other=-1)
    lse = tl.load(LSE + rows, mask=row_ok, other=0.0)
    g = tl.load(G + rows, mask=row_ok, other=0.0)
    p = tl.where(col_ok[None, :], tl.exp(logits - lse[:, None]), 0.0)
    dlogits = g[:, None] * (tl.where(cols[None, :] == y[:, None], 1.0, 0.0) - p)
    dlogits = tl.where(row_ok[:, None], dlogits, 0.0).to(H.dtype.element_ty)  # as an unfused backward would
    if UPCAST:
        dlogits = dlogits.to(tl.float32)
    for d0 in range(0, D, BLOCK_D):
        ds = d0 + tl.arange(0, BLOCK_D)
        d_ok = ds < D
        if NEED_H:
            w = tl.load(W + cols[:, None] * D + ds[None, :], mask=col_ok[:, None] & d_ok[None, :], other=0.0)
            if UPCAST:
                w = w.to(tl.float32)
            if IEEE:
                gh = tl.dot(dlogits, w, input_precision="ieee")
            else:
                gh = tl.dot(dlogits, w)
            tl.atomic_add(GH + rows[:, None] * D + ds[None, :], gh, mask=row_ok[:, None] & d_ok[None, :])
        if NEED_W:
            h = tl.load(H + rows[:, None] * D + ds[None, :], mask=row_ok[:, None] & d_ok[None, :], other=0.0)
            if UPCAST:
                h = h.to(tl.float32)
            if IEEE:
                gw = tl.dot(tl.trans(dlogits), h, input_precision="ieee")
            else:
                gw = tl.dot(tl.trans(dlogits), h)
            tl.atomic_add(GW + cols[:, None] * D + ds[None, :], gw, mask=col_ok[:, None] & d_ok[None, :])
