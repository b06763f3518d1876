"""The compiled (not interpreted) Triton kernels build for real CUDA targets, without a GPU.

CI has no GPU, and the interpreter accepts code the compiler may not. Triton compiles ahead of
time for a named target with its bundled ``ptxas``, so here the kernels go all the way to a
cubin for Hopper (sm_90) and Ampere (sm_80) with the default tiles, the arguments specialised
as a real launch specialises them; half precision must land on the tensor cores (``wgmma`` on
Hopper, ``mma.sync`` on Ampere), fed by pipelined 16-byte copies, without spilling registers.
The one-pass loss's row kernels must read the logits with 16-byte vector loads, unspilled, and
so must its backward's gradient scaling (``_scale``), which branches around its reads and writes
(taken where the scalar is 1).
"""
import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests._failure import failure

triton = pytest.importorskip("triton")
if not all(list(Path(triton.__file__).parent.glob(f"backends/nvidia/bin/{t}*")) for t in ("ptxas", "cuobjdump")):
    pytest.skip("this triton has no bundled ptxas/cuobjdump", allow_module_level=True)
if "constexprs" not in inspect.signature(triton.compiler.ASTSource).parameters:  # before Triton 3.3
    pytest.skip(f"triton {triton.__version__}'s ASTSource predates the API _compile_kernels.py uses",
                allow_module_level=True)

SCRIPT = Path(__file__).with_name("_compile_kernels.py")
ROOT = Path(__file__).resolve().parents[2]


def _compile(arch: int, dtype: str) -> dict:
    out = subprocess.run([sys.executable, str(SCRIPT), str(arch), dtype], capture_output=True, text=True,
                         cwd=ROOT, timeout=600)
    assert out.returncode == 0, failure(out)
    return {r["kernel"]: r for r in map(json.loads, out.stdout.strip().splitlines())}


SHARED_MAX = {90: 227 * 1024, 80: 163 * 1024}  # per block, H100 and A100


@pytest.mark.parametrize("arch,dtype,mma", [(90, "bf16", "wgmma"), (80, "fp16", "mma_sync"), (90, "fp32", None),
                                            (80, "fp32", None)])
def test_kernels_compile_to_cubin(arch, dtype, mma):
    rows = _compile(arch, dtype)
    row_kernels = ("_row_lse", "_row_join", "_row_dlogits", "_row_rescale", "_row_dlogits[lse]", "_row_rescale[lse]",
                   "_row_rescale[split]", "_row_lse_exp", "_scale")
    assert set(rows) == {"_fwd", "_dlogits", *row_kernels}
    for name in row_kernels:  # the row passes: bandwidth-bound; dlogits and rescale reading split parts or one lse
        r = rows.pop(name)
        assert r["stack"] == 0 and 0 < r["reg"] <= 255, r
        if name != "_row_join":  # (it reads a few values a row)
            assert r["vector_loads"] > 0, f"{name}: the logits are not read with 16-byte vector loads"
        if name == "_scale":  # its loads and stores behind a branch: none where the scalar is 1
            assert r["branches"] > 0, r
    for r in rows.values():
        assert r["shared"] <= SHARED_MAX[arch], f"{r['kernel']} needs {r['shared']} bytes of shared memory"
        assert 0 < r["reg"] <= 255
        if mma:
            assert r[mma], f"{r['kernel']} does not use {mma} for {dtype} on sm_{arch}"
            assert r["stack"] == 0, f"{r['kernel']} spills {r['stack']} bytes per thread on sm_{arch}"
            assert r["async_copies_16B"] > 0, f"{r['kernel']}: loads are not pipelined 16-byte copies"
        else:  # fp32 uses IEEE dots, not TF32 tensor cores (slow, for exactness; may spill)
            assert not (r["wgmma"] or r["mma_sync"])
