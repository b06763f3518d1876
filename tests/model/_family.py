"""Checks every model family's tests make against transformers: a variant of a model with its
config changed, greedy generation with the cache, packed sequences, and a saved folder read back."""
import json

import torch

from prefopt import generate, save_model
from prefopt.model.config import ModelConfig

PROMPTS = ([5, 17, 33, 90, 4, 61, 7], [8, 9])
IDS = torch.randint(3, 400, (2, 13), generator=torch.Generator().manual_seed(0))  # a batch of two 13-token texts


def tiny_family(tmp_path_factory, arch: str):
    """``(hf, ours, folder)``: a tiny random transformers model of ``arch``, saved, and prefopt's load of it."""
    from prefopt import load_model
    from tests._tiny import build_hf_model

    d = tmp_path_factory.mktemp(arch)
    hf = build_hf_model(d, arch=arch, tokenizer=False)
    return hf, load_model(d), d


def variant(ours, **changes):
    """``ours`` rebuilt from its config.json with ``changes``, the same weights."""
    other = ours.__class__(ModelConfig.from_dict({**ours.config.raw, **changes}))
    other.load_state_dict(ours.state_dict())
    return other.eval()


def assert_greedy_generation_matches(hf, ours, max_new_tokens: int = 12) -> None:
    """Greedy decoding with the KV cache gives transformers' tokens, alone and left-padded in a batch."""
    for p in PROMPTS:
        want = hf.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                           max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0)
        assert generate(ours, [p], max_new_tokens=max_new_tokens) == [want[0, len(p):].tolist()]
    together = generate(ours, list(PROMPTS), max_new_tokens=max_new_tokens)
    assert together == [generate(ours, [p], max_new_tokens=max_new_tokens)[0] for p in PROMPTS]


def assert_packed_equals_alone(ours, ids: torch.Tensor) -> None:
    """Two sequences packed in one row (9 and 6 tokens) give what each gives alone."""
    a, b = ids[0, :9], ids[1, :6]
    with torch.no_grad():
        packed = ours(torch.cat([a, b])[None], packed=[9, 6])
        assert (packed[0, :9] - ours(a[None])[0]).abs().max().item() < 1e-5
        assert (packed[0, 9:] - ours(b[None])[0]).abs().max().item() < 1e-5


def assert_saved_loads_in_transformers(hf, ours, out, ids: torch.Tensor) -> dict:
    """``ours`` saved to ``out`` loads in transformers with ``hf``'s logits; returns its config.json."""
    import transformers

    save_model(ours, out)
    back = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        # the same weights in transformers both times, yet not bit for bit: its Qwen2-MoE built fresh and loaded
        # from the folder differ by 1.7e-6 here (transformers against itself); a misread weight is far above
        assert (back(ids).logits - hf(ids).logits).abs().max().item() < 1e-5
    return json.loads((out / "config.json").read_text())


def sft_summary(tmp_path, arch: str, **config) -> dict:
    """SFT (LoRA r8, 32 steps) of a tiny random ``arch`` on the training tests' task, its summary;
    ``config``: TrainConfig settings over those (``quantize="nf4"``, ``lr=3e-2``)."""
    from prefopt.train import TrainConfig
    from prefopt.train.run import run_sft
    from tests._tiny import build_hf_model
    from tests.train._fixtures import write_task

    model_dir = tmp_path / "model"
    build_hf_model(model_dir, arch=arch, initializer_range=0.1)
    _, data = write_task(tmp_path)
    settings = dict(batch_size=4, max_steps=32, lr=3e-3, lora_r=8, lora_alpha=16, eval_fraction=0.25, warmup_steps=2,
                    progress=False)
    return run_sft(TrainConfig(model=str(model_dir), data=str(data), output_dir=str(tmp_path / "run"),
                               **{**settings, **config}))
