"""``benchmarks/bench_onepass_host.py`` times both ways of forming the pair gradients, counts the
operations, and leaves the loss registry, the chunk budget and the staging as it found them."""

from tests.benchmarks import load_script


def test_both_rows_are_timed_and_counted_and_the_settings_restored():
    import prefopt.kernels._backward as backward
    import prefopt.kernels.onepass as onepass
    from prefopt.losses import PAIR_GRADS

    mod = load_script("bench_onepass_host")
    before = dict(PAIR_GRADS), backward.CHUNK_ELEMENTS, onepass.STAGE_DEVICES, onepass.GRAD_ELEMENTS
    ops = {}
    for stage in (0, 3):
        for closed in (False, True):
            sec, ops[stage, closed], launches = mod.per_pair("rpo", closed, pairs=3, reps=1, stage=stage)
            assert sec > 0 and ops[stage, closed] > 10 and launches == 0  # PyTorch's ops on a CPU
            assert (dict(PAIR_GRADS), backward.CHUNK_ELEMENTS, onepass.STAGE_DEVICES, onepass.GRAD_ELEMENTS) == before
    assert ops[0, True] < ops[0, False] and ops[3, True] < ops[3, False]  # the closed form spares autograd's
    assert ops[3, True] < ops[0, True]  # one stage of 3 pairs: the loss's work once, not per pair


def test_cuda_blocks_stub_the_row_kernels_and_restore_them():
    """``--cuda-blocks``: CUDA's arrangement (two pairs a block, two slabs) with the Triton row
    kernels stubbed (all of them: run unstubbed, compiled on a CPU, one would fail): their
    launches counted (6 a block: each slab's split logsumexps, their join, 2 dlogits, 1 rescale;
    and the backward's 2 scalings), and the kernels, ROWWISE and SLAB_ROWS restored."""
    import pytest

    pytest.importorskip("triton")
    import prefopt.kernels._rows as rows
    import prefopt.kernels._triton_kernels as k
    import prefopt.kernels.onepass as onepass

    mod = load_script("bench_onepass_host")
    assert {n for n in vars(k) if n.startswith("_row_")} | {"_scale"} == set(mod.KERNELS)
    before = [getattr(k, n) for n in mod.KERNELS], rows.ROWWISE, dict(onepass.SLAB_ROWS)
    sec, ops, launches = mod.per_pair("sigmoid", True, pairs=4, reps=1, stage=4, cuda_blocks=True)
    assert sec > 0 and ops > 5 and launches == (6 * 2 + 2) / 4  # 4 pairs: 2 blocks, one backward
    assert ([getattr(k, n) for n in mod.KERNELS], rows.ROWWISE, dict(onepass.SLAB_ROWS)) == before
