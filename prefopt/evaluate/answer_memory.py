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
    with up to ``new_tokens`` each, in the batches the command answers them in
    (:func:`~prefopt.model.length_batches.length_batches`: at most ``--batch-size`` prompts, by
    length, on the device estimated for), the one that holds the most, each taken at its longest
    prompt's length, the start that all of them have run once a batch (as ``generate`` runs a
    batch's: its own may be longer, and hold less)."""
    from ..devices import dtype_on
    from ..lora_files import read_adapter_config
    from ..model.generate import shared_start
    from ..model.hub import resolve_model_dir
    from ..model.length_batches import batch_shapes
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
    lengths = [len(p) for p in prompts]
    longest = max(lengths)
    # the start every prompt has (a task's instructions) runs once a batch; a batch's own may be longer
    shared = shared_start(prompts, config=None, length=None)
    est = max((estimate_answers(config, prompts=rows, prompt_tokens=tokens, shared=shared, new_tokens=new_tokens,
                                device=kind, dtype=dtype_on(args.dtype, kind))
               for rows, tokens in batch_shapes(lengths, args.batch_size, new_tokens, kind, shared)),
              key=lambda e: e.peak)
    return [f"{len(prompts)} records, the longest prompt {longest} tokens, the first {shared} of them in every "
            f"prompt: {est.lines()[0]}", *est.lines()[1:],
            "(--batch-size N lowers it" + ("; --confidence's label scoring, after the answers, holds less than "
                                           "answering" if getattr(args, "confidence", False) else "") + ")"]
