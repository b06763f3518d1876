"""The fused LoRA autograd function and SwiGLU against stock-op references."""
import pytest
import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from prefopt.lora import LoRALinear
from prefopt.lora_ops import keep_mask, lora_linear
from prefopt.model.swiglu import geglu, swiglu


def _reference(x, w, b, A, B, s, mask, scale):
    xd = x if mask is None else x * mask * scale
    return F.linear(x, w, b) + F.linear(F.linear(xd, A), B) * s


def _inputs(dtype=torch.float64, bias=True, shape=(3, 7, 10)):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(*shape, generator=g, dtype=dtype, requires_grad=True)
    w = torch.randn(6, shape[-1], generator=g, dtype=dtype)
    b = torch.randn(6, generator=g, dtype=dtype) if bias else None
    A = torch.randn(4, shape[-1], generator=g, dtype=dtype, requires_grad=True)
    B = torch.randn(6, 4, generator=g, dtype=dtype, requires_grad=True)
    return x, w, b, A, B


def test_keep_mask_rate_scale_and_seed():
    torch.manual_seed(0)
    keep, scale = keep_mask((1001, 999), 0.05)  # n not a multiple of 4
    assert keep.dtype == torch.bool and keep.shape == (1001, 999)
    p_rounded = round(0.05 * 65536) / 65536
    assert scale == pytest.approx(1 / (1 - p_rounded), rel=1e-12)
    assert abs(keep.float().mean().item() - (1 - p_rounded)) < 2e-3  # ~9 standard errors
    torch.manual_seed(0)
    assert torch.equal(keep_mask((1001, 999), 0.05)[0], keep)
    assert keep_mask((64,), 0.0)[0].all()
    assert keep_mask((20000,), 0.5)[0].float().mean().item() == pytest.approx(0.5, abs=0.02)


@pytest.mark.parametrize("p", [0.0, 0.3])
@pytest.mark.parametrize("bias", [True, False])
def test_values_and_gradients_match_stock_ops(p, bias):
    x, w, b, A, B = _inputs(bias=bias)
    torch.manual_seed(3)
    y = lora_linear(x, w, b, A, B, 1.5, p)
    torch.manual_seed(3)
    mask, scale = keep_mask(x.shape, p) if p else (None, 1.0)
    want = _reference(x, w, b, A, B, 1.5, mask, scale)
    assert (y - want).abs().max() < 1e-12
    gy = torch.randn_like(y)
    got = torch.autograd.grad(y, (x, A, B), gy)
    ref = torch.autograd.grad(want, (x, A, B), gy)
    for g_, r_ in zip(got, ref):
        assert (g_ - r_).abs().max() < 1e-12
    if p:
        assert not torch.equal(got[0], torch.autograd.grad(F.linear(x, w, b) + F.linear(F.linear(x, A), B) * 1.5,
                                                           x, gy)[0])  # the mask really reaches grad x


def test_gradcheck_with_a_fixed_mask():
    x, w, b, A, B = _inputs(shape=(2, 5, 8))

    def f(x, A, B):
        torch.manual_seed(7)  # the same mask on every evaluation
        return lora_linear(x, w, b, A, B, 2.0, 0.25)

    assert torch.autograd.gradcheck(f, (x, A, B))


def test_no_grad_for_the_input_when_it_needs_none():
    x, w, b, A, B = _inputs()
    x = x.detach()
    y = lora_linear(x, w, b, A, B, 1.0, 0.1)
    gA, gB = torch.autograd.grad(y.sum(), (A, B))
    assert gA.abs().sum() > 0 and gB.abs().sum() > 0


def test_saves_the_input_once_and_a_byte_mask():
    x, w, b, A, B = _inputs(dtype=torch.float32, shape=(4, 64, 96))
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        lora_linear(x, w, b, A, B, 1.0, 0.1)
    big = [t for t in saved if t.numel() == x.numel()]
    assert sorted(str(t.dtype) for t in big) == ["torch.bool", "torch.float32"], [t.dtype for t in big]
    assert any(t is x or t.data_ptr() == x.data_ptr() for t in big)  # x itself, not a dropped copy


def test_checkpointing_regenerates_the_same_mask():
    x, w, b, A, B = _inputs(dtype=torch.float32)

    def f(x):
        return lora_linear(x, w, b, A, B, 1.0, 0.3).square().sum()

    torch.manual_seed(5)
    plain = torch.autograd.grad(f(x), (x, A, B))
    torch.manual_seed(5)
    ckpt = torch.autograd.grad(checkpoint(f, x, use_reentrant=False), (x, A, B))
    for p_, c_ in zip(plain, ckpt):
        assert torch.allclose(p_, c_, atol=1e-6)


def test_autocast_matches_stock_autocast():
    x, w, b, A, B = _inputs(dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = lora_linear(x, w, b, A, B, 1.0, 0.0)
        want = F.linear(x, w, b) + F.linear(F.linear(x, A), B)
    assert y.dtype == want.dtype == torch.bfloat16
    assert (y.float() - want.float()).abs().max() < 0.1
    gx, gA = torch.autograd.grad(y.float().sum(), (x, A))
    rx, rA = torch.autograd.grad(want.float().sum(), (x, A))
    assert gx.dtype == gA.dtype == torch.float32
    assert (gx - rx).abs().max() < 0.1 and (gA - rA).abs().max() / rA.abs().max() < 0.02


def test_layer_with_a_trainable_base_uses_plain_autograd():
    layer = LoRALinear(torch.nn.Linear(8, 5), r=2, alpha=4, dropout=0.1)
    torch.nn.init.normal_(layer.lora_B.weight)
    x = torch.randn(3, 8)
    layer(x).sum().backward()
    assert layer.weight.grad is not None and layer.lora_A.weight.grad is not None
    layer.weight.requires_grad_(False)
    layer.bias.requires_grad_(False)
    layer.eval()  # no dropout: both paths give the same output
    with torch.no_grad():
        want = F.linear(x, layer.weight, layer.bias) + layer.lora_B(layer.lora_A(x)) * layer.scaling
        assert torch.allclose(layer(x), want, atol=1e-6)


@pytest.mark.parametrize("fn, stock", [(swiglu, lambda g, u: F.silu(g) * u),
                                       (geglu, lambda g, u: F.gelu(g, approximate="tanh") * u)])
def test_gated_activations_values_gradients_and_saved_tensors(fn, stock):
    """SwiGLU and GeGLU (Gemma 3): stock values; gradients checked numerically in fp64 and against
    stock autograd's in bf16; two saved tensors where stock autograd keeps three."""
    g = torch.Generator().manual_seed(2)
    gate = torch.randn(3, 5, 12, generator=g, dtype=torch.float64, requires_grad=True) * 3
    up = torch.randn(3, 5, 12, generator=g, dtype=torch.float64, requires_grad=True)
    gate = gate.detach().requires_grad_()
    assert torch.equal(fn(gate, up), stock(gate, up))
    assert torch.autograd.gradcheck(fn, (gate, up))
    for f, n in ((fn, 2), (stock, 3)):
        saved: list = []
        with torch.autograd.graph.saved_tensors_hooks(saved.append, lambda t: t):
            f(gate, up)
        assert len(saved) == n
    half = [t.detach().bfloat16().requires_grad_() for t in (gate, up)]
    gb = torch.autograd.grad(fn(*half).sum(), half)
    gf = torch.autograd.grad(stock(gate, up).sum(), (gate, up))
    for b_, f_ in zip(gb, gf):
        assert b_.dtype == torch.bfloat16 and (b_.double() - f_).abs().max() < 0.05 * f_.abs().max()


def _dora_reference(x, w, b, A, B, m, norm, s, mask, keep):
    """DoRA from stock ops, as PEFT writes it: x Wᵀ + b + (m/n − 1) · xd Wᵀ + m/n · s · (xd Aᵀ) Bᵀ."""
    xd = x if mask is None else x * mask * keep
    scale = m / norm
    return F.linear(x, w, b) + (scale - 1) * F.linear(xd, w) + scale * F.linear(F.linear(xd, A), B) * s


def _dora_inputs(bias=True, shape=(3, 7, 10)):
    x, w, b, A, B = _inputs(bias=bias, shape=shape)
    norm = (w + 1.5 * B.detach() @ A.detach()).norm(dim=1)
    m = (norm * torch.linspace(0.5, 1.5, 6, dtype=norm.dtype)).requires_grad_(True)  # off its start (m = n)
    return x, w, b, A, B, m, norm


@pytest.mark.parametrize("p", [0.0, 0.3])
@pytest.mark.parametrize("bias", [True, False])
def test_dora_values_and_gradients_match_stock_ops(p, bias):
    from prefopt.lora_ops import dora_linear

    x, w, b, A, B, m, norm = _dora_inputs(bias=bias)
    torch.manual_seed(3)
    y = dora_linear(x, w, b, A, B, m, norm, 1.5, p)
    torch.manual_seed(3)
    mask, keep = keep_mask(x.shape, p) if p else (None, 1.0)
    want = _dora_reference(x, w, b, A, B, m, norm, 1.5, mask, keep)
    assert (y - want).abs().max() < 1e-12
    gy = torch.randn_like(y)
    got = torch.autograd.grad(y, (x, A, B, m), gy)
    ref = torch.autograd.grad(want, (x, A, B, m), gy)
    for g_, r_ in zip(got, ref):
        assert (g_ - r_).abs().max() < 1e-12


def test_dora_gradcheck_with_a_fixed_mask():
    from prefopt.lora_ops import dora_linear

    x, w, b, A, B, m, norm = _dora_inputs(shape=(2, 5, 10))

    def f(x, A, B, m):
        torch.manual_seed(7)
        return dora_linear(x, w, b, A, B, m, norm, 2.0, 0.25)

    assert torch.autograd.gradcheck(f, (x, A, B, m))


def test_dora_keeps_the_input_a_byte_mask_and_one_output_sized_tensor():
    """Stock ops keep a dropped copy of x and two output-sized tensors besides."""
    from prefopt.lora_ops import dora_linear

    x, w, b, A, B, m, norm = (t.float() if t is not None else t for t in _dora_inputs(shape=(4, 64, 10)))
    x, A, B, m = (t.detach().requires_grad_(True) for t in (x, A, B, m))
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = dora_linear(x, w, b, A, B, m, norm, 1.0, 0.1)
    big = sorted(str(t.dtype) for t in saved if t.numel() in (x.numel(), y.numel()))
    assert big == ["torch.bool", "torch.float32", "torch.float32"], big
    assert any(t.data_ptr() == x.data_ptr() for t in saved)


def test_dora_autocast_matches_stock_autocast():
    from prefopt.lora_ops import dora_linear

    x, w, b, A, B, m, norm = (t.float() if t is not None else t for t in _dora_inputs())
    x, A, B, m = (t.detach().requires_grad_(True) for t in (x, A, B, m))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = dora_linear(x, w, b, A, B, m, norm, 1.0, 0.0)
    want = _dora_reference(x, w, b, A, B, m, norm, 1.0, None, 1.0)
    assert y.dtype == torch.bfloat16 and (y.float() - want).abs().max() / want.abs().max() < 0.02
    gm, gA = torch.autograd.grad(y.float().sum(), (m, A))
    rm, rA = torch.autograd.grad(want.sum(), (m, A))
    assert gm.dtype == gA.dtype == torch.float32
    assert (gm - rm).abs().max() / rm.abs().max() < 0.02 and (gA - rA).abs().max() / rA.abs().max() < 0.02


def test_dora_checkpointing_regenerates_the_same_mask_and_norms_ignore_autocast():
    """A checkpointed DoRA layer recomputes the forward with the same dropout mask; its row norms
    are fp32 whether autocast is on (CUDA training) or not (evaluation), so the kept ones match."""
    layer = LoRALinear(torch.nn.Linear(10, 6), r=3, alpha=6, dropout=0.3, dora=True).requires_grad_(False)
    for t in (layer.lora_A.weight, layer.lora_B.weight, layer.lora_magnitude):
        t.requires_grad_(True)
    torch.nn.init.normal_(layer.lora_B.weight)
    x = torch.randn(4, 10, requires_grad=True)
    params = (x, layer.lora_A.weight, layer.lora_B.weight, layer.lora_magnitude)

    def f(x):
        return layer(x).square().sum()

    torch.manual_seed(5)
    plain = torch.autograd.grad(f(x), params)
    torch.manual_seed(5)
    ckpt = torch.autograd.grad(checkpoint(f, x, use_reentrant=False), params)
    for p_, c_ in zip(plain, ckpt):
        assert torch.allclose(p_, c_, atol=1e-6)
    want = (layer.weight + 2.0 * layer.lora_B.weight @ layer.lora_A.weight).detach().norm(dim=1)
    layer._norm_cache = None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.allclose(layer._dora_norm(), want, rtol=1e-6)
