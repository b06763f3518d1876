"""Tests of the scripts in ``benchmarks/``, each loaded from its file (the folder is not a package)."""
import importlib.util
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def load_script(name: str):
    """``benchmarks/<name>.py`` as a module."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def run_main(name: str, monkeypatch, *argv):
    """Run ``benchmarks/<name>.py``'s ``main()`` as ``<name>.py ARGV...`` would (the folder on
    ``sys.path`` for the scripts' imports of each other, until the test ends); the module."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    mod = load_script(name)
    monkeypatch.setattr(sys, "argv", [f"{name}.py", *map(str, argv)])
    mod.main()
    return mod
