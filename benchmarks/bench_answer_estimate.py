"""The memory estimate of answering prompts (``prefopt compare ... --estimate-memory``'s answer
lines, ``prefopt.train.answer_estimate``) against a real ``generate`` on this machine: for each
batch, the estimate's peak and the bytes generation held at once (PyTorch's profiler over the
call, every allocation and release summed in time order, plus the weights, and for answers
during training AdamW's moments, alive then), in one run.

The prompts are random token ids (memory does not depend on the values), each its own from its
first token, or after a start that every prompt has ("shared start": run once for the batch).
"half end at once": half the rows stop at their first token, so the cache's rows still going
are copied out (``compact``); else every answer runs to ``max_new_tokens``. On a CUDA machine
``--device cuda`` measures with ``torch.cuda.max_memory_allocated`` instead, the evaluation's
weights in bfloat16.

    .venv/bin/python benchmarks/bench_answer_estimate.py
"""
from __future__ import annotations

import argparse
import random
import shutil
import tempfile
import time

import torch

from prefopt.data.preference import PairExample
from prefopt.data.sft import TokenizedExample
from prefopt.model import ModelConfig, resolve_model_dir
from prefopt.model.generate import generate
from prefopt.pretrained import load_model
from prefopt.train import DPOConfig, DPOTrainer, TrainConfig
from prefopt.train.answer_estimate import estimate_answers
from prefopt.train.memory_estimate import allocated_peak, module_bytes
from prefopt.train.run import adapt, prepare_model

# (prompts at once, prompt tokens, of them a start every prompt has, answer tokens, half end at once, the model)
ROWS = [(16, 384, 0, 16, False, "evaluation"), (16, 384, 0, 16, True, "evaluation"),
        (16, 384, 256, 16, True, "evaluation"), (16, 1024, 0, 96, False, "evaluation"),
        (4, 64, 0, 512, True, "evaluation"), (16, 384, 0, 16, False, "evaluation, QLoRA base"),
        (16, 384, 0, 16, True, "training (DPO's validation)")]


def held(model, prompts: list[list[int]], new_tokens: int, half: bool, device: str, autocast: bool) -> int:
    """The bytes ``generate`` held at once beyond what was alive before it (on CUDA: in all);
    ``autocast``: under bf16 autocast, as a CUDA trainer's evaluators run."""
    stop = (lambda row, tokens: row < len(prompts) // 2) if half else None

    def job():
        with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
            return generate(model, prompts, max_new_tokens=new_tokens, stop=stop)

    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        job()
        return torch.cuda.max_memory_allocated()
    return allocated_peak(job)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--scale", type=float, default=1.0, help="every row's prompt count and lengths times this")
    a = ap.parse_args()
    rng = random.Random(0)
    vocab = ModelConfig.from_hf(resolve_model_dir(a.model)).vocab_size
    dtype = "bfloat16" if a.device == "cuda" else "float32"
    print(f"model {a.model}, {a.device}, evaluation weights {dtype}; training: fp32, LoRA r16/a32 on the seven "
          "projections, after one DPO step")
    print("| model | prompts | prompt tokens | shared start | answer tokens | half end at once | estimate (MiB) | "
          "allocated (MiB) | estimate / allocated | estimate took |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for prompts, prompt_tokens, shared, new_tokens, half, what in ROWS:
        prompts, prompt_tokens, new_tokens = (max(1, round(n * a.scale)) for n in (prompts, prompt_tokens, new_tokens))
        shared = round(shared * a.scale)
        out = tempfile.mkdtemp(prefix="prefopt-answers-")
        training = what.startswith("training")
        cls = DPOConfig if training else TrainConfig
        config = cls(model=a.model, output_dir=out, device=a.device, batch_size=1, max_length=32,
                     quantize="nf4" if "QLoRA" in what else None)
        t0 = time.perf_counter()
        est = estimate_answers(config, prompts=prompts, prompt_tokens=prompt_tokens, new_tokens=new_tokens,
                               shared=shared, dtype=dtype, training=training)
        took = time.perf_counter() - t0
        before = 0
        if training:  # the trainer's model after a step: its adapter, AdamW's moments; the gradients let go
            def example():
                ids = [1] + [rng.randrange(3, vocab) for _ in range(31)]
                return TokenizedExample(ids, [-100] + ids[1:])

            trainer = DPOTrainer(prepare_model(config), config, [PairExample(example(), example())], pad_id=0)
            trainer.train_step(0)
            model = trainer.model
            before = sum(v.nbytes for s in trainer.optimizer.state.values() for v in s.values()
                         if torch.is_tensor(v) and v.dim())
        else:
            model = load_model(a.model, dtype=getattr(torch, dtype), device=a.device, quantize=config.quantize)
            if config.quantize:  # the adapter on top, as an evaluation of a 4-bit run loads it
                adapt(model, config)
        start = [rng.randrange(3, vocab) for _ in range(shared)]
        batch = [start + [3 + i] + [rng.randrange(3, vocab) for _ in range(prompt_tokens - shared - 1)]
                 for i in range(prompts)]
        real = held(model, batch, new_tokens, half, a.device, est.autocast)
        if a.device == "cpu":
            real += module_bytes(model) + before
        print(f"| {what} | {prompts} | {prompt_tokens} | {shared} | {new_tokens} | {'yes' if half else 'no'} | "
              f"{est.peak / 2**20:.0f} | {real / 2**20:.0f} | {est.peak / real:.3f} | {took:.1f} s |", flush=True)
        del model
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
