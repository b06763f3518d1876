"""``prefopt compare --from DIR``: a run that starts from another's base and SFT stages trains
only DPO, and only where every other setting is the same."""
import json
import re
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from prefopt.cli import main
from prefopt.evaluate.compare import CompareConfig, run_compare
from tests.tasks.test_compare_smoke import TINY

ADAPTER = "adapter_model.safetensors"


@pytest.fixture(scope="module")
def first(tiny_model, tmp_path_factory):
    """A finished run with the study's sigmoid loss."""
    out = tmp_path_factory.mktemp("first") / "run"
    run_compare(CompareConfig(task="portal", model=str(tiny_model), output=str(out), overrides=TINY))
    return out


def test_a_run_from_another_trains_only_dpo_on_the_same_sft_model(tiny_model, first, tmp_path, monkeypatch, capsys):
    from prefopt.train.sft import SFTTrainer

    def no_sft(*a, **k):
        raise AssertionError("SFT trained again")

    monkeypatch.setattr(SFTTrainer, "train_step", no_sft)
    out = tmp_path / "rpo"
    capsys.readouterr()
    cfg = CompareConfig(task="portal", model=str(tiny_model), output=str(out), loss="rpo",
                        overrides={**TINY, "beta": 0.2}, start_from=str(first))
    report = run_compare(cfg)
    said = capsys.readouterr().out
    assert (f"prefopt compare: starting from {first}: copied split.json, base, sft, data/sft_train.jsonl, "
            "data/pairs.jsonl, data/pairs_report.json, dpo/ref_cache\n") in said
    assert "base: reusing" in said and "sft: reusing" in said
    a, b = (load_file(d / "sft" / "train" / "final" / ADAPTER) for d in (first, out))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    a, b = (load_file(d / "dpo" / "train" / "final" / ADAPTER) for d in (first, out))
    assert any(not torch.equal(a[k], b[k]) for k in a)  # DPO trained again, with its own loss and beta
    assert json.loads((out / "dpo" / "train" / "train_config.json").read_text())["loss"] == "rpo"
    recorded = json.loads((out / "compare_config.json").read_text())
    assert recorded["start_from"] == str(first) and recorded["loss"] == "rpo"
    assert f"base and SFT stages from `{first}`" in (out / "report.md").read_text()
    assert report["stages"]["sft"]["primary"] == json.loads((first / "report.json").read_text())["stages"]["sft"][
        "primary"]
    # the same command again is the same run: nothing copied or trained again; without --from, or
    # with another, it goes on as it is, and still says where its stages came from
    run_compare(cfg)
    said = capsys.readouterr().out
    assert "starting from" not in said and "--from" not in said and "dpo: reusing" in said
    for other in (None, str(tmp_path)):
        run_compare(replace(cfg, start_from=other))
        said = capsys.readouterr().out
        assert "starting from" not in said and "dpo: reusing" in said
        assert (f"--from {other} is not used: {out} holds a run already" in said) == (other is not None)
        assert json.loads((out / "compare_config.json").read_text())["start_from"] == str(first)
        assert f"base and SFT stages from `{first}`" in (out / "report.md").read_text()


def test_other_settings_than_dpos_are_refused_before_any_folder_is_made(tiny_model, first, tmp_path):
    out = tmp_path / "other"
    with pytest.raises(ValueError) as caught:
        run_compare(CompareConfig(task="portal", model=str(tiny_model), output=str(out), seed=1,
                                  overrides={**TINY, "sft_lr": 1e-3, "dpo_lr": 1e-3}, start_from=str(first)))
    assert str(caught.value).startswith(
        f"--from {first} was run with other settings than DPO's (overrides.sft_lr: None -> 0.001; seed: 0 -> 1; "
        "settings.sft_lr: 0.0003 -> 0.001): its base and SFT stages are not this run's. Only --loss, --strategy, "
        "--pairs, --pairs-encoding, --pairs-sheet, --pairs-columns, dpo_steps,")
    assert not out.exists()


def test_a_folder_that_is_not_a_finished_compare_run_is_refused(tiny_model, first, tmp_path, capsys):
    unfinished = tmp_path / "unfinished"
    shutil.copytree(first, unfinished)
    shutil.rmtree(unfinished / "sft" / "train" / "final")
    moved = tmp_path / "moved"  # another split recorded: the data file changed since
    shutil.copytree(first, moved)
    split = json.loads((moved / "split.json").read_text())
    split["train"], split["test"] = split["test"], split["train"]
    (moved / "split.json").write_text(json.dumps(split))
    for source, why in ((tmp_path, "not a prefopt compare run (no compare_config.json there)"),
                        (unfinished, "its SFT stage has not finished (no sft/train/final/adapter_model.safetensors)"),
                        (moved, "split its items otherwise")):
        said = f"--from {source}: {why}" if source != moved else f"--from {source} {why}"
        with pytest.raises(ValueError, match="^" + re.escape(said)):
            run_compare(CompareConfig(task="portal", model=str(tiny_model), output=str(tmp_path / "new"),
                                      overrides=TINY, start_from=str(source)))
        assert not (tmp_path / "new").exists()
    capsys.readouterr()
    sets = [x for k, v in {**TINY, "sft_steps": 3}.items() for x in ("--set", f"{k}={v}")]
    code = main(["compare", "--task", "portal", "--model", str(tiny_model), "--output", str(tmp_path / "cli"),
                 "--from", str(first), *sets])
    assert code == 2 and capsys.readouterr().err.startswith(
        f"prefopt compare: error: --from {first} was run with other settings than DPO's (overrides.sft_steps: 2 -> 3; "
        "settings.sft_steps: 2 -> 3)")


def test_a_path_spelled_otherwise_is_the_same_setting(first, tmp_path, monkeypatch):
    from prefopt.evaluate.compare_config import differences
    from prefopt.evaluate.start_from import check_same_sft

    earlier = json.loads((first / "compare_config.json").read_text())
    split = json.loads((first / "split.json").read_text())
    model = earlier["model"]
    data = tmp_path / "notes.jsonl"
    data.write_text("{}\n")
    (tmp_path / "link.jsonl").symlink_to(data)
    monkeypatch.chdir(tmp_path.parent)
    relative = f"{tmp_path.name}/notes.jsonl"
    earlier = {**earlier, "data": relative}
    for spelling in (str(data), str(tmp_path / "link.jsonl"), f"./{relative}", relative):
        config = {**earlier, "data": spelling, "model": str(Path(model).parent / ".." / Path(model).parent.name /
                                                             Path(model).name)}
        assert differences(earlier, config) == []
        check_same_sft(first, earlier, config, split)  # no error
    other = tmp_path / "other.jsonl"
    other.write_text("{}\n")
    for key, value in (("data", str(other)), ("data", "missing.jsonl"), ("model", "x/y")):
        assert differences(earlier, {**earlier, key: value}) == [f"{key}: {earlier[key]!r} -> {value!r}"]
    monkeypatch.chdir(tmp_path)  # a relative path recorded elsewhere names another file from here
    assert differences(earlier, {**earlier, "data": str(data)}) == [f"data: {relative!r} -> {str(data)!r}"]
