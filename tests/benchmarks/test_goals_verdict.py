"""``benchmarks/goals_verdict.py`` reads the goal tables of a GPU session and says which goals each
of prefopt's methods meets and what that decides, so a short GPU session ends with a verdict, not
only numbers. Checked here on made-up rows (the real ones come from a lent GPU)."""
import json
from pathlib import Path

import pytest

from tests.benchmarks import load_script

SHAPE = dict(D=4096, V=128256, N=16384)
MiB = 2**20


@pytest.fixture(scope="module")
def verdict():
    mod = load_script("goals_verdict")
    return mod


def _write(path, limit_ms, methods: dict) -> Path:
    """methods: name -> (ms, extra MiB) or an error string."""
    rows = []
    for name, v in methods.items():
        row = {"method": name, **SHAPE, "gemm_limit": limit_ms / 1e3}
        row.update({"error": v} if isinstance(v, str) else {"seconds": v[0] / 1e3, "extra_peak": v[1] * MiB})
        rows.append(row)
    rows.append({"method": "triton", "D": 576, "V": 49152, "N": 4096, "gemm_limit": 1e-3, "seconds": 1.0,
                 "extra_peak": 0})  # another shape: ignored
    path.write_text(json.dumps(rows))
    return path


def _run(verdict, tmp_path, capsys, trainable, frozen):
    verdict.main([str(_write(tmp_path / "goals.json", 75.0, trainable)),
                  str(_write(tmp_path / "goals_frozen.json", 51.0, frozen))])
    return capsys.readouterr().out


FROZEN = {"chunked": (62.0, 128), "triton": (130.0, 31), "onepass": (70.0, 224), "liger": (100.0, 129),
          "cce": (128.0, 2), "cce-exact": (166.0, 1)}


def test_the_default_within_the_goals_and_a_faster_frozen_path(verdict, tmp_path, capsys):
    out = _run(verdict, tmp_path, capsys, {"triton": (144.0, 192), "chunked": (217.0, 224), "onepass": (92.0, 193),
                                            "liger": (243.0, 1035), "cce": (193.0, 2), "cce-exact": (301.0, 1)}, FROZEN)
    assert "| onepass | 92.00 | 1.23 | 193 | yes | yes | yes | yes | yes |" in out
    assert "| triton | 144.00 | 1.92 | 192 | yes | **no** | yes | yes | yes |" in out
    assert "trainable head: fastest within 256 MB is onepass (92.00 ms, 1.23×; faster than Liger); it is the CUDA " \
           "default (onepass.wanted)" in out
    assert "frozen head: fastest within 256 MB is chunked (62.00 ms, 1.22×; faster than Liger); the CUDA default, " \
           "onepass, is slower (70.00 ms): make chunked the default there (onepass.wanted)" in out
    assert "issue 5 point 3 (trainable head): met by onepass\n" in out


def test_a_default_over_the_memory_goal_is_named_with_the_path_to_take(verdict, tmp_path, capsys):
    out = _run(verdict, tmp_path, capsys, {"triton": (144.0, 192), "onepass": (103.7, 259), "liger": "ImportError: x"},
               {"triton": (130.0, 31), "chunked": "RuntimeError: boom"})
    assert "trainable head: fastest within 256 MB is triton (144.00 ms, 1.92×; Liger missing); the CUDA default, " \
           "onepass, is over 256 MB (259 MiB): make triton the default there" in out
    assert "| onepass | 103.70 | 1.38 | 259 | **no** | **no** | n/a | n/a | n/a |" in out  # Liger failed: no verdict
    assert "| chunked | RuntimeError: boom |" in out
    assert "frozen head: fastest within 256 MB is triton (130.00 ms, 2.55×; Liger missing); the CUDA default, " \
           "onepass, is not measured" in out
    assert "not met by any method" in out


def test_a_default_that_is_fastest_is_said_so(verdict, tmp_path, capsys):
    out = _run(verdict, tmp_path, capsys, {"triton": (144.0, 192), "onepass": (92.0, 193)},
               {**FROZEN, "onepass": (55.0, 224)})
    assert "frozen head: fastest within 256 MB is onepass (55.00 ms, 1.08×; faster than Liger); it is the CUDA " \
           "default (onepass.wanted)" in out
    out = _run(verdict, tmp_path, capsys, {"triton": (144.0, 192), "onepass": (92.0, 193), "liger": (243.0, 1035),
                                            "cce": (193.0, 2)}, {"triton": (130.0, 31)})
    assert "issue 5 point 3 (trainable head): met by onepass\n" in out


def test_a_missing_baseline_is_not_taken_as_beaten(verdict, tmp_path, capsys):
    out = _run(verdict, tmp_path, capsys, {"triton": (144.0, 192), "onepass": (92.0, 193), "cce": (193.0, 2)}, FROZEN)
    assert "issue 5 point 3 (trainable head): not met by any method; onepass within time and memory, but Liger or " \
           "CCE was not measured" in out
