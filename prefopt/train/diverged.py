"""A step whose gradients are not finite stops the run before the optimizer takes it.

AdamW fed one NaN gradient turns every weight it touches into NaN, and the run went on to its
end, saved those weights, and its evaluation scored garbage. The loop checks the gradients'
norm (all ranks see the same, reduced gradients) before each optimizer step and raises
:class:`Diverged`: the model keeps the weights of the step before, and the message says where
the run was and what usually helps.
"""
from __future__ import annotations

import math


class Diverged(ValueError):
    """The gradients of a step were NaN or infinite; no optimizer step was taken with them."""


def diverged_message(trainer, step: int, grad_norm: float, loss: float) -> str:
    c = trainer.config
    fixes = [f"a lower --lr (now {c.lr:g})"]
    if not c.max_grad_norm:
        fixes.append("--max-grad-norm 1.0 (now none)")
    if c.warmup_steps == 0:
        fixes.append("--warmup-steps (now 0)")
    low = sorted({str(p.dtype).removeprefix("torch.") for p in trainer.params} & {"float16", "bfloat16"})
    if low:
        fixes.append(f"float32 trainable weights (now {'/'.join(low)}; --dtype float32)")
    last = "" if step == 0 else f"; the model keeps the weights after step {step}"
    value = "nan" if math.isnan(loss) else f"{loss:.4g}"
    return (f"training diverged in step {step + 1} of {trainer.total_steps}: its gradients are not finite "
            f"(norm {grad_norm}, loss {value}), so no optimizer step was taken with them{last}. Try "
            f"{', '.join(fixes)}; these change the run's settings: start it again with --overwrite (overwrite=True) "
            f"or into another --output-dir")
