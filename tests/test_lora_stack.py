"""DPO after SFT saved as one adapter on the base model: equal to SFT merged, then the DPO adapter,
in prefopt and in PEFT."""
import json
import shutil

import pytest
import torch

from prefopt import apply_lora, load_model, save_adapter
from prefopt.lora import lora_state_dict, merge_and_unload
from prefopt.lora_files import read_adapter, read_adapter_config
from prefopt.lora_stack import STACK_FILE, is_stacked, stack_adapters
from tests._tiny import build_hf_model, randomize_lora

IDS = torch.randint(0, 400, (2, 11), generator=torch.Generator().manual_seed(0))


@pytest.fixture
def stacked(tmp_path):
    """Base; an SFT adapter (r 4, attention only, rsLoRA: scaled by alpha / sqrt(r)); a plain DPO
    adapter (r 8, other targets) on SFT merged."""
    base = tmp_path / "base"
    build_hf_model(base)
    sft = apply_lora(load_model(base), r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj", "o_proj"],
                     rslora=True)
    randomize_lora(sft, 1)
    save_adapter(sft, tmp_path / "sft", base_model=str(base))
    on_sft = load_model(base, adapter=tmp_path / "sft", merge=True)  # as run_dpo does, or a notebook
    dpo = apply_lora(on_sft, r=8, alpha=32, dropout=0.1, target_modules=["v_proj", "o_proj", "up_proj", "down_proj"])
    randomize_lora(dpo, 2)
    save_adapter(dpo, tmp_path / "both", base_model=str(base))  # the SFT update goes in with it
    save_adapter(dpo, tmp_path / "dpo_alone", base_model=str(base), stack=False)  # the layout of older runs
    with torch.no_grad():
        want = dpo.eval()(IDS)
        only_sft = load_model(base, adapter=tmp_path / "sft")(IDS)
    return base, tmp_path / "both", want, only_sft


def test_the_stacked_adapter_on_the_base_model_equals_sft_merged_then_dpo(stacked):
    base, both, want, only_sft = stacked
    cfg = read_adapter_config(both)
    assert cfg.r == 12 and cfg.alpha == 12.0  # ranks side by side, scaling 1
    assert set(cfg.target_modules) == {"q_proj", "v_proj", "o_proj", "up_proj", "down_proj"}
    assert is_stacked(both) and json.loads((both / STACK_FILE).read_text())["ranks"] == [4, 8]
    assert json.loads((both / STACK_FILE).read_text())["adapters"][0] == str((both.parent / "sft").resolve())
    assert not is_stacked(both.parent / "dpo_alone") and read_adapter_config(both.parent / "dpo_alone").r == 8
    with torch.no_grad():
        got = load_model(base, adapter=both)(IDS)
        merged = load_model(base, adapter=both, merge=True)(IDS)
    assert (got - want).abs().max().item() < 1e-4 and (merged - want).abs().max().item() < 1e-4
    assert (only_sft - want).abs().max().item() > 1e-3  # the DPO part matters, so the check can fail


def test_the_stacked_adapter_loads_in_peft(stacked):
    peft = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    base, both, want, _ = stacked
    hf = transformers.AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model = peft.PeftModel.from_pretrained(hf, both).eval()
    with torch.no_grad():
        assert (model(IDS).logits - want).abs().max().item() < 1e-4


def test_adapters_that_disagree_on_a_shape_are_refused(stacked, tmp_path):
    base, both, _, _ = stacked
    other = tmp_path / "other"
    build_hf_model(other, hidden_size=48)
    dpo = apply_lora(load_model(other), r=2, alpha=4, target_modules=["q_proj"])
    with pytest.raises(ValueError, match="disagree on its shape"):
        stack_adapters(read_adapter(both), (dpo.lora_config, lora_state_dict(dpo)))


def test_an_adapter_merged_in_memory_is_saved_with_the_next_one_all_three_stacked(tmp_path):
    """A notebook's SFT → merge → DPO → merge → another stage: each save holds every update before it."""
    base = tmp_path / "base"
    build_hf_model(base)
    model = load_model(base)
    want_stages = []
    for seed, (r, targets) in enumerate([(2, ["q_proj"]), (4, ["v_proj", "up_proj"]), (3, ["q_proj", "down_proj"])]):
        if seed:
            merge_and_unload(model)
        apply_lora(model, r=r, alpha=2 * r, dropout=0.0, target_modules=targets)
        randomize_lora(model, seed + 5)
        with torch.no_grad():
            want_stages.append(model.eval()(IDS))
    save_adapter(model, tmp_path / "all", base_model=str(base))
    note = json.loads((tmp_path / "all" / STACK_FILE).read_text())
    assert note["ranks"] == [2, 4, 3] and note["adapters"][:2] == ["an adapter merged in memory"] * 2
    with torch.no_grad():
        got = load_model(base, adapter=tmp_path / "all")(IDS)
    assert (got - want_stages[-1]).abs().max().item() < 1e-4
    assert (want_stages[-1] - want_stages[-2]).abs().max().item() > 1e-3  # the last stage matters


@pytest.mark.parametrize("layout", ["stacked", "bare"])
def test_compare_loads_the_sft_dpo_stage_from_either_layout(stacked, tmp_path, layout):
    """New compare runs save the stacked adapter; runs from before it hold a bare DPO adapter that
    goes on the merged SFT model. Both load as the same SFT+DPO model."""
    from prefopt.evaluate.compare import CompareConfig, _load_stage_model

    base, both, want, _ = stacked
    run = tmp_path / "run"
    shutil.copytree(tmp_path / "sft", run / "sft" / "train" / "final")
    shutil.copytree(both if layout == "stacked" else tmp_path / "dpo_alone", run / "dpo" / "train" / "final")
    assert is_stacked(run / "dpo" / "train" / "final") == (layout == "stacked")
    model = _load_stage_model(CompareConfig(task="portal", model=str(base), output=str(run)), run, "dpo")
    with torch.no_grad():
        assert (model(IDS) - want).abs().max().item() < 1e-4


def test_a_bare_dpo_adapter_from_an_older_run_is_refused_until_stacked(stacked, tmp_path, capsys):
    """Loading it alone would drop the SFT part; ``prefopt stack-adapters`` makes the stacked one."""
    from prefopt.cli import main

    base, _, want, _ = stacked
    run = tmp_path / "dpo_run"
    shutil.copytree(tmp_path / "dpo_alone", run / "final")
    (run / "train_config.json").write_text(json.dumps({"sft_adapter": str(tmp_path / "sft"), "lora": True}))
    with pytest.raises(ValueError, match="trained on top of the SFT adapter .*prefopt stack-adapters"):
        load_model(base, adapter=run / "final")
    assert main(["stack-adapters", str(tmp_path / "sft"), str(run / "final"), str(tmp_path / "fixed")]) == 0
    assert "wrote" in capsys.readouterr().out
    with torch.no_grad():
        assert (load_model(base, adapter=tmp_path / "fixed")(IDS) - want).abs().max().item() < 1e-4
    assert read_adapter_config(tmp_path / "fixed").r == 12


def _randomize_magnitudes(model, seed: int) -> None:
    """DoRA magnitudes away from their start (the row norms), so that DoRA really differs from LoRA."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".lora_magnitude"):
                p.mul_(torch.rand(p.shape, generator=g) + 0.5)


@pytest.mark.parametrize("kinds", [("lora", "dora"), ("dora", "lora"), ("dora", "dora"), ("dora", "lora", "dora")])
def test_stages_with_dora_stack_into_one_dora_adapter_that_prefopt_and_peft_read(tmp_path, kinds):
    """Each stage trained on the model with the ones before merged in, some DoRA: saved as one DoRA
    adapter on the base model (row scales carried into the later updates, magnitudes the final row
    norms) that gives the last stage's logits, unmerged and merged, in prefopt and in PEFT. The
    stages adapt overlapping layers, so a layer may be adapted by a LoRA stage alone."""
    base = tmp_path / "base"
    build_hf_model(base)
    model = load_model(base)
    stages = [(2, ["q_proj", "v_proj"]), (4, ["v_proj", "up_proj"]), (3, ["q_proj", "down_proj"])]
    want = []
    for i, kind in enumerate(kinds):
        if i:
            merge_and_unload(model)
        r, targets = stages[i]
        apply_lora(model, r=r, alpha=2 * r, dropout=0.0, target_modules=targets, dora=kind == "dora", rslora=i == 1)
        randomize_lora(model, i + 5)
        _randomize_magnitudes(model, i + 7)
        with torch.no_grad():
            want.append(model.eval()(IDS))
    save_adapter(model, tmp_path / "all", base_model=str(base))
    cfg = read_adapter_config(tmp_path / "all")
    assert cfg.dora and cfg.r == sum(stages[i][0] for i in range(len(kinds))) and cfg.alpha == cfg.r
    assert "one DoRA adapter" in json.loads((tmp_path / "all" / STACK_FILE).read_text())["note"]
    with torch.no_grad():
        got = load_model(base, adapter=tmp_path / "all")(IDS)
        merged = load_model(base, adapter=tmp_path / "all", merge=True)(IDS)
    assert (got - want[-1]).abs().max().item() < 1e-4 and (merged - want[-1]).abs().max().item() < 1e-4
    assert (want[-1] - want[-2]).abs().max().item() > 1e-3  # the last stage matters, so the check can fail
    peft = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    with torch.no_grad():
        assert (peft.PeftModel.from_pretrained(hf, tmp_path / "all").eval()(IDS).logits - want[-1]).abs().max() < 1e-4


def test_stacking_dora_adapters_from_files_alone_is_refused_with_the_way_round(tmp_path):
    """A DoRA stack's magnitudes are norms of the model's weights, which two adapter files lack."""
    from prefopt.cli import main

    base = tmp_path / "base"
    build_hf_model(base)
    first = apply_lora(load_model(base), r=2, alpha=4, target_modules=["q_proj"], dora=True)
    save_adapter(first, tmp_path / "dora")
    with pytest.raises(ValueError, match=r"needs the model.s weights .*\(prefopt merge\)"):
        stack_adapters(read_adapter(tmp_path / "dora"), read_adapter(tmp_path / "dora"))
    assert main(["stack-adapters", str(tmp_path / "dora"), str(tmp_path / "dora"), str(tmp_path / "out")]) != 0
    assert not (tmp_path / "out").exists()
