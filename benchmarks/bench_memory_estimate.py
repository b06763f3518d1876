"""The memory estimate (``prefopt sft/dpo --estimate-memory``) against a real training step on
this machine: for each setting, the estimate's peak and the bytes the step allocated at once
(PyTorch's profiler over a step after the first, plus the weights and AdamW's moments then
alive), in one run.

Every example is exactly ``--max-length`` tokens with all but the first scored, the case the
estimate assumes (random token ids: memory does not depend on the values; the first the same
everywhere, a one-token prompt that a pair's two answers share, so DPO packs each pair's row
as it would real pairs). On a CUDA machine
``--device cuda`` measures with ``torch.cuda.max_memory_allocated`` instead.

    .venv/bin/python benchmarks/bench_memory_estimate.py --batch-size 4 --max-length 256
"""
from __future__ import annotations

import argparse
import random
import shutil
import tempfile
import time

from prefopt.data.preference import PairExample
from prefopt.data.sft import TokenizedExample
from prefopt.model import ModelConfig, resolve_model_dir
from prefopt.train import DPOConfig, DPOTrainer, SFTTrainer, TrainConfig
from prefopt.train.memory_estimate import estimate_memory, measured_step
from prefopt.train.run import prepare_model

SETTINGS = {"LoRA": {}, "LoRA, checkpointing": {"gradient_checkpointing": True}, "DoRA": {"lora_dora": True},
            "QLoRA (nf4)": {"quantize": "nf4"},
            # two micro-batches a step: the second's forward and backward beside the first's gradients (a CPU
            # trainer collates both first, and holds them through the step)
            "LoRA, --grad-accum 2": {"grad_accum": 2},
            # every weight trained, the (tied) lm_head too: its one-pass loss (the head's gradients in the forward)
            "full fine-tuning": {"lora": False}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--batch-size", type=int, default=4, help="examples (SFT) or pairs (DPO) per micro-batch")
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    a = ap.parse_args()
    rng = random.Random(0)
    vocab = ModelConfig.from_hf(resolve_model_dir(a.model)).vocab_size

    def example() -> TokenizedExample:
        ids = [1] + [rng.randrange(3, vocab) for _ in range(a.max_length - 1)]  # a one-token prompt pairs share
        return TokenizedExample(ids, [-100] + ids[1:])

    print(f"model {a.model}, {a.device}, fp32 weights, LoRA r16/a32/d0.05 on the seven projections, micro-batches of "
          f"{a.batch_size} of {a.max_length} tokens (DPO: pairs, twice the rows)")
    print("| run | settings | estimate (MiB) | allocated (MiB) | estimate / allocated | estimate took |")
    print("|---|---|---|---|---|---|")
    for kind in ("SFT", "DPO"):
        for name, settings in SETTINGS.items():
            out = tempfile.mkdtemp(prefix="prefopt-estimate-")
            cls = TrainConfig if kind == "SFT" else DPOConfig
            if kind == "DPO" and settings.get("lora") is False:  # full fine-tuning's reference: a cache, filled first
                settings = {**settings, "ref_cache": f"{out}/cache"}
            config = cls(model=a.model, output_dir=out, batch_size=a.batch_size, max_length=a.max_length,
                         device=a.device, lora_dropout=0.05, **settings)
            t0 = time.perf_counter()
            est = estimate_memory(config).peak
            took = time.perf_counter() - t0
            model = prepare_model(config)
            if kind == "SFT":
                trainer = SFTTrainer(model, config, [example() for _ in range(4 * a.batch_size)], pad_id=0)
            else:
                pairs = [PairExample(example(), example()) for _ in range(4 * a.batch_size)]
                trainer = DPOTrainer(model, config, pairs, pad_id=0, ref_cache=config.ref_cache)
            real = measured_step(trainer)
            print(f"| {kind} | {name} | {est / 2**20:.0f} | {real / 2**20:.0f} | {est / real:.3f} | {took:.1f} s |")
            del trainer, model
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
