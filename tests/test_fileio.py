"""Atomic writes: the data reaches the disk before the rename, the rename after it, and a failed
write leaves the old file whole and no temporary file behind."""
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from prefopt.fileio import replace_dir, write_json_atomic, write_text_atomic
from prefopt.model.safetensors_io import save_file_atomic

pytestmark = pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="reads fds' paths from /proc")


@pytest.fixture
def calls(monkeypatch):
    """Every fsync (by the path its descriptor is open on) and rename, in order."""
    seen = []
    fsync, replace, rename = os.fsync, os.replace, Path.rename
    monkeypatch.setattr(os, "fsync", lambda fd: seen.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))) or fsync(fd))
    monkeypatch.setattr(os, "replace", lambda a, b: seen.append(("rename", str(a), str(b))) or replace(a, b))
    monkeypatch.setattr(Path, "rename", lambda a, b: seen.append(("rename", str(a), str(b))) or rename(a, b))
    return seen


@pytest.mark.parametrize("write", [
    lambda p: write_text_atomic(p, "hello\n"),
    lambda p: write_json_atomic(p, {"a": 1}),
    lambda p: save_file_atomic({"w": torch.ones(3)}, p),
])
def test_the_data_is_on_the_disk_before_the_rename_and_the_rename_after(tmp_path, calls, write):
    """A rename whose file's data was still in the page cache can survive a power cut as an empty
    file under the final name: a checkpoint that looks whole (safetensors' files were renamed
    without an fsync)."""
    path = tmp_path / "f"
    write(path)
    tmp = str(tmp_path / f".f.tmp-{os.getpid()}")
    assert calls == [("fsync", tmp), ("rename", tmp, str(path)), ("fsync", str(tmp_path))]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    import safetensors.torch

    path = tmp_path / "w.safetensors"
    save_file_atomic({"w": torch.ones(2)}, path)

    def disk_full(tensors, filename, metadata=None):  # half a file written, then the disk is full
        Path(filename).write_bytes(b"\0" * 100)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", disk_full)
    with pytest.raises(OSError, match="No space left"):
        save_file_atomic({"w": torch.zeros(2)}, path)
    assert torch.equal(load_file(path)["w"], torch.ones(2))
    write_text_atomic(tmp_path / "t", "old")
    with pytest.raises(TypeError):
        write_text_atomic(tmp_path / "t", None)
    assert (tmp_path / "t").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t", "w.safetensors"]


def test_a_folder_put_in_place_is_synced_after_its_rename(tmp_path, calls):
    (tmp_path / "final.tmp").mkdir()
    (tmp_path / "final.tmp" / "x").write_text("new")
    replace_dir(tmp_path / "final.tmp", tmp_path / "final")
    assert calls[-1] == ("fsync", str(tmp_path)) and calls[-2][0] == "rename"
    assert (tmp_path / "final" / "x").read_text() == "new"
