"""Exceptions that carry more than their message come back whole from another process."""
import multiprocessing
import pickle
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from prefopt.data.decoding import EncodingError
from prefopt.data.feedback import NoMismatch
from prefopt.data.records import DataError, FieldError
from prefopt.data.sft import LoadReport, NoRecordsError
from prefopt.train.diverged import Diverged
from prefopt.train.out_of_memory import OutOfMemory

RAISED = [
    DataError("notes.jsonl", 7, "chosen", "identical to rejected"),
    DataError(Path("a folder"), None, None, "no data files"),
    EncodingError("triage.csv", 25, "not utf-8 text (byte 0xde at column 31)", "--encoding cp1252", "'#BO\u00de!'"),
    FieldError("completion", "empty"),
    NoRecordsError("pairs.jsonl", 1, "prompt", "missing", LoadReport(Path("pairs.jsonl"), n_read=3, skipped=[
        DataError("pairs.jsonl", 1, "prompt", "missing")])),
    OutOfMemory("out of memory in step 3", what="tried to allocate 2 GiB", when="after 2 of 4 steps", layers=30,
                weights=True),
    Diverged("the loss is NaN", what="in step 3 of 40: its gradients are not finite"),
    NoMismatch("no mismatched completion for example 4", index=4),
]


def _raise(e: BaseException) -> None:
    raise e


def _same(a: BaseException, b: BaseException) -> bool:
    """The same class, message and attributes (by repr: a report's errors compare by identity)."""
    return type(a) is type(b) and str(a) == str(b) and a.args == b.args and repr(vars(a)) == repr(vars(b))


@pytest.mark.parametrize("e", RAISED, ids=lambda e: type(e).__name__)
def test_an_error_pickles_with_its_message_and_every_attribute(e):
    """DataError and its kin took (path, line, field, message): unpickled as ``cls(message)`` they
    failed with a TypeError in place of the bad record's place; OutOfMemory came back without the
    allocation that failed or when."""
    back = pickle.loads(pickle.dumps(e))
    assert _same(e, back)
    assert back.__class__.__mro__ == e.__class__.__mro__ and isinstance(back, ValueError | MemoryError)


def test_an_error_raised_in_a_worker_process_is_the_one_raised():
    """A pool that loads data in workers (a user's ProcessPoolExecutor) sees the record's error
    with its file, line and field: an error of this kind broke the pool, no message."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork")) as pool:
        for e in (RAISED[0], RAISED[2], RAISED[5]):
            with pytest.raises(type(e)) as caught:
                pool.submit(_raise, e).result()
            assert _same(e, caught.value)
