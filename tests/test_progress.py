"""prefopt._deps.progress: tqdm's bar, redrawn every 0.1 s on a terminal but only every
LOG_SECONDS where it writes to a file or a pipe (a scheduler's log), whose every redraw stays."""
import io
import sys
import time
import types

import pytest

from prefopt._deps import LOG_SECONDS, progress

pytest.importorskip("tqdm")


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def _frames(out, steps=40, pause=0.01):
    bar = progress(total=steps, desc="train", file=out)
    for i in range(steps):
        time.sleep(pause)
        bar.set_postfix(loss=f"{1 / (i + 1):.4f}", refresh=False)
        bar.update(1)
    bar.close()
    return [f for f in out.getvalue().split("\r") if f.strip()]


def test_a_log_file_gets_the_start_and_the_end_and_a_terminal_every_redraw(monkeypatch):
    monkeypatch.delitem(sys.modules, "ipykernel", raising=False)
    monkeypatch.setattr("prefopt._deps.LOG_SECONDS", 60.0)
    logged = _frames(io.StringIO())
    assert len(logged) == 2 and "0/40" in logged[0] and "40/40" in logged[-1] and "loss=0.0250" in logged[-1]
    shown = _frames(_Terminal())
    assert len(shown) > 3 and "40/40" in shown[-1]  # tqdm's own 0.1 s


def test_a_notebooks_output_is_watched_as_a_terminal_is(monkeypatch):
    """In Jupyter (ipykernel loaded) stderr is no terminal but is watched: tqdm's own interval."""
    monkeypatch.setitem(sys.modules, "ipykernel", types.ModuleType("ipykernel"))
    assert progress(total=1, file=io.StringIO()).mininterval == 0.1


def test_an_interval_asked_for_is_kept_and_the_default_is_long(monkeypatch):
    monkeypatch.delitem(sys.modules, "ipykernel", raising=False)
    assert LOG_SECONDS >= 10
    assert progress(total=1, file=io.StringIO(), mininterval=0.5).mininterval == 0.5
    assert progress(total=1, file=io.StringIO()).mininterval == LOG_SECONDS
