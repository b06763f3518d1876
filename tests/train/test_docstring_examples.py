"""The notebook examples in SFTTrainer's and DPOTrainer's docstrings run as written (on a tiny model)."""
import json
import textwrap

import pytest

from prefopt.train.dpo import DPOTrainer
from prefopt.train.sft import SFTTrainer
from tests.train._fixtures import write_pairs, write_task


def _example(cls) -> str:
    """The ``Example::`` block: the lines indented at least as deep as its first one."""
    lines = cls.__doc__.split("Example::", 1)[1].splitlines()
    first = next(line for line in lines if line.strip())
    indent = first[:len(first) - len(first.lstrip())]
    block = []
    for line in lines[lines.index(first):]:
        if line.strip() and not line.startswith(indent):
            break
        block.append(line)
    return textwrap.dedent("\n".join(block))


@pytest.mark.parametrize("cls", [SFTTrainer, DPOTrainer])
def test_the_docstring_example_trains_and_saves_an_adapter(cls, tmp_path, monkeypatch):
    model_dir, sft = write_task(tmp_path, n=16)
    pairs = write_pairs(tmp_path / "pairs.jsonl", n=16)
    code = _example(cls)
    assert "max_steps=100" in code and '"smollm2-135m"' in code
    code = code.replace('"smollm2-135m"', repr(str(model_dir))).replace("max_steps=100", "max_steps=2, progress=False")
    code = code.replace('"train.jsonl"', repr(str(sft))).replace('"pairs.jsonl"', repr(str(pairs)))
    monkeypatch.chdir(tmp_path)
    exec(compile(code, f"{cls.__name__} docstring", "exec"), {})
    out = tmp_path / ("out/sft" if cls is SFTTrainer else "runs/dpo")
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]
    cfg = json.loads((out / "final" / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str(model_dir)
    assert (out / "final" / "adapter_model.safetensors").stat().st_size > 0
    if cls is DPOTrainer:  # ref_cache="runs/dpo/ref_cache": a folder, opened for this reference and filled
        index = json.loads((out / "ref_cache" / "index.json").read_text())
        assert len(index["entries"]) == 16 and index["fingerprint"]["reference"] == "adapter-disabled"


def test_the_readme_in_memory_example_runs_as_written(tmp_path, monkeypatch):
    """README's "Records already in memory" block: lists of dicts, no data file, the whole run."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    code = next(b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "records=records" in b)
    model_dir, _ = write_task(tmp_path, n=4)
    records = [json.loads(x) for x in write_pairs(tmp_path / "pairs.jsonl", n=8).read_text().splitlines()]
    held_out = [json.loads(x) for x in write_pairs(tmp_path / "held.jsonl", n=4, offset=100).read_text().splitlines()]
    code = code.replace('"smollm2-135m"', repr(str(model_dir))).replace("max_steps=100", "max_steps=2, progress=False")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README", "exec"), {"records": records, "held_out": held_out})  # a notebook cell
    rows = [json.loads(line) for line in (tmp_path / "runs/dpo/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2] and "eval_loss" in rows[-1]
    assert (tmp_path / "runs/dpo/final/adapter_model.safetensors").is_file()
    assert "given in memory" in (tmp_path / "runs/dpo/final/README.md").read_text()
