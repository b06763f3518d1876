"""What a run says before its first step: the plan (data, steps, what trains, where), and
warnings of trainable weights in 16 bits and of a disk too small for its saves."""
from __future__ import annotations

import torch

from ..fileio import free_space, size_text
from ..lora import QLoRALinear, layer_text, lora_layers
from ..lora_experts import ExpertLoRA
from .config import autocast_on
from .stop_signal import going_on


def checkpointing_text(model) -> str:
    """The plan's words on gradient checkpointing: how many of the layers the backward goes
    through recompute their activations, if any."""
    n, of = model.checkpointed_layers(), model.backward_layers()
    if not n:
        return ""
    reached = "" if of == len(model.model.layers) else " the backward reaches"
    count = f"{n} of {of} layers" if n < of else f"all {n} layers" if n > 1 else "1 layer"
    return f"; gradient checkpointing on {count}{reached}"


def trained_part(model: torch.nn.Module) -> str:
    """What trains, read from the model (a Trainer built in Python may differ from its config)."""
    layers = list(lora_layers(model))
    if not layers:
        return "all weights" if all(p.requires_grad for p in model.parameters()) else "some weights"
    ranks = "/".join(str(r) for r in sorted({m.r for _, m in layers}))
    targets = dict.fromkeys(("the experts' " if isinstance(m, ExpertLoRA) else "") + name.rsplit(".", 1)[-1]
                            for name, m in layers)
    kind = "rsLoRA" if all(m.rslora for _, m in layers) else "LoRA"
    if all(m.lora_magnitude is not None for _, m in layers):
        kind = "DoRA" if kind == "LoRA" else "DoRA (rsLoRA)"
    base = ", the base in 4 bits" if any(isinstance(m, QLoRALinear) for _, m in layers) else ""
    scope = getattr(getattr(model, "lora_config", None), "layers", None)
    where = f" in {layer_text(scope)}" if scope is not None else ""
    return f"{kind} r{ranks} on {', '.join(targets)}{where}{base}"


def plan_line(trainer) -> str:
    """One line on what ``trainer``'s run will do: data, steps, what trains, where."""
    c = trainer.config
    n = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    what = trained_part(trainer.model)
    precision = "bf16 autocast" if autocast_on(trainer.device, c) else c.dtype
    evals = f", {len(trainer.eval_data)} eval" if trainer.eval_data else ""
    steps = f"{trainer.total_steps} step{'s' * (trainer.total_steps != 1)}"
    return (f"{len(trainer.train_data)} training{evals} {trainer.noun}; {steps} of {trainer.global_batch} "
            f"({trainer.total_steps / trainer.steps_per_epoch:.2f} epochs); {n:,} trainable parameters ({what}); "
            f"{trainer.device.type}, {precision}{checkpointing_text(trainer.model)}")


def precision_note(params) -> str | None:
    """A warning where trainable weights are 16-bit (full fine-tuning with ``dtype: bfloat16``):
    AdamW then updates them in 16 bits, and a step smaller than a weight's last bit is lost
    (bfloat16 holds 8 bits of mantissa). Adapters over a 16-bit base are float32 already."""
    low = {p.dtype for p in params if p.dtype in (torch.bfloat16, torch.float16)}
    if not low:
        return None
    n = sum(p.numel() for p in params if p.dtype in low)
    kinds = "/".join(sorted(str(d).removeprefix("torch.") for d in low))
    return (f"note: {n:,} trainable parameters are {kinds}, and AdamW updates them in it: a step smaller than "
            "about 1/256 of a weight is rounded away. Train them in float32 (--dtype float32, the default; on "
            "CUDA bf16 autocast computes in bfloat16 all the same) or train an adapter (LoRA keeps its weights "
            "in float32)")


def space_note(trainer) -> str | None:
    """A warning where the disk under ``output_dir`` lacks room for what the run will write: its
    checkpoints (the trained weights and AdamW's two moments, each; ``save_total_limit`` of them
    kept, and one more while the next is written), ``best/`` and ``final/`` (the weights), so a
    run does not stop at a save hours in. Estimated from the trainable parameters."""
    c = trainer.config
    weights = sum(p.numel() * p.element_size() for p in trainer.params)
    saves = (trainer.total_steps - 1) // c.save_every - trainer.step // c.save_every if c.save_every else 0
    at_once = min(saves, c.save_total_limit + 1)
    copies = 1 + bool(c.best_metric)  # final/ (and best/)
    need = 3 * weights * at_once + weights * copies
    free = free_space(trainer.output_dir)
    if need <= free:
        return None
    parts = [f"{at_once} checkpoint{'s' * (at_once > 1)} at once of {size_text(3 * weights)} each (the weights "
             f"and AdamW's two moments)"] if at_once else []
    parts.append(f"{'best/ and final/' if copies > 1 else 'final/'} of {size_text(weights)}")
    fix = "; lower --save-total-limit or save less often (--save-every)" if at_once else ""
    return (f"the disk under {trainer.output_dir} has {size_text(free)} free, and this run writes about "
            f"{size_text(need)} there ({', '.join(parts)}): it would stop when the disk fills. Free some "
            f"space or choose another {going_on().output}{fix}")
