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
            sec, ops[stage, closed] = mod.per_pair("rpo", closed, pairs=3, reps=1, stage=stage)
            assert sec > 0 and ops[stage, closed] > 10
            assert (dict(PAIR_GRADS), backward.CHUNK_ELEMENTS, onepass.STAGE_DEVICES, onepass.GRAD_ELEMENTS) == before
    assert ops[0, True] < ops[0, False] and ops[3, True] < ops[3, False]  # the closed form spares autograd's
    assert ops[3, True] < ops[0, True]  # one stage of 3 pairs: the loss's work once, not per pair
