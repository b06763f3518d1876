"""Peak memory while loading a model in fp32: prefopt against two baselines, in one run.

Each method runs in a fresh subprocess. After its imports, the process resets its
peak-RSS counter (``/proc/self/clear_refs``), loads the model, and reads ``VmHWM``.
"Extra peak" is that peak minus the RSS just before loading, as a multiple of the
weights' fp32 size; it is read again after a first forward pass, which makes loaders
that memory-map the file (transformers) page their weights in.

    python benchmarks/bench_load.py                   # SmolLM2-135M (alias smollm2-135m)
    python benchmarks/bench_load.py --model DIR       # any HF-layout folder

Methods:
- prefopt: ``prefopt.load_model`` (meta device, tensor-by-tensor ``readinto``, assign)
- transformers: ``AutoModelForCausalLM.from_pretrained(dtype=float32)``
- naive: build the model on CPU with random init, ``safetensors.torch.load_file``, ``load_state_dict``
"""
from __future__ import annotations

import argparse
import json
import platform
import re
import subprocess
import sys
import time

METHODS = ("prefopt", "transformers", "naive")


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"{field}:\s+(\d+)", f.read()).group(1)) * 1024


def worker(method: str, model_dir: str) -> dict:
    import torch

    torch.set_num_threads(2)
    if method == "prefopt":
        from prefopt import load_model

        def load():
            return load_model(model_dir, dtype=torch.float32)
    elif method == "transformers":
        from transformers import AutoModelForCausalLM

        def load():
            return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    else:
        from safetensors.torch import load_file

        from prefopt.model import ModelConfig, Transformer
        from prefopt.model.checkpoint import weight_files

        def load():
            m = Transformer(ModelConfig.from_hf(model_dir))
            for f in weight_files(__import__("pathlib").Path(model_dir)):
                m.load_state_dict(load_file(f), strict=False)
            return m

    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak-RSS counter
    before = _status("VmRSS")
    t0 = time.perf_counter()
    model = load()
    seconds = time.perf_counter() - t0
    peak = _status("VmHWM")
    with torch.no_grad():  # a first forward touches every weight (mmap-backed loaders page in here)
        model(torch.arange(16)[None])
    peak_fwd = _status("VmHWM")
    weights = sum(p.numel() * 4 for p in {id(p): p for p in model.parameters()}.values())
    return {"method": method, "seconds": seconds, "rss_before": before, "peak": peak,
            "extra_peak": peak - before, "extra_peak_fwd": peak_fwd - before, "weights_bytes": weights}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker)))
        return
    from prefopt.model import resolve_model_dir

    model_dir = str(resolve_model_dir(args.model))
    rows = []
    for m in args.methods:
        out = subprocess.run([sys.executable, __file__, "--worker", m, model_dir], capture_output=True, text=True)
        if out.returncode:
            print(f"{m}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
            continue
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    mib = 1024**2
    print(f"model: {args.model} ({model_dir})  machine: {platform.machine()}, {platform.python_version()}")
    print("| method | load time (s) | RSS before (MiB) | peak RSS, load (MiB) | extra peak, load | "
          "extra peak, load + 1st forward |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        w = r["weights_bytes"]
        print(f"| {r['method']} | {r['seconds']:.2f} | {r['rss_before'] / mib:.0f} | {r['peak'] / mib:.0f} | "
              f"{r['extra_peak'] / mib:.0f} MiB ({r['extra_peak'] / w:.2f}x) | "
              f"{r['extra_peak_fwd'] / mib:.0f} MiB ({r['extra_peak_fwd'] / w:.2f}x) |")
    if rows:
        print(f"fp32 weights: {rows[0]['weights_bytes'] / mib:.0f} MiB")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
