"""An adapter remembers the weights it was trained on: prefopt writes their digest into its
weights file's metadata, and loading it on a base model with other weights of the same shapes
(which loads without complaint) warns."""
import shutil
import warnings

import pytest

from prefopt import load_model
from prefopt.lora_files import BASE_SHA256, base_mismatch
from prefopt.model.digest import weights_sha256
from prefopt.model.safetensors_io import read_metadata
from tests._tiny import build_hf_model, save_random_adapter


@pytest.fixture
def base_and_adapter(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFOPT_HOME", str(tmp_path / "home"))
    base = tmp_path / "base"
    build_hf_model(base, seed=0)
    return base, save_random_adapter(base, tmp_path / "adapter", seed=1)


def test_the_adapter_records_its_bases_digest_and_loads_quietly_on_that_base_or_a_copy(tmp_path, base_and_adapter):
    base, adapter = base_and_adapter
    meta = read_metadata(adapter / "adapter_model.safetensors")
    assert meta == {"format": "pt", BASE_SHA256: weights_sha256(base)} and len(meta[BASE_SHA256]) == 64
    copy = tmp_path / "copied" / "base"
    shutil.copytree(base, copy)
    for model in (base, copy):
        assert base_mismatch(adapter, model) is None
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            load_model(str(model), adapter=str(adapter))


def test_an_adapter_on_other_base_weights_of_the_same_shapes_loads_with_a_warning(tmp_path, base_and_adapter):
    base, adapter = base_and_adapter
    other = tmp_path / "other"
    build_hf_model(other, seed=5)  # the same architecture and shapes, other weights
    note = base_mismatch(adapter, other)
    assert note == (f"{adapter} was trained on other base weights than {other}'s (on {base}, its adapter_config.json "
                    f"says; SHA-256 {weights_sha256(base)[:12]} there, {weights_sha256(other)[:12]} here): of the same "
                    "shapes, it loads, but its answers are not the ones it was evaluated with. Load it on the model it "
                    "was trained on (a copy of that model's files is the same model)")
    with pytest.warns(UserWarning) as caught:
        load_model(str(other), adapter=str(adapter))
    assert [str(w.message) for w in caught] == [note]


def test_an_adapter_without_the_record_is_taken_as_it_is(tmp_path, base_and_adapter):
    """PEFT's own adapters (and prefopt's before 2026-12-08) say nothing of their base's weights:
    nothing to check; nor can a base whose files are not on this machine be checked."""
    from safetensors.torch import load_file, save_file

    base, adapter = base_and_adapter
    weights = adapter / "adapter_model.safetensors"
    save_file(load_file(weights), weights, metadata={"format": "pt"})
    other = tmp_path / "other"
    build_hf_model(other, seed=5)
    assert base_mismatch(adapter, other) is None
    save_random_adapter(base, adapter, seed=1)
    assert base_mismatch(adapter, "org/not-on-this-machine") is None
    assert base_mismatch(tmp_path / "no-adapter-here", other) is None


def test_the_command_line_says_so_as_a_warning_and_goes_on(tmp_path, base_and_adapter, capsys):
    from prefopt.cli import main

    base, adapter = base_and_adapter
    other = tmp_path / "other"
    build_hf_model(other, seed=5)
    argv = ["generate", "--adapter", str(adapter), "--prompt", "Chest pain", "--max-new-tokens", "2", "--greedy",
            "--no-chat"]
    assert main([*argv, "--model", str(other)]) == 0
    assert f"prefopt generate: warning: {adapter} was trained on other base weights than {other}'s" in \
        capsys.readouterr().err
    assert main([*argv, "--model", str(base)]) == 0
    assert "warning" not in capsys.readouterr().err


def test_the_record_is_of_the_files_the_weights_were_loaded_from_gguf_and_stacked_adapters_too(tmp_path, monkeypatch):
    """A model named by its GGUF file is its imported folder at both ends; a DPO adapter trained
    on the SFT adapter merged in (stacked on save) records the base model, as does one stacked
    from two saved adapters (restack: the first one's record)."""
    from prefopt import apply_lora, save_adapter
    from prefopt.lora_stack import restack
    from tests._tiny import randomize_lora, write_tiny_gguf

    monkeypatch.setenv("PREFOPT_HOME", str(tmp_path / "home"))
    hf_dir = tmp_path / "hf"
    build_hf_model(hf_dir, seed=0)
    gguf = write_tiny_gguf(hf_dir, tmp_path / "tiny.gguf")
    on_gguf = apply_lora(load_model(str(gguf)), r=2, alpha=4, dropout=0.0, target_modules=["q_proj"])
    randomize_lora(on_gguf, 1)
    save_adapter(on_gguf, tmp_path / "a", base_model=str(gguf))
    recorded = read_metadata(tmp_path / "a" / "adapter_model.safetensors")[BASE_SHA256]
    assert recorded == weights_sha256(on_gguf.name_or_path) == weights_sha256(gguf)
    assert base_mismatch(tmp_path / "a", load_model(str(gguf)).name_or_path, str(gguf)) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_model(str(gguf), adapter=str(tmp_path / "a"))
    on_sft = load_model(str(hf_dir), adapter=str(save_random_adapter(hf_dir, tmp_path / "sft")), merge=True)
    dpo = apply_lora(on_sft, r=2, alpha=4, dropout=0.0, target_modules=["v_proj"])
    randomize_lora(dpo, 2)
    save_adapter(dpo, tmp_path / "both")
    save_adapter(dpo, tmp_path / "dpo_alone", stack=False)
    restack(tmp_path / "sft", tmp_path / "dpo_alone", tmp_path / "restacked")
    for folder in ("both", "restacked"):
        assert read_metadata(tmp_path / folder / "adapter_model.safetensors")[BASE_SHA256] == weights_sha256(hf_dir)
