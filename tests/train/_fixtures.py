"""A tiny model and learnable synthetic SFT and DPO tasks, written to disk for training tests."""
import json
import mmap
from pathlib import Path

from tests._tiny import build_hf_model

COLORS = ["red", "blue", "green", "amber"]


def write_task(root: Path, n: int = 48) -> tuple[Path, Path]:
    """A tiny model plus ``n`` records whose completion is a function of the prompt."""
    model_dir = root / "model"
    if not model_dir.exists():
        build_hf_model(model_dir, initializer_range=0.1)
    data = root / "sft.jsonl"
    with open(data, "w") as f:
        for i in range(n):
            code = COLORS[i % 4]
            f.write(json.dumps({"prompt": f"Case {i}: triage code for patient {i % 4}?",
                                "completion": f"Code {code}."}) + "\n")
    return model_dir, data


def write_pairs(path: Path, n: int = 64, offset: int = 0) -> Path:
    """A learnable preference signal: the preferred answer depends on a code in the prompt."""
    with open(path, "w") as f:
        for i in range(offset, offset + n):
            good, bad = ("urgent review", "routine visit") if i % 2 else ("routine visit", "urgent review")
            f.write(json.dumps({"prompt": f"Message {i}, code {'A' if i % 2 else 'B'}. Triage?",
                                "chosen": good, "rejected": bad}) + "\n")
    return path


def fresh_pages(mib: int) -> mmap.mmap:
    """``mib`` MiB of new resident memory, every page written. A tensor may not do: the C heap
    can serve it from memory it kept, already resident (a long-lived test worker has plenty)."""
    block, chunk = mmap.mmap(-1, mib * 2**20), b"\1" * 2**20
    for _ in range(mib):
        block.write(chunk)
    return block
