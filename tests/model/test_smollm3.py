"""SmolLM3 (Hugging Face's 3B with a thinking switch) against transformers' ``SmolLM3ForCausalLM``:
a Llama whose every fourth layer attends without RoPE (NoPE). Its layers without RoPE, both
ways of giving them, generation with the cache, packing, saving and training. Logits, padding
and hidden states of every family are in test_parity.py (``smollm3`` there)."""
import json

import pytest
import torch

from prefopt import generate, load_model
from prefopt.model.config import ModelConfig, UnsupportedModelError
from tests._tiny import build_hf_model

transformers = pytest.importorskip("transformers")
IDS = torch.randint(3, 400, (2, 13), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def smollm3(tmp_path_factory):
    d = tmp_path_factory.mktemp("smollm3")
    hf = build_hf_model(d, arch="smollm3", tokenizer=False)
    return hf, load_model(d), d


def _variant(ours, **changes):
    """``ours`` rebuilt from its config.json with ``changes``, the same weights."""
    other = ours.__class__(ModelConfig.from_dict({**ours.config.raw, **changes}))
    other.load_state_dict(ours.state_dict())
    return other.eval()


def test_the_layers_without_rope_are_read_and_matter(smollm3):
    hf, ours, _ = smollm3
    assert ours.config.no_rope_layers == hf.config.no_rope_layers == [1, 1, 1, 0]
    assert [ours.config.uses_rope(i) for i in range(4)] == [True, True, True, False]
    raw = {k: v for k, v in ours.config.raw.items() if k != "no_rope_layers"}
    assert ModelConfig.from_dict(raw).no_rope_layers == [1, 1, 1, 0]  # from no_rope_layer_interval, as transformers
    assert ModelConfig.from_dict({**raw, "no_rope_layer_interval": 2}).no_rope_layers == [1, 0, 1, 0]
    with torch.no_grad():
        want = hf(IDS).logits
        assert (ours(IDS) - want).abs().max().item() < 1e-4
        assert (_variant(ours, no_rope_layers=[1, 1, 1, 1])(IDS) - want).abs().max().item() > 1e-3  # RoPE everywhere


@pytest.mark.parametrize("changes, error", [
    ({"no_rope_layers": [1, 1, 0]}, r"no_rope_layers \[1, 1, 0\]: expected 4 of 0 / 1"),
    ({"use_sliding_window": True, "sliding_window": 8}, "SmolLM3 with use_sliding_window is not supported"),
])
def test_what_prefopt_does_not_run_is_refused_by_name(smollm3, changes, error):
    _, ours, _ = smollm3
    with pytest.raises(UnsupportedModelError, match=error):
        ModelConfig.from_dict({**ours.config.raw, **changes})


def test_greedy_generation_with_the_cache_matches_transformers(smollm3):
    hf, ours, _ = smollm3
    for p in ([5, 17, 33, 90, 4, 61, 7], [8, 9]):
        want = hf.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                           max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0)
        assert generate(ours, [p], max_new_tokens=12) == [want[0, len(p):].tolist()]
    together = generate(ours, [[5, 17, 33, 90, 4, 61, 7], [8, 9]], max_new_tokens=12)  # left-padded batch
    assert together == [generate(ours, [p], max_new_tokens=12)[0] for p in ([5, 17, 33, 90, 4, 61, 7], [8, 9])]


def test_packed_sequences_equal_each_run_alone(smollm3):
    _, ours, _ = smollm3
    a, b = IDS[0, :9], IDS[1, :6]
    with torch.no_grad():
        packed = ours(torch.cat([a, b])[None], packed=[9, 6])
        assert (packed[0, :9] - ours(a[None])[0]).abs().max().item() < 1e-5
        assert (packed[0, 9:] - ours(b[None])[0]).abs().max().item() < 1e-5


def test_a_saved_smollm3_loads_in_transformers(smollm3, tmp_path):
    from prefopt import save_model

    hf, ours, _ = smollm3
    save_model(ours, tmp_path / "saved")
    cfg = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert cfg["architectures"] == ["SmolLM3ForCausalLM"] and cfg["no_rope_layers"] == [1, 1, 1, 0]
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "saved", dtype=torch.float32).eval()
    with torch.no_grad():
        assert (back(IDS).logits - hf(IDS).logits).abs().max().item() < 1e-6


def test_sft_trains_a_smollm3(tmp_path):
    from prefopt.train import TrainConfig
    from prefopt.train.run import run_sft
    from tests.train._fixtures import write_task

    model_dir = tmp_path / "model"
    build_hf_model(model_dir, arch="smollm3", initializer_range=0.1)
    _, data = write_task(tmp_path)
    summary = run_sft(TrainConfig(model=str(model_dir), data=str(data), output_dir=str(tmp_path / "run"),
                                  batch_size=4, max_steps=32, lr=3e-3, lora_r=8, lora_alpha=16, eval_fraction=0.25,
                                  warmup_steps=2, progress=False))
    assert summary["eval_after"]["eval_loss"] < 0.5 * summary["eval_before"]["eval_loss"]
