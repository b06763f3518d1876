"""The Llama-family model: config, transformer, checkpoint I/O and generation."""
from .checkpoint import CheckpointError, load_model, save_model
from .config import ModelConfig, UnsupportedModelError
from .generate import eval_mode, generate
from .hub import ModelNotFoundError, resolve_model_dir
from .kv_cache import KVCache, PromptCache
from .transformer import Transformer

__all__ = [
    "CheckpointError", "KVCache", "ModelConfig", "ModelNotFoundError", "PromptCache", "Transformer",
    "UnsupportedModelError", "eval_mode", "generate", "load_model", "resolve_model_dir", "save_model",
]
