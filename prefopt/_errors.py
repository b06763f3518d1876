"""Exceptions that carry more than their message, pickled whole.

An exception is unpickled as ``cls(*e.args)`` and then given its ``__dict__``: one whose
``__init__`` takes other arguments than its message (:class:`~prefopt.data.records.DataError`
takes the file, line and field) could not be unpickled at all, and one whose extra arguments
have defaults (:class:`~prefopt.train.out_of_memory.OutOfMemory`) came back without them where
a process pool or a queue sent it from a worker. :class:`Pickled` rebuilds one without calling
``__init__``: its message and every attribute, as raised.
"""
from __future__ import annotations


class Pickled:
    """Mix into an exception class whose ``__init__`` takes more than the message."""

    def __reduce__(self):
        return _rebuilt, (type(self), self.args, self.__dict__)


def _rebuilt(cls: type, args: tuple, state: dict) -> BaseException:
    e = cls.__new__(cls, *args)
    e.args = args
    e.__dict__.update(state)
    return e
