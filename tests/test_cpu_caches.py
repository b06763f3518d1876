"""prefopt bounds PyTorch's per-shape caches for 16-bit matmuls on a CPU (prefopt/_cpu_caches.py):
a bfloat16 run's memory stayed flat where it grew with every new batch length."""
import os
import subprocess
import sys

import pytest
import torch

# bfloat16 matmuls forward and backward at 60 sequence lengths (as packed batches give), the
# process's RSS growth printed in MB; prefopt imported first or not at all
SCRIPT = """
import random, sys
if sys.argv[1] == "prefopt":
    import prefopt  # noqa: F401
import torch
def rss():
    return next(int(line.split()[1]) // 1024 for line in open("/proc/self/status") if line.startswith("VmRSS"))
torch.manual_seed(0)
w = [torch.randn(n, k, dtype=torch.bfloat16, requires_grad=True) for n, k in [(576, 576), (1536, 576), (576, 1536)]]
random.seed(0)
start = rss()
for _ in range(60):
    x = torch.randn(random.randint(64, 512), 576, dtype=torch.bfloat16)
    for _ in range(5):
        (x @ w[0].T @ w[1].T @ w[2].T).float().sum().backward()
print(rss() - start)
"""


def _growth(how: str, env: dict) -> int:
    out = subprocess.run([sys.executable, "-c", SCRIPT, how], env=env, capture_output=True, text=True, timeout=300,
                         check=True)
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not torch.ops.mkldnn._is_mkldnn_bf16_supported(),
                    reason="this CPU has no native bfloat16 (AVX-512 BF16 or AMX): PyTorch's bfloat16 matmuls take a "
                    "plain loop, not oneDNN, so there are no oneDNN caches to bound, and the passes take minutes "
                    "(timed out after 300 s on a 2-core AVX2 EPYC)")
def test_a_bfloat16_run_on_a_cpu_stops_growing_with_each_new_shape():
    env = {k: v for k, v in os.environ.items() if k not in ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")}
    bounded, unbounded = _growth("prefopt", env), _growth("torch", env)  # torch's own defaults: 1024 of each
    assert unbounded > 150 and bounded < 0.5 * unbounded, (bounded, unbounded)


def test_capacities_set_in_the_environment_are_kept():
    env = {**os.environ, "ONEDNN_PRIMITIVE_CACHE_CAPACITY": "1024", "LRU_CACHE_CAPACITY": "7"}
    code = ("import os, prefopt; print(os.environ['ONEDNN_PRIMITIVE_CACHE_CAPACITY'], "
            "os.environ['LRU_CACHE_CAPACITY'])")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["1024", "7"]
    env = {k: v for k, v in os.environ.items() if k not in ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["64", "64"]
