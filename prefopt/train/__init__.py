"""The training loop, SFT, DPO, and launch helpers."""
from .config import TrainConfig
from .dpo import DPOConfig, DPOTrainer
from .loop import Trainer
from .out_of_memory import OutOfMemory
from .run import run_dpo, run_sft
from .schedule import lr_at
from .sft import SFTTrainer

__all__ = ["DPOConfig", "DPOTrainer", "OutOfMemory", "SFTTrainer", "TrainConfig", "Trainer", "lr_at", "run_dpo", "run_sft"]
