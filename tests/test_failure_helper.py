"""tests/_failure.py: a failed subprocess's message keeps where its first error began, which a
stderr's tail alone loses under torchrun (the launcher's summary comes last)."""
import subprocess

from tests._failure import failure


def _done(stderr, code=1):
    return subprocess.CompletedProcess(["x"], code, "", stderr)


def test_the_first_error_and_the_tail_are_both_kept():
    err = ("noise\n" * 50 + "terminate called after throwing an instance of 'gloo::IoException'\n"
           + "log\n" * 2000 + "torch.distributed.elastic.multiprocessing.errors.ChildFailedError\n")
    said = failure(_done(err, -6), keep=200)
    assert said.startswith("exit code -6\nfirst error:\nterminate called after throwing")
    assert "\n[...]\n" in said and said.endswith("ChildFailedError\n") and "noise" not in said
    assert len(said) < 500


def test_a_short_stderr_is_given_once_and_without_an_error_its_tail():
    err = "warning\nTraceback (most recent call last):\n  File ...\nValueError: bad\n"
    assert failure(_done(err)) == "exit code 1\nfirst error:\n" + err[len("warning\n"):]
    assert failure(_done("x" * 50 + "end", 0), keep=10) == "exit code 0\n" + "x" * 7 + "end"
    assert failure(_done(None)) == "exit code 1\n"
    ranked = "W1206 warning\n[rank1]: Traceback (most recent call last):\n[rank1]:   File ...\n[rank1]: ValueError: x\n"
    assert failure(_done(ranked)).startswith("exit code 1\nfirst error:\n[rank1]: Traceback")
