"""The training loop, SFT, DPO, and launch helpers."""
from .config import TrainConfig
from .diverged import Diverged
from .dpo import DPOConfig, DPOTrainer
from .loop import Trainer
from .memory_estimate import MemoryEstimate, estimate_memory
from .out_of_memory import OutOfMemory
from .run import run_dpo, run_sft
from .schedule import lr_at
from .sft import SFTTrainer
from .stop_signal import Terminated

__all__ = ["DPOConfig", "DPOTrainer", "Diverged", "MemoryEstimate", "OutOfMemory", "SFTTrainer", "Terminated",
           "TrainConfig", "Trainer", "estimate_memory", "lr_at", "run_dpo", "run_sft"]
