"""The training loop, SFT, and launch helpers."""
from .config import TrainConfig
from .loop import Trainer
from .run import run_sft
from .schedule import lr_at
from .sft import SFTTrainer

__all__ = ["SFTTrainer", "TrainConfig", "Trainer", "lr_at", "run_sft"]
