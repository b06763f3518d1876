"""NF4 base weights (QLoRA): the levels, the round trip's error, the layer, the model swap."""
import pytest
import torch
import torch.nn.functional as F

from prefopt.quant import (
    BLOCK,
    SCALE_GROUP,
    QuantLinear,
    compress_scales,
    dequantize_nf4,
    expand_scales,
    nf4_levels,
    quantize_model,
    quantize_nf4,
)

# NF4 as QLoRA publishes it (Dettmers et al. 2023, appendix E), to the digits given there
PUBLISHED = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
             -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
             0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
             0.7229568362236023, 1.0]


def test_the_levels_are_qloras():
    assert torch.allclose(nf4_levels(), torch.tensor(PUBLISHED), atol=1e-6)


@pytest.mark.parametrize("shape", [(48, 64), (7, 9)])  # a whole number of blocks, and not (the last one padded)
def test_round_trip_error_is_at_most_half_a_level_gap_of_each_blocks_scale(shape):
    w = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    codes, scales = quantize_nf4(w)
    n = w.numel()
    assert codes.dtype == torch.uint8 and codes.numel() == -(-n // BLOCK) * BLOCK // 2
    assert scales.numel() == -(-n // BLOCK)
    back = dequantize_nf4(codes, scales, shape)
    assert back.shape == w.shape
    flat = F.pad(w.reshape(-1), (0, -n % BLOCK)).reshape(-1, BLOCK)
    bound = (nf4_levels().diff().max() / 2 * flat.abs().amax(1))[:, None]
    err = F.pad((back - w).reshape(-1), (0, -n % BLOCK)).reshape(-1, BLOCK).abs()
    assert (err <= bound + 1e-6).all()
    assert (back - w).abs().mean() < 0.1 * w.abs().mean()  # most values land close
    # the largest magnitude of each block and the levels themselves come back exactly
    levels = nf4_levels()
    exact = (levels[torch.arange(BLOCK) % 16] * 3.0).reshape(1, BLOCK)
    assert torch.equal(dequantize_nf4(*quantize_nf4(exact), exact.shape), exact)


def test_quant_linear_computes_with_the_dequantized_weight_and_keeps_a_quarter_of_bf16():
    base = torch.nn.Linear(128, 96).to(torch.bfloat16)
    torch.nn.init.normal_(base.weight, std=0.05, generator=torch.Generator().manual_seed(0))  # as trained weights are
    q = QuantLinear(base)
    x = torch.randn(5, 128, dtype=torch.bfloat16)
    w = dequantize_nf4(q.codes, q.scales, (96, 128), torch.bfloat16)
    assert torch.equal(q(x), F.linear(x, w, base.bias))
    assert F.cosine_similarity(q(x).float().flatten(), base(x).float().flatten(), 0) > 0.99
    kept = sum(t.numel() * t.element_size() for t in (q.codes, q.scales))
    assert kept / (base.weight.numel() * 2) == pytest.approx((0.5 + 4 / BLOCK) / 2)  # 0.28 of bf16
    assert not any(p.requires_grad for p in q.parameters())


def test_double_quantized_scales_come_back_within_half_a_log_step():
    """nf4-dq's scales: 8-bit codes on a log scale per group of 256; each comes back within
    ``2**(step/2) - 1`` of itself, zeros (all-zero blocks) exactly, a group of one value exactly."""
    g = torch.Generator().manual_seed(0)
    scales = torch.exp(torch.randn(3 * SCALE_GROUP + 17, generator=g))  # a spread of block maxima, a part group
    scales[5] = scales[300] = 0.0
    scales[2 * SCALE_GROUP:3 * SCALE_GROUP] = 0.25  # a group with one value
    codes, start, step = compress_scales(scales)
    assert codes.dtype == torch.uint8 and codes.numel() == scales.numel() and start.numel() == step.numel() == 4
    back = expand_scales(codes, start, step)
    bound = torch.exp2(step / 2).repeat_interleave(SCALE_GROUP)[:scales.numel()] - 1
    rel = (back - scales).abs() / scales.clamp_min(1e-30)
    assert (rel <= bound + 1e-6).all() and rel.max() < 0.02
    assert back[5] == back[300] == 0 and (back[2 * SCALE_GROUP:3 * SCALE_GROUP] == 0.25).all()
    assert (back[scales > 0] > 0).all()
    assert torch.equal(expand_scales(*compress_scales(torch.zeros(10))), torch.zeros(10))


def test_an_nf4_dq_layer_keeps_a_quarter_less_for_its_scales_and_computes_alike():
    base = torch.nn.Linear(512, 96).to(torch.bfloat16)
    torch.nn.init.normal_(base.weight, std=0.05, generator=torch.Generator().manual_seed(0))
    single, double = QuantLinear(base), QuantLinear(base, double=True)
    x = torch.randn(5, 512, dtype=torch.bfloat16)

    def kept(q):
        return sum(t.numel() * t.element_size() for t in q.buffers())

    n = base.weight.numel()
    assert kept(single) == n * (0.5 + 4 / BLOCK)
    assert kept(double) == pytest.approx(n * (0.5 + 1 / BLOCK), rel=0.01)  # 4.13 bits a weight, not 4.5
    assert "scales" not in double.state_dict() and "scale_codes" in double.state_dict()
    w1, w2 = single.weight.float(), double.weight.float()
    assert torch.equal(w1 == 0, w2 == 0)  # the same codes, only the scales rounded
    assert ((w2 - w1).abs() <= 0.01 * w1.abs() + 1e-6).all()
    assert F.cosine_similarity(double(x).float().flatten(), base(x).float().flatten(), 0) > 0.99


def test_quantize_model_swaps_the_named_layers_only(tmp_path):
    from prefopt import load_model
    from tests._tiny import build_hf_model

    build_hf_model(tmp_path)
    model = load_model(tmp_path)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        before = model(ids)
    quantize_model(model, ["q_proj", "up_proj"])
    kinds = {name.rsplit(".", 1)[-1]: type(m).__name__ for name, m in model.named_modules()
             if name.endswith(("q_proj", "k_proj", "up_proj"))}
    assert kinds == {"q_proj": "QuantLinear", "k_proj": "Linear", "up_proj": "QuantLinear"}
    with torch.no_grad():
        after = model(ids)
    assert (after - before).abs().max() > 0 and F.cosine_similarity(after.flatten(), before.flatten(), 0) > 0.95
    from prefopt.evaluate.runner import placement

    assert placement(model)["quantized"] == "nf4" and "quantized" not in placement(load_model(tmp_path))  # metrics.json
    with pytest.raises(ValueError, match="they are not saved; save its adapter"):
        from prefopt import save_model

        save_model(model, tmp_path / "out")
    with pytest.raises(ValueError, match="no nn.Linear named"):
        quantize_model(load_model(tmp_path), ["qproj"])
    with pytest.raises(ValueError, match="unknown quantization 'int3'"):
        quantize_model(load_model(tmp_path), ["q_proj"], kind="int3")


@pytest.mark.parametrize("dora", [False, True])
@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_an_adapter_on_a_4bit_base_equals_one_on_its_dequantized_weights_and_keeps_no_copy(dora, dropout):
    """QLoRA: the same values and gradients as the adapter on a plain layer holding the
    dequantized weight; the backward keeps no weight-sized tensor (it dequantizes again)."""
    from prefopt.lora import LoRALinear, QLoRALinear

    g = torch.Generator().manual_seed(1)
    base = torch.nn.Linear(128, 64)
    torch.nn.init.normal_(base.weight, std=0.05, generator=g)
    q = QuantLinear(base)
    plain = torch.nn.Linear(128, 64)
    with torch.no_grad():
        plain.weight.copy_(q.weight)
        plain.bias.copy_(base.bias)
    layers = [cls(b, r=4, alpha=8, dropout=dropout, dora=dora) for cls, b in ((QLoRALinear, q), (LoRALinear, plain))]
    for layer in layers:
        layer.requires_grad_(False)
        with torch.no_grad():
            layer.lora_B.weight.copy_(torch.randn(64, 4, generator=torch.Generator().manual_seed(2)))
            layer.lora_A.weight.copy_(torch.randn(4, 128, generator=torch.Generator().manual_seed(3)) * 0.1)
        trainable = [layer.lora_A.weight, layer.lora_B.weight] + ([layer.lora_magnitude] if dora else [])
        for t in trainable:
            t.requires_grad_(True)
        layer.train()
    x = torch.randn(3, 5, 128, generator=g, requires_grad=True)
    outs, grads = [], []
    for layer in layers:
        saved = []
        torch.manual_seed(4)  # the same dropout mask
        with torch.autograd.graph.saved_tensors_hooks(lambda t, saved=saved: saved.append(t) or t, lambda t: t):
            y = layer(x)
        outs.append(y)
        params = [layer.lora_A.weight, layer.lora_B.weight] + ([layer.lora_magnitude] if dora else [])
        grads.append(torch.autograd.grad((y * torch.linspace(-1, 1, 64)).sum(), [x, *params]))
        if layer is layers[0]:
            assert not any(t.numel() == 64 * 128 for t in saved), [t.shape for t in saved]
    assert torch.allclose(outs[0], outs[1], atol=1e-5)
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-5)
    q_layer = layers[0].eval()
    with torch.no_grad():
        before = q_layer(x)
        if dora:  # whole rows rescaled: not a low-rank update beside the codes
            with pytest.raises(RuntimeError, match="rescales whole rows"):
                q_layer.merge()
        else:  # the update goes beside the 4-bit codes as its factors: the same outputs, exactly kept
            q_layer.merge()
            assert q_layer.base_layer.update_a.shape == (4, 128)
            assert torch.allclose(q_layer(x), before, atol=1e-5) and torch.allclose(q.weight, plain.weight + (
                layers[1].lora_B.weight @ layers[1].lora_A.weight * layers[1].scaling), atol=1e-6)
            with pytest.raises(RuntimeError, match="stays merged"):
                q_layer.unmerge()
            from prefopt import unmerge_lora

            layers[1].merge()  # the full-precision layer merged too; unmerge_lora refuses before it touches it
            with pytest.raises(RuntimeError, match="stays merged"):
                unmerge_lora(torch.nn.ModuleList(layers[::-1]))  # the full-precision one first
            assert layers[1].merged


def test_a_dora_adapter_on_a_4bit_base_stays_unmerged_when_loaded_to_merge(tmp_path):
    """eval/predict load their adapter merged; on 4 bits a LoRA one goes beside the codes, a DoRA
    one (whole rows rescaled) stays on top, computing the same as unmerged."""
    from prefopt import apply_lora, load_model, save_adapter
    from prefopt.lora import QLoRALinear
    from tests._tiny import build_hf_model, randomize_lora

    build_hf_model(tmp_path / "base")
    for dora in (False, True):
        model = apply_lora(load_model(tmp_path / "base"), r=2, alpha=4, target_modules=["q_proj"], dora=dora)
        randomize_lora(model, 3)
        save_adapter(model, tmp_path / f"ad{dora}")
        ids = torch.tensor([[5, 6, 7, 8]])
        with torch.no_grad():
            unmerged = load_model(tmp_path / "base", adapter=tmp_path / f"ad{dora}", quantize="nf4")
            merged = load_model(tmp_path / "base", adapter=tmp_path / f"ad{dora}", quantize="nf4", merge=True)
            assert (merged(ids) - unmerged(ids)).abs().max() < 1e-5
        assert any(isinstance(m, QLoRALinear) for m in merged.modules()) == dora
