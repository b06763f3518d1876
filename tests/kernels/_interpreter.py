"""Whether this Triton's CPU interpreter runs kernels like ours correctly, with this numpy.

Some releases' interpreters break with newer numpy, whatever the kernel: Triton 3.0 to 3.6 raise
"only 0-dimensional arrays can be converted to Python scalars" on a loop bounded by a kernel
argument under numpy 2.4, and Triton 3.0 and 3.1 compute wrong dot products under numpy 2.2. The
tests that run prefopt's kernels through the interpreter skip with this reason then, instead of
failing for a fault that is not prefopt's. The probe is a generic tiled dot (no prefopt code), so
a fault in prefopt's kernels still fails their tests. With the versions in ``constraints.txt``
(what CI installs) the probe must pass: ``test_triton.py`` checks that.

``quicken_helper_calls`` (applied by ``tests/conftest.py``) takes a repeated step out of the
interpreter's calls of jitted functions: the interpreted kernel tests run in about half the time.
"""

import functools
import os

try:
    import triton
    import triton.language as tl
except ImportError:  # the tests that need it skip on their own
    triton = None
else:
    @triton.jit
    def _tiled_dot(A, B, C, M, K, BLOCK: tl.constexpr):
        rows, cols = tl.arange(0, BLOCK), tl.arange(0, BLOCK)
        acc = tl.zeros([BLOCK, BLOCK], tl.float32)
        for k0 in range(0, K, BLOCK):  # bounded by an argument, as prefopt's loops are
            ks = k0 + tl.arange(0, BLOCK)
            a = tl.load(A + rows[:, None] * K + ks[None, :], mask=(rows[:, None] < M) & (ks[None, :] < K), other=0.0)
            b = tl.load(B + cols[:, None] * K + ks[None, :], mask=(cols[:, None] < M) & (ks[None, :] < K), other=0.0)
            acc = tl.dot(a, tl.trans(b), acc, input_precision="ieee")
        tl.store(C + rows[:, None] * M + cols[None, :], acc, mask=(rows[:, None] < M) & (cols[None, :] < M))


@functools.cache
def interpreter_problem() -> str | None:
    """``None`` when the interpreter works here; else why the interpreted-kernel tests skip."""
    if triton is None:
        return "triton is not installed"
    if os.environ.get("TRITON_INTERPRET") != "1":
        return "TRITON_INTERPRET is not 1: the kernels are compiled, not interpreted"
    import numpy
    import torch

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(12, 40, generator=g), torch.randn(12, 40, generator=g)
    c = torch.zeros(12, 12)
    versions = f"triton {triton.__version__} with numpy {numpy.__version__}"
    try:
        _tiled_dot[(1,)](a, b, c, 12, 40, BLOCK=16)
    except Exception as e:  # noqa: BLE001  (any failure of the interpreter itself)
        return f"Triton's interpreter fails here ({versions}): {type(e).__name__}: {str(e)[:160]}"
    err = (c - a @ b.T).abs().max().item()
    if not err < 1e-4:
        return f"Triton's interpreter computes a wrong dot product here ({versions}; max error {err:.3g})"
    return None


def quicken_helper_calls() -> bool:
    """Make Triton's interpreter call jitted functions from inside a running kernel without
    patching the language modules again; returns whether it could (else nothing changes).

    When a kernel is launched the interpreter patches ``triton.language``'s builtins into
    interpreted ones (``_patch_lang``, undone when the grid is done), and again on every call of a
    jitted function from inside it (prefopt's helpers such as ``_split_lse``, and Triton's own
    ``tl.sum``, ``tl.max``, ``tl.zeros``): about 3 ms a call (``inspect.getmembers`` over the
    modules), thousands of calls in a test, about half of an interpreted kernel test's time. While
    a grid runs, a call whose language modules (``tl``, ``tl.core`` among its globals) are all
    patched already skips the repeat; one that names a module not yet patched patches as before.
    Only the interpreter's speed changes: the kernels' code and values and the compiled path are
    untouched. Where Triton lacks these internals (another release) nothing changes."""
    if triton is None:
        return False
    from triton.runtime import interpreter

    patch, grid_type = getattr(interpreter, "_patch_lang", None), getattr(interpreter, "GridExecutor", None)
    scope_type = getattr(interpreter, "_LangPatchScope", None)
    if getattr(patch, "quickened", False):
        return True
    if patch is None or grid_type is None or scope_type is None:
        return False
    modules = (tl, tl.core)
    launched = {"depth": 0, "patched": frozenset()}  # ids of the modules patched since the grid began
    langs: dict = {}  # a jitted function -> ids of the language modules among its globals

    def quick_patch(fn):
        if not launched["depth"]:
            return quick_patch.original(fn)
        if fn not in langs:
            langs[fn] = frozenset(id(v) for v in fn.__globals__.values() if any(v is m for m in modules))
        if langs[fn] <= launched["patched"]:
            return scope_type()  # nothing patched, nothing to undo
        scope = quick_patch.original(fn)
        launched["patched"] |= langs[fn]
        return scope

    def grid_call(self, *args, **kwargs):
        launched["depth"] += 1
        try:
            return run_grid(self, *args, **kwargs)
        finally:
            launched["depth"] -= 1
            if not launched["depth"]:
                launched["patched"] = frozenset()

    run_grid = grid_type.__call__
    quick_patch.quickened, quick_patch.original = True, patch
    interpreter._patch_lang = quick_patch
    grid_type.__call__ = grid_call
    return True
