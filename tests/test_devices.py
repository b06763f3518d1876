"""Choosing a device and dtype: "auto" follows the machine; a device it lacks is a clear error."""
import pytest
import torch

from prefopt.devices import dtype_on, resolve_device, resolve_dtype
from prefopt.train.distributed import local_device


@pytest.fixture
def gpus(monkeypatch):
    """Pretend this torch is a CUDA build that sees ``n`` GPUs (with or without bfloat16)."""
    def fake(n: int, bf16: bool = True, build: str | None = "12.8"):
        monkeypatch.setattr(torch.version, "cuda", build)
        monkeypatch.setattr(torch.version, "hip", None)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    return fake


def test_auto_is_the_gpu_where_one_is_visible_else_the_cpu(gpus):
    gpus(0)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_dtype("auto", torch.device("cpu")) is torch.float32
    gpus(2)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert resolve_dtype("auto", torch.device("cuda")) is torch.bfloat16
    gpus(1, bf16=False)  # a V100 or T4
    assert resolve_dtype("auto", torch.device("cuda")) is torch.float16
    assert resolve_dtype("float32", torch.device("cuda")) is torch.float32
    with pytest.raises(ValueError, match="unknown dtype 'fp8': use auto or one of float32, bfloat16, float16"):
        resolve_dtype("fp8", torch.device("cpu"))


@pytest.mark.parametrize("setup, name, match", [
    ({"n": 0, "build": None}, "cuda", r"device 'cuda': this torch \(.*\) was built without CUDA; install a CUDA "
                                      "build of torch, or use --device cpu"),
    ({"n": 0}, "cuda", r"device 'cuda': no CUDA GPU is visible \(CUDA_VISIBLE_DEVICES=''\)"),
    ({"n": 1}, "cuda:1", r"device 'cuda:1': only 1 CUDA GPU is visible \(cuda:0\)"),
    ({"n": 2}, "cuda:4", r"only 2 CUDA GPUs are visible \(cuda:0 to cuda:1\)"),
    ({"n": 1}, "gpu", "unknown device 'gpu': use auto, cpu, cuda, cuda:N or mps"),
    ({"n": 1}, "xla", "device 'xla': prefopt runs on cpu, cuda, mps"),
])
def test_a_device_the_machine_lacks_says_why(setup, name, match, gpus, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    gpus(**setup)
    with pytest.raises(ValueError, match=match):
        resolve_device(name)


def test_under_torchrun_each_rank_takes_its_own_gpu(monkeypatch):
    """Every rank on cuda:0 made NCCL refuse the duplicate GPU (or one card held every copy)."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert local_device(torch.device("cuda")) == torch.device("cuda", 1)
    assert local_device(torch.device("cuda", 0)) == torch.device("cuda", 0)  # an explicit index is kept
    assert local_device(torch.device("cpu")) == torch.device("cpu")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert local_device(torch.device("cuda")) == torch.device("cuda")


def test_training_config_and_the_cli_refuse_a_missing_gpu_in_one_line(gpus, tmp_path, capsys):
    from prefopt.cli import main
    from prefopt.train import TrainConfig

    gpus(0, build=None)
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "a", "completion": "b"}\n')
    with pytest.raises(ValueError, match="invalid training config:\n  device 'cuda:0': this torch"):
        TrainConfig(model="m", data=str(data), output_dir=str(tmp_path / "o"), device="cuda:0")
    # before: torch's AssertionError "Torch not compiled with CUDA enabled", as a traceback
    assert main(["generate", "--model", "nowhere", "--prompt", "hi", "--device", "cuda"]) == 2
    assert "prefopt generate: error: device 'cuda': this torch" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("native", [True, False])
def test_a_16_bit_dtype_on_a_cpu_without_native_arithmetic_is_warned_of(native, monkeypatch, recwarn):
    """On a CPU without AVX-512 BF16/FP16 (or AMX) PyTorch's 16-bit matmuls take a plain loop: on a
    2-core AVX2 EPYC a 2048 x 2048 bfloat16 product took minutes, and the test suite three times
    as long. Asking for it there is warned of; float32, a GPU, or a CPU that has it is not."""
    from prefopt.devices import resolve, slow_half

    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: native)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_fp16_supported", lambda: native)
    cpu = torch.device("cpu")
    for dtype in (torch.bfloat16, torch.float16):
        note = slow_half(dtype, cpu)
        name = str(dtype).removeprefix("torch.")
        assert (note is None) == native
        if not native:
            assert note.startswith(f"this CPU ({torch.backends.cpu.get_cpu_capability()}) has no native {name} "
                                   f"arithmetic: {name} matmuls take a fallback far slower than float32")
            assert note.endswith("use float32, the default on a CPU (--dtype float32; compare's --eval-dtype float32, "
                                 "--set train_dtype=float32)")
    assert slow_half(torch.float32, cpu) is None and slow_half(torch.bfloat16, torch.device("cuda")) is None
    assert resolve("cpu", "bfloat16") == (cpu, torch.bfloat16)
    assert resolve("cpu", "auto") == (cpu, torch.float32)  # auto never picks it on a CPU: no warning for it
    said = [str(w.message) for w in recwarn]
    assert len(said) == (0 if native else 1) and all("no native bfloat16" in s for s in said)


def test_training_a_16_bit_base_on_such_a_cpu_says_so_before_step_1(tmp_path, monkeypatch, capsys):
    from prefopt.data.sft import TokenizedExample
    from prefopt.train import SFTTrainer, TrainConfig
    from prefopt.train.run import prepare_model
    from tests._tiny import build_hf_model

    build_hf_model(tmp_path / "m")
    data = [TokenizedExample(list(range(3, 19)), [-100] + list(range(4, 19)))] * 2
    for native in (True, False):
        monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda native=native: native)
        config = TrainConfig(model=str(tmp_path / "m"), output_dir=str(tmp_path / f"run-{native}"), dtype="bfloat16",
                             max_steps=1, batch_size=2, max_length=32, progress=False, device="cpu")
        SFTTrainer(prepare_model(config), config, data, pad_id=2).train()
        err = capsys.readouterr().err
        assert ("prefopt: warning: this CPU" in err and "has no native bfloat16 arithmetic" in err) == (not native)


def test_a_dtype_name_is_read_for_the_device_an_estimate_is_for():
    """``auto`` means bfloat16 on CUDA whether or not this machine has a GPU, float32 on a CPU; a
    named dtype is itself (``dtype_on``: the memory estimates' reading of ``--dtype``)."""
    assert dtype_on("auto", "cpu") == "float32"
    assert dtype_on("float16", "cpu") == "float16" and dtype_on("float32", "cuda") == "float32"
    if not torch.cuda.is_available():
        assert dtype_on("auto", "cuda") == "bfloat16"
