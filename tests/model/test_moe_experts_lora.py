"""LoRA on a mixture of experts' routed experts (``prefopt.lora_experts``) against PEFT's
``target_parameters`` on transformers 5's fused experts: files read both ways to the same logits,
the same gradients, the merge, the stacking of DPO after SFT, 4-bit experts, refusals, training; and
adapters made on transformers 4 (one per expert projection) against transformers with the updates added by hand.
(A killed and resumed DPO run with them: tests/train/test_resume_and_ddp.py.)"""
import json
import warnings

import pytest
import torch

from prefopt import apply_lora, load_model, save_adapter
from prefopt.lora import (
    describe,
    disable_adapter,
    lora_layers,
    merge_and_unload,
    merge_lora,
    merged_state_dict,
    unmerge_lora,
)
from prefopt.lora_experts import ExpertLoRA, from_peft, to_peft
from prefopt.lora_files import load_adapter, read_adapter_config
from tests.model import _family as family

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")
IDS = family.IDS
# logits of two float32 paths (merged or not, fused or per expert, ours or transformers'): up to 1.2e-4 apart,
# by CPU kernels (AVX2 or AVX-512) and summation order; the adapters' effects checked here exceed 0.1
TOL = 5e-4
ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]
BOTH = ("gate_up_proj", "down_proj")
PEFT_PARTS = {"gate_up_proj": "mlp.experts.gate_up_proj", "down_proj": "mlp.experts.down_proj"}


@pytest.fixture(scope="module", params=["qwen3_moe", "qwen2_moe", "olmoe", "mixtral"])
def moe(request, tmp_path_factory):
    return family.tiny_family(tmp_path_factory, request.param)


def ours_with(folder, parts=BOTH, targets=ATTENTION, r=2, seed=0):
    """prefopt's model of ``folder`` with adapters on ``targets`` and the experts' ``parts``, B random."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = apply_lora(load_model(folder), r=r, alpha=2 * r, dropout=0.0, target_modules=targets,
                           target_parameters=parts).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, m in lora_layers(model):
            m.lora_B.weight.copy_(torch.randn(m.lora_B.weight.shape, generator=g) * 0.2)
    return model


def hf_model(folder):
    return transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


@pytest.mark.parametrize("parts,targets", [(BOTH, ATTENTION), (("down_proj",), ["q_proj"]), (("gate_up_proj",), [])])
def test_peft_reads_prefopts_adapter_on_the_experts_to_the_same_logits(moe, tmp_path, parts, targets):
    hf, _, folder = moe
    ours = ours_with(folder, parts, targets)
    out = save_adapter(ours, tmp_path / "adapter", base_model=str(folder))
    d = json.loads((out / "adapter_config.json").read_text())
    assert d["target_parameters"] == sorted(PEFT_PARTS[p] for p in parts) and d["lora_dropout"] == 0
    theirs = peft.PeftModel.from_pretrained(hf_model(folder), out).eval()
    with torch.no_grad():
        got, want, base = ours(IDS), theirs(IDS).logits, hf(IDS).logits
    assert (got - want).abs().max().item() < 5e-5
    assert (got - base).abs().max().item() > 0.1  # the experts' adapters do something
    assert read_adapter_config(out).target_parameters == parts


@pytest.mark.parametrize("listed,targets", [(["mlp.experts.gate_up_proj", "mlp.experts.down_proj"], ["v_proj"]),
                                            (["experts.down_proj"], ["v_proj"]),
                                            (["mlp.experts.gate_up_proj"], r".*\.(q_proj|v_proj)")])  # a regex
def test_prefopt_reads_peft_adapters_on_the_experts_to_the_same_logits(moe, tmp_path, listed, targets):
    hf, _, folder = moe
    torch.manual_seed(1)
    theirs = peft.get_peft_model(hf_model(folder), peft.LoraConfig(r=3, lora_alpha=5, lora_dropout=0.0,
                                                                  target_modules=targets, target_parameters=listed))
    with torch.no_grad():
        for n, p in theirs.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.2)
    theirs.save_pretrained(tmp_path / "peft")
    ours = load_adapter(load_model(folder), tmp_path / "peft").eval()
    assert ours.lora_config.target_parameters == tuple(p for p in BOTH if any(s.endswith(p) for s in listed))
    experts = [m for _, m in lora_layers(ours) if isinstance(m, ExpertLoRA)]
    n_moe = sum(1 for m in ours.modules() if hasattr(m, "expert_adapters"))
    assert len(experts) == len(listed) * n_moe and all(m.r == 3 and m.scaling == 5 / 3 for m in experts)
    with torch.no_grad():
        assert (ours(IDS) - theirs.eval()(IDS).logits).abs().max().item() < 5e-5


def test_the_files_layout_is_peft_expert_by_expert():
    """A ``(E·r, in)``: expert e's rows e·r..e·r+r-1; B ``(out, r·E)``: expert e's columns e, e+E, ..."""
    E, r, n_in, n_out = 3, 2, 5, 4
    a, b = torch.randn(E, r, n_in), torch.randn(E, n_out, r)
    fa, fb = to_peft(a, "lora_A"), to_peft(b, "lora_B")
    assert fa.shape == (E * r, n_in) and fb.shape == (n_out, r * E)
    for e in range(E):
        assert torch.equal(fa[e * r:(e + 1) * r], a[e]) and torch.equal(fb[:, e::E], b[e])
    assert torch.equal(from_peft(fa, "lora_A", r), a) and torch.equal(from_peft(fb, "lora_B", r), b)


@pytest.mark.parametrize("arch", ["qwen3_moe", "mixtral"])
def test_gradients_match_peft(tmp_path_factory, arch):
    """The same adapter in both (through the file), the same loss: every A and B's gradient equal."""
    _, _, folder = family.tiny_family(tmp_path_factory, arch)
    ours = ours_with(folder)
    out = save_adapter(ours, folder.parent / f"{arch}-grad-adapter", base_model=str(folder))
    theirs = peft.PeftModel.from_pretrained(hf_model(folder), out, is_trainable=True)
    labels = IDS.roll(-1, 1)
    for logits in (ours(IDS), theirs(IDS).logits):
        torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten()).backward()
    grads = {n.removesuffix(".weight"): p.grad for n, p in ours.named_parameters() if p.requires_grad}
    theirs_grads = {n.removeprefix("base_model.model.").replace(".default", ""): p.grad
                    for n, p in theirs.named_parameters() if p.requires_grad}
    checked = 0
    for name, g in grads.items():
        if ".expert_adapters." in name:
            layer, rest = name.split(".expert_adapters.")
            part, leaf = rest.split(".")
            nested = "base_layer." if part == "gate_up_proj" else ""
            peft_name = f"{layer.rsplit('.', 1)[0]}.mlp.experts.{nested}{leaf}.weight"
            g = to_peft(g, leaf)
        else:
            peft_name = f"{name}.weight"
        want = theirs_grads[peft_name]
        assert (g - want).abs().max().item() <= 1e-4 * want.abs().max().item() + 1e-7, name
        checked += ".expert_adapters." in name
    assert checked == 4 * sum(1 for m in ours.modules() if hasattr(m, "expert_adapters"))  # A, B of both parts
    assert all(g.abs().max() > 0 for n, g in grads.items() if "lora_A" in n)  # B is random: A learns too


def test_merging_disabling_and_the_merged_weights_agree(moe):
    hf, _, folder = moe
    ours = ours_with(folder)
    with torch.no_grad():
        adapted, base = ours(IDS), hf(IDS).logits
        with disable_adapter(ours):
            assert (ours(IDS) - base).abs().max().item() < TOL
        plain = load_model(folder).eval()
        plain.load_state_dict(merged_state_dict(ours))  # what `prefopt merge` and the GGUF export write
        assert (plain(IDS) - adapted).abs().max().item() < TOL
        merge_lora(ours)
        assert (ours(IDS) - adapted).abs().max().item() < TOL
        unmerge_lora(ours)  # the weights back, up to fp32 rounding (1.4e-5 seen in the logits)
        assert not any(m.merged for _, m in lora_layers(ours))
        assert (ours(IDS) - adapted).abs().max().item() < TOL
        merge_and_unload(ours)
        assert not list(lora_layers(ours)) and not any(hasattr(m, "expert_adapters") for m in ours.modules())
        assert (ours(IDS) - adapted).abs().max().item() < TOL
    assert ours.merged_adapters[-1].config.target_parameters == BOTH


def test_dpo_after_sft_stacks_the_experts_adapters_into_one_file(moe, tmp_path):
    """SFT's adapter (attention and experts) merged, a fresh one trained on top: the saved stack
    (rank 2 + 3) gives the model's logits on the base model, in prefopt and in PEFT."""
    _, _, folder = moe
    sft = save_adapter(ours_with(folder, BOTH, ATTENTION, r=2, seed=3), tmp_path / "sft", base_model=str(folder))
    model = load_model(folder, adapter=sft, merge=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        apply_lora(model, r=3, alpha=6, dropout=0.0, target_modules=["q_proj"], target_parameters=("down_proj",))
    with torch.no_grad():
        for _, m in lora_layers(model):
            m.lora_B.weight.normal_(0, 0.2)
        want = model.eval()(IDS)
    out = save_adapter(model, tmp_path / "dpo")
    cfg = read_adapter_config(out)
    assert (cfg.r, cfg.target_parameters, cfg.dropout) == (5, BOTH, 0.0)
    with torch.no_grad():
        assert (load_adapter(load_model(folder), out).eval()(IDS) - want).abs().max().item() < TOL
        theirs = peft.PeftModel.from_pretrained(hf_model(folder), out).eval()
        assert (theirs(IDS).logits - want).abs().max().item() < TOL


def test_4_bit_experts_take_adapters_and_merge_beside_their_codes(moe):
    from prefopt.quant import QuantLinear

    _, _, folder = moe
    model = load_model(folder, quantize="nf4")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        apply_lora(model, r=2, alpha=4, dropout=0.0, target_parameters=BOTH)
    experts = [m for _, m in lora_layers(model) if isinstance(m, ExpertLoRA)]
    assert experts and all(isinstance(p, QuantLinear) for m in experts for e in m._moe[0].experts
                           for p in e.children())
    with torch.no_grad():
        base = model.eval()(IDS)
        for m in experts:
            m.lora_B.weight.normal_(0, 0.2)
        adapted = model(IDS)
        assert (adapted - base).abs().max().item() > 0.1
        merge_lora(model)
        with pytest.raises(RuntimeError, match="stays merged"):  # 4-bit experts keep their merge
            unmerge_lora(model)
        merge_and_unload(model)  # the updates kept as factors beside the codes
        assert (model(IDS) - adapted).abs().max().item() < TOL


def test_what_peft_refuses_on_the_experts_is_refused(moe, tmp_path):
    _, _, folder = moe
    for kwargs, error in (({"dropout": 0.05}, r"^LoRA on the experts takes no dropout: set lora_dropout to 0 \(PEFT "),
                          ({"dropout": 0.0, "dora": True}, r"^LoRA on the experts takes no DoRA \(PEFT refuses"),
                          ({"dropout": 0.1, "layers": [0]}, r"takes no dropout: set lora_dropout to 0; no lora_layers "
                                                            r"\(PEFT adapts the experts of every layer\)")):
        with pytest.raises(ValueError, match=error):
            apply_lora(load_model(folder), target_modules=ATTENTION, target_parameters=BOTH, **kwargs)
    for first in (ATTENTION, []):  # never replaced, nor nested: the experts' adapters count as adapters
        with pytest.raises(ValueError, match=r"already has LoRA adapters .*merge_and_unload\(model\) first"):
            apply_lora(ours_with(folder, targets=first), dropout=0.0, target_modules=[], target_parameters=BOTH)
    with pytest.raises(ValueError, match=r"target_parameters \['up_proj'\]: prefopt adapts the experts' gate_up_proj"):
        apply_lora(load_model(folder), dropout=0.0, target_modules=ATTENTION, target_parameters=["up_proj"])
    out = save_adapter(ours_with(folder), tmp_path / "a", base_model=str(folder))
    config = json.loads((out / "adapter_config.json").read_text())
    for change, error in (({"layers_to_transform": [0]}, r"names layers_to_transform=\[0\] and adapts the experts' "
                                                          "gate_up_proj, down_proj .*which PEFT adapts in every layer"),
                          ({"target_parameters": ["self_attn.q_proj.weight"]}, "is not a mixture of experts'")):
        (out / "adapter_config.json").write_text(json.dumps({**config, **change}))
        with pytest.raises(ValueError, match=error):
            read_adapter_config(out)


def test_a_dense_model_has_no_experts_to_adapt(tmp_path):
    """apply_lora says so; sft (and compare) before the run claims its folder."""
    from prefopt.train import TrainConfig
    from prefopt.train.run import run_sft
    from tests._tiny import build_hf_model
    from tests.train._fixtures import write_task

    build_hf_model(tmp_path / "model", initializer_range=0.1)
    with pytest.raises(ValueError, match=r"LoRA on the experts \(gate_up_proj, down_proj\): llama has no mixture"):
        apply_lora(load_model(tmp_path / "model"), dropout=0.0, target_parameters=BOTH)
    _, data = write_task(tmp_path)
    with pytest.raises(ValueError, match=r"lora_experts: .*model \(llama\) has no mixture of experts to adapt"):
        run_sft(TrainConfig(model=str(tmp_path / "model"), data=str(data), output_dir=str(tmp_path / "run"),
                            lora_dropout=0.0, lora_experts=True, progress=False))
    assert not (tmp_path / "run").exists()


def test_the_train_config_refuses_what_the_experts_cannot_take():
    from prefopt.train import TrainConfig

    for changes, what in (({}, "dropout: set lora_dropout to 0"), ({"lora_dora": True, "lora_dropout": 0.0}, "DoRA"),
                          ({"lora_layers": "1", "lora_dropout": 0.0}, "lora_layers")):
        with pytest.raises(ValueError, match=f"lora_experts: LoRA on the experts takes no {what}"):
            TrainConfig(model="m", data="d", output_dir="o", lora_experts=True, **changes)
    with pytest.raises(ValueError, match="lora_experts needs LoRA"):
        TrainConfig(model="m", data="d", output_dir="o", lora_experts=True, lora=False, lora_dropout=0.0)


def test_sft_trains_the_experts_adapters(tmp_path, capsys):
    """--lora-experts: the held-out loss falls, every expert's update moves, the plan line and the
    adapter's description say so."""
    from prefopt.train import TrainConfig
    from prefopt.train.run import run_sft
    from tests._tiny import build_hf_model
    from tests.train._fixtures import write_task

    model_dir = tmp_path / "model"
    build_hf_model(model_dir, arch="qwen3_moe", initializer_range=0.1)
    _, data = write_task(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summary = run_sft(TrainConfig(model=str(model_dir), data=str(data), output_dir=str(tmp_path / "run"),
                                      batch_size=4, max_steps=48, lr=3e-3, lora_r=4, lora_alpha=8, lora_dropout=0.0,
                                      lora_targets=["q_proj"], lora_experts=True, eval_fraction=0.25,
                                      warmup_steps=2, progress=False))
    assert summary["eval_after"]["eval_loss"] < 0.6 * summary["eval_before"]["eval_loss"]
    assert "(LoRA r4 on q_proj, the experts' gate_up_proj, the experts' down_proj)" in capsys.readouterr().out
    cfg = read_adapter_config(tmp_path / "run" / "final")
    assert cfg.target_parameters == BOTH and describe(cfg) == (
        "LoRA r4 (alpha 8) on q_proj, the experts' gate_up_proj, down_proj")
    trained = load_adapter(load_model(model_dir), tmp_path / "run" / "final")
    experts = [m for _, m in lora_layers(trained) if isinstance(m, ExpertLoRA)]
    assert len(experts) == 2  # layer 0's mixture (layer 1 is dense in the tiny Qwen3-MoE)
    for m in experts:  # B starts at zero: each expert's update trained (every expert routed some tokens)
        assert all(m.lora_B.weight[e].abs().max() > 0 for e in range(m.num_experts))


def test_dpo_trains_the_experts_adapters_against_the_adapter_disabled_reference(tmp_path):
    """Mixtral (block_sparse_moe), the reference cached from the model with its adapters off
    (that ``disable_adapter`` turns the experts' off too: the merging test): held-out pairs move the
    right way, and every expert adapter trained."""
    from prefopt.train.dpo import DPOConfig
    from prefopt.train.run import run_dpo
    from tests._tiny import build_hf_model
    from tests.train._fixtures import write_pairs

    model_dir = tmp_path / "model"
    build_hf_model(model_dir, arch="mixtral", initializer_range=0.1)
    cfg = DPOConfig(model=str(model_dir), data=str(write_pairs(tmp_path / "train.jsonl")),
                    eval_data=str(write_pairs(tmp_path / "held.jsonl", n=16, offset=1000)),
                    output_dir=str(tmp_path / "run"), batch_size=4, max_steps=48, lr=1e-2, lora_r=4, lora_alpha=8,
                    lora_dropout=0.0, lora_targets=["q_proj"], lora_experts=True, progress=False,
                    ref_cache=str(tmp_path / "cache"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summary = run_dpo(cfg)
    before, after = summary["eval_before"], summary["eval_after"]
    assert abs(before["eval_loss"] - 0.6931) < 1e-3 and summary["reference_forwards"] == 0
    assert after["eval_loss"] < before["eval_loss"] - 0.04 and after["eval_rewards/margins"] > 0.1
    trained = load_adapter(load_model(model_dir), tmp_path / "run" / "final")
    experts = [m for n, m in lora_layers(trained) if isinstance(m, ExpertLoRA)]
    assert len(experts) == 4 and all(".block_sparse_moe.expert_adapters." in n for n, m in lora_layers(trained)
                                     if isinstance(m, ExpertLoRA))
    assert all(m.lora_B.weight.abs().max() > 0 for m in experts)


def test_the_merged_model_loads_in_transformers_to_the_adapted_logits(moe, tmp_path):
    """``prefopt merge``'s folder (``save_merged``): the experts' updates folded into each expert's weights."""
    from prefopt import save_merged

    _, _, folder = moe
    ours = ours_with(folder)
    save_merged(ours, tmp_path / "merged")
    with torch.no_grad():
        assert (hf_model(tmp_path / "merged")(IDS).logits - ours(IDS)).abs().max().item() < TOL


def test_an_adapter_made_on_transformers_4_loads_on_each_expert(moe, tmp_path):
    """PEFT on transformers 4 (experts as modules) matched target names inside the experts: files with
    ``experts.3.w1.lora_A.weight`` keys, as hub adapters for Mixtral hold. They load on each expert
    (and Qwen2-MoE's shared expert and dense MLP, Qwen3-MoE's dense MLP, which the names also
    matched, and the router: ``gate``), unmerged and merged; the reference is transformers' model
    with each ``s·B·A`` added to its (fused) weights by hand, save back and read again."""
    import re

    from safetensors.torch import save_file

    from prefopt.model.transformer import SparseMoE

    hf, ours, folder = moe
    mixtral = ours.config.model_type == "mixtral"
    mlp = ["w1", "w3", "w2"] if mixtral else ["gate_proj", "up_proj", "down_proj"]
    r, alpha = 2, 6.0
    g = torch.Generator().manual_seed(5)
    tensors, theirs = {}, hf_model(folder)
    state = theirs.state_dict()
    fused = re.compile(r"model\.layers\.(\d+)\.(?:mlp|block_sparse_moe)\.experts\.(\d+)\.(\w+)")
    targets = ["q_proj", *mlp, "gate"]  # gate: the router, which PEFT on transformers 4 adapted too
    for name, module in ours.named_modules():
        if not (isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in targets):
            continue
        a = torch.randn(r, module.in_features, generator=g) * 0.3
        b = torch.randn(module.out_features, r, generator=g) * 0.3
        tensors[f"base_model.model.{name}.lora_A.weight"], tensors[f"base_model.model.{name}.lora_B.weight"] = a, b
        delta = alpha / r * b @ a
        m = fused.fullmatch(name)
        if m is None:  # attention, a router, a shared expert, a dense MLP: the same name in transformers 5
            state[f"{name.replace('.block_sparse_moe.', '.mlp.')}.weight"] += delta
            continue
        layer, e, proj = int(m[1]), int(m[2]), m[3]
        half = delta.shape[0]
        if proj in ("w2", "down_proj"):
            state[f"model.layers.{layer}.mlp.experts.down_proj"][e] += delta
        else:  # gate rows first, then up's, in the fused tensor
            rows = slice(0, half) if proj in ("w1", "gate_proj") else slice(half, 2 * half)
            state[f"model.layers.{layer}.mlp.experts.gate_up_proj"][e, rows] += delta
    assert sum(".experts." in k for k in tensors) >= 2 * 3 * 4  # every expert's three projections
    mixtures = sum(isinstance(m, SparseMoE) for m in ours.modules())
    assert mixtures and sum(k.endswith(".gate.lora_A.weight") for k in tensors) == mixtures  # each router
    theirs.load_state_dict(state)
    (tmp_path / "t4").mkdir()
    save_file(tensors, tmp_path / "t4" / "adapter_model.safetensors")
    (tmp_path / "t4" / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": r, "lora_alpha": alpha, "target_modules": targets, "bias": "none"}))
    cfg = read_adapter_config(tmp_path / "t4")
    assert cfg.expert_modules and not cfg.target_parameters
    loaded = load_adapter(load_model(folder), tmp_path / "t4").eval()
    with torch.no_grad():
        want = theirs(IDS).logits
        assert (loaded(IDS) - want).abs().max().item() < TOL
        assert (load_model(folder, adapter=tmp_path / "t4", merge=True)(IDS) - want).abs().max().item() < TOL
        save_adapter(loaded, tmp_path / "back")
        assert read_adapter_config(tmp_path / "back").expert_modules
        assert (load_adapter(load_model(folder), tmp_path / "back")(IDS) - want).abs().max().item() < TOL
        assert (want - hf(IDS).logits).abs().max().item() > 0.1
        # on 4-bit experts (each projection a QuantLinear under its own adapter): merged beside the codes
        unmerged = load_model(folder, quantize="nf4", adapter=tmp_path / "t4")(IDS)
        base_4 = load_model(folder, quantize="nf4")(IDS)
        assert (unmerged - base_4).abs().max().item() > 0.1
        merged = load_model(folder, quantize="nf4", adapter=tmp_path / "t4", merge=True)(IDS)
        assert (merged - unmerged).abs().max().item() < TOL


def test_dpo_on_the_fused_experts_stacks_onto_an_sft_adapter_made_on_transformers_4(moe, tmp_path):
    """DPO after SFT where the SFT adapter has transformers-4 keys (one per expert projection):
    merged in, a new adapter on the fused experts trained on top, and the two written as one file
    (both kinds of keys, ranks side by side) that loads to the stacked model's logits."""
    from safetensors.torch import save_file

    _, ours, folder = moe
    mlp = ["w1", "w3", "w2"] if ours.config.model_type == "mixtral" else ["gate_proj", "up_proj", "down_proj"]
    g = torch.Generator().manual_seed(0)
    tensors = {}
    for name, module in ours.named_modules():
        if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in ["q_proj", *mlp]:
            for part, shape in (("A", (2, module.in_features)), ("B", (module.out_features, 2))):
                tensors[f"base_model.model.{name}.lora_{part}.weight"] = torch.randn(shape, generator=g) * 0.3
    (tmp_path / "sft").mkdir()
    save_file(tensors, tmp_path / "sft" / "adapter_model.safetensors")
    (tmp_path / "sft" / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj", *mlp], "bias": "none"}))
    model = load_model(folder, adapter=tmp_path / "sft", merge=True)
    apply_lora(model, r=2, alpha=4, dropout=0.0, target_modules=["q_proj"], target_parameters=BOTH)
    with torch.no_grad():
        for _, m in lora_layers(model):
            m.lora_B.weight.normal_(0, 0.2)
        want = model.eval()(IDS)
        out = save_adapter(model, tmp_path / "dpo", base_model=str(folder))
        cfg = read_adapter_config(out)
        assert cfg.r == 4 and cfg.expert_modules and cfg.target_parameters == BOTH
        assert (load_model(folder, adapter=out)(IDS) - want).abs().max().item() < TOL
        assert (load_model(folder, adapter=tmp_path / "sft")(IDS) - want).abs().max().item() > 0.1
