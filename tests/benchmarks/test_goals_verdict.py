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


def test_a_one_pass_loss_within_the_goals_is_to_become_the_default(verdict, tmp_path, capsys):
    out = _run(verdict, tmp_path, capsys, {"triton": (144.0, 192), "chunked": (217.0, 224), "onepass": (92.0, 193),
                                            "liger": (243.0, 1035), "cce": (193.0, 2), "cce-exact": (301.0, 1)}, FROZEN)
    assert "| onepass | 92.00 | 1.23 | 193 | yes | yes | yes | yes | yes |" in out
    assert "| triton | 144.00 | 1.92 | 192 | yes | **no** | yes | yes | yes |" in out
    assert "the one-pass loss meets the time and memory goals (1.23×, 193 MiB) and beats triton: make it" in out
    assert "frozen head: fastest within 256 MB is chunked (62.00 ms, 1.22×; faster than Liger); resolve_impl's " \
           "auto should pick chunked for a frozen head" in out
    assert "issue 5 point 3 (trainable head): met by onepass (not the current default: switch it first)" in out


def test_a_one_pass_loss_over_a_goal_keeps_the_default_and_says_why(verdict, tmp_path, capsys):
    out = _run(verdict, tmp_path, capsys, {"triton": (144.0, 192), "onepass": (103.7, 259), "liger": "ImportError: x"},
               {"triton": (130.0, 31), "chunked": "RuntimeError: boom"})
    assert "keep triton as the CUDA default; the one-pass loss is over 1.3×, over 256 MB (1.38×, 259 MiB)" in out
    assert "| onepass | 103.70 | 1.38 | 259 | **no** | **no** | n/a | n/a | n/a |" in out  # Liger failed: no verdict
    assert "| chunked | RuntimeError: boom |" in out
    assert "frozen head: fastest within 256 MB is triton (130.00 ms, 2.55×; Liger missing)" in out
    assert "resolve_impl" not in out and "not met by any method" in out


def test_a_one_pass_loss_fastest_with_a_frozen_head_is_named_for_that_default(verdict, tmp_path, capsys):
    out = _run(verdict, tmp_path, capsys, {"triton": (144.0, 192), "onepass": (92.0, 193)},
               {**FROZEN, "onepass": (55.0, 224)})
    assert "fastest within 256 MB is onepass (55.00 ms, 1.08×; faster than Liger); the one-pass loss should be " \
           "the default for a frozen head too (onepass.wanted)" in out


def test_a_missing_baseline_is_not_taken_as_beaten(verdict, tmp_path, capsys):
    out = _run(verdict, tmp_path, capsys, {"triton": (144.0, 192), "onepass": (92.0, 193), "cce": (193.0, 2)}, FROZEN)
    assert "issue 5 point 3 (trainable head): not met by any method; onepass within time and memory, but Liger or " \
           "CCE was not measured" in out
