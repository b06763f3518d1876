"""The GPU table's code in ``benchmarks/bench_logprobs.py`` runs end to end on CPU, with stand-ins
for CUDA events and memory statistics, so a lent GPU's minutes are not spent on a Python error.
The figures it prints here mean nothing; the rows' shape, the errors for baselines that are not
installed, and the frozen-weight mode are what is checked."""
import importlib.util
import json
import time

import pytest
import torch

from prefopt.kernels.triton_logprobs import available
from tests.benchmarks import BENCHMARKS, load_script

from ..kernels._interpreter import interpreter_problem

# the Triton rows run on CPU only under a working interpreter (conftest sets it where there is no CUDA)
OURS = ["naive", "chunked", "onepass"] + (["triton"] if available(torch.device("cpu")) and not interpreter_problem() else [])

BASELINES = {"liger": "liger_kernel", "cce": "cut_cross_entropy", "cce-exact": "cut_cross_entropy"}


class _Event:
    def __init__(self, enable_timing=True):
        self.t = None

    def record(self):
        self.t = time.perf_counter()

    def elapsed_time(self, end):
        return (end.t - self.t) * 1000


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    mod = load_script("bench_logprobs")
    monkeypatch.setattr(mod, "DEVICE", "cpu")
    for name, fn in {"Event": _Event, "synchronize": lambda: None, "empty_cache": lambda: None,
                     "reset_peak_memory_stats": lambda: None, "memory_allocated": lambda: 0,
                     "max_memory_allocated": lambda: 1 << 20, "get_device_name": lambda: "stand-in",
                     "mem_get_info": lambda: (1 << 34, 1 << 34)}.items():
        monkeypatch.setattr(torch.cuda, name, fn)
    return mod


@pytest.mark.parametrize("frozen", [False, True])
def test_gpu_table_code_runs_on_cpu(bench, tmp_path, capsys, frozen):
    out = tmp_path / "rows.json"
    argv = ["--gpu", "--shapes", "48x1000", "--tokens", "64", "--dtype", "float32", "--reps", "2", "--seq-len", "16",
            "--methods", *OURS, *BASELINES, "--budget", "4000",
            "--blocks", '{"BLOCK_N": 16, "BLOCK_V": 64, "BLOCK_D": 16}', "--json", str(out)]
    bench.run_gpu(bench.parse_args(argv + (["--frozen-weight"] if frozen else [])))
    rows = {r["method"]: r for r in json.loads(out.read_text())}
    assert set(rows) == {*OURS, *BASELINES}
    for m in OURS:
        assert rows[m]["seconds"] > 0 and rows[m]["gemm_limit"] > 0 and (rows[m]["D"], rows[m]["V"]) == (48, 1000)
    for m, module in BASELINES.items():  # not installed here: the row says why instead of stopping the table
        if importlib.util.find_spec(module) is None:
            assert "ModuleNotFoundError" in rows[m]["error"]
    printed = capsys.readouterr().out
    assert f"{2 if frozen else 3} bare GEMMs" in printed and all(f"| {m} |" in printed for m in OURS)
    for m in OURS:  # each ratio against the GEMMs timed in its own rounds, both printed
        r = rows[m]
        assert (f"| {m} | {r['seconds'] * 1e3:.2f} | {r['seconds'] / r['gemm_limit']:.2f} | "
                f"{r['extra_peak'] / 2**20:.0f} | {r['gemm_limit'] * 1e3:.2f} |") in printed
    assert len({rows[m]["gemm_limit"] for m in OURS}) == len(OURS)  # timed per row, not once


def test_benchmark_methods_agree_on_cpu(bench):
    """The methods the table compares compute the same gradients (so the table compares like with like)."""
    grads = {}
    for m in OURS:
        h, w, y, up = bench._inputs(40, 32, 300, torch.float32, "cpu")
        bench._method(m, seq_len=10, budget=2000, blocks={"BLOCK_N": 16, "BLOCK_V": 64, "BLOCK_D": 16})(h, w, y, up)
        grads[m] = (h.grad, w.grad)
    for m in set(OURS) - {"naive", "onepass"}:
        assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(grads["naive"], grads[m]))
    # onepass is a DPO loss, as liger's row is: its gradients are the naive DPO loss's
    from prefopt.kernels import fused_preference_loss

    h, w, y, _ = bench._inputs(40, 32, 300, torch.float32, "cpu")
    ref = torch.zeros(2)
    out, _ = fused_preference_loss(h.reshape(4, 10, 32), w, y.reshape(4, 10), ref, ref, beta=0.1, impl="naive")
    out.losses.sum().backward()
    assert all(a.abs().max() > 0 and torch.allclose(a, b, atol=1e-6) for a, b in zip((h.grad, w.grad), grads["onepass"]))


@pytest.mark.parametrize("frozen", [False, True])
def test_cpu_table_runs_each_method_in_its_own_process(bench, tmp_path, capsys, frozen):
    out = tmp_path / "rows.json"
    argv = ["--cpu-shape", "64", "32", "500", "--cpu-reps", "2", "--seq-len", "16", "--json", str(out)]
    bench.run_cpu(bench.parse_args(argv + (["--frozen-weight"] if frozen else [])))
    rows = {r["method"]: r for r in json.loads(out.read_text())}
    want = ["naive", "chunked"] + (["chunked-recompute"] if frozen else ["onepass"])
    assert list(rows) == want
    assert all(r["seconds"] > 0 and r["grads"] == (64 * 32 + 500 * 32 * (not frozen)) * 4 for r in rows.values())
    printed = capsys.readouterr().out
    assert ("weight frozen" if frozen else "weight trainable") in printed and "median of 2" in printed


def test_frozen_head_methods_agree_on_cpu(bench):
    """The frozen-head rows (gradient formed in the forward, or recomputed) give the naive gradient."""
    grads = {}
    for m in ("naive", "chunked", "chunked-recompute"):
        h, w, y, up = bench._inputs(40, 32, 300, torch.float32, "cpu", frozen_weight=True)
        bench._method(m, budget=2000)(h, w, y, up)
        assert w.grad is None
        grads[m] = h.grad
    assert torch.allclose(grads["naive"], grads["chunked"], atol=1e-5)
    assert torch.allclose(grads["naive"], grads["chunked-recompute"], atol=1e-5)


@pytest.mark.filterwarnings("ignore:CUDA is not available")
def test_the_profile_script_runs_on_cpu(bench, monkeypatch, capsys):
    """``profile_logprobs.py`` (where a method's GPU time goes) with the same stand-ins: each
    method's timing line and a table of the operations of one step, the host's too."""
    prof = importlib.import_module("profile_logprobs")
    monkeypatch.setattr(prof, "bl", bench)
    a = prof.parse_args(["--dtype", "float32", "--reps", "1", "--seq-len", "16", "--budget", "4000", "--cpu-ops",
                         "--methods", "chunked", "onepass"])
    for m in a.methods:
        prof.profile(m, 64, 48, 1000, a)
    printed = capsys.readouterr().out
    assert "## chunked  D=48 V=1000 N=64" in printed and "forward" in printed.split("## onepass")[0]
    assert "## onepass" in printed and "fwd+bwd" in printed and "aten::mm" in printed
