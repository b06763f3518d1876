"""Bounds on PyTorch's CPU caches for 16-bit matmuls, set when prefopt is imported.

On a CPU, PyTorch runs bfloat16 and float16 matmuls through oneDNN, which keeps a compiled
primitive for every input shape it meets (``ONEDNN_PRIMITIVE_CACHE_CAPACITY``, 1024 by default),
and ideep a weight layout likewise (``LRU_CACHE_CAPACITY``, 1024). Packed batches change shape
nearly every step, so a bfloat16 run on a CPU grew by about 10 MB a step (SmolLM2-135M with LoRA:
+2 GB over 200 forward and backward passes of random lengths 64-512, still growing) for no speed:
with 64 of each the same passes took the same time and memory levelled off (docs/training.md).
float32 matmuls keep no such cache. Both are read when the first primitive is made, so this works as long as prefopt is
imported before a 16-bit matmul has run; a value already set in the environment is kept.
"""
import os

CAPACITY = "64"
VARIABLES = ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")

for _name in VARIABLES:
    os.environ.setdefault(_name, CAPACITY)
