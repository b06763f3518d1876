"""merge and stack-adapters never lose a folder: not the model or adapter they read, not an
earlier output (without --overwrite), and an interrupted write leaves the old folder whole."""
import os

import pytest
import torch

from prefopt import apply_lora, load_model, save_adapter
from prefopt.cli import main
from tests._tiny import build_hf_model, randomize_lora
from tests.train._fixtures import write_pairs

IDS = torch.tensor([[5, 6, 7, 8, 9]])


@pytest.fixture
def base_and_adapter(tmp_path):
    base = tmp_path / "base"
    build_hf_model(base)
    model = apply_lora(load_model(base), r=4, alpha=8, dropout=0.0)
    randomize_lora(model)
    save_adapter(model, tmp_path / "runs" / "final", base_model=str(base))
    return base, tmp_path / "runs" / "final"


def _files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _merge(base, adapter, out, *extra):
    return main(["merge", "--model", str(base), "--adapter", str(adapter), "--output", str(out), *extra])


def test_merge_refuses_to_write_over_what_it_reads(base_and_adapter, tmp_path, capsys):
    """``--output`` = the adapter folder mixed a model into it; = the base model's folder replaced
    the base weights by the merged ones; a folder above either would be replaced with them."""
    base, adapter = base_and_adapter
    before = {d: _files(d) for d in (base, adapter)}
    for out in (adapter, base, tmp_path / "runs"):
        assert _merge(base, adapter, out, "--overwrite") == 2
        assert "which this command reads; choose another folder" in capsys.readouterr().err
    assert {d: _files(d) for d in (base, adapter)} == before
    assert sorted(os.listdir(tmp_path)) == ["base", "runs"]  # no temporary folder left either


def test_merge_keeps_an_earlier_output_unless_overwrite_and_replaces_it_whole(base_and_adapter, tmp_path, capsys):
    base, adapter = base_and_adapter
    out = tmp_path / "merged"
    assert _merge(base, adapter, out) == 0
    with torch.no_grad():
        want = load_model(base, adapter=adapter)(IDS)
        assert (load_model(out)(IDS) - want).abs().max() < 1e-4
    first = _files(out)
    assert b"The adapter had no model card" in first["README.md"]  # saved by save_adapter, not a training run
    (out / "notes.txt").write_text("mine")
    assert _merge(base, adapter, out) == 2
    assert f"{out}: holds files already; pass --overwrite" in capsys.readouterr().err
    assert _files(out) == {**first, "notes.txt": b"mine"}
    assert _merge(base, adapter, out, "--dtype", "bfloat16", "--overwrite") == 0
    assert set(_files(out)) == set(first) and _files(out) != first  # the whole folder: the bf16 model alone
    assert '"dtype": "bfloat16"' in (out / "config.json").read_text()
    (tmp_path / "empty").mkdir()
    assert _merge(base, adapter, tmp_path / "empty") == 0  # an empty folder is no earlier output


def test_an_interrupted_merge_leaves_the_earlier_folder_whole(base_and_adapter, tmp_path, monkeypatch, capsys):
    import prefopt.pretrained as pretrained

    base, adapter = base_and_adapter
    out = tmp_path / "merged"
    assert _merge(base, adapter, out) == 0
    first = _files(out)
    real = pretrained.checkpoint.save_model

    def disk_full_at_the_end(model, out_dir, *args, **kw):
        real(model, out_dir, *args, **kw)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pretrained.checkpoint, "save_model", disk_full_at_the_end)
    assert _merge(base, adapter, out, "--overwrite") == 2  # one line, not a traceback
    assert "prefopt merge: error: [Errno 28] No space left on device" in capsys.readouterr().err
    assert _files(out) == first and sorted(os.listdir(tmp_path)) == ["base", "merged", "runs"]


def test_stack_adapters_refuses_its_inputs_and_an_earlier_output(base_and_adapter, tmp_path, capsys):
    base, adapter = base_and_adapter
    assert main(["stack-adapters", str(tmp_path / "none"), str(adapter), str(tmp_path / "s")]) == 2
    assert "none: no such adapter folder" in capsys.readouterr().err  # the first input, checked first
    before = _files(adapter)
    assert main(["stack-adapters", str(adapter), str(adapter), str(adapter), "--overwrite"]) == 2
    assert "which this command reads" in capsys.readouterr().err and _files(adapter) == before
    out = tmp_path / "stacked"
    assert main(["stack-adapters", str(adapter), str(adapter), str(out)]) == 0
    assert main(["stack-adapters", str(adapter), str(adapter), str(out)]) == 2
    assert "holds files already; pass --overwrite" in capsys.readouterr().err
    assert main(["stack-adapters", str(adapter), str(adapter), str(out), "--overwrite"]) == 0
    assert {"adapter_config.json", "adapter_model.safetensors", "stacked_on.json"} <= set(_files(out))


def test_convert_gguf_keeps_an_earlier_folder_unless_overwrite(tmp_path, capsys):
    """It wrote its files among whatever the folder held (another model's shards, a user's notes)."""
    pytest.importorskip("gguf")
    from tests._tiny import write_tiny_gguf

    build_hf_model(tmp_path / "hf", intermediate_size=128)
    (tmp_path / "files").mkdir()
    gguf_file = write_tiny_gguf(tmp_path / "hf", tmp_path / "files" / "tiny.gguf")
    out = tmp_path / "imported"
    assert main(["convert-gguf", str(gguf_file), str(out)]) == 0
    first = _files(out)
    (out / "notes.txt").write_text("mine")
    assert main(["convert-gguf", str(gguf_file), str(out)]) == 2
    assert "holds files already; pass --overwrite" in capsys.readouterr().err and (out / "notes.txt").is_file()
    assert main(["convert-gguf", str(gguf_file), str(out), "--overwrite"]) == 0
    assert _files(out) == first
    assert main(["convert-gguf", str(gguf_file), str(gguf_file.parent), "--overwrite"]) == 2
    assert "which this command reads" in capsys.readouterr().err and gguf_file.is_file()


def test_an_adapter_given_as_the_model_or_a_model_as_the_adapter_says_which_is_which(base_and_adapter, tmp_path,
                                                                                   capsys):
    base, adapter = base_and_adapter
    assert main(["generate", "--model", str(adapter), "--prompt", "hi", "--max-new-tokens", "2"]) == 2
    assert (f"{adapter}: a LoRA adapter, not a model: pass the base model as the model ({base}) and this folder as "
            "the adapter (--adapter)") in capsys.readouterr().err
    assert _merge(base, adapter, tmp_path / "merged") == 0
    assert main(["generate", "--model", str(base), "--adapter", str(tmp_path / "merged"), "--prompt", "hi"]) == 2
    said = f"{tmp_path / 'merged'}: a model folder, not an adapter: pass it as the model (--model), not as an adapter"
    assert said in capsys.readouterr().err
    pairs = write_pairs(tmp_path / "pairs.jsonl", n=8)  # a merged SFT model as DPO's --sft-adapter: before the data
    assert main(["dpo", "--model", str(base), "--sft-adapter", str(tmp_path / "merged"), "--data", str(pairs),
                 "--output", str(tmp_path / "dpo")]) == 2
    out, err = capsys.readouterr()
    assert f"invalid DPO config:\n  sft_adapter: {said}" in err and "records kept" not in out + err
    assert not (tmp_path / "dpo").exists()


def test_a_training_runs_folder_given_as_the_adapter_names_the_adapters_it_saved(base_and_adapter, tmp_path, capsys):
    """``--adapter runs/sft`` for ``runs/sft/final``: the error names final/ (and best/ where the run
    kept one; in a compare stage's folder they lie under train/), and nothing is written."""
    import shutil

    base, adapter = base_and_adapter
    run = adapter.parent
    assert main(["generate", "--model", str(base), "--adapter", str(run), "--prompt", "hi"]) == 2
    assert (f"{run}: a training run's folder, not an adapter: its adapter is {adapter} (the last step's)\n"
            in capsys.readouterr().err)
    stage = tmp_path / "compare" / "sft"
    for name in ("final", "best"):
        shutil.copytree(adapter, stage / "train" / name)
    assert _merge(base, stage, tmp_path / "merged") == 2
    train = stage / "train"
    said = f"its adapter is {train / 'final'} (the last step's) or {train / 'best'} (the best evaluation's)"
    assert said in capsys.readouterr().err and not (tmp_path / "merged").exists()
    pairs = write_pairs(tmp_path / "pairs.jsonl", n=8)  # DPO says it in its settings' check, before reading them
    assert main(["dpo", "--model", str(base), "--sft-adapter", str(stage), "--data", str(pairs),
                 "--output", str(tmp_path / "dpo")]) == 2
    out, err = capsys.readouterr()
    assert f"invalid DPO config:\n  sft_adapter: {stage}: a training run's folder" in err and said in err
    assert "records kept" not in out + err and not (tmp_path / "dpo").exists()


def test_help_lists_every_command_once_by_what_it_is_for(capsys):
    """``prefopt --help`` ends with the commands grouped by what they are for: each command the
    parser has, once, and nothing it lacks."""
    import argparse

    from prefopt.cli import COMMANDS, build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    grouped = [name for names in COMMANDS.values() for name in names]
    assert sorted(grouped) == sorted(sub.choices) and len(grouped) == len(set(grouped))
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    out = capsys.readouterr().out
    assert "commands by what they are for:\n  check and train:        env, check-data, sft, dpo, curves\n" in out


def test_a_warning_while_a_bar_is_drawn_gets_a_line_of_its_own(capsys):
    """A warning met while a progress bar is drawn (generate's prompt past the model's context,
    in predict's bar) is written above the bar, on its own line, not into the bar's line."""
    import sys
    import warnings

    from tqdm import tqdm

    from prefopt.cli import _warnings_as_lines

    with _warnings_as_lines("prefopt predict"):
        bar = tqdm(total=2, desc="predicting", file=sys.stderr, mininterval=0)
        bar.update(1)
        warnings.warn("a prompt runs past the model's context", stacklevel=1)
        bar.update(1)
        bar.close()
    lines = [line.split("\r")[-1] for line in capsys.readouterr().err.split("\n")]
    assert "prefopt predict: warning: a prompt runs past the model's context" in lines
