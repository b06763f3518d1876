"""A step whose gradients are not finite stops the run before the optimizer takes it.

AdamW fed one NaN gradient turns every weight it touches into NaN, and the run went on to its
end, saved those weights, and its evaluation scored garbage. The loop checks the gradients'
norm (all ranks see the same, reduced gradients) before each optimizer step and raises
:class:`Diverged`: the model keeps the weights of the step before, and the message says where
the run was and what usually helps.
"""
from __future__ import annotations

import math

from .._errors import Pickled


class Diverged(Pickled, ValueError):
    """The gradients of a step were NaN or infinite; no optimizer step was taken with them.
    ``what``: where and how (``"in step 3 of 40: its gradients are not finite (...), so no
    optimizer step was taken with them"``), for a caller that says what to change in its own
    settings (``prefopt compare``)."""

    def __init__(self, message: str, what: str = ""):
        super().__init__(message)
        self.what = what


def diverged(trainer, step: int, grad_norm: float, loss: float) -> Diverged:
    """The error for step ``step`` (0-based), whose gradients' norm is ``grad_norm``: where, and
    the settings that usually help, in the command line's words."""
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
    what = (f"in step {step + 1} of {trainer.total_steps}: its gradients are not finite (norm {grad_norm}, loss "
            f"{value}), so no optimizer step was taken with them")
    return Diverged(f"training diverged {what}{last}. Try {', '.join(fixes)}; these change the run's settings: start "
                    "it again with --overwrite (overwrite=True) or into another --output-dir", what)
