"""prefopt: local SFT and DPO fine-tuning of open LLMs, in plain PyTorch."""
from .model import ModelConfig, Transformer, generate, load_model, save_model
from .tokenizer import Tokenizer, load_tokenizer

__version__ = "0.1.0"
__all__ = ["ModelConfig", "Tokenizer", "Transformer", "generate", "load_model", "load_tokenizer", "save_model"]
