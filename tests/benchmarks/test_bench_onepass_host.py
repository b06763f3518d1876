"""``benchmarks/bench_onepass_host.py`` times both ways of forming the pair gradients and leaves the
loss registry and the chunk budget as it found them."""
import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_onepass_host.py"


def test_both_rows_are_timed_and_the_registry_restored():
    import prefopt.kernels._backward as backward
    from prefopt.losses import PAIR_GRADS

    spec = importlib.util.spec_from_file_location("bench_onepass_host", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    before, budget = dict(PAIR_GRADS), backward.CHUNK_ELEMENTS
    for closed in (False, True):
        assert mod.per_chunk("rpo", closed, pairs=3, reps=1) > 0
        assert PAIR_GRADS == before and backward.CHUNK_ELEMENTS == budget
