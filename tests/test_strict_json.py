"""What prefopt writes as JSON is strict JSON: a figure that is NaN or infinite is written null,
since Python's ``NaN``/``Infinity`` tokens stop other readers (JavaScript, jq, R's jsonlite)."""
import json
import math

import numpy as np

from prefopt.fileio import json_text, jsonl_text, write_json_atomic
from prefopt.train.metrics import MetricsLog, read_metrics


def strict(text: str):
    def refuse(token):
        raise AssertionError(f"not JSON: {token}")
    return json.loads(text, parse_constant=refuse)


def test_finite_data_is_written_as_json_dumps_writes_it():
    obj = {"a": 1.5, "b": [1, 2.25, "é"], "c": {"d": None, "e": True}, "f": (3, 4.0)}
    assert json_text(obj) == json.dumps(obj, ensure_ascii=False)
    assert json_text(obj, indent=2, ensure_ascii=True) == json.dumps(obj, indent=2)


def test_nan_and_infinity_anywhere_become_null(tmp_path):
    obj = {"kappa": math.nan, "ci": [float("-inf"), 0.5], "deep": {"x": [{"y": math.inf}]}, "n": 3,
           "np": np.float64("nan"), "text": "NaN"}
    want = {"kappa": None, "ci": [None, 0.5], "deep": {"x": [{"y": None}]}, "n": 3, "np": None, "text": "NaN"}
    assert strict(json_text(obj)) == want
    write_json_atomic(tmp_path / "m.json", obj)
    assert strict((tmp_path / "m.json").read_text()) == want
    assert [strict(line) for line in jsonl_text([obj, {"a": 1.0}]).splitlines()] == [want, {"a": 1.0}]
    assert obj["kappa"] != obj["kappa"] and obj["ci"][0] == float("-inf")  # the caller's data is left as it was


def test_a_training_runs_metrics_lines_are_strict_json(tmp_path):
    log = MetricsLog(tmp_path, tensorboard=False)
    log.write({"step": 1, "loss": 0.5, "eval_nll": math.nan})
    log.write({"step": 2, "loss": 0.25, "grad_norm": math.inf})
    assert [strict(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [
        {"step": 1, "loss": 0.5, "eval_nll": None}, {"step": 2, "loss": 0.25, "grad_norm": None}]
    MetricsLog(tmp_path, resume_step=1, tensorboard=False)  # a resume keeps the lines up to its step
    assert read_metrics(tmp_path) == [{"step": 1, "loss": 0.5, "eval_nll": None}]
