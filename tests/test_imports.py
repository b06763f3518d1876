"""Every module imports on its own, and the core never imports the task layer."""
import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import prefopt

PKG = Path(prefopt.__file__).parent
MODULES = sorted(m.name for m in pkgutil.walk_packages([str(PKG)], prefix="prefopt."))
UPPER_LAYERS = ("prefopt.tasks", "prefopt.evaluate", "prefopt.cli")


@pytest.mark.parametrize("name", MODULES)
def test_module_imports(name):
    importlib.import_module(name)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    pkg = ".".join(["prefopt", *path.relative_to(PKG).parts[:-1]])
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                found.add(".".join(base + ([node.module] if node.module else [])))
            else:
                found.add(node.module)
    return found


def test_core_never_imports_upper_layers():
    core = [p for p in PKG.rglob("*.py") if p.relative_to(PKG).parts[0] not in ("tasks", "evaluate", "cli.py")]
    assert core
    for path in core:
        bad = {m for m in _imports(path) if m.startswith(UPPER_LAYERS)}
        assert not bad, f"{path.relative_to(PKG)} imports {bad}"


def test_public_api():
    from prefopt import DPOTrainer, SFTTrainer, load_model, load_tokenizer  # noqa: F401

    assert callable(prefopt.load_model) and callable(prefopt.load_tokenizer)
    assert "Example" in DPOTrainer.__doc__ and issubclass(DPOTrainer, prefopt.train.Trainer)
