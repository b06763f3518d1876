"""The command line's parser for each command, whose errors end with what the line likely meant:
a flag the command lacks named as prefopt calls it (``--learning-rate: prefopt calls it --lr``)
or as its nearest flag, and a word no flag takes named with the flag it needs (``pairs.jsonl:
give it as --data pairs.jsonl``), also where argparse stops first at a required flag missing."""
from __future__ import annotations

import argparse
from pathlib import Path


class CommandParser(argparse.ArgumentParser):
    """A command's parser, whose errors end with hints for what the command line likely meant:
    a flag it lacks (``--learning-rate: prefopt calls it --lr``) and a word no flag takes
    (``pairs.jsonl: give it as --data pairs.jsonl``)."""

    argv: tuple[str, ...] = ()  # the command line being parsed: each parser's own, set by prefopt.cli.parse_args

    def error(self, message: str):
        actions = {s: a for a in self._actions for s in a.option_strings}
        flags = list(actions)
        hints = [f"{w.split('=')[0]}: {hint}" for w in self.argv if w.startswith("--") and not _flag_of(w, flags)
                 for hint in [_flag_hint(w.split("=")[0], flags)] if hint]
        given = {_flag_of(w, flags) for w in self.argv if w.startswith("-")}
        hints += [f"{w}: {hint}" for w in _strays(self.argv, actions, self.prog.split()[-1])
                  for hint in [_word_hint(w, flags, given)] if hint]
        super().error(message + "".join(f"\n  {h}" for h in hints))


def _strays(argv: list[str], actions: dict[str, argparse.Action], command: str) -> list[str]:
    """The words of ``argv`` after ``command`` that neither are flags nor a flag's values (by each
    flag's ``nargs``: one value, none, or all up to the next flag)."""
    words = argv[argv.index(command) + 1:] if command in argv else []
    out, takes = [], 0  # takes: how many more words the last flag takes (-1: all up to the next flag)
    for w in words:
        if w.startswith("-") and len(w) > 1 and not _number(w):
            action = actions.get(_flag_of(w, list(actions)))
            nargs = None if action is None else action.nargs
            takes = 0 if "=" in w or action is None or nargs == 0 else (-1 if nargs in ("+", "*") else
                                                                        nargs if isinstance(nargs, int) else 1)
        elif takes:
            takes -= takes > 0
        else:
            out.append(w)
    return out


def _flag_of(word: str, flags: list[str]) -> str | None:
    """The flag ``word`` (``--lr=3e-4`` too) gives: itself, or the one flag it begins (argparse takes
    ``--out`` for ``--output``); None where it is none of ``flags``."""
    name = word.split("=")[0]
    if name in flags:
        return name
    begun = [f for f in flags if f.startswith("--") and f.startswith(name)] if name.startswith("--") else []
    return begun[0] if len(begun) == 1 else None


def _number(word: str) -> bool:
    """Whether ``word`` is a number (``-1``, a flag's negative value), not a flag."""
    try:
        float(word)
    except ValueError:
        return False
    return True


def _flag_hint(flag: str, flags: list[str]) -> str:
    """``prefopt calls it --lr`` for another library's name of a flag (``--learning-rate``),
    ``did you mean '--beta'?`` for a near miss, else ``""``."""
    from .hints import closest
    from .train.config_file import OTHER_NAMES

    other = "--" + OTHER_NAMES.get(flag[2:].replace("-", "_"), "").replace("_", "-")
    if other in flags:
        return f"prefopt calls it {other}"
    # compared without the dashes, which every flag shares: --model is not near --help
    close = closest(flag.lstrip("-"), [f.lstrip("-") for f in flags if f.startswith("--")])
    return f"did you mean '--{close}'?" if close else ""


def _word_hint(word: str, flags: list[str], given: set[str]) -> str:
    """``give it as --data pairs.jsonl`` for a data file named without its flag (``prefopt dpo
    pairs.jsonl``: argparse says only "unrecognized arguments"), ``give it as --model DIR`` for a
    model's folder, where the command has that flag and the line does not give it; else ``""``."""
    import shlex

    from .data.readers import is_data_file_name

    path = Path(word)
    try:
        if "--model" in flags and "--model" not in given and (path / "config.json").is_file():
            return f"give it as --model {shlex.quote(word)}"
        if "--data" in flags and "--data" not in given and (path.is_file() or is_data_file_name(path)):
            return f"give it as --data {shlex.quote(word)}"
    except OSError:  # a word too long to be a file's name (a prompt given without --prompt)
        pass
    return ""
