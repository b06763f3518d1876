"""Names in errors: the one a user most likely meant (a name a command does not know), and the
first few of many."""
from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence


def closest(name: str, known: Iterable[str]) -> str | None:
    """The one of ``known`` that ``name`` is most likely a slip for, or None."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return close[0] if close else None


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """`` (did you mean 'beta'?)`` where ``name`` is close to one of ``known``, else ``""``."""
    close = closest(name, known)
    return f" (did you mean {close!r}?)" if close else ""


def first_few(names: Sequence[str], n: int) -> str:
    """The first ``n`` of ``names`` and how many more: ``"a, b, c and 9 more"``."""
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")
