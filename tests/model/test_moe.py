"""Mixtures of experts (Qwen3-MoE, Qwen2-MoE, OLMoE, Mixtral) against transformers' ``Qwen3MoeForCausalLM``,
``Qwen2MoeForCausalLM``, ``OlmoeForCausalLM`` and ``MixtralForCausalLM``: the routing (top-k, renormalised or not; dense
layers; Qwen2-MoE's gated shared expert),
generation with the cache, packing, saving, LoRA by module name (attention only: PEFT on transformers 5 adapts no
expert by those names either, and reads prefopt's adapter to the same logits; the experts' own adapters, PEFT's
target_parameters, and transformers 4's adapters on single experts are in test_moe_experts_lora.py), QLoRA's
4-bit experts, training.
Logits, padding and hidden states of each are in test_parity.py (``qwen3-moe``, ``qwen2-moe``, ``olmoe``,
``mixtral``)."""
import re
import warnings

import pytest
import torch

from prefopt import apply_lora, load_model
from prefopt.lora import lora_layers
from prefopt.model.config import ModelConfig, UnsupportedModelError
from prefopt.model.transformer import MLP, SparseMoE
from tests._tiny import build_hf_model
from tests.model import _family as family

transformers = pytest.importorskip("transformers")
IDS = family.IDS


@pytest.fixture(scope="module", params=["qwen3_moe", "qwen2_moe", "olmoe", "mixtral"])
def moe(request, tmp_path_factory):
    return family.tiny_family(tmp_path_factory, request.param)


def test_the_routing_is_read_and_matters(moe):
    hf, ours, _ = moe
    cfg = ours.config
    qwen2 = cfg.model_type == "qwen2_moe"  # the tiny one unnormalised, as Qwen1.5-MoE and Qwen2-57B-A14B
    unnormalised = cfg.model_type in ("qwen2_moe", "olmoe")  # (OLMoE-1B-7B too)
    assert (cfg.num_experts, cfg.num_experts_per_tok, cfg.norm_topk_prob) == (4, 2, not unnormalised)
    layers = ours.model.layers
    if cfg.model_type in ("qwen3_moe", "qwen2_moe"):  # mlp_only_layers=[1]: a dense MLP there, of intermediate_size
        assert isinstance(layers[0].mlp, SparseMoE) and isinstance(layers[1].mlp, MLP)
        assert layers[0].mlp.experts[0].gate_proj.weight.shape == (32, 64)
        assert hasattr(layers[0].mlp, "shared_expert") == qwen2
        if qwen2:  # every token through the shared expert (96 wide), scaled by a sigmoid gate
            assert layers[0].mlp.shared_expert.up_proj.weight.shape == (96, 64)
            assert layers[0].mlp.shared_expert_gate.weight.shape == (1, 64)
    elif cfg.model_type == "olmoe":  # every layer a mixture; q/k norms over all heads at once
        assert all(isinstance(b.mlp, SparseMoE) for b in layers)
        assert layers[0].self_attn.q_norm.weight.shape == (64,) and layers[0].self_attn.k_norm.weight.shape == (32,)
    else:  # Mixtral's checkpoint names: block_sparse_moe, experts' w1/w2/w3
        assert all(isinstance(b.block_sparse_moe, SparseMoE) for b in layers)
        assert layers[0].block_sparse_moe.experts[3].w2.weight.shape == (64, 32)
    with torch.no_grad():
        want = hf(IDS).logits
        assert (ours(IDS) - want).abs().max().item() < 1e-4
        for changes in ({"num_experts_per_tok": 1}, {"num_experts_per_tok": 3}):  # another top-k: other logits
            assert (family.variant(ours, **changes)(IDS) - want).abs().max().item() > 1e-3
        if cfg.model_type in ("qwen3_moe", "qwen2_moe", "olmoe"):
            assert (family.variant(ours, norm_topk_prob=unnormalised)(IDS) - want).abs().max().item() > 1e-3
        if qwen2:  # the shared expert counts: closed off, other logits
            gate = layers[0].mlp.shared_expert_gate.weight
            kept = gate.clone()
            gate.fill_(-1e4)
            assert (ours(IDS) - want).abs().max().item() > 1e-3
            gate.copy_(kept)


@pytest.mark.parametrize("changes, error", [
    ({"num_experts_per_tok": 5}, r"num_experts_per_tok=5 of num_experts=4 experts"),
    ({"router_jitter_noise": 0.1}, r"router_jitter_noise=0.1: Mixtral's training-time router noise is not supported"),
    ({"clip_qkv": 8.0}, r"olmoe: clip_qkv=8.0 \(clamping q, k and v\) is not supported"),
])
def test_what_prefopt_does_not_run_is_refused_by_name(moe, changes, error):
    _, ours, _ = moe
    own = {"router_jitter_noise": "mixtral", "clip_qkv": "olmoe"}
    if any(k in changes and ours.config.model_type != arch for k, arch in own.items()):
        pytest.skip("another family's setting")
    with pytest.raises(UnsupportedModelError, match=error):
        ModelConfig.from_dict({**ours.config.raw, **changes})


def test_gradients_match_transformers(moe):
    """The backward through the routing and the experts: every parameter's gradient of one loss
    equals transformers' (its experts fused into 3-D tensors: compared expert by expert)."""
    hf, _, folder = moe
    ours = load_model(folder).train()
    theirs = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).train()
    for model, logits in ((ours, lambda m: m(IDS)), (theirs, lambda m: m(IDS).logits)):
        (logits(model).log_softmax(-1)[..., 7].sum()).backward()
    want = {n: p.grad for n, p in theirs.named_parameters()}
    ffn = ours.config.ffn_name
    for name, p in ours.named_parameters():
        m = re.fullmatch(rf"model\.layers\.(\d+)\.{ffn}\.experts\.(\d+)\.(\w+)\.weight", name)
        if m:  # transformers 5: experts.gate_up_proj (E, 2F, D) = [gate; up], experts.down_proj (E, D, F)
            layer, e, leaf = int(m.group(1)), int(m.group(2)), m.group(3)
            fused = want[f"model.layers.{layer}.mlp.experts.{'down_proj' if leaf in ('down_proj', 'w2') else 'gate_up_proj'}"]
            half = fused.shape[1] // 2
            g = {"gate_proj": fused[e, :half], "w1": fused[e, :half], "up_proj": fused[e, half:],
                 "w3": fused[e, half:]}.get(leaf, fused[e])
        else:
            g = want[name.replace("block_sparse_moe.gate.weight", "mlp.gate.weight").replace("block_sparse_moe", "mlp")]
        if name == "model.embed_tokens.weight":  # transformers' pad row gets none (padding_idx), as for DPO
            keep = torch.arange(p.shape[0]) != hf.config.pad_token_id
            p_grad, g = p.grad[keep], g[keep]
        else:
            p_grad = p.grad
        assert (p_grad - g).abs().max().item() < 1e-4, name


def test_greedy_generation_with_the_cache_matches_transformers(moe):
    family.assert_greedy_generation_matches(*moe[:2])


def test_packed_sequences_equal_each_run_alone(moe):
    _, ours, _ = moe
    a, b = IDS[0, :9], IDS[1, :6]
    with torch.no_grad():  # experts run on other row counts packed: 1e-5 of BLAS blocking
        packed = ours(torch.cat([a, b])[None], packed=[9, 6])
        assert (packed[0, :9] - ours(a[None])[0]).abs().max().item() < 5e-5
        assert (packed[0, 9:] - ours(b[None])[0]).abs().max().item() < 5e-5


def test_a_saved_moe_loads_in_transformers(moe, tmp_path):
    cfg = family.assert_saved_loads_in_transformers(*moe[:2], tmp_path / "saved", IDS)
    assert cfg["architectures"] == [{"qwen3_moe": "Qwen3MoeForCausalLM", "mixtral": "MixtralForCausalLM",
                                     "qwen2_moe": "Qwen2MoeForCausalLM", "olmoe": "OlmoeForCausalLM"}[
        moe[1].config.model_type]]


def test_lora_adapts_attention_and_leaves_the_router_and_experts_alone(moe, tmp_path):
    _, ours, folder = moe
    if ours.config.model_type == "qwen2_moe":
        pytest.skip("Qwen2-MoE's shared expert and dense MLPs take the MLP names' adapters (the next test)")
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        model = apply_lora(load_model(folder), r=4, alpha=8)
    # the MLP projections' names are the experts' (PEFT on transformers 5 reads them so, and then adapts
    # no dense layer's MLP by them either, as Qwen3-MoE's layer 1 here): dropped, and said
    assert [str(w.message) for w in said if "name this model's experts" in str(w.message)] == [
        "LoRA: gate_proj, up_proj, down_proj name this model's experts (a mixture of experts), which get no adapter, "
        "nor does their router (nor a dense layer's MLP: PEFT reads those names as the experts'); the adapter covers "
        "the attention"]
    names = [n for n, _ in lora_layers(model)]
    assert len(names) == 4 * ours.config.num_hidden_layers and all(".self_attn." in n for n in names)
    assert model.lora_config.target_modules == ("q_proj", "k_proj", "v_proj", "o_proj")
    all_linear = apply_lora(load_model(folder), target_modules=["all-linear"])  # PEFT's shorthand: the same
    assert [n for n, _ in lora_layers(all_linear)] == names
    with pytest.raises(ValueError, match=r"no nn.Linear named \['w9'\]"):  # a misspelt name still fails
        apply_lora(load_model(folder), target_modules=["q_proj", "w9"])


def test_qwen2_moe_adapts_its_shared_expert_and_dense_mlps_as_peft_does(tmp_path_factory):
    """PEFT on transformers 5 reads gate_proj/up_proj/down_proj as Qwen2-MoE's shared expert's and
    the dense layers' (Qwen3-MoE's and Mixtral's as their fused experts'): prefopt adapts the same
    layers, never a routed expert or the router; ``all-linear`` adds the shared expert's gate."""
    peft = pytest.importorskip("peft")
    hf, _, folder = family.tiny_family(tmp_path_factory, "qwen2_moe")
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        model = apply_lora(load_model(folder), r=4, alpha=8)
    assert not [w for w in said if "experts" in str(w.message)]
    names = [n for n, _ in lora_layers(model)]
    mlp = ("gate_proj", "up_proj", "down_proj")
    assert sorted(names) == sorted([*(f"model.layers.{i}.self_attn.{p}" for i in (0, 1) for p in
                                      ("q_proj", "k_proj", "v_proj", "o_proj")),
                                    *(f"model.layers.0.mlp.shared_expert.{p}" for p in mlp),
                                    *(f"model.layers.1.mlp.{p}" for p in mlp)])
    hf_peft = peft.get_peft_model(transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32),
                                  peft.LoraConfig(r=4, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", *mlp]))
    theirs = sorted({n.removeprefix("base_model.model.").rsplit(".lora_", 1)[0]
                     for n, _ in hf_peft.named_parameters() if ".lora_" in n})
    assert theirs == sorted(names)
    every = [n for n, _ in lora_layers(apply_lora(load_model(folder), target_modules=["all-linear"]))]
    assert sorted(every) == sorted([*names, "model.layers.0.mlp.shared_expert_gate"])  # no router, no expert


def test_peft_reads_the_adapter_to_the_same_logits(moe, tmp_path):
    """The adapter file loads in PEFT on transformers' model (whose experts are fused tensors, which
    PEFT does not adapt either) and gives prefopt's logits."""
    peft = pytest.importorskip("peft")
    from prefopt import save_adapter

    hf, _, folder = moe
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = apply_lora(load_model(folder), r=4, alpha=8, dropout=0.0)
    with torch.no_grad():
        for _, m in lora_layers(ours):
            m.lora_B.weight.normal_(0, 0.2)
    save_adapter(ours.eval(), tmp_path / "adapter", base_model=str(folder))
    theirs = peft.PeftModel.from_pretrained(
        transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32), tmp_path / "adapter").eval()
    with torch.no_grad():
        got, want = ours(IDS), theirs(IDS).logits
        assert (got - want).abs().max().item() < 1e-4
        assert (got - hf(IDS).logits).abs().max().item() > 1e-3  # the adapter does something


def test_qlora_keeps_the_experts_in_4_bits_and_the_router_precise(moe):
    from prefopt.quant import QuantLinear

    _, _, folder = moe
    model = load_model(folder, quantize="nf4")
    moe_block = getattr(model.model.layers[0], model.config.ffn_name)
    assert isinstance(moe_block.gate, torch.nn.Linear) and not isinstance(moe_block.gate, QuantLinear)
    assert all(isinstance(m, QuantLinear) for e in moe_block.experts for m in e.children())
    same = load_model(folder)  # full precision, each quantized layer's weight set to its 4-bit values
    layers = dict(same.named_modules())
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, QuantLinear):
                layers[name].weight.copy_(m.weight)
        assert (model(IDS) - same(IDS)).abs().max().item() < 1e-4


@pytest.mark.parametrize("arch", ["qwen3_moe", "qwen2_moe", "olmoe"])
def test_sft_trains_a_mixture_of_experts(tmp_path, arch):
    """Qwen3-MoE, OLMoE: an adapter on the attention (and Qwen3-MoE's dense layer's MLP not); Qwen2-MoE:
    on the attention, the shared expert and the dense layer's MLP. The adapter moves, the held-out loss halves."""
    from prefopt import load_adapter
    from prefopt.train import TrainConfig
    from prefopt.train.run import run_sft
    from tests.train._fixtures import write_task

    model_dir = tmp_path / "model"
    build_hf_model(model_dir, arch=arch, initializer_range=0.1)
    _, data = write_task(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summary = run_sft(TrainConfig(model=str(model_dir), data=str(data), output_dir=str(tmp_path / "run"),
                                      batch_size=4, max_steps=64, lr=3e-3, lora_r=8, lora_alpha=16,
                                      eval_fraction=0.25, warmup_steps=2, progress=False))
    assert summary["eval_after"]["eval_loss"] < 0.5 * summary["eval_before"]["eval_loss"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trained = dict(lora_layers(load_adapter(load_model(model_dir), tmp_path / "run" / "final")))
    shared = [n for n in trained if ".shared_expert." in n]
    assert len(shared) == (3 if arch == "qwen2_moe" else 0) and not [n for n in trained if ".experts." in n]
    assert all(m.lora_B.weight.abs().max() > 0 for m in trained.values())  # B starts at 0: each one trained


def test_dpo_trains_a_mixture_of_experts_against_its_adapter_disabled_reference(tmp_path):
    from prefopt.train.dpo import DPOConfig
    from prefopt.train.run import run_dpo
    from tests.train._fixtures import write_pairs

    model_dir = tmp_path / "model"
    build_hf_model(model_dir, arch="mixtral", initializer_range=0.1)
    cfg = DPOConfig(model=str(model_dir), data=str(write_pairs(tmp_path / "train.jsonl")),
                    eval_data=str(write_pairs(tmp_path / "held.jsonl", n=16, offset=1000)),
                    output_dir=str(tmp_path / "run"), batch_size=4, max_steps=64, lr=1e-2, lora_r=8, lora_alpha=16,
                    lora_dropout=0.0, progress=False, ref_cache=str(tmp_path / "cache"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summary = run_dpo(cfg)
    before, after = summary["eval_before"], summary["eval_after"]
    # an adapter on the attention alone, 64 steps: held-out pairs move the right way (0.693 -> 0.629 here)
    assert after["eval_loss"] < before["eval_loss"] - 0.04 and after["eval_rewards/margins"] > 0.1
    assert summary["reference_forwards"] == 0  # the reference came from the cache, filled with adapters off
