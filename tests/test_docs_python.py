"""Every Python code block in the README and the docs compiles, imports only names prefopt has,
and calls prefopt's functions and classes with arguments they take (each keyword by name, no
more positional ones than they have), so a renamed argument or a moved name cannot leave the
documented examples behind, as ``test_docs_commands.py`` keeps the documented commands."""
import ast
import importlib
import inspect
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def blocks(path: Path) -> list[tuple[int, str]]:
    """``(line of the opening fence, source)`` for each fenced ``python`` block of the file."""
    out, start, body = [], None, []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        text = line.strip()
        if start is None and text == "```python":
            start, body = n, []
        elif start is not None and text.startswith("```"):
            out.append((start, textwrap.dedent("\n".join(body))))  # a block in a list item is indented
            start = None
        elif start is not None:
            body.append(line)
    return out


def _imported(tree: ast.AST, problems: list[str]) -> dict[str, object]:
    """The objects the block's ``from prefopt... import`` lines bind, by local name; a name the
    module lacks goes into ``problems``."""
    names = {}
    for node in ast.walk(tree):
        if not (isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "prefopt"):
            continue
        module = importlib.import_module(node.module)
        for alias in node.names:
            try:
                names[alias.asname or alias.name] = getattr(module, alias.name)
            except AttributeError:
                try:
                    names[alias.asname or alias.name] = importlib.import_module(f"{node.module}.{alias.name}")
                except ImportError:
                    problems.append(f"line {node.lineno}: {node.module} has no {alias.name!r}")
    return names


def _call_problem(call: ast.Call, target: object) -> str | None:
    """Why ``call`` cannot bind to ``target``'s signature, or None. Starred and ``**`` arguments
    (their contents unknown) are left out."""
    try:
        sig = inspect.signature(target)
    except (TypeError, ValueError):  # a builtin without one
        return None
    args = [None for a in call.args if not isinstance(a, ast.Starred)]
    kwargs = {k.arg: None for k in call.keywords if k.arg is not None}
    try:
        sig.bind_partial(*args, **kwargs)
    except TypeError as e:
        return f"line {call.lineno}: {ast.unparse(call.func)}(...): {e}"
    return None


def problems(source: str, name: str = "<block>") -> list[str]:
    """What in ``source`` today's prefopt would refuse: a syntax error, a name its modules lack,
    an argument its callables do not take."""
    try:
        tree = ast.parse(source, name)
    except SyntaxError as e:
        return [f"line {e.lineno}: {e.msg}"]
    found: list[str] = []
    names = _imported(tree, found)
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        target = None
        if isinstance(node.func, ast.Name):
            target = names.get(node.func.id)
        elif isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Name):
            owner = names.get(node.func.value.id)
            if inspect.ismodule(owner) or inspect.isclass(owner):  # prefopt.x.f(...), Class.method(...)
                target = getattr(owner, node.func.attr, None)
                if target is None:
                    found.append(f"line {node.lineno}: {node.func.value.id} has no {node.func.attr!r}")
        if callable(target) and (why := _call_problem(node, target)):
            found.append(why)
    return found


ALL = [(path, line, source) for path in FILES for line, source in blocks(path)]


def test_the_docs_hold_python_blocks_and_the_check_finds_what_is_wrong():
    assert len(ALL) >= 8 and {p.name for p, _, _ in ALL} >= {"README.md", "dpo.md", "kernels.md", "training.md"}
    assert problems("from prefopt import DPOConfig\nDPOConfig(model='m', betta=0.1)") == [
        "line 2: DPOConfig(...): got an unexpected keyword argument 'betta'"]
    assert problems("from prefopt.kernels import sequence_logprobs\nsequence_logprobs(1, 2, 3, 4, 5)")[0].startswith(
        "line 2: sequence_logprobs(...): too many positional arguments")
    assert problems("from prefopt import no_such_thing") == ["line 1: prefopt has no 'no_such_thing'"]
    assert problems("from prefopt import train\ntrain.run_nothing()") == ["line 2: train has no 'run_nothing'"]
    assert problems("x = (") and problems("from prefopt import DPOConfig\nDPOConfig(model='m', beta=0.1)") == []


@pytest.mark.parametrize("path,line,source", ALL, ids=[f"{p.name}:{n}" for p, n, _ in ALL])
def test_each_documented_python_block_fits_todays_api(path, line, source):
    found = problems(source, f"{path.name}:{line}")
    assert not found, f"{path.relative_to(ROOT)}, the block at line {line}: " + "; ".join(found)
