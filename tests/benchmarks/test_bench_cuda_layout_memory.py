"""``benchmarks/bench_cuda_layout_memory.py`` switches on CUDA's blocks and stages for CPU tensors
and counts what is alive at the peak: at a small head, the one-pass loss's peak is its bf16 stage,
one fp32 logits block (and the CPU's bf16 copy of it), and little else."""

import pytest

from tests.benchmarks import load_script


@pytest.fixture
def bench(monkeypatch):
    import prefopt.kernels._backward as backward
    import prefopt.kernels.onepass as onepass

    mod = load_script("bench_cuda_layout_memory")
    for module, name in ((backward, "GEMM_ROWS"), (onepass, "STAGE_DEVICES")):
        monkeypatch.setattr(module, name, getattr(module, name))  # restored after the test
    V = 1000
    monkeypatch.setattr(backward, "CHUNK_ELEMENTS", 128 * V)  # 128-token blocks, 512-token stages, as at Llama's head
    monkeypatch.setattr(onepass, "GRAD_ELEMENTS", 512 * V)
    monkeypatch.setattr(backward, "SUM_ELEMENTS", 100)  # a large head's: grad_W summed in bf16, as at Llama's
    return mod, V


def test_the_one_pass_peak_is_a_stage_and_a_block(bench):
    mod, V = bench
    N, D = 1024, 32
    row = mod.worker("onepass", N, D, V, 64, tensors=1)
    assert (row["block_tokens"], row["stage_tokens"], row["gemm_rows"]) == (128, 512, 128)
    stage, block, copy = 512 * V * 2, 128 * V * 4, 128 * V * 2  # bf16 stage, fp32 block, its bf16 GEMM output
    assert stage + block + copy <= row["extra_peak"] <= 1.1 * (stage + block + copy)
    alive = " ".join(row["at_peak"])
    assert f"[512, {V}] bfloat16" in alive and f"[128, {V}] float32" in alive


def test_the_frozen_chunked_peak_holds_no_stage(bench):
    mod, V = bench
    row = mod.worker("chunked-frozen", 1024, 32, V, 64, tensors=1)
    assert row["block_tokens"] == 128 and not any(f"[512, {V}]" in t for t in row["at_peak"])
    assert row["extra_peak"] <= 128 * V * (4 + 2 + 2) * 1.1  # a block, its GEMM's bf16 output, its dlogits
