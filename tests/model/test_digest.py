"""prefopt.model.digest: which weights a local model folder (or GGUF file's import) holds, by their bytes,
read once and kept in prefopt's cache until a file is saved again."""
import hashlib
import json
import os
import shutil

import pytest

from prefopt.model import digest
from prefopt.model.digest import CACHE, weights_sha256


def _model(folder, weights=b"weights", config=b'{"model_type": "llama"}'):
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(weights)
    (folder / "config.json").write_bytes(config)
    (folder / "tokenizer.json").write_text("{}")  # (not weights: outside the digest)
    return folder


def _by_hand(*files):
    h = hashlib.sha256()
    for name, data in files:
        h.update(f"{name}\0{len(data)}\0".encode() + data)
    return h.hexdigest()


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFOPT_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_the_digest_is_each_file_by_name_size_and_bytes_and_is_the_same_for_a_copy(tmp_path, home):
    model = _model(tmp_path / "m")
    want = _by_hand(("config.json", b'{"model_type": "llama"}'), ("model.safetensors", b"weights"))
    assert weights_sha256(model) == want == weights_sha256(str(model) + "/")
    copy = tmp_path / "elsewhere" / "m"
    shutil.copytree(model, copy)
    assert weights_sha256(copy) == want
    (copy / "tokenizer.json").write_text('{"changed": 1}')
    assert weights_sha256(copy) == want
    other = _model(tmp_path / "other", weights=b"other weights")
    assert weights_sha256(other) != want
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF bytes")
    assert weights_sha256(gguf) is None  # (not imported yet: its weights are the folder it loads from)
    assert digest.gguf_file_sha256(gguf) == _by_hand(("m.gguf", b"GGUF bytes"))  # (what an earlier prefopt gave)
    assert digest.gguf_file_sha256(model) is None
    assert weights_sha256("org/a-hub-model") is None and weights_sha256(None) is None
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no weights here")
    assert weights_sha256(tmp_path / "empty") is None  # (not the digest of nothing, which every such folder shares)
    kept = json.loads((home / CACHE).read_text())
    assert kept[str(model.resolve())]["sha256"] == want and kept[str(copy.resolve())]["sha256"] == want


def test_a_kept_digest_is_not_read_again_until_a_file_is_saved_again(tmp_path, home, monkeypatch):
    model = _model(tmp_path / "m")
    first = weights_sha256(model)
    read = []
    real = digest._digest
    monkeypatch.setattr(digest, "_digest", lambda files, bar: read.append(files) or real(files, bar))
    assert weights_sha256(model) == first and read == []
    weights = model / "model.safetensors"
    weights.write_bytes(b"new weights")  # saved again: its size (and time) changed
    assert weights_sha256(model) == _by_hand(("config.json", b'{"model_type": "llama"}'),
                                             ("model.safetensors", b"new weights"))
    assert len(read) == 1
    st = weights.stat()
    weights.write_bytes(b"New weights")  # the same size...
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # ...a later time
    assert weights_sha256(model) != first and len(read) == 2
    assert weights_sha256(model) and len(read) == 2


def test_a_damaged_or_unwritable_cache_costs_a_reading_never_a_wrong_digest(tmp_path, home, monkeypatch):
    model = _model(tmp_path / "m")
    want = weights_sha256(model)
    (home / CACHE).write_text('{"cut short')
    assert weights_sha256(model) == want
    assert json.loads((home / CACHE).read_text())[str(model.resolve())]["sha256"] == want  # written afresh
    (home / CACHE).write_text(json.dumps({str(model.resolve()): {"files": "not a stamp", "sha256": "0" * 64}}))
    assert weights_sha256(model) == want

    def refused(*a, **k):
        raise PermissionError("read-only")

    monkeypatch.setattr(digest, "write_json_atomic", refused)
    other = _model(tmp_path / "other", weights=b"other")
    assert weights_sha256(other) == _by_hand(("config.json", b'{"model_type": "llama"}'),
                                             ("model.safetensors", b"other"))


def test_a_large_model_shows_a_bar_while_it_is_read(tmp_path, home, monkeypatch, capsys):
    pytest.importorskip("tqdm")
    model = _model(tmp_path / "m", weights=b"w" * 5000)
    monkeypatch.setattr(digest, "BAR_BYTES", 1000)
    weights_sha256(model)
    assert "hashing the model's weights" in capsys.readouterr().err
    weights_sha256(_model(tmp_path / "quiet", weights=b"w" * 5000), show_progress=False)
    assert "hashing" not in capsys.readouterr().err
    monkeypatch.setattr(digest, "BAR_BYTES", 1 << 30)
    weights_sha256(_model(tmp_path / "small", weights=b"w" * 5000))
    assert "hashing" not in capsys.readouterr().err


def test_a_hub_id_is_its_snapshot_in_the_local_hub_cache_and_none_where_it_is_not_there(tmp_path, home, monkeypatch):
    """As the hub lays a download out (files linked to blobs under snapshots/<commit>, refs/main
    naming it), read offline: the same digest as the files in a plain folder; nothing downloaded."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    repo = tmp_path / "hub" / "models--someorg--tiny"
    snap = repo / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for name, data in (("model.safetensors", b"weights"), ("config.json", b'{"model_type": "llama"}')):
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snap / name).symlink_to(os.path.relpath(blob, snap))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    plain = _model(tmp_path / "plain")
    assert weights_sha256("someorg/tiny") == weights_sha256(plain) is not None
    assert str(snap.resolve()) in json.loads((home / CACHE).read_text())
    assert weights_sha256("someorg/not-downloaded") is None


def test_a_gguf_file_is_the_folder_it_is_imported_into_and_none_before_or_once_saved_again(tmp_path, home):
    """A GGUF file given as the model loads from its import, so that is its digest, as an adapter
    trained on it records it: the same for the file's name and the folder's; None before its first
    use, and once the file is saved again (its next use imports it anew)."""
    from prefopt.model.hub import resolve_model_dir
    from tests._tiny import build_hf_model, write_tiny_gguf

    build_hf_model(tmp_path / "hf")
    gguf = write_tiny_gguf(tmp_path / "hf", tmp_path / "tiny.gguf")
    assert weights_sha256(gguf) is None
    folder = resolve_model_dir(gguf)
    assert weights_sha256(gguf) == weights_sha256(folder) == weights_sha256(str(gguf)) is not None
    assert weights_sha256(gguf) != digest.gguf_file_sha256(gguf)
    os.utime(gguf, ns=(gguf.stat().st_atime_ns, gguf.stat().st_mtime_ns + 10**9))
    assert weights_sha256(gguf) is None and weights_sha256(folder) is not None
