"""Compile the Triton kernels ahead of time for a CUDA target, with no GPU: ``python
_compile_kernels.py ARCH DTYPE`` prints one JSON line per kernel: whether the PTX uses warpgroup
MMA ``wgmma`` or warp MMA ``mma.sync``, shared memory bytes, registers and stack bytes per thread
(``cuobjdump -res-usage``; stack means spills) and the number of 16-byte asynchronous copies
(``LDGSTS...128`` in the SASS: pipelined, vectorised loads). The tiles and warps are
``triton_logprobs.defaults(dtype)`` (the row kernels: ``_rows.BLOCKS``), and the arguments are
specialised as a real launch specialises them (pointers 16-byte aligned; D, V and the split
width multiples of 16, and so the element count a gradient scaling sees, V·D; N not). Run it in
a process without ``TRITON_INTERPRET`` (the kernels must be ``triton.jit``-compiled, not
interpreted)."""
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)
import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from prefopt.kernels import _triton_kernels as k  # noqa: E402
from prefopt.kernels._rows import BLOCKS as ROW_BLOCKS  # noqa: E402
from prefopt.kernels._rows import SPLITS as ROW_SPLITS  # noqa: E402
from prefopt.kernels.triton_logprobs import LAUNCH, TILES, defaults  # noqa: E402


def _resources(cubin: bytes) -> dict:
    tool = Path(triton.__file__).parent / "backends/nvidia/bin/cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        res, sass = (subprocess.run([str(tool), flag, f.name], capture_output=True, text=True, check=True).stdout
                     for flag in ("-res-usage", "-sass"))
    out = {k.lower(): int(v) for k, v in re.findall(r"\b(REG|STACK):(\d+)", res)}
    out["async_copies_16B"] = len(re.findall(r"\bLDGSTS\.E\.[A-Z.]*128\b", sass))
    return out


def main(arch: int, dt: str) -> None:
    blocks = defaults({"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dt])
    launch = {o: blocks[o] for o in LAUNCH if o in blocks}
    consts = dict({t: blocks[t] for t in TILES}, IEEE=dt == "fp32", UPCAST=False, VOCAB_FIRST=True)
    ints = dict(N="i32", V="i32", D="i32")
    sigs = {
        k._fwd: dict(H=f"*{dt}", W=f"*{dt}", Y="*i64", M="*fp32", S="*fp32", TGT="*fp32", **ints, V_PER_SPLIT="i32"),
        k._dlogits: dict(H=f"*{dt}", W=f"*{dt}", Y="*i64", LSE="*fp32", G="*fp32", DL=f"*{dt}", **ints),
    }
    rows = {  # the one-pass loss's row kernels: fp32 logits in, default launch options
        k._row_lse: (dict(X="*fp32", Y="*i64", LSE="*fp32", TGT="*fp32", V="i32", V_PER_SPLIT="i32"),
                     {"BLOCK_V": ROW_BLOCKS["lse"]}),
        k._row_join: (dict(LSE_PARTS="*fp32", TGT_PARTS="*fp32", LSE="*fp32", LOGP="*fp32", n="i32", PART_STRIDE="i32"),
                      {"SPLITS": ROW_SPLITS, "BLOCK_R": ROW_BLOCKS["join"]}),
        k._row_dlogits: (dict(X="*fp32", Y="*i64", LSE="*fp32", G="*fp32", DL=f"*{dt}", V="i32", DL_STRIDE="i32",
                              PART_STRIDE="i32"), {"BLOCK_V": ROW_BLOCKS["dlogits"], "PARTS": ROW_SPLITS}),
        k._row_rescale: (dict(DL=f"*{dt}", Y="*i64", PART="*fp32", LSE="*fp32", V="i32", DL_STRIDE="i32",
                              PART_STRIDE="i32", V_PER_SPLIT="i32"),
                         {"BLOCK_V": ROW_BLOCKS["dlogits"], "PARTS": ROW_SPLITS, "PER_SPLIT": False}),
        k._row_lse_exp: (dict(X="*fp32", Y="*i64", LSE="*fp32", TGT="*fp32", DL=f"*{dt}", V="i32", V_PER_SPLIT="i32",
                              DL_STRIDE="i32"), {"BLOCK_V": ROW_BLOCKS["lse"]}),
        k._scale: (dict(X=f"*{dt}", S="*fp32", n="i32"), {"BLOCK": ROW_BLOCKS["scale"]}),
    }
    jobs = [(fn, sig, consts, launch) for fn, sig in sigs.items()] + [(fn, sig, c, {}) for fn, (sig, c) in rows.items()]
    jobs += [(fn, dict(rows[fn][0]), {**rows[fn][1], "PARTS": 0}, {}) for fn in (k._row_dlogits, k._row_rescale)]
    jobs.append((k._row_rescale, dict(rows[k._row_rescale][0]), {**rows[k._row_rescale][1], "PER_SPLIT": True}, {}))
    for fn, sig, const, options in jobs:
        aligned = [a for a, t in sig.items() if t.startswith("*") or a in ("V", "D", "V_PER_SPLIT", "DL_STRIDE")
                   or (fn is k._scale and a == "n")]
        attrs = {(fn.arg_names.index(a),): [["tt.divisibility", 16]] for a in aligned}
        sig.update({c: "constexpr" for c in const})
        cc = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=const, attrs=attrs),
                            target=GPUTarget("cuda", arch, 32), options=options)
        ptx = cc.asm["ptx"]
        # a (rows,) logsumexp, not parts; or each column's split's part
        name = fn.__name__ + ("[lse]" if const.get("PARTS") == 0 else "[split]" if const.get("PER_SPLIT") else "")
        print(json.dumps({"kernel": name, "wgmma": "wgmma" in ptx, "mma_sync": "mma.sync" in ptx,
                          "vector_loads": len(re.findall(r"ld\.global(?:\.\w+)*\.v4", ptx)),
                          "branches": len(re.findall(r"\bbra(?:\.uni)?\s", ptx)),
                          "shared": cc.metadata.shared, **_resources(cc.asm["cubin"])}))


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
