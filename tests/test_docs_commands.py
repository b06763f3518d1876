"""Every ``prefopt ...`` command in the README's and docs' code blocks parses with today's flags,
so a renamed or removed flag cannot leave the documentation behind. Optional parts written as
``[--flag X]`` are left out; a command abbreviated with ``...`` may lack required flags only
(``--prompt "..."`` keeps its placeholder value)."""
import re
import shlex
from pathlib import Path

import pytest

from prefopt.cli import parse_args

ROOT = Path(__file__).resolve().parents[1]
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def commands(path: Path) -> list[tuple[int, str]]:
    """``(line, command)`` for each ``prefopt`` command line in the file's fenced code blocks,
    continuation lines joined and comments dropped."""
    lines, out, fenced, i = path.read_text().splitlines(), [], False, 0
    while i < len(lines):
        text = lines[i].strip()
        if text.startswith("```"):
            fenced = not fenced
        elif fenced and re.match(r"(\$ )?(\.venv/bin/)?prefopt [a-z]", text):
            start = i
            while text.endswith("\\") and i + 1 < len(lines):
                i += 1
                text = text[:-1] + " " + lines[i].strip()
            out.append((start + 1, re.sub(r"\s+#.*$", "", text)))
        i += 1
    return out


def argv_of(command: str) -> list[str]:
    words, depth = [], 0
    for word in shlex.split(command)[1:]:
        depth += word.count("[")
        elided = word in ("...", "…") and not (words and words[-1].startswith("--"))  # "--prompt ...": a value
        if not depth and not elided:
            words.append(word)
        depth -= word.count("]")
    return words


ALL = [(path, line, cmd) for path in FILES for line, cmd in commands(path)]


def test_the_docs_hold_commands_to_check():
    assert len(ALL) >= 40 and {p.name for p, _, _ in ALL} >= {"README.md", "training.md", "evaluation.md"}
    assert argv_of("prefopt eval --task t [--limit 3] --data 'a b.csv' ...") == ["eval", "--task", "t", "--data",
                                                                               "a b.csv"]
    assert argv_of('prefopt generate ... --prompt "..."') == ["generate", "--prompt", "..."]


@pytest.mark.parametrize("path,line,command", ALL, ids=[f"{p.name}:{n}" for p, n, _ in ALL])
def test_each_documented_command_parses(path, line, command, capsys):
    try:
        parse_args(argv_of(command))
    except SystemExit as e:
        error = capsys.readouterr().err.strip().splitlines()[-1:] or [""]
        abbreviated = "..." in command or "…" in command
        if e.code and not (abbreviated and "the following arguments are required" in error[0]):
            pytest.fail(f"{path.name}:{line}: {command}\n  {error[0]}")
