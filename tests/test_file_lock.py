"""``prefopt.fileio.file_lock``: one holder at a time, on Linux (flock, across processes) and on
Windows (msvcrt.locking of the first byte, here a stand-in that keeps a table of held files)."""
import builtins
import subprocess
import sys
import threading
import time
import types

import pytest

from prefopt.fileio import Held, file_lock

HOLD = """
import sys, time
from prefopt.fileio import file_lock
with file_lock(sys.argv[1], note="holder"):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def test_another_process_holding_it_is_told_or_waited_for(tmp_path):
    lock = tmp_path / "run.lock"
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(lock), "1.5"], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    with pytest.raises(Held):
        with file_lock(lock, wait=False):
            pass
    t = time.perf_counter()
    with file_lock(lock, note="me"):  # waits for the holder to let go
        assert time.perf_counter() - t > 0.3 and lock.read_text() == "me"
    p.wait(10)


@pytest.fixture
def windows(monkeypatch):
    """No fcntl; an msvcrt whose locking() holds a file's first byte per open file name."""
    held: dict[str, int] = {}
    opened: dict[int, str] = {}
    real_open = builtins.open

    def tracking_open(file, *a, **k):
        f = real_open(file, *a, **k)
        opened[f.fileno()] = str(file)
        return f

    def locking(fd, mode, nbytes):
        name = opened[fd]
        assert nbytes == 1
        if mode == msvcrt.LK_UNLCK:
            assert held.pop(name) == fd
        elif name in held:
            raise OSError(36, "Resource deadlock avoided")
        else:
            held[name] = fd

    msvcrt = types.SimpleNamespace(LK_NBLCK=2, LK_UNLCK=0, locking=locking)
    real_import = builtins.__import__
    monkeypatch.setattr(builtins, "__import__", lambda name, *a, **k: (
        (_ for _ in ()).throw(ImportError(name)) if name == "fcntl" else
        msvcrt if name == "msvcrt" else real_import(name, *a, **k)))
    monkeypatch.setattr("prefopt.fileio.open", tracking_open, raising=False)
    return held


def test_on_windows_the_first_byte_is_locked_and_let_go(tmp_path, windows):
    lock = tmp_path / "run.lock"
    with file_lock(lock, note="first"):
        assert list(windows) == [str(lock)] and lock.read_text() == "first"
        with pytest.raises(Held):
            with file_lock(lock, wait=False):
                pass
    assert windows == {}  # let go when the block ends
    done = []

    def waiter():
        with file_lock(lock, note="second"):
            done.append(lock.read_text())

    with file_lock(lock):
        t = threading.Thread(target=waiter)
        t.start()
        time.sleep(0.5)
        assert not done  # waiting, retrying every 0.2 s
    t.join(5)
    assert done == ["second"] and windows == {}
