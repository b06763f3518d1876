"""``prefopt eval|predict|make-pairs ... --estimate-memory``: what answering the command's records
will hold, from the model's ``config.json`` and the records' prompts, encoded (no weights are
loaded and nothing is written): ``prefopt.train.answer_estimate`` on the model as the command
loads it (its ``--dtype``; with ``--quantize`` the adapter on top of the 4-bit base, else merged
in)."""
from __future__ import annotations

import argparse


def answer_estimate_lines(args: argparse.Namespace, prompts: list[list[int]], new_tokens: int) -> list[str]:
    """The estimate in words for ``args`` (``--model``, ``--adapter``, ``--quantize``, ``--dtype``,
    ``--batch-size``, ``--estimate-memory``: auto, cpu or cuda) answering ``prompts`` (token ids)
    with up to ``new_tokens`` each: batches of ``--batch-size`` prompts (the command batches them
    by length), taken at the longest prompt's length, the start that all of them have run once a
    batch (as ``generate`` runs a batch's: its own may be longer, and hold less)."""
    from ..devices import dtype_on
    from ..lora_files import read_adapter_config
    from ..model.generate import shared_start
    from ..model.hub import resolve_model_dir
    from ..train import TrainConfig
    from ..train.answer_estimate import estimate_answers
    from ..train.memory_estimate import device_kind

    kind = device_kind(args.device if args.estimate_memory == "auto" else args.estimate_memory)
    lora = {}
    if args.adapter is not None and args.quantize:  # it stays beside the 4-bit codes: its size counts
        c = read_adapter_config(args.adapter)
        lora = dict(lora_r=c.r, lora_alpha=c.alpha, lora_targets=list(c.target_modules), lora_dora=c.dora)
    # (a .gguf model's folder: imported already, for its tokenizer)
    config = TrainConfig(model=str(resolve_model_dir(args.model)), output_dir=".", quantize=args.quantize, **lora)
    longest = max(len(p) for p in prompts)
    # the start every prompt has (a task's instructions) runs once a batch; a batch's own may be longer
    shared = shared_start(prompts, config=None, length=None)
    est = estimate_answers(config, prompts=min(args.batch_size, len(prompts)), prompt_tokens=longest, shared=shared,
                           new_tokens=new_tokens, device=kind, dtype=dtype_on(args.dtype, kind))
    return [f"{len(prompts)} records, the longest prompt {longest} tokens, the first {shared} of them in every "
            f"prompt: {est.lines()[0]}", *est.lines()[1:],
            "(--batch-size N lowers it" + ("; --confidence's label scoring, after the answers, holds less than "
                                           "answering" if getattr(args, "confidence", False) else "") + ")"]
