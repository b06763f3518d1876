"""The memory estimate of answering prompts (``prefopt.train.answer_estimate``: compare's
``--estimate-memory`` for its evaluations) against the allocations of a real ``generate`` on a
CPU, PyTorch's profiler summing every allocation and release in time order."""
import random
import warnings

import pytest
import torch

from prefopt.data.preference import PairExample
from prefopt.data.sft import TokenizedExample
from prefopt.fileio import size_text
from prefopt.model.generate import generate
from prefopt.pretrained import load_model
from prefopt.quant import quantize_model, quantized_layers
from prefopt.train import DPOConfig, DPOTrainer, TrainConfig
from prefopt.train.answer_estimate import estimate_answers
from prefopt.train.memory_estimate import allocated_peak, module_bytes
from prefopt.train.run import adapt, prepare_model
from tests._tiny import build_hf_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("answers") / "model"
    build_hf_model(d, hidden_size=128, intermediate_size=352, num_hidden_layers=3)
    return d


def _answered(model, prompts: int, prompt_tokens: int, new_tokens: int, ended: bool, shared: int = 0) -> int:
    """The bytes a real ``generate`` of ``prompts`` distinct prompts held at once beyond the
    model's weights: every answer to its last token, or (``ended``) half the rows ending at their
    first token (the others' keys and values then copied out of the cache). ``shared``: the
    first tokens every prompt has."""
    rng = random.Random(0)
    start = [rng.randrange(3, 400) for _ in range(shared)]
    batch = [start + [3 + i] + [rng.randrange(3, 400) for _ in range(prompt_tokens - shared - 1)]
             for i in range(prompts)]
    stop = (lambda row, tokens: row < prompts // 2) if ended else None
    return allocated_peak(lambda: generate(model, batch, max_new_tokens=new_tokens, stop=stop))


@pytest.mark.parametrize("prompts,prompt_tokens,new_tokens,ended,shared", [
    (8, 64, 16, False, 0), (8, 64, 16, True, 0), (4, 8, 200, True, 0), (1, 30, 5, False, 0), (7, 50, 20, True, 0),
    (8, 64, 16, False, 40), (7, 50, 20, True, 16), (8, 64, 16, False, 15), (4, 8, 200, False, 0)],
    ids=["prefill", "half-ended", "long-answers", "one-prompt", "odd-batch", "shared-start", "shared-16",
         "shared-too-few", "long-answers-all-run"])
def test_the_estimate_is_a_real_generations_peak(model_dir, tmp_path, prompts, prompt_tokens, new_tokens, ended,
                                                 shared):
    """The prefill holds most where prompts are long; the cache's compaction (half the rows
    ended, with the prompts' last states still held) where answers are long. A start every
    prompt has runs once (16 tokens or more: fewer run in every row)."""
    config = TrainConfig(model=str(model_dir), output_dir=str(tmp_path / "run"), device="cpu")
    est = estimate_answers(config, prompts=prompts, prompt_tokens=prompt_tokens, new_tokens=new_tokens, shared=shared)
    model = load_model(str(model_dir), dtype=torch.float32, device="cpu")
    real = module_bytes(model) + _answered(model, prompts, prompt_tokens, new_tokens, ended, shared)
    assert est.weights == module_bytes(model) and est.moments == 0 and est.workspace == 0
    # where no row ends early the cache is never compacted: the estimate (the worst) may then be above by the keys
    # it copies out for the rows still going, where that copy is the peak
    copied = 0 if ended else est.cache // 2 * (prompts // 2) // prompts
    assert 0.999 * real < est.peak <= 1.0001 * real + copied, (est.peak, real)  # (0.9999-1.0000 on 2026-12-06)
    # the cache: keys and values of every layer, every row, every position, in the weights' dtype
    c = model.config
    assert est.cache == 2 * c.num_hidden_layers * prompts * c.num_key_value_heads * (prompt_tokens + new_tokens) \
        * c.head_dim * 4


def test_answers_during_training_are_held_beside_the_adapter_and_its_moments(model_dir, tmp_path):
    """DPO's validation answers: the training model (its adapter unmerged) after a step, AdamW's
    two moments held; the gradients were let go."""
    config = DPOConfig(model=str(model_dir), output_dir=str(tmp_path / "run"), batch_size=2, max_length=32,
                       device="cpu")
    est = estimate_answers(config, prompts=4, prompt_tokens=40, new_tokens=8, training=True)
    rng = random.Random(0)

    def example():
        ids = [1] + [rng.randrange(3, 400) for _ in range(31)]
        return TokenizedExample(ids, [-100] + ids[1:])

    trainer = DPOTrainer(prepare_model(config), config, [PairExample(example(), example()) for _ in range(4)], pad_id=2)
    trainer.train_step(0)
    moments = sum(v.nbytes for s in trainer.optimizer.state.values() for v in s.values() if torch.is_tensor(v)
                  and v.dim())
    assert all(p.grad is None for p in trainer.model.parameters())
    real = module_bytes(trainer.model) + moments + _answered(trainer.model, 4, 40, 8, ended=True)
    assert est.moments == moments and est.weights == module_bytes(trainer.model)
    assert 0.999 < est.peak / real <= 1.0001, (est.peak, real)


def test_a_4_bit_base_is_evaluated_with_its_adapter_on_top(model_dir, tmp_path):
    """``quantize``: the evaluation's model is the 4-bit base with the adapter beside the codes
    (not merged into a full-precision weight), in the evaluation's dtype."""
    config = TrainConfig(model=str(model_dir), output_dir=str(tmp_path / "run"), device="cpu", quantize="nf4")
    est = estimate_answers(config, prompts=2, prompt_tokens=16, new_tokens=4, dtype="bfloat16", device="cuda")
    model = load_model(str(model_dir), dtype=torch.bfloat16, device="cpu")
    quantize_model(model, quantized_layers(config.lora_targets), "nf4")
    adapt(model, config)
    plain = estimate_answers(TrainConfig(model=str(model_dir), output_dir=str(tmp_path / "run")), prompts=2,
                             prompt_tokens=16, new_tokens=4, dtype="bfloat16", device="cuda")
    assert est.weights == module_bytes(model) < plain.weights
    assert est.dtype == "bfloat16" and est.workspace > 0 and not est.autocast
    assert est.lines()[0] == ("memory estimate on CUDA, bfloat16 weights, 2 prompts of 16 tokens at once and answers "
                              "of up to 4:")


def test_what_it_cannot_estimate_is_refused_by_name(model_dir, tmp_path):
    config = TrainConfig(model=str(model_dir), output_dir=str(tmp_path / "run"))
    for bad in ({"prompts": 0}, {"shared": 8}):
        with pytest.raises(ValueError, match="at least 1 and shared below prompt_tokens; got"):
            estimate_answers(config, **{"prompts": 2, "prompt_tokens": 8, "new_tokens": 4, **bad})
    build_hf_model(tmp_path / "moe", arch="qwen3_moe", tokenizer=False)
    with pytest.raises(ValueError, match="mixture of experts"):
        estimate_answers(TrainConfig(model=str(tmp_path / "moe"), output_dir=str(tmp_path / "run")), prompts=2,
                         prompt_tokens=8, new_tokens=4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_estimate_against_cuda_allocations(model_dir, tmp_path):
    """An evaluation's answers on a GPU, its weights in bfloat16: ``torch.cuda.max_memory_allocated``
    over the call (the weights and cuBLAS's workspace included)."""
    config = TrainConfig(model=str(model_dir), output_dir=str(tmp_path / "run"), device="cuda")
    est = estimate_answers(config, prompts=8, prompt_tokens=64, new_tokens=16, dtype="bfloat16")
    model = load_model(str(model_dir), dtype=torch.bfloat16, device="cuda")
    rng = random.Random(0)
    batch = [[rng.randrange(3, 400) for _ in range(64)] for _ in range(8)]
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    generate(model, batch, max_new_tokens=16, stop=lambda row, tokens: row < 4)
    real = torch.cuda.max_memory_allocated()
    # SDPA's CUDA kernels and the allocator's 512-byte rounding differ from the CPU stand-ins: within a fifth
    assert abs(est.peak / real - 1) < 0.2, (est.peak, real)


def test_answers_that_will_not_fit_are_warned_of_before_the_first_batch(model_dir, tmp_path, monkeypatch):
    from prefopt.train import answer_estimate, memory_estimate
    from prefopt.train.answer_estimate import answer_fit_note
    from prefopt.train.stop_signal import GoingOn, going_on_by

    model = load_model(str(model_dir), dtype=torch.float32, device="cpu")
    prompts = [[5 + i] * (20 + i) for i in range(10)]
    assert answer_fit_note(model, prompts, 8, 16) is None  # this machine has room: the quick bound says so

    def fails(*a, **kw):
        raise AssertionError("the estimate ran")

    with monkeypatch.context() as m:  # room enough: not even estimated
        m.setattr(answer_estimate, "estimate_answers", fails)
        assert answer_fit_note(model, prompts, 8, 16) is None
    monkeypatch.setattr(memory_estimate, "free_bytes", lambda device: 2048)
    rng_before = torch.get_rng_state()
    note = answer_fit_note(model, prompts, 8, 16)
    assert torch.equal(torch.get_rng_state(), rng_before)  # no random number of the run's drawn
    # answered in batches of 8 prompts of 20-27 tokens and 2 of 28-29 (length_batches): the first holds the most
    est = estimate_answers(TrainConfig(model=str(model_dir), output_dir="."), prompts=8, prompt_tokens=27,
                           new_tokens=16)
    assert note.startswith(f"answering 8 prompts of 27 tokens at once (the batch that holds the most) holds about "
                           f"{size_text(est.peak - est.weights)} beyond the weights loaded, and cpu has 2 kB free: "
                           "it will likely run out of memory (on Linux the kernel may stop the process then")
    assert note.endswith("Lower --batch-size: fewer prompts answered at once (the same answers, up to rounding); "
                         "--estimate-memory says what a batch holds (docs/evaluation.md)")
    with going_on_by(GoingOn(fewer_answers="Lower --set eval_batch_size=N.")):  # in the running program's words
        assert answer_fit_note(model, prompts, 8, 16).endswith("Lower --set eval_batch_size=N.")
    with monkeypatch.context() as m:  # an estimate that cannot run gives no warning
        m.setattr(answer_estimate, "estimate_answers", lambda *a, **kw: (_ for _ in ()).throw(RuntimeError("op")))
        assert answer_fit_note(model, prompts, 8, 16) is None
    # the evaluation goes on: a warning, not a stop
    from prefopt.evaluate.runner import answer_prompts
    from prefopt.tokenizer import load_tokenizer

    tok = load_tokenizer(str(model_dir))
    with pytest.warns(UserWarning, match="answering 2 prompts of 29 tokens at once"):
        texts, _ = answer_prompts(model, tok, prompts[-2:], batch_size=4, max_new_tokens=2, show_progress=False)
    assert len(texts) == 2
    # once for the same model and prompts (a trainer's evaluator answers its items every few steps)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        answer_prompts(model, tok, prompts[-2:], batch_size=4, max_new_tokens=2, show_progress=False)
    assert not [w for w in seen if "answering" in str(w.message)]


@pytest.mark.parametrize("dtype,quantize", [("float32", None), ("bfloat16", None), ("bfloat16", "nf4")])
@pytest.mark.parametrize("prompts,prompt_tokens,new_tokens", [(16, 512, 16), (4, 32, 1024), (1, 2048, 8)])
def test_the_quick_bound_that_skips_the_answer_estimate_is_above_it(model_dir, tmp_path, dtype, quantize, prompts,
                                                                      prompt_tokens, new_tokens):
    from prefopt.model import ModelConfig, Transformer
    from prefopt.train.answer_estimate import surely_answers

    config = TrainConfig(model=str(model_dir), output_dir="-", quantize=quantize)
    for device in ("cpu", "cuda"):
        est = estimate_answers(config, prompts=prompts, prompt_tokens=prompt_tokens, new_tokens=new_tokens,
                               device=device, dtype=dtype)
        with torch.device("meta"):  # the loaded model, as it holds its weights (4-bit codes where quantized)
            model = Transformer(ModelConfig.from_hf(model_dir)).to(getattr(torch, dtype))
            if quantize:
                quantize_model(model, quantized_layers(config.lora_targets), quantize)
        need = est.peak - est.weights
        assert not surely_answers(model, device, prompts, prompt_tokens, new_tokens, need)  # no: it may not fit
        assert surely_answers(model, device, prompts, prompt_tokens, new_tokens, 10 * need + 2**31)  # not too high
