"""prefopt on an install of its core packages alone (torch, safetensors, tokenizers,
huggingface-hub, numpy, and what they bring: jinja2, tqdm, PyYAML): every module imports, and
the main job, ``prefopt compare`` (base, SFT, SFT+DPO, the statistics and the report), runs
through, with the extras and the test-only references hidden in a process of its own (an entry
of ``None`` in ``sys.modules`` makes an import, and ``importlib.util.find_spec``, find nothing)."""
import json
import os
import subprocess
import sys
from pathlib import Path

from prefopt.environment import OPTIONAL as ENV_OPTIONAL
from tests._failure import failure
from tests._tiny import build_hf_model
from tests.test_imports import MODULES

ROOT = Path(__file__).resolve().parents[1]
CORE_BROUGHT = {"jinja2", "tqdm", "yaml"}  # torch needs jinja2, huggingface-hub tqdm and PyYAML
HIDDEN = sorted({m for m, *_ in ENV_OPTIONAL} - CORE_BROUGHT | {  # the extras prefopt env lists, and every test-only package
    "scipy", "transformers", "peft", "trl", "accelerate", "psutil", "arch", "rouge_score", "odf", "xlwt", "docx",
    "krippendorff", "statsmodels", "pandas", "sklearn", "liger_kernel", "cut_cross_entropy"})
PRELUDE = f"import sys\nfor _name in {HIDDEN!r}:\n    sys.modules[_name] = None\n"


def _run(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", PRELUDE + code], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_the_hidden_packages_are_the_optional_ones():
    assert {"gguf", "matplotlib", "openpyxl", "pyarrow", "triton", "scipy", "transformers", "peft"} <= set(HIDDEN)
    assert not CORE_BROUGHT & set(HIDDEN)


def test_every_module_imports_without_the_optional_packages(tmp_path):
    """All but the Triton kernels' own module, which the kernel paths import only where Triton is."""
    modules = [m for m in MODULES if m != "prefopt.kernels._triton_kernels"]
    r = _run(f"import importlib\nfor m in {modules!r}:\n    importlib.import_module(m)\n"
             "import scipy\n", tmp_path)  # the last import must fail: the packages are hidden
    assert r.returncode == 1 and "ModuleNotFoundError: import of scipy halted" in r.stderr, failure(r)


def test_compare_runs_on_a_core_install(tmp_path):
    build_hf_model(tmp_path / "model", max_position_embeddings=1024)
    code = ("import contextlib, io, json\nfrom prefopt.cli import main\n"
            "out = io.StringIO()\nwith contextlib.redirect_stdout(out):\n    assert main(['env', '--json']) == 0\n"
            "open('env.json', 'w').write(out.getvalue())\n"
            "sys.exit(main(['compare', '--task', 'portal', '--model', 'model', '--output', 'run', '--set', "
            "'sft_steps=3', '--set', 'dpo_steps=3', '--set', 'test=8', '--set', 'max_train=8']))\n")
    r = _run(code, tmp_path)
    assert r.returncode == 0, failure(r)
    optional = json.loads((tmp_path / "env.json").read_text())["optional"]
    assert all(optional[m]["version"] is None for m in optional if m in HIDDEN)  # each said to be missing
    assert all(optional[m]["version"] for m in CORE_BROUGHT & set(optional))
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert set(report["comparisons"]) == {"base->sft", "sft->dpo", "base->dpo"}
    assert all(0 <= c["primary"]["p_value"] <= 1 for c in report["comparisons"].values())
    assert "install matplotlib" in r.stdout  # the curves it could not draw, and how to get them
    assert (tmp_path / "run" / "report.md").is_file() and (tmp_path / "run" / "dpo" / "train" / "final").is_dir()
