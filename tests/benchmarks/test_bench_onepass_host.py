"""``benchmarks/bench_onepass_host.py`` times both ways of forming the pair gradients, counts the
operations, and leaves the loss registry, the chunk budget and the staging as it found them."""
import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_onepass_host.py"


def test_both_rows_are_timed_and_counted_and_the_settings_restored():
    import prefopt.kernels._backward as backward
    import prefopt.kernels.onepass as onepass
    from prefopt.losses import PAIR_GRADS

    spec = importlib.util.spec_from_file_location("bench_onepass_host", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    before = dict(PAIR_GRADS), backward.CHUNK_ELEMENTS, onepass.STAGE_DEVICES, onepass.GRAD_ELEMENTS
    ops = {}
    for stage in (0, 3):
        for closed in (False, True):
            sec, ops[stage, closed] = mod.per_pair("rpo", closed, pairs=3, reps=1, stage=stage)
            assert sec > 0 and ops[stage, closed] > 10
            assert (dict(PAIR_GRADS), backward.CHUNK_ELEMENTS, onepass.STAGE_DEVICES, onepass.GRAD_ELEMENTS) == before
    assert ops[0, True] < ops[0, False] and ops[3, True] < ops[3, False]  # the closed form spares autograd's
    assert ops[3, True] < ops[0, True]  # one stage of 3 pairs: the loss's work once, not per pair
