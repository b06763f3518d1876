"""prefopt: local SFT and DPO fine-tuning of open LLMs, in plain PyTorch."""
from . import _cpu_caches  # noqa: F401  (first: bounds oneDNN's per-shape caches before any matmul)
from .lora import apply_lora, disable_adapter, merge_lora, unmerge_lora
from .lora_files import load_adapter
from .lora_stack import save_adapter
from .model import ModelConfig, Transformer, generate, save_model
from .pretrained import load_model, save_merged
from .quant import quantize_model
from .tokenizer import Tokenizer, load_tokenizer
from .train import DPOConfig, DPOTrainer, SFTTrainer, TrainConfig

__version__ = "0.1.0"
__all__ = [
    "DPOConfig", "DPOTrainer", "ModelConfig", "SFTTrainer", "Tokenizer", "TrainConfig", "Transformer", "apply_lora", "disable_adapter", "generate", "load_adapter",
    "load_model", "load_tokenizer", "merge_lora", "quantize_model", "save_adapter", "save_merged", "save_model",
    "unmerge_lora",
]
