"""``eval-pairs``, ``eval-nll`` and ``make-pairs`` on a GPU give the CPU's figures, both in
float32: each command puts its batches where the model is (eval's, predict's and the trainers'
GPU checks are in their own files). Each test also runs with ``device="cpu"`` in CI, which
checks the test itself (the comparison is then CPU against CPU); no GPU has run these yet."""
import json

import pytest

from prefopt.cli import main
from tests._devices import CPU_AND_CUDA
from tests.train._fixtures import write_pairs, write_task


@pytest.fixture(params=CPU_AND_CUDA)
def device(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    root = tmp_path_factory.mktemp("commands")
    model_dir, sft = write_task(root, n=8)
    return model_dir, sft, write_pairs(root / "pairs.jsonl", n=8)


def _twice(tmp_path, device: str, command: list[str], rows: str, *extra: str) -> tuple[list[dict], list[dict]]:
    """``command`` on ``device`` and on the CPU, float32 both: the rows of each run's ``rows`` file."""
    out = {}
    for name, where in (("device", device), ("cpu", "cpu")):
        folder = tmp_path / name
        assert main([*command, "--output", str(folder), "--device", where, "--dtype", "float32", *extra]) == 0
        out[name] = [json.loads(x) for x in (folder / rows).read_text().splitlines()]
    return out["device"], out["cpu"]


def _rows_agree(a: list[dict], b: list[dict]) -> None:
    """Row by row the same fields, the numbers within float32's rounding, the rest equal."""
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key, value in y.items():
            if isinstance(value, float):
                assert x[key] == pytest.approx(value, rel=1e-4, abs=1e-4), (key, x, y)
            else:
                assert x[key] == value, (key, x, y)


def test_eval_pairs_gives_the_cpus_log_probs(task, tmp_path, device):
    model_dir, _, pairs = task
    here, cpu = _twice(tmp_path, device, ["eval-pairs", "--model", str(model_dir), "--data", str(pairs)],
                       "pairs.jsonl", "--n-resamples", "50")
    assert isinstance(cpu[0]["logp_chosen"], float) and isinstance(cpu[0]["logp_rejected"], float)
    _rows_agree(here, cpu)


def test_eval_nll_gives_the_cpus_nll(task, tmp_path, device):
    model_dir, sft, _ = task
    here, cpu = _twice(tmp_path, device, ["eval-nll", "--model", str(model_dir), "--data", str(sft)],
                       "records.jsonl", "--n-resamples", "50")
    assert isinstance(cpu[0]["nll"], float) and cpu[0]["tokens"] > 0
    _rows_agree(here, cpu)


def test_make_pairs_gives_the_cpus_greedy_answers(task, tmp_path, device):
    model_dir, sft, _ = task
    here, cpu = _twice(tmp_path, device, ["make-pairs", "--model", str(model_dir), "--data", str(sft)],
                       "answers.jsonl", "--greedy", "--max-new-tokens", "6")
    assert [r["answer"] for r in here] == [r["answer"] for r in cpu] and len(cpu) == 8
