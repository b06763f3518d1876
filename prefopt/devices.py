"""Where a model runs and in what precision: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or
``"mps"``, and ``"auto"`` or a dtype name, checked up front with errors that say what to do."""
from __future__ import annotations

import os
import warnings

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
KINDS = ("cpu", "cuda", "mps")


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """The device ``name`` means: ``"auto"`` is the first CUDA GPU where one is visible, else the
    CPU. A device this machine lacks is a ``ValueError`` that says why (a CPU build of torch, no
    visible GPU, an index past the last GPU), not a traceback from deep inside torch."""
    if isinstance(name, torch.device):
        name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type not in KINDS:
        raise ValueError(f"device {name!r}: prefopt runs on {', '.join(KINDS)} (or auto)")
    if dev.type == "cuda":
        if torch.version.cuda is None and torch.version.hip is None:
            raise ValueError(f"device {name!r}: this torch ({torch.__version__}) was built without CUDA; "
                             "install a CUDA build of torch, or use --device cpu")
        if not torch.cuda.is_available():
            seen = os.environ.get("CUDA_VISIBLE_DEVICES")
            raise ValueError(f"device {name!r}: no CUDA GPU is visible"
                             + (f" (CUDA_VISIBLE_DEVICES={seen!r})" if seen is not None else "")
                             + "; check nvidia-smi, or use --device cpu")
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise ValueError(f"device {name!r}: only {n} CUDA GPU{'s are' if n != 1 else ' is'} visible "
                             f"(cuda:0{f' to cuda:{n - 1}' if n > 1 else ''})")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {name!r}: MPS (Apple GPU) is not available here; use --device cpu")
    return dev


def resolve(device: str | torch.device, dtype: str | torch.dtype) -> tuple[torch.device, torch.dtype]:
    """:func:`resolve_device` and then :func:`resolve_dtype` on that device; a 16-bit dtype on a
    CPU that lacks native arithmetic for it is warned of (:func:`slow_half`)."""
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if note := slow_half(dt, dev):
        warnings.warn(note, stacklevel=2)
    return dev, dt


def dtype_on(name: str, kind: str) -> str:
    """The dtype name ``name`` (a ``--dtype``) means on a ``kind`` device (``"cpu"`` or ``"cuda"``),
    which this machine may lack (an estimate's): as :func:`resolve_dtype`, ``auto`` is bfloat16 on
    CUDA (float16 on a visible GPU without it), float32 elsewhere."""
    if name != "auto":
        return name
    if kind != "cuda":
        return "float32"
    return "float16" if torch.cuda.is_available() and not torch.cuda.is_bf16_supported() else "bfloat16"


def slow_half(dtype: torch.dtype, device: torch.device) -> str | None:
    """Why ``dtype`` will be slow on ``device``, or None: bfloat16 or float16 on a CPU whose
    instructions have no such arithmetic (oneDNN's kernels need AVX-512 with BF16/FP16 or AMX;
    without them PyTorch falls back to a plain loop: on a 2-core AVX2 EPYC a 1024 x 1024 product
    took 89x float32's time in either, a 2048 x 2048 bfloat16 one minutes; benchmarks/bench_cpu_half.py,
    docs/benchmarks.md, 2026-12-04)."""
    if device.type != "cpu" or dtype not in (torch.bfloat16, torch.float16):
        return None
    try:
        native = (torch.ops.mkldnn._is_mkldnn_bf16_supported() if dtype == torch.bfloat16
                  else torch.ops.mkldnn._is_mkldnn_fp16_supported())
    except (AttributeError, RuntimeError):  # a torch without the check: assume it is fine
        return None
    if native:
        return None
    name = str(dtype).removeprefix("torch.")
    return (f"this CPU ({torch.backends.cpu.get_cpu_capability()}) has no native {name} arithmetic: {name} matmuls "
            "take a fallback far slower than float32 (minutes for what float32 does in a second); use float32, the "
            "default on a CPU (--dtype float32; compare's --eval-dtype float32, --set train_dtype=float32)")


def resolve_dtype(name: str | torch.dtype, device: torch.device) -> torch.dtype:
    """The parameter dtype ``name`` means on ``device``. ``"auto"``, for running a model rather than
    training it: bfloat16 on a CUDA GPU that has it (float16 on older ones), float32 elsewhere (many
    CPUs are slow at half-precision matmuls, and on those that are not, bfloat16 weights moved label
    scores by 0.18 nats on average: docs/evaluation.md)."""
    if isinstance(name, torch.dtype):
        return name
    if name == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}: use auto or one of {', '.join(DTYPES)}")
    return DTYPES[name]
