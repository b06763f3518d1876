"""A tiny model and a learnable synthetic SFT task, written to disk for training tests."""
import json
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
