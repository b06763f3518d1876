"""A context variable set for the span of a block (which sheet, which encoding, whose words)."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TypeVar

T = TypeVar("T")


@contextmanager
def holding(var: ContextVar[T], value: T) -> Iterator[None]:
    """Within the block, ``var`` holds ``value``; after it, what it held before."""
    token = var.set(value)
    try:
        yield
    finally:
        var.reset(token)
