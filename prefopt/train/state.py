"""Training checkpoints: written atomically, resumed exactly.

A checkpoint is a folder ``checkpoints/step-00000042/`` holding:

- ``trainable.safetensors``: the parameters being trained (the LoRA adapter, or all weights);
- ``optimizer.safetensors`` + ``optimizer.json``: the optimizer's state dict, its tensors
  (``"<param id>.<name>"``: AdamW's moments and step) and the rest (parameter groups, any
  number in the state) apart, so nothing is unpickled (a checkpoint from before 2026-11-30 holds
  ``optimizer.pt``, a pickle, instead: refused, with the one line that converts it, :func:`pickled_error`);
- ``rng-rank{r}.safetensors``: each rank's torch (and CUDA) RNG state;
- ``trainer_state.json``: step, Python/NumPy RNG states, config (and ``eval_owed`` where a
  signal stopped the run before the step's evaluation was done: the resume does it first).

It is written into ``step-N.tmp`` and renamed when complete, so a crash mid-save never
leaves a checkpoint that looks whole. ``latest`` names the newest one (for people: a resume takes
the newest whole checkpoint by its step, :func:`resume_point`).
"""
from __future__ import annotations

import json
import random
import shlex
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from ..fileio import check_writable, read_json, sync_folder, write_json_atomic, write_text_atomic
from ..model.safetensors_io import file_problem, save_file_atomic


def checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / "checkpoints" / f"step-{step:08d}"


def rng_states() -> tuple:
    """Every random generator's state (torch's, CUDA's, Python's, NumPy's), for :func:`set_rng_states`."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    return torch.get_rng_state(), cuda, random.getstate(), np.random.get_state()


def set_rng_states(states: tuple) -> None:
    """The generators back as :func:`rng_states` found them."""
    cpu, cuda, py, np_state = states
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)
    random.setstate(py)
    np.random.set_state(np_state)


def write_rng(tmp: Path, rank: int) -> None:
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    save_file_atomic(tensors, tmp / f"rng-rank{rank}.safetensors")


def restore_rng(ckpt: Path, rank: int, state: dict) -> None:
    rng = load_file(ckpt / f"rng-rank{rank}.safetensors")
    torch.set_rng_state(rng["torch"])
    cuda = [rng[k] for k in sorted(rng) if k.startswith("cuda")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    py = state["python_rng"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    np_state = state["numpy_rng"]
    np.random.set_state((np_state[0], np.array(np_state[1], dtype=np.uint32), *np_state[2:]))


def write_checkpoint(tmp: Path, final: Path, *, trainable: dict[str, torch.Tensor], optimizer_state: dict,
                     step: int, extra: dict[str, Any], keep: int) -> Path:
    """Rank 0's part: everything but the RNG files (each rank wrote its own), then the rename."""
    save_file_atomic(trainable, tmp / "trainable.safetensors")
    write_optimizer(optimizer_state, tmp)
    py = random.getstate()
    np_state = np.random.get_state()
    state = {"step": step, "python_rng": [py[0], list(py[1]), py[2]],
             "numpy_rng": [np_state[0], np_state[1].tolist(), *[_plain(x) for x in np_state[2:]]], **extra}
    write_json_atomic(tmp / "trainer_state.json", state)
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)  # each file in it already on the disk (atomic_path)
    sync_folder(final.parent)
    write_text_atomic(final.parent / "latest", final.name + "\n")
    _prune(final.parent, keep)
    return final


def _plain(x):
    return x.item() if hasattr(x, "item") else x


def _prune(root: Path, keep: int) -> None:
    done = sorted(p for p in root.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp"))
    for old in done[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest checkpoint in ``output_dir`` that can be resumed, or None (:func:`resume_point`)."""
    return resume_point(output_dir)[0]


def resume_point(output_dir: str | Path) -> tuple[Path | None, list[str]]:
    """``(the newest whole checkpoint or None, what is wrong with each newer one passed over)``.

    Checkpoints are taken by their step, newest first, not by ``latest`` (written after the
    rename: a crash between the two leaves it naming the one before). A ``step-N.tmp`` folder is
    one a crash stopped before its rename and is never taken. One with a file missing, cut short
    or unreadable (a disk that filled, a copy stopped halfway) is passed over for the one before,
    so a resume loses the steps since, not the run."""
    root = Path(output_dir) / "checkpoints"
    found = sorted((p for p in root.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp")), reverse=True)
    passed: list[str] = []
    for ckpt in found:
        if pickled_checkpoint(ckpt):  # not damaged: passing it over would train its steps again, or from 0
            raise pickled_error(ckpt)
        if (problem := checkpoint_problem(ckpt)) is None:
            return ckpt, passed
        passed.append(f"{ckpt.name}: {problem}")
    return None, passed


def checkpoint_problem(ckpt: Path) -> str | None:
    """Why ``ckpt`` cannot be resumed (a JSON file that does not parse, a safetensors file whose size
    is not what its header says), or None; reads headers only."""
    state, problem = _read_json(ckpt / "trainer_state.json")
    if problem:
        return problem
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        return "trainer_state.json holds no step"
    if problem := _read_json(ckpt / "optimizer.json")[1]:
        return problem
    files = ["trainable", *(f"rng-rank{r}" for r in range(int(state.get("world", 1)))), "optimizer"]
    return next((p for f in files if (p := file_problem(ckpt / f"{f}.safetensors"))), None)


def pickled_checkpoint(ckpt: Path) -> bool:
    """Whether ``ckpt`` is one from before 2026-11-30, its optimizer state a pickle (:func:`pickled_error`)."""
    return (ckpt / "optimizer.pt").is_file() and not (ckpt / "optimizer.json").exists()


def pickled_error(ckpt: Path) -> ValueError:
    """A pre-2026-11-30 checkpoint refused, with the shell line that converts its ``optimizer.pt``
    (quoted for any path) for a user who trusts the file."""
    code = ("import torch; from pathlib import Path; from prefopt.train.state import write_optimizer; "
            f"c = Path({json.dumps(str(ckpt))}); "  # (a Python string in double quotes: shlex.quote's are single)
            'write_optimizer(torch.load(c / "optimizer.pt", weights_only=True), c)')
    return ValueError(f"{ckpt} holds its optimizer state as optimizer.pt, a pickle written by prefopt before "
                      "2026-11-30; prefopt reads no pickles (loading one can run code it holds). If you trust the "
                      f"file, convert it once: python -c {shlex.quote(code)} and resume again")


def _read_json(path: Path) -> tuple[Any, str | None]:
    try:
        return read_json(path), None
    except FileNotFoundError:
        return None, f"{path.name} is missing"
    except (OSError, ValueError) as e:  # (UnicodeDecodeError and JSONDecodeError are ValueErrors)
        return None, f"{path.name} cannot be read ({e})"


def write_optimizer(sd: dict, folder: Path) -> None:
    """An optimizer state dict as ``optimizer.safetensors`` (its tensors) and ``optimizer.json``."""
    tensors: dict[str, torch.Tensor] = {}
    other: dict[str, dict] = {}
    for pid, entries in sd["state"].items():
        for key, v in entries.items():
            if torch.is_tensor(v):
                tensors[f"{pid}.{key}"] = v.detach().contiguous().cpu()
            else:
                other.setdefault(str(pid), {})[key] = v
    save_file_atomic(tensors, folder / "optimizer.safetensors")
    write_json_atomic(folder / "optimizer.json", {"param_groups": sd["param_groups"], "state": other})


def read_optimizer(folder: Path) -> dict:
    """What :func:`write_optimizer` wrote, as a state dict ``optimizer.load_state_dict`` takes."""
    meta = read_json(folder / "optimizer.json")
    state: dict[int, dict] = {}
    for name, t in load_file(folder / "optimizer.safetensors").items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = t
    for pid, entries in meta["state"].items():
        state.setdefault(int(pid), {}).update(entries)
    groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in meta["param_groups"]]
    return {"state": dict(sorted(state.items())), "param_groups": groups}


def read_checkpoint(ckpt: Path) -> tuple[dict[str, torch.Tensor], dict, dict]:
    """``(trainable tensors, optimizer state, trainer state)``; nothing unpickled."""
    trainable = load_file(ckpt / "trainable.safetensors")
    optimizer_state = read_optimizer(ckpt)
    state = read_json(ckpt / "trainer_state.json")
    return trainable, optimizer_state, state


RUN_FILES = ("train_config.json", "train_summary.json", "metrics.jsonl", "final", "best", "checkpoints", "tensorboard")
# settings a resumed run may change: where things go, how often it logs/evaluates/saves, how long it runs, where
# the data file is (the checkpoint's data digest checks what it holds: .data_digest), and where and how it computes
# (gradient_checkpointing, on all layers or some, recomputes the same activations, dropout's draws included: after
# running out of memory)
RESUMABLE = {"output_dir", "data", "ref_cache", "resume", "overwrite", "progress", "log_every", "eval_every", "save_every",
             "save_total_limit", "max_steps", "epochs", "device", "patience", "gradient_checkpointing",
             "gradient_checkpointing_layers"}


def claim_output_dir(output_dir: str | Path, *, resume: bool, overwrite: bool, is_main: bool = True,
                     clear: bool = True) -> list[str]:
    """Refuse to train into a folder that holds an earlier run, unless the run continues it
    (``resume``, with a checkpoint to continue from) or replaces it (``overwrite``: rank 0 removes
    the earlier run's files first; anything else in the folder, such as a reference cache, stays).
    ``resume`` where the earlier run stopped before it saved anything to continue from or keep
    (:func:`saved_nothing`: killed in its first evaluation, or before its first checkpoint) starts
    it again, as a scheduler's requeued job with ``--resume`` needs. ``clear=False`` only
    refuses: a run checks early and clears once its data has loaded. Returns the earlier run's
    files that are (or, with ``clear=False``, would be) removed."""
    out = Path(output_dir)
    if is_main:
        check_writable(out)  # before the model and data load, not at the first save
    found = [name for name in RUN_FILES if (out / name).exists()]
    ckpt, passed = resume_point(out) if resume and found else (None, [])
    if not found or ckpt is not None:
        return []
    if not overwrite and not (resume and not passed and saved_nothing(out, found)):
        held = f"{out} holds an earlier run ({', '.join(found)})"
        if resume:
            why = f"whose checkpoints cannot be resumed ({'; '.join(passed)})" if passed else \
                "with no checkpoint to resume from (save_every was 0, or it stopped before its first save)"
            raise ValueError(f"{held} {why}: pass --overwrite (overwrite=True) to replace it, or another --output-dir")
        raise ValueError(f"{held}: pass --overwrite (overwrite=True) to replace it, --resume to continue it, "
                         f"or another --output-dir")
    if is_main and clear:
        for name in found:
            path = out / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    return found


def saved_nothing(out: Path, found: list[str]) -> bool:
    """Whether the run files ``found`` in ``out`` (no whole checkpoint among them) hold nothing a
    resume could continue from or a user would keep: its settings, its metrics, an empty or
    unfinished ``checkpoints/`` (a ``step-N.tmp``), and at most a ``best/`` of step 0 (the weights
    before training). A ``final/``, a summary or a trained ``best/`` are a run's results."""
    rest = set(found) - {"train_config.json", "metrics.jsonl", "tensorboard", "checkpoints"}
    if rest == {"best"}:
        record, problem = _read_json(out / "best" / "best.json")
        return problem is None and isinstance(record, dict) and record.get("step") == 0
    return not rest


def checkpoint_config(output_dir: str | Path) -> dict | None:
    """The settings the newest checkpoint in ``output_dir`` was written with, or None."""
    ckpt = latest_checkpoint(output_dir)
    if ckpt is None:
        return None
    return read_json(ckpt / "trainer_state.json").get("config")


def check_resumable(ckpt: Path, saved: dict | None, current: dict, defaults: dict | None = None) -> None:
    """A checkpoint resumes exactly only under the settings it was written with (bar ``RESUMABLE``).
    A setting the checkpoint does not record (one added to prefopt since) counts as its default
    from ``defaults``."""
    if changed := changed_settings(saved, current, defaults):
        raise ValueError(f"{ckpt} was written under other settings ({'; '.join(changed)}); resume with the same ones, "
                         f"or start a new run (--overwrite or another --output-dir)")


def changed_settings(saved: dict | None, current: dict, defaults: dict | None = None) -> list[str]:
    """``["lr: 0.003 -> 0.001", ...]``: the settings, bar ``RESUMABLE``, a checkpoint written under
    ``saved`` had otherwise (none where it records none)."""
    if saved is None:
        return []
    saved = {**{k: v for k, v in (defaults or {}).items() if k in current}, **saved}
    return [f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in sorted(set(saved) | set(current))
            if k not in RESUMABLE and saved.get(k) != current.get(k)]
