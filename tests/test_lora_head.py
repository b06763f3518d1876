"""An adapter on the lm_head (``--lora-targets ... lm_head``, untied models): applied and trained
by every path, the logits' and the fused kernels' (``Transformer.head``), as PEFT applies it."""
import pytest
import torch
import torch.nn.functional as F

from prefopt import apply_lora, load_model, save_adapter
from prefopt.kernels import sequence_logprobs
from prefopt.lora import TIED_HEAD, LoRALinear, QLoRALinear, disable_adapter, lora_layers
from prefopt.quant import quantize_model, quantized_layers
from tests._tiny import build_hf_model, peft_lora

IDS = torch.randint(0, 400, (2, 11), generator=torch.Generator().manual_seed(0))
TARGETS = ["q_proj", "v_proj", "lm_head"]


@pytest.fixture
def untied(tmp_path):
    build_hf_model(tmp_path / "base", tie_word_embeddings=False)
    return tmp_path / "base"


def _randomize(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, m in lora_layers(model):
            m.lora_B.weight.copy_(torch.randn(m.lora_B.weight.shape, generator=g) * 0.1)
            if m.lora_magnitude is not None:
                m.lora_magnitude.mul_(torch.rand(m.lora_magnitude.shape, generator=g) + 0.5)


def _head_logprobs(model, ids):
    """Per-token log-probs of ``ids[:, 1:]`` through ``Transformer.head`` and the fused kernel."""
    hidden = model(ids, return_hidden=True)[:, :-1]
    return sequence_logprobs(*model.head(hidden), ids[:, 1:])


@pytest.mark.parametrize("dora", [False, True])
def test_a_peft_adapter_on_the_lm_head_gives_peft_logits_on_every_path(untied, tmp_path, dora):
    theirs = peft_lora(untied, tmp_path / "adapter", use_dora=dora, target_modules=TARGETS)
    peft = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    ours = load_model(untied, adapter=tmp_path / "adapter")
    assert isinstance(ours.lm_head, LoRALinear)
    with torch.no_grad():
        want = theirs(IDS).logits
        assert (ours(IDS) - want).abs().max().item() < 1e-4
        with theirs.disable_adapter():  # the head's adapter alone moves the logits: it is not a no-op here
            base = theirs(IDS).logits
        assert (want - base).abs().max().item() > 1e-2
        want_lp = torch.log_softmax(want[:, :-1].double(), -1).gather(-1, IDS[:, 1:, None])[..., 0]
        assert (_head_logprobs(ours, IDS).double() - want_lp).abs().max().item() < 1e-4
        with disable_adapter(ours):  # the reference: the head's adapter is off too
            base_lp = torch.log_softmax(base[:, :-1].double(), -1).gather(-1, IDS[:, 1:, None])[..., 0]
            assert (_head_logprobs(ours, IDS).double() - base_lp).abs().max().item() < 1e-4
        merged = load_model(untied, adapter=tmp_path / "adapter", merge=True)
        assert (merged(IDS) - want).abs().max().item() < 1e-4
        assert (_head_logprobs(merged, IDS).double() - want_lp).abs().max().item() < 1e-4
    save_adapter(ours, tmp_path / "again")  # written back, PEFT reads the head's adapter as it was
    again = peft.PeftModel.from_pretrained(transformers.AutoModelForCausalLM.from_pretrained(untied, dtype=torch.float32),
                                           tmp_path / "again").eval()
    with torch.no_grad():
        assert (again(IDS).logits - want).abs().max().item() < 1e-4


@pytest.mark.parametrize("dora", [False, True])
@pytest.mark.parametrize("p", [0.0, 0.3])
def test_fused_operands_give_the_layers_output_and_gradients_with_dropout(p, dora):
    """``x' w'ᵀ`` equals PEFT's formula for the layer in training mode, with the same dropout mask,
    and A, B and the magnitudes get its gradients."""
    torch.manual_seed(0)
    base = torch.nn.Linear(24, 50, bias=False).double()
    layer = LoRALinear(base, r=4, alpha=8, dropout=p, dora=dora).double().train()
    with torch.no_grad():
        layer.lora_B.weight.normal_(0, 0.3)
    params = [layer.lora_A.weight, layer.lora_B.weight] + ([layer.lora_magnitude] if dora else [])
    for t in params:
        t.requires_grad_(True)
    x = torch.randn(3, 7, 24, dtype=torch.double)
    g = torch.randn(3, 7, 50, dtype=torch.double)

    torch.manual_seed(5)
    xo, wo = layer.fused_operands(x)
    (F.linear(xo, wo) * g).sum().backward()
    ours = [t.grad.clone() for t in params]
    for t in params:
        t.grad = None

    torch.manual_seed(5)  # the same mask: the first draw of the generator in both
    xd = F.dropout(x, p, True) if p else x
    lora = F.linear(F.linear(xd, layer.lora_A.weight), layer.lora_B.weight) * layer.scaling
    if dora:
        c = layer.lora_magnitude / layer._dora_norm()
        want = F.linear(x, layer.weight) + (c - 1) * F.linear(xd, layer.weight) + c * lora
    else:
        want = F.linear(x, layer.weight) + lora
    (want * g).sum().backward()
    assert torch.allclose(F.linear(xo, wo), want, atol=1e-12)
    for mine, theirs in zip(ours, [t.grad for t in params]):
        assert theirs.abs().max() > 0 and torch.allclose(mine, theirs, atol=1e-12)
    if not p:  # and without dropout, in eval mode, what forward gives
        assert torch.allclose(F.linear(*layer.eval().fused_operands(x)), layer(x), atol=1e-12)


def test_sft_and_dpo_train_the_lm_head_adapter(tmp_path):
    """Both trainers' fused losses reach the head's adapter: its B (zero at the start) moves in
    every entry, and the loss falls (in SFT with the head's adapter the only one)."""
    from prefopt.train import DPOConfig, TrainConfig
    from prefopt.train.metrics import read_metrics
    from prefopt.train.run import run_dpo, run_sft
    from tests.train._fixtures import write_pairs, write_task

    model_dir, data = write_task(tmp_path)
    assert not load_model(model_dir).config.tie_word_embeddings
    common = dict(model=str(model_dir), batch_size=4, max_steps=16, lr=1e-2, lora_r=4, lora_alpha=8,
                  lora_dropout=0.1, lora_targets=["lm_head"], warmup_steps=1, eval_fraction=0.0, progress=False)
    run_sft(TrainConfig(data=str(data), output_dir=str(tmp_path / "sft"), **common))
    run_dpo(DPOConfig(data=str(write_pairs(tmp_path / "pairs.jsonl")), output_dir=str(tmp_path / "dpo"),
                      **{**common, "lora_targets": TARGETS, "lr": 5e-3, "max_steps": 24}))
    for run, fall in (("sft", 0.8), ("dpo", 1.0)):
        losses = [m["loss"] for m in read_metrics(tmp_path / run) if "loss" in m]
        assert sum(losses[-3:]) < fall * sum(losses[:3]), (run, losses)
        trained = load_model(model_dir, adapter=tmp_path / run / "final")
        assert trained.lm_head.lora_B.weight.abs().min() > 0, run
    accuracy = [m["rewards/accuracies"] for m in read_metrics(tmp_path / "dpo") if "loss" in m]
    assert sum(accuracy[-3:]) / 3 > 0.9 > sum(accuracy[:3]) / 3, accuracy


def test_a_4bit_lm_head_takes_its_adapter_on_every_path(untied):
    """--quantize keeps the head in full precision (quantized_layers); one quantized by hand
    (quantize_model names it) still takes an adapter on every path."""
    assert "lm_head" not in quantized_layers(TARGETS) and "q_proj" in quantized_layers(TARGETS)
    as_run = apply_lora(quantize_model(load_model(untied), quantized_layers(TARGETS)), r=4, alpha=8,
                        target_modules=TARGETS)
    assert type(as_run.lm_head) is LoRALinear and type(as_run.model.layers[0].self_attn.q_proj) is QLoRALinear
    model = load_model(untied)
    quantize_model(model, [*quantized_layers(TARGETS), "lm_head"])
    apply_lora(model, r=4, alpha=8, dropout=0.0, target_modules=TARGETS)
    _randomize(model)
    with torch.no_grad():
        logits = model(IDS)
        want = torch.log_softmax(logits[:, :-1].double(), -1).gather(-1, IDS[:, 1:, None])[..., 0]
        assert (_head_logprobs(model, IDS).double() - want).abs().max().item() < 1e-5
        with disable_adapter(model):
            assert (model(IDS) - logits).abs().max().item() > 1e-2


def test_an_adapter_on_a_tied_head_is_refused_with_the_reason(tmp_path):
    build_hf_model(tmp_path / "tied", tie_word_embeddings=True)
    model = load_model(tmp_path / "tied")
    with pytest.raises(ValueError, match="tie_word_embeddings") as e:
        apply_lora(model, target_modules=TARGETS)
    assert str(e.value) == TIED_HEAD
    untied_dir = tmp_path / "untied"
    build_hf_model(untied_dir, tie_word_embeddings=False)
    save_adapter(apply_lora(load_model(untied_dir), r=4, alpha=8, target_modules=TARGETS), tmp_path / "adapter")
    with pytest.raises(ValueError, match="tie_word_embeddings"):  # an adapter file with one: the same reason
        load_model(tmp_path / "tied", adapter=tmp_path / "adapter")


def test_a_peft_copy_of_the_head_that_differs_from_the_models_is_refused(untied, tmp_path):
    """PEFT saves the base lm_head beside an adapter on it; a copy equal to the model's loads (above),
    one trained or resized with the adapter is refused by name, not dropped."""
    from safetensors.torch import load_file, save_file

    save_adapter(apply_lora(load_model(untied), r=4, alpha=8, target_modules=TARGETS), tmp_path / "adapter")
    path = tmp_path / "adapter" / "adapter_model.safetensors"
    tensors = load_file(path)
    key = "base_model.model.lm_head.base_layer.weight"
    tensors[key] = load_model(untied).lm_head.weight.detach().clone()
    save_file(tensors, path)
    assert isinstance(load_model(untied, adapter=tmp_path / "adapter").lm_head, LoRALinear)  # the same: fine
    tensors[key][3, 5] += 1e-3
    save_file(tensors, path)
    with pytest.raises(ValueError, match=f"{path}: '{key}' is a copy of the model's lm_head weights"):
        load_model(untied, adapter=tmp_path / "adapter")
