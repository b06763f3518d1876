"""LoRA: the merge algebra, disable_adapter, and PEFT compatibility both ways."""
import json

import pytest
import torch

from prefopt import apply_lora, disable_adapter, load_model, merge_lora, save_adapter, save_merged, unmerge_lora
from prefopt.lora import LoRALinear, lora_layers, lora_state_dict, merge_and_unload, merged_state_dict
from prefopt.lora_files import load_adapter
from tests._tiny import build_hf_model, peft_lora, randomize_lora

IDS = torch.randint(0, 400, (2, 11), generator=torch.Generator().manual_seed(0))


@pytest.fixture
def tiny(tmp_path):
    build_hf_model(tmp_path / "base")
    return tmp_path / "base"


def test_merge_is_w_plus_scaled_ba_and_idempotent():
    base = torch.nn.Linear(6, 5)
    w0 = base.weight.detach().clone()
    layer = LoRALinear(base, r=2, alpha=6.0)
    with torch.no_grad():
        layer.lora_A.weight.copy_(torch.randn(2, 6))
        layer.lora_B.weight.copy_(torch.randn(5, 2))
    x = torch.randn(3, 6)
    before = layer(x)
    assert torch.equal(layer.weight, w0)  # the base weight is untouched until the merge
    layer.merge()
    want = w0 + (6.0 / 2) * layer.lora_B.weight @ layer.lora_A.weight
    assert torch.allclose(layer.weight, want, atol=1e-6)
    assert torch.allclose(layer(x), before, atol=1e-5)
    merged_once = layer.weight.detach().clone()
    layer.merge()
    assert torch.equal(layer.weight, merged_once)
    layer.unmerge()
    assert torch.allclose(layer.weight, w0, atol=1e-6)


def test_fresh_adapter_is_a_no_op_and_only_lora_trains(tiny):
    base = load_model(tiny)
    with torch.no_grad():
        want = base(IDS)
    model = apply_lora(load_model(tiny), r=4, alpha=8, dropout=0.0)
    with torch.no_grad():
        assert torch.equal(model(IDS), want)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert len(trainable) == 2 * 7 * 2  # 7 projections x 2 layers, A and B
    assert "model.layers.0.self_attn.q_proj.weight" in model.state_dict()  # base keys kept


def test_disable_adapter_gives_base_logits_exactly(tiny):
    with torch.no_grad():
        want = load_model(tiny)(IDS)
    model = apply_lora(load_model(tiny), r=4, alpha=8, dropout=0.0)
    randomize_lora(model)
    with torch.no_grad():
        assert not torch.allclose(model(IDS), want)
        with disable_adapter(model):
            assert torch.equal(model(IDS), want)
        assert not torch.allclose(model(IDS), want)


@pytest.mark.parametrize("dora", [False, True])
def test_unmerge_lora_undoes_merge_lora_and_the_adapter_works_again(tiny, dora):
    model = apply_lora(load_model(tiny), r=4, alpha=8, dropout=0.0, dora=dora)
    randomize_lora(model)
    weights = {n: p.detach().clone() for n, p in model.named_parameters() if n.endswith(".weight") and "lora" not in n}
    with torch.no_grad():
        adapted = model(IDS)
        merge_lora(model)
        assert all(m.merged for _, m in lora_layers(model))
        with pytest.raises(RuntimeError, match=r"disable_adapter\(\) on a merged model: unmerge_lora\(model\) first"):
            with disable_adapter(model):
                pass
        assert max((p - weights[n]).abs().max().item() for n, p in model.named_parameters() if n in weights) > 1e-3
        assert unmerge_lora(model) is model and not any(m.merged for _, m in lora_layers(model))
        for n, p in model.named_parameters():
            if n in weights:
                assert torch.allclose(p, weights[n], atol=1e-6), n
        # float32 rounding: merging and unmerging DoRA rescales by the column norms (1.1e-5 seen with AVX-512 kernels)
        assert (model(IDS) - adapted).abs().max() < 5e-5
        with disable_adapter(model):  # refused while merged; an unmerged adapter turns off again
            assert (model(IDS) - adapted).abs().max() > 1e-3


def test_module_merge_and_state_dict_merge_agree(tiny, tmp_path):
    model = apply_lora(load_model(tiny), r=4, alpha=8, dropout=0.0)
    randomize_lora(model)
    with torch.no_grad():
        adapted = model(IDS)
    sd = merged_state_dict(model)
    assert not any("lora_" in k for k in sd)
    save_merged(model, tmp_path / "merged")
    with torch.no_grad():
        assert (load_model(tmp_path / "merged")(IDS) - adapted).abs().max() < 1e-4
        merge_lora(model)
        assert (model(IDS) - adapted).abs().max() < 1e-4
        merge_lora(model)  # twice changes nothing
        assert (model(IDS) - adapted).abs().max() < 1e-4
    for k, v in sd.items():
        assert torch.allclose(model.state_dict()[k], v, atol=1e-6), k


def test_adapter_save_load_round_trip(tiny, tmp_path):
    model = apply_lora(load_model(tiny), r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"])
    randomize_lora(model)
    save_adapter(model, tmp_path / "ad")
    cfg = json.loads((tmp_path / "ad" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 4 and cfg["target_modules"] == ["q_proj", "v_proj"]
    again = load_model(tiny, adapter=tmp_path / "ad")
    with torch.no_grad():
        assert torch.equal(again(IDS), model(IDS))


def test_bad_adapter_files_are_named(tiny, tmp_path):
    model = apply_lora(load_model(tiny), r=4, alpha=8, target_modules=["q_proj"])
    save_adapter(model, tmp_path / "ad")
    cfg = json.loads((tmp_path / "ad" / "adapter_config.json").read_text())
    (tmp_path / "ad" / "adapter_config.json").write_text(json.dumps({**cfg, "r": 8}))
    with pytest.raises(ValueError, match=r"lora_A.weight.*shape \(4, 64\).*\(8, 64\)"):
        load_model(tiny, adapter=tmp_path / "ad")
    (tmp_path / "ad" / "adapter_config.json").write_text(json.dumps({**cfg, "r": 4, "use_dora": True}))
    with pytest.raises(ValueError, match=r"missing adapter tensors, e.g. '.*lora_magnitude'"):  # DoRA's magnitudes
        load_model(tiny, adapter=tmp_path / "ad")
    (tmp_path / "ad" / "adapter_config.json").write_text(json.dumps({**cfg, "fan_in_fan_out": True}))
    with pytest.raises(ValueError, match=r"only LoRA adapters \(rsLoRA and DoRA too\) are supported .*"
                                         r"'fan_in_fan_out': True"):
        load_model(tiny, adapter=tmp_path / "ad")
    with pytest.raises(FileNotFoundError, match="final: no such adapter folder$"):
        load_model(tiny, adapter=tmp_path / "final")
    weights = tmp_path / "ad" / "adapter_model.safetensors"  # the adapter's file given for its folder
    with pytest.raises(FileNotFoundError, match=f"adapter_model.safetensors: a file, not an adapter folder: pass its "
                                                f"folder, {tmp_path / 'ad'}$"):
        load_model(tiny, adapter=weights)
    (tmp_path / "lone.safetensors").write_bytes(weights.read_bytes())
    with pytest.raises(FileNotFoundError, match=r"lone.safetensors: a file, not an adapter folder \(a PEFT adapter "
                                                r"is a folder holding adapter_config.json and "
                                                r"adapter_model.safetensors\)$"):
        load_model(tiny, adapter=tmp_path / "lone.safetensors")
    (tmp_path / "ad").rename(tmp_path / "final.old")  # what a save interrupted between its two renames leaves
    with pytest.raises(FileNotFoundError, match=r"final.old holds the copy an interrupted save left: rename it to final"):
        load_model(tiny, adapter=tmp_path / "final")


@pytest.mark.parametrize("kind", ["embedding", "modules_to_save", "lora_bias"])
def test_peft_adapters_prefopt_cannot_load_are_refused_with_the_way_round(tiny, tmp_path, kind):
    """A LoRA on the embedding, or whole trained layers (modules_to_save), are named, with how to
    use them (merge in PEFT), not reported as an adapter for another base model."""
    extra, why = {
        "embedding": (dict(target_modules=["q_proj", "embed_tokens"]), r"adapter_model.safetensors: 'base_model.model."
                      r"model.embed_tokens.lora_embedding_A' is an adapter on an embedding layer"),
        "modules_to_save": (dict(target_modules=["q_proj"], modules_to_save=["lm_head"]), r"adapter_config.json: this "
                            r"adapter also holds whole trained layers \(modules_to_save=\['lm_head'\]\)"),
        "lora_bias": (dict(target_modules=["q_proj"], lora_bias=True), r"a bias beside its B matrices \(lora_bias\)"),
    }[kind]
    peft_lora(tiny, tmp_path / "ad", lora_dropout=0.05, **extra)
    with pytest.raises(ValueError, match=why + r".*merge it \(merge_and_unload\), save that model"):
        load_model(tiny, adapter=tmp_path / "ad")


def test_an_adapter_on_another_base_model_names_the_one_it_was_trained_on(tiny, tmp_path):
    model = apply_lora(load_model(tiny), r=4, alpha=8, target_modules=["q_proj"])
    save_adapter(model, tmp_path / "ad", base_model="my-base")
    build_hf_model(tmp_path / "wider", hidden_size=96, tokenizer=False)
    with pytest.raises(ValueError, match=r"shape \(4, 64\), the model expects \(4, 96\); the adapter was trained "
                                         r"on 'my-base' \(its adapter_config.json's base_model_name_or_path\)"):
        load_model(tmp_path / "wider", adapter=tmp_path / "ad")


def test_an_adapter_on_some_layers_loads_and_saves_both_ways_as_peft_scopes_it(tiny, tmp_path):
    """PEFT's ``layers_to_transform``: the adapter on layer 1 only, in prefopt as in PEFT (logits
    within 1e-4, unmerged and merged), saved back with the same scope; ``apply_lora(layers=...)``
    names a target missing from those layers, and a layer the model lacks."""
    peft = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    theirs = peft_lora(tiny, tmp_path / "ad", target_modules=["q_proj", "down_proj"], layers_to_transform=[1])
    ours = load_model(tiny, adapter=tmp_path / "ad")
    assert ours.lora_config.layers == (1,)
    assert {n for n, _ in lora_layers(ours)} == {"model.layers.1.self_attn.q_proj", "model.layers.1.mlp.down_proj"}
    with torch.no_grad():
        want = theirs(IDS).logits
        assert (ours(IDS) - want).abs().max().item() < 1e-4
        assert (load_model(tiny, adapter=tmp_path / "ad", merge=True)(IDS) - want).abs().max().item() < 1e-4
    save_adapter(ours, tmp_path / "again")
    assert json.loads((tmp_path / "again" / "adapter_config.json").read_text())["layers_to_transform"] == [1]
    again = peft.PeftModel.from_pretrained(transformers.AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32),
                                           tmp_path / "again").eval()
    with torch.no_grad():
        assert (again(IDS).logits - want).abs().max().item() < 1e-4
    with pytest.raises(ValueError, match=r"no nn.Linear named \['lm_head'\] found in the model in layer 0"):
        apply_lora(load_model(tiny), target_modules=["q_proj", "lm_head"], layers=[0])
    with pytest.raises(ValueError, match="LoRA on layers 1-2: the model has layers 0-1"):
        apply_lora(load_model(tiny), layers=[1, 2])
    cfg = json.loads((tmp_path / "ad" / "adapter_config.json").read_text())
    (tmp_path / "ad" / "adapter_config.json").write_text(json.dumps({**cfg, "layers_pattern": "h"}))
    with pytest.raises(ValueError, match=r"counts its layers under another name \(layers_pattern='h'\)"):
        load_model(tiny, adapter=tmp_path / "ad")


@pytest.mark.parametrize("picks, modules", [
    (dict(target_modules=r".*\.(q_proj|v_proj)"), {f"model.layers.{i}.self_attn.{p}_proj" for i in (0, 1) for p in "qv"}),
    (dict(target_modules=r"model\.layers\.1\.(self_attn\.k_proj|mlp\.up_proj)"),
     {"model.layers.1.self_attn.k_proj", "model.layers.1.mlp.up_proj"}),
    (dict(target_modules=["self_attn.o_proj", "mlp.gate_proj"]),
     {f"model.layers.{i}.{p}" for i in (0, 1) for p in ("self_attn.o_proj", "mlp.gate_proj")}),
    (dict(target_modules=["q_proj", "down_proj"], exclude_modules=["model.layers.0.self_attn.q_proj",
                                                                    "model.layers.0.mlp.down_proj"]),
     {"model.layers.1.self_attn.q_proj", "model.layers.1.mlp.down_proj"}),
    (dict(target_modules=["q_proj", "v_proj", "lm_head"], exclude_modules=r".*\.v_proj"),
     {"model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj", "lm_head"}),
], ids=["regex", "regex-one-layer", "dotted-names", "exclude-list", "exclude-regex"])
def test_an_adapter_that_picks_its_layers_by_path_loads_as_in_peft(tiny, tmp_path, picks, modules):
    """PEFT picks layers by a regex over the full module name, by name endings with dots in them,
    and leaves out ``exclude_modules``; prefopt reads which layers the file adapts (PEFT wrote
    tensors for exactly the ones it matched): the same modules and logits as PEFT's, unmerged and
    merged, and saved back as names and layers that PEFT loads to the same logits."""
    peft = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    theirs = peft_lora(tiny, tmp_path / "ad", **picks)
    assert {n.removeprefix("base_model.model.") for n, m in theirs.named_modules() if hasattr(m, "lora_A")} == modules
    ours = load_model(tiny, adapter=tmp_path / "ad")
    assert {n for n, _ in lora_layers(ours)} == modules
    with torch.no_grad():
        want = theirs(IDS).logits
        assert (ours(IDS) - want).abs().max().item() < 1e-4
        assert (load_model(tiny, adapter=tmp_path / "ad", merge=True)(IDS) - want).abs().max().item() < 1e-4
    save_adapter(ours, tmp_path / "again")
    again = peft.PeftModel.from_pretrained(transformers.AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32),
                                           tmp_path / "again").eval()
    with torch.no_grad():
        assert (again(IDS).logits - want).abs().max().item() < 1e-4


def test_an_adapter_on_layers_that_are_not_names_in_layers_is_refused_by_name(tiny, tmp_path):
    """q_proj in both layers but v_proj in layer 1 only is no "names in layers" prefopt can adapt:
    the module left out is named, with the way round; a pick that matched nothing is said so."""
    peft_lora(tiny, tmp_path / "ad", target_modules=["q_proj", "v_proj"], exclude_modules=["layers.0.self_attn.v_proj"])
    with pytest.raises(ValueError, match=r"adapter_model.safetensors: this adapter leaves out model.layers.0.self_attn."
                                         r"v_proj, though it adapts v_proj in other layers.*merge it \(merge_and_unload"):
        load_model(tiny, adapter=tmp_path / "ad")
    cfg = json.loads((tmp_path / "ad" / "adapter_config.json").read_text())
    (tmp_path / "ad" / "adapter_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no adapter_model.safetensors"):
        load_model(tiny, adapter=tmp_path / "ad")
    from safetensors.torch import save_file

    save_file({"base_model.model.lm_head.weight": torch.zeros(2, 2)}, tmp_path / "ad" / "adapter_model.safetensors")
    (tmp_path / "ad" / "adapter_config.json").write_text(json.dumps({**cfg, "target_modules": ".*nothing"}))
    with pytest.raises(ValueError, match=r"no LoRA tensors \(lora_A\) in the file; its adapter_config.json picks "
                                         r"target_modules='.\*nothing'"):
        load_model(tiny, adapter=tmp_path / "ad")


def test_all_linear_is_every_linear_layer_but_the_head_as_in_peft(tiny, tmp_path):
    from prefopt.quant import PROJECTIONS

    model = apply_lora(load_model(tiny), r=4, alpha=8, target_modules=["all-linear"])
    assert sorted(model.lora_config.target_modules) == sorted(PROJECTIONS)  # saved expanded, as PEFT saves it
    assert {n.rsplit(".", 1)[-1] for n, _ in lora_layers(model)} == set(PROJECTIONS)
    with_head = apply_lora(load_model(tiny), r=4, alpha=8, target_modules=["lm_head", "all-linear"])
    assert {n for n, _ in lora_layers(with_head)} >= {"lm_head"} and len(list(lora_layers(with_head))) == 15


def test_a_target_name_that_matches_no_layer_is_refused_not_ignored(tiny, tmp_path):
    """A misspelt target among good ones ("qproj") would leave that layer untrained silently."""
    with pytest.raises(ValueError, match=r"no nn.Linear named \['qproj'\].*'q_proj'"):
        apply_lora(load_model(tiny), r=4, target_modules=["v_proj", "qproj"])
    # loading is lenient, as PEFT's is: the tensors, checked key by key, say which layers it holds
    model = apply_lora(load_model(tiny), r=4, alpha=8, target_modules=["v_proj"])
    save_adapter(model, tmp_path / "ad")
    cfg = json.loads((tmp_path / "ad" / "adapter_config.json").read_text())
    (tmp_path / "ad" / "adapter_config.json").write_text(json.dumps({**cfg, "target_modules": ["v_proj", "fc1"]}))
    loaded = load_model(tiny, adapter=tmp_path / "ad")
    assert {n.rsplit(".", 1)[-1] for n, _ in lora_layers(loaded)} == {"v_proj"}
    (tmp_path / "ad" / "adapter_config.json").write_text(json.dumps({**cfg, "target_modules": ["fc1"]}))
    with pytest.raises(ValueError, match="no nn.Linear named"):
        load_model(tiny, adapter=tmp_path / "ad")


class TestPeft:
    peft = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")

    @pytest.mark.parametrize("rslora", [False, True])
    def test_prefopt_adapter_loads_in_peft(self, tiny, tmp_path, rslora):
        model = apply_lora(load_model(tiny), r=4, alpha=16, dropout=0.0, rslora=rslora)
        assert [m.scaling for _, m in lora_layers(model)][0] == (8.0 if rslora else 4.0)  # 16 / sqrt(4), 16 / 4
        randomize_lora(model)
        save_adapter(model, tmp_path / "ad", base_model=str(tiny))
        assert json.loads((tmp_path / "ad" / "adapter_config.json").read_text())["use_rslora"] is rslora
        hf = self.transformers.AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32)
        peft_model = self.peft.PeftModel.from_pretrained(hf, tmp_path / "ad").eval()
        with torch.no_grad():
            assert (peft_model(IDS).logits - model(IDS)).abs().max().item() < 1e-4
            with peft_model.disable_adapter():
                base = peft_model(IDS).logits
            assert (model(IDS) - base).abs().max().item() > 1e-3  # the adapter really does something

    @pytest.mark.parametrize("rslora", [False, True])
    def test_peft_adapter_loads_in_prefopt(self, tiny, tmp_path, rslora):
        hf = self.transformers.AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32)
        cfg = self.peft.LoraConfig(r=4, lora_alpha=12, lora_dropout=0.0, init_lora_weights=False, use_rslora=rslora,
                                   target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "up_proj"])
        peft_model = self.peft.get_peft_model(hf, cfg).eval()
        peft_model.save_pretrained(tmp_path / "peft_ad")
        ours = load_model(tiny, adapter=tmp_path / "peft_ad")
        with torch.no_grad():
            want = peft_model(IDS).logits
            assert (ours(IDS) - want).abs().max().item() < 1e-4
            with disable_adapter(ours):
                assert (ours(IDS) - want).abs().max().item() > 1e-3  # the adapter really does something


def test_a_second_adapter_on_a_model_that_has_one_is_refused_until_the_first_is_merged(tiny, tmp_path):
    """Rerunning a notebook cell that applies LoRA (or loading an adapter onto an adapted model)
    once failed with "no nn.Linear named ['q_proj']" listing lora_A/lora_B as layers, or, with other
    names, adapted both sets while the config named the second only; now it says what to do."""
    model = apply_lora(load_model(tiny), r=4, alpha=8, target_modules=["q_proj"])
    randomize_lora(model)
    save_adapter(model, tmp_path / "ad")
    for again in (lambda: apply_lora(model, r=4, target_modules=["q_proj"]),
                  lambda: apply_lora(model, r=4, target_modules=["k_proj"]),
                  lambda: load_adapter(model, tmp_path / "ad")):
        with pytest.raises(ValueError, match=r"already has LoRA adapters \(2 layers, e.g. model.layers.0.self_attn."
                                             r"q_proj\); .*merge_and_unload\(model\) first"):
            again()
    assert model.lora_config.target_modules == ("q_proj",)  # nothing was changed
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="file: a file, where the adapter's folder would go"):
        save_adapter(model, tmp_path / "file")
    merge_and_unload(model)
    apply_lora(model, r=4, target_modules=["k_proj"])
    assert {n.rsplit(".", 1)[-1] for n, _ in lora_layers(model)} == {"k_proj"}


def test_adapter_on_an_eval_model_stays_in_eval_mode(tiny):
    model = apply_lora(load_model(tiny), r=4, alpha=8, dropout=0.5)
    assert not any(m.training for m in model.modules())
    randomize_lora(model)
    with torch.no_grad():
        assert torch.equal(model(IDS), model(IDS))  # dropout inactive


def test_a_dora_layer_scales_each_row_to_its_magnitude_and_merges_exactly():
    """DoRA (Liu et al. 2024): W' = m / ‖W + ΔW‖ · (W + ΔW), row by row, with ΔW = (α/r) B A."""
    base = torch.nn.Linear(6, 5)
    w0 = base.weight.detach().clone()
    layer = LoRALinear(base, r=2, alpha=4.0, dora=True)
    assert torch.allclose(layer.lora_magnitude, w0.norm(dim=1))  # as PEFT starts it: B = 0, so m = ‖W‖
    with torch.no_grad():
        layer.lora_A.weight.copy_(torch.randn(2, 6))
        layer.lora_B.weight.copy_(torch.randn(5, 2))
        layer.lora_magnitude.copy_(torch.rand(5) + 0.5)
    adapted = w0 + 2.0 * layer.lora_B.weight @ layer.lora_A.weight
    want = (layer.lora_magnitude / adapted.norm(dim=1))[:, None] * adapted
    x = torch.randn(3, 6)
    with torch.no_grad():
        assert torch.allclose(layer(x), x @ want.T + base.bias, atol=1e-5)
        assert torch.allclose(w0 + layer.delta_weight(), want, atol=1e-6)
        before = layer(x)
        layer.merge()
        assert torch.allclose(layer.weight, want, atol=1e-6) and torch.allclose(layer(x), before, atol=1e-5)
        layer.unmerge()
        assert torch.allclose(layer.weight, w0, atol=1e-5)
        layer(x)  # the row norms are kept between calls, and computed again once W, A or B change
        for t in (layer.lora_B.weight, layer.lora_A.weight, layer.weight):
            t.mul_(1.5)
            adapted = layer.weight + 2.0 * layer.lora_B.weight @ layer.lora_A.weight
            want = (layer.lora_magnitude / adapted.norm(dim=1))[:, None] * adapted
            assert torch.allclose(layer(x), x @ want.T + base.bias, atol=1e-5)


@pytest.mark.parametrize("rslora", [False, True])
def test_a_peft_dora_adapter_loads_merges_and_exports_in_prefopt(tiny, tmp_path, rslora):
    peft = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32)
    cfg = peft.LoraConfig(r=4, lora_alpha=12, lora_dropout=0.0, init_lora_weights=False, use_dora=True,
                          use_rslora=rslora, target_modules=["q_proj", "v_proj", "up_proj"])
    peft_model = peft.get_peft_model(hf, cfg).eval()
    with torch.no_grad():  # magnitudes away from their start (‖W + ΔW‖), so that DoRA really differs from LoRA
        for name, p in peft_model.named_parameters():
            if "lora_magnitude_vector" in name:
                p.mul_(torch.rand(p.shape, generator=torch.Generator().manual_seed(len(name))) + 0.5)
    peft_model.save_pretrained(tmp_path / "dora")
    ours = load_model(tiny, adapter=tmp_path / "dora")
    assert all(m.lora_magnitude is not None for _, m in lora_layers(ours))
    with torch.no_grad():
        want = peft_model(IDS).logits
        assert (ours(IDS) - want).abs().max().item() < 1e-4
        as_lora = load_model(tiny)  # the same A and B read as plain LoRA: another model
        apply_lora(as_lora, r=4, alpha=12, target_modules=["q_proj", "v_proj", "up_proj"], rslora=rslora)
        as_lora.load_state_dict({k: v for k, v in ours.state_dict().items() if "magnitude" not in k}, strict=False)
        assert (as_lora(IDS) - want).abs().max().item() > 1e-3
        with disable_adapter(ours):
            assert (ours(IDS) - want).abs().max().item() > 1e-3
        merged = load_model(tiny, adapter=tmp_path / "dora", merge=True)
        assert (merged(IDS) - want).abs().max().item() < 1e-4
        save_merged(ours, tmp_path / "merged")  # what prefopt merge and export-gguf fold in
        assert (load_model(tmp_path / "merged")(IDS) - want).abs().max().item() < 1e-4
    save_adapter(ours, tmp_path / "again")  # written back in PEFT's layout, PEFT reads it as it was
    again = peft.PeftModel.from_pretrained(transformers.AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32),
                                           tmp_path / "again").eval()
    with torch.no_grad():
        assert (again(IDS).logits - want).abs().max().item() < 1e-4


def test_dora_trains_with_the_gradients_peft_gives(tiny, tmp_path):
    """DoRA training: A, B and each row's magnitude get PEFT's gradients (the norm a constant in
    both), in training mode, with the same adapter in both models."""
    peft = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32)
    cfg = peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, init_lora_weights=False, use_dora=True,
                          target_modules=["q_proj", "v_proj", "down_proj"])
    theirs = peft.get_peft_model(hf, cfg).train()
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            if "lora_magnitude_vector" in name:
                p.mul_(torch.rand(p.shape, generator=torch.Generator().manual_seed(len(name))) + 0.5)
    theirs.save_pretrained(tmp_path / "dora")
    ours = load_model(tiny, adapter=tmp_path / "dora").train()
    assert {n for n, p in ours.named_parameters() if p.requires_grad} == set(lora_state_dict(ours))
    weights = torch.randn(2, 11, 400, generator=torch.Generator().manual_seed(3))
    (theirs(IDS).logits * weights).sum().backward()
    (ours(IDS) * weights).sum().backward()
    peft_grads = {n.removeprefix("base_model.model.").replace(".default", "").replace("_vector.weight", ""): p.grad
                  for n, p in theirs.named_parameters() if p.requires_grad}
    our_grads = {n: p.grad for n, p in ours.named_parameters() if p.requires_grad}
    assert set(our_grads) == set(peft_grads) and any(n.endswith(".lora_magnitude") for n in our_grads)
    for name, grad in our_grads.items():
        assert grad.abs().max() > 0, name
        assert (grad - peft_grads[name]).abs().max() <= 1e-5 * peft_grads[name].abs().max(), name  # fp32 sums


@pytest.mark.parametrize("dora", [False, True])
def test_an_adapter_on_a_bf16_base_is_kept_in_float32_and_its_small_steps_count(tiny, tmp_path, dora):
    """Over a 16-bit base the adapter's factors are float32, as PEFT's autocast_adapter_dtype keeps
    them: in bfloat16, AdamW's steps at lr 1e-5 were rounded away (97% of A's entries unchanged
    after 3 steps). The forward still computes in the base's dtype, and the file loads back."""
    fp32 = apply_lora(load_model(tiny), r=4, alpha=8, dropout=0.0, dora=dora)
    randomize_lora(fp32)
    save_adapter(fp32, tmp_path / "a", base_model=str(tiny))
    model = load_model(tiny, dtype=torch.bfloat16, adapter=tmp_path / "a")
    adapter = lora_state_dict(model)
    assert adapter and {t.dtype for t in adapter.values()} == {torch.float32}
    assert all(torch.equal(t, lora_state_dict(fp32)[k]) for k, t in adapter.items())  # loaded without rounding
    assert {p.dtype for n, p in model.named_parameters() if "lora" not in n} == {torch.bfloat16}
    with torch.no_grad():
        got, want = model(IDS), fp32(IDS)
    assert got.dtype == torch.bfloat16 and (got.float() - want).abs().max() < 0.05 * want.abs().max()

    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.0)
    before = {k: t.clone() for k, t in lora_state_dict(model).items()}
    for _ in range(3):
        logits = model(IDS)
        torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), IDS[:, 1:].flatten()).backward()
        assert all(p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all() for p in params)
        opt.step()
        opt.zero_grad()
    moved = [(t != before[k]).float().mean().item() for k, t in lora_state_dict(model).items() if "lora_A" in k]
    assert min(moved) > 0.9
    save_adapter(model, tmp_path / "b", base_model=str(tiny))
    back = load_model(tiny, adapter=tmp_path / "b")
    assert all(torch.equal(t, lora_state_dict(model)[k]) for k, t in lora_state_dict(back).items())
