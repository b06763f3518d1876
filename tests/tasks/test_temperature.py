"""Temperature scaling of the label probabilities (prefopt.evaluate.temperature, .calibration):
the fit against a known temperature and scipy's minimiser, cross-fitting, and eval/predict's
``--fit-temperature`` and ``--calibration`` against the model's own scores computed apart."""
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest

from prefopt.cli import main
from prefopt.evaluate.confidence import marginals
from prefopt.evaluate.temperature import BOUNDS, _fit_rows, _nll, cross_fitted, fit_temperature, right_answer
from prefopt.tasks import get_task
from tests import _formats as formats

LABELS = ["a", "b", "c", "d"]
TASK = SimpleNamespace(fields=[SimpleNamespace(name="label")])


def _records(true_logits: np.ndarray, scale: float, rng) -> tuple[list, list]:
    """Records whose label is drawn from the softmax of ``true_logits`` (a row each), and the
    answers' log-probs a model ``scale`` times too sure would give them (shifted: only their
    differences count)."""
    records, scored = [], []
    for z in true_logits:
        p = np.exp(z - z.max())
        label = LABELS[rng.choice(len(z), p=p / p.sum())]
        records.append(SimpleNamespace(labels={"label": label}, id=str(len(records))))
        scored.append([({"label": x}, float(scale * v - 30.0)) for x, v in zip(LABELS, z)])
    return records, scored


def test_the_fit_finds_the_temperature_that_made_the_model_over_confident():
    """Labels drawn from softmax(z), the model scoring 2.5 z: the fitted T is near 2.5, the NLL
    falls, and the slope of the NLL is zero there."""
    rng = np.random.default_rng(0)
    records, scored = _records(rng.normal(0, 1.5, (4000, 4)), 2.5, rng)
    fit = fit_temperature(TASK, records, scored)
    assert fit["temperature"] == pytest.approx(2.5, rel=0.06) and fit["bound"] is None and fit["n"] == 4000
    assert fit["nll_after"] < fit["nll_before"]
    rows = _fit_rows(TASK, records, scored)
    t, h = fit["temperature"], 1e-4
    assert _nll(rows, 1 / t) <= min(_nll(rows, 1 / t - h), _nll(rows, 1 / t + h))  # a minimum
    assert fit["nll_after"] == pytest.approx(_nll(rows, 1 / t))
    records, scored = _records(rng.normal(0, 1.5, (4000, 4)), 0.5, rng)
    assert fit_temperature(TASK, records, scored)["temperature"] == pytest.approx(0.5, rel=0.06)


def test_the_fit_is_scipys_minimum_of_the_nll():
    optimize = pytest.importorskip("scipy.optimize")
    rng = np.random.default_rng(1)
    records, scored = _records(rng.normal(0, 2.0, (60, 4)), 1.7, rng)
    rows = _fit_rows(TASK, records, scored)

    def nll_of_t(log_t):
        return _nll(rows, math.exp(-log_t))

    best = optimize.minimize_scalar(nll_of_t, bounds=(math.log(BOUNDS[0]), math.log(BOUNDS[1])), method="bounded",
                                    options={"xatol": 1e-10})
    fit = fit_temperature(TASK, records, scored)
    assert fit["temperature"] == pytest.approx(math.exp(best.x), rel=1e-5)
    assert fit["nll_after"] == pytest.approx(best.fun, rel=1e-9)
    # by hand: the NLL at T = 1 is the mean over records of log-sum-exp less the right answer's log-prob
    by_hand = np.mean([np.log(np.sum(np.exp([v for _, v in s])))
                       - dict((x["label"], v) for x, v in s)[r.labels["label"]] for r, s in zip(records, scored)])
    assert fit["nll_before"] == pytest.approx(by_hand)


def test_a_fit_past_its_bounds_stops_there_and_says_which():
    rng = np.random.default_rng(2)
    z = rng.normal(0, 1, (50, 4))
    right = [SimpleNamespace(labels={"label": LABELS[int(np.argmax(v))]}) for v in z]  # always the top answer
    wrong = [SimpleNamespace(labels={"label": LABELS[int(np.argmin(v))]}) for v in z]  # always the bottom one
    scored = [[({"label": x}, float(v)) for x, v in zip(LABELS, row)] for row in z]
    low = fit_temperature(TASK, right, scored)
    assert low["bound"] == "low" and low["temperature"] == pytest.approx(BOUNDS[0])
    high = fit_temperature(TASK, wrong, scored)
    assert high["bound"] == "high" and high["temperature"] == pytest.approx(BOUNDS[1])
    none = [SimpleNamespace(labels={"label": "e"}, id="x") for _ in z]  # a label no answer names
    with pytest.raises(ValueError, match="none of the 50 records' labels is among its possible answers"):
        fit_temperature(TASK, none, scored)


def test_each_record_is_scaled_by_the_fit_made_without_it():
    rng = np.random.default_rng(3)
    records, scored = _records(rng.normal(0, 1.5, (41, 4)), 2.0, rng)
    got = cross_fitted(TASK, records, scored)
    odd = fit_temperature(TASK, records[1::2], scored[1::2])["temperature"]  # part 0 (the even places) fitted on these
    even = fit_temperature(TASK, records[0::2], scored[0::2])["temperature"]
    assert got == [odd if i % 2 == 0 else even for i in range(41)] and odd != even
    with pytest.raises(ValueError, match="3 records are too few for 2 parts"):
        cross_fitted(TASK, records[:3], scored[:3])


def test_the_right_answer_names_every_fields_label_and_the_temperature_divides_each_log_prob():
    task = get_task("portal")
    combos = [("urgent", "nurse"), ("urgent", "physician"), ("routine", "nurse"), ("routine", "physician")]
    scored = [({"urgency": u, "staff": s}, math.log(p)) for (u, s), p in zip(combos, [0.1, 0.2, 0.3, 0.4])]
    record = SimpleNamespace(labels={"urgency": "routine", "staff": "nurse"})
    assert right_answer(task, record, scored) == 2
    assert right_answer(task, SimpleNamespace(labels={"urgency": "emergency", "staff": "nurse"}), scored) is None
    assert marginals(task, scored, 1.0)["urgency"] == pytest.approx({"urgent": 0.3, "routine": 0.7})
    q = np.array([0.1, 0.2, 0.3, 0.4]) ** (1 / 2.0)  # T = 2: each probability to the power 1/2, renormalised
    q /= q.sum()
    got = marginals(task, scored, 2.0)
    assert got["urgency"] == pytest.approx({"urgent": q[0] + q[1], "routine": q[2] + q[3]})
    assert got["staff"] == pytest.approx({"nurse": q[0] + q[2], "physician": q[1] + q[3]})


def _messages(tmp_path, n=8):
    return formats.write_jsonl(tmp_path / "m.jsonl", [
        {"id": f"m{i}", "message": f"Message {i}: my knee hurts since {i} days",
         "urgency": ["urgent", "routine", "emergency"][i % 3], "staff": ["nurse", "physician"][i % 2]}
        for i in range(n)])


def test_eval_fits_a_temperature_and_eval_and_predict_divide_by_it(tiny_model, tmp_path, capsys):
    """``eval --confidence --fit-temperature`` writes calibration.json, whose temperature is the fit
    on the model's own answer log-probs computed apart; ``eval --calibration`` and ``predict
    --calibration`` scale the probabilities by it; a file fitted for another adapter is refused."""
    from prefopt.evaluate.confidence import answer_logprobs
    from prefopt.pretrained import load_model
    from prefopt.tokenizer import load_tokenizer

    data = _messages(tmp_path)
    common = ["--task", "portal", "--model", str(tiny_model), "--data", str(data), "--max-new-tokens", "6"]
    fitted = tmp_path / "fit"
    assert main(["eval", *common, "--split", "all", "--output", str(fitted), "--confidence", "--fit-temperature"]) == 0
    out = capsys.readouterr().out
    calibration = json.loads((fitted / "calibration.json").read_text())
    task = get_task("portal")
    records = task.read(str(data))
    scored = answer_logprobs(load_model(str(tiny_model)), load_tokenizer(str(tiny_model)), task, records,
                             show_progress=False)
    want = fit_temperature(task, records, scored)
    assert calibration["temperature"] == pytest.approx(want["temperature"], rel=1e-6)
    assert calibration["nll_before"] == pytest.approx(want["nll_before"], rel=1e-6) and calibration["n"] == 8
    assert calibration["model"] == str(tiny_model.resolve()) and calibration["adapter"] is None
    metrics = json.loads((fitted / "metrics.json").read_text())  # the evaluation itself is not scaled
    assert "temperature" not in metrics
    assert {f: v["brier"] for f, v in calibration["uncalibrated"].items()} == \
        {f: v["brier"] for f, v in metrics["confidence"].items()}
    assert set(calibration["cross_fitted"]) == {"urgency", "staff"}
    assert f"prefopt eval: temperature {want['temperature']:.3f} fitted on 8 records" in out
    assert "on records it did not see (cross-fitted: each half scaled by the other half's fit): urgency Brier" in out
    # eval --calibration: each label's probability is the marginal of the answers' log-probs over T
    t = calibration["temperature"]
    assert main(["eval", *common, "--split", "all", "--output", str(tmp_path / "scaled"), "--confidence",
                 "--calibration", str(fitted)]) == 0
    scaled = json.loads((tmp_path / "scaled" / "metrics.json").read_text())
    assert scaled["temperature"] == t and scaled["calibration"] == str(fitted)
    rows = [json.loads(line) for line in (tmp_path / "scaled" / "predictions.jsonl").read_text().splitlines()]
    for row, r, s in zip(rows, records, scored):
        p = marginals(task, s, t)
        assert row["brier"]["urgency"] == pytest.approx(sum((q - (x == r.labels["urgency"])) ** 2
                                                            for x, q in p["urgency"].items()), abs=1e-9)
        assert row["likeliest"] == {f: max(p[f], key=p[f].get) for f in p}
    # predict --calibration: the confidence columns scaled alike
    assert main(["predict", *common, "--output", str(tmp_path / "p"), "--calibration",
                 str(fitted / "calibration.json")]) == 0
    made = json.loads((tmp_path / "p" / "predict.json").read_text())
    assert made["temperature"] == t
    for r, s in zip((json.loads(line) for line in (tmp_path / "p/predictions.jsonl").read_text().splitlines()), scored):
        p = marginals(task, s, t)
        for field in ("urgency", "staff"):
            assert r[f"likeliest_{field}"] == max(p[field], key=p[field].get)
            if r[f"predicted_{field}"]:
                assert r[f"confidence_{field}"] == pytest.approx(p[field][r[f"predicted_{field}"]], abs=1e-4)
    capsys.readouterr()
    # refused before any model loads: another adapter, the flags without scoring, both at once, no file
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    summaries = formats.write_jsonl(tmp_path / "meqsum.jsonl", formats.meqsum_rows(4))
    refusals = [
        (["eval", *common, "--adapter", str(adapter), "--confidence", "--calibration", str(fitted)],
         f"--calibration {fitted / 'calibration.json'} was fitted for adapter (none), not {adapter}"),
        (["eval", *common, "--fit-temperature"], "--fit-temperature scales the label probabilities --confidence "
         "scores: add --confidence"),
        (["eval", *common, "--confidence", "--fit-temperature", "--calibration", str(fitted)], "give one"),
        (["eval", *common, "--confidence", "--calibration", str(tmp_path / "none.json")],
         f"--calibration {tmp_path / 'none.json'}: no such file"),
        (["predict", *common, "--no-confidence", "--calibration", str(fitted)], "which --no-confidence leaves out"),
        (["eval", "--task", "meqsum", "--model", str(tiny_model), "--data", str(summaries), "--confidence",
          "--fit-temperature"], "--fit-temperature: meqsum answers in free text"),
    ]
    for argv, error in refusals:
        assert main([*argv, "--output", str(tmp_path / "refused")]) == 2, argv
        assert error in capsys.readouterr().err
    assert not (tmp_path / "refused").exists()


def test_eval_reads_a_runs_validation_items_to_fit_on(tiny_model, tmp_path, capsys):
    """``eval --split-file RUN/split.json --split val``: the run's validation items (held out of
    training and of the test set), in its order, read from its --data; refused where it held
    none, without --split-file, or from its --test-data."""
    data = _messages(tmp_path, 10)
    run = tmp_path / "run"
    run.mkdir()
    split = run / "split.json"
    split.write_text(json.dumps({"test": ["m0", "m1"], "val": ["m7", "m3", "m5", "m9"], "train": ["m2", "m4"]}))
    common = ["eval", "--task", "portal", "--model", str(tiny_model), "--data", str(data), "--max-new-tokens", "4",
              "--split-file", str(split)]
    assert main([*common, "--split", "val", "--output", str(tmp_path / "v"), "--confidence", "--fit-temperature"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "v" / "predictions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["m7", "m3", "m5", "m9"]
    assert json.loads((tmp_path / "v" / "calibration.json").read_text())["n"] == 4
    assert json.loads((tmp_path / "v" / "metrics.json").read_text())["evaluated"]["split"] == "val"
    capsys.readouterr()
    test_file = formats.write_jsonl(tmp_path / "later.jsonl", [{"id": "m0", "message": "a later message",
                                                                "urgency": "urgent", "staff": "nurse"}])
    (run / "compare_config.json").write_text(json.dumps({"data": str(data), "test_data": str(test_file)}))
    other = tmp_path / "other" / "split.json"
    other.parent.mkdir()
    other.write_text(json.dumps({"test": ["m0"], "val": [], "train": ["m1"]}))
    for argv, error in (([*common[:-2], "--split", "val"], "--split val: a compare run's validation items, named in "
                         "its split.json: give --split-file"),
                        ([*common[:-1], str(other), "--split", "val"], f"{other}: its run held no validation items "
                         "out (compare --set val=N"),
                        ([*common[:6], str(test_file), *common[7:], "--split", "val"],
                         f"{split}: its validation items are from its --data, {data}, not from its --test-data "
                         f"{test_file}: pass --data {data}")):
        assert main([*argv, "--output", str(tmp_path / "refused")]) == 2, argv
        assert error in capsys.readouterr().err


def test_a_calibration_fitted_on_an_alias_serves_its_imported_folder(tmp_path, monkeypatch):
    """``--model smollm2-135m`` and ``--model`` its folder in prefopt's cache are one model; another
    folder is not, nor another task or adapter."""
    from prefopt.evaluate.calibration import read_calibration
    from prefopt.evaluate.confidence import SCORING

    monkeypatch.setenv("PREFOPT_HOME", str(tmp_path / "home"))
    imported = tmp_path / "home" / "models" / "smollm2-135m"
    imported.mkdir(parents=True)
    other = tmp_path / "other"
    other.mkdir()
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps({"temperature": 1.5, "task": "portal", "model": "smollm2-135m", "adapter": None,
                                "confidence_scoring": SCORING}))
    for model in ("smollm2-135m", str(imported), str(imported) + "/"):
        assert read_calibration(path, task="portal", model=model, adapter=None) == 1.5
    for task, model, adapter, named in (("portal", str(other), None, f"model smollm2-135m, not {other}"),
                                        ("ktas", "smollm2-135m", None, "task portal, not ktas"),
                                        ("portal", "smollm2-135m", str(other), f"adapter (none), not {other}")):
        with pytest.raises(ValueError, match="was fitted for " + named.replace("(", r"\(").replace(")", r"\)")):
            read_calibration(path, task=task, model=model, adapter=adapter)


def test_a_calibration_fitted_on_a_gguf_file_serves_its_imported_folder_and_the_other_way(tmp_path, monkeypatch):
    """``--model x.gguf`` loads the folder it is imported into, so a temperature fitted with either
    serves the other (both are the folder's weights); a file re-exported since is refused, and a
    calibration.json an earlier prefopt wrote (the GGUF file's own digest) still serves that file."""
    from prefopt.evaluate.calibration import calibration_record, read_calibration
    from prefopt.model.digest import gguf_file_sha256
    from prefopt.model.hub import resolve_model_dir
    from tests._tiny import build_hf_model, write_tiny_gguf

    monkeypatch.setenv("PREFOPT_HOME", str(tmp_path / "home"))
    build_hf_model(tmp_path / "hf")
    gguf = write_tiny_gguf(tmp_path / "hf", tmp_path / "tiny.gguf")
    folder = resolve_model_dir(gguf)  # (imported, as a run's first load does)
    fit = {"temperature": 1.3, "n": 4, "nll_before": 1.0, "nll_after": 0.9, "bound": None}
    path = tmp_path / "calibration.json"
    for fitted, given in ((gguf, folder), (folder, gguf), (gguf, gguf)):
        record = calibration_record(fit, get_task("portal"), task_options={}, model=str(fitted), adapter=None,
                                    data=None, records=4, uncalibrated={}, fitted_on="the records evaluated")
        path.write_text(json.dumps(record))
        assert read_calibration(path, task="portal", model=str(given), adapter=None) == 1.3
    path.write_text(json.dumps({**record, "model_sha256": gguf_file_sha256(gguf)}))  # an earlier prefopt's record
    assert read_calibration(path, task="portal", model=str(gguf), adapter=None) == 1.3
    path.write_text(json.dumps(record))
    copied = tmp_path / "elsewhere" / "tiny.gguf"  # the file and the calibration copied to a machine that predicts
    copied.parent.mkdir()
    copied.write_bytes(gguf.read_bytes())
    monkeypatch.setenv("PREFOPT_HOME", str(tmp_path / "that-machine"))  # where the file is not imported yet
    assert read_calibration(path, task="portal", model=str(copied), adapter=None) == 1.3
    path.write_text(json.dumps(record))
    build_hf_model(tmp_path / "retrained", seed=1)
    write_tiny_gguf(tmp_path / "retrained", gguf)  # other weights exported at its path
    resolve_model_dir(gguf)
    with pytest.raises(ValueError, match=f"fitted for model {gguf} as its weights were then; others were saved there"):
        read_calibration(path, task="portal", model=str(gguf), adapter=None)


def test_a_calibration_serves_its_adapter_moved_or_copied_and_no_other(tmp_path):
    """An adapter is told by the digest of its weights as well as by its path: the same weights in
    another folder are served; other weights there, or a file that names its adapter by path alone,
    are refused, and the error says which."""
    from prefopt.evaluate.calibration import read_calibration
    from prefopt.evaluate.confidence import SCORING
    from prefopt.fileio import sha256_of

    def adapter(name: str, weights: bytes):
        (tmp_path / name).mkdir(parents=True)
        (tmp_path / name / "adapter_model.safetensors").write_bytes(weights)
        return tmp_path / name

    fitted = adapter("run/sft/train/final", b"the weights")
    path = tmp_path / "calibration.json"
    record = {"temperature": 2.5, "task": "portal", "model": "m", "adapter": str(fitted), "confidence_scoring": SCORING,
              "adapter_sha256": sha256_of(fitted / "adapter_model.safetensors")}
    path.write_text(json.dumps(record))
    copied, other = adapter("copied", b"the weights"), adapter("other", b"other weights")
    for given in (fitted, copied):
        assert read_calibration(path, task="portal", model="m", adapter=str(given)) == 2.5
    with pytest.raises(ValueError, match=f"fitted for adapter {fitted}, not {other}, whose weights differ"):
        read_calibration(path, task="portal", model="m", adapter=str(other))
    with pytest.raises(ValueError, match=r"not \(none\): a temperature"):  # an adapter's temperature, for no adapter
        read_calibration(path, task="portal", model="m", adapter=None)
    path.write_text(json.dumps({k: v for k, v in record.items() if k != "adapter_sha256"}))  # written before digests
    assert read_calibration(path, task="portal", model="m", adapter=str(fitted)) == 2.5
    with pytest.raises(ValueError, match=r"not .*copied \(the file, from before 2026-12-07, names its adapter by its "
                                         r"path alone\)"):
        read_calibration(path, task="portal", model="m", adapter=str(copied))


def test_a_calibration_serves_its_model_moved_or_copied_and_not_weights_saved_again_at_its_path(tmp_path, monkeypatch):
    """A model is told by the digest of its weights (prefopt.model.digest) as well as by its path:
    a model folder copied to the machine that predicts is served; other weights at another path,
    or saved again at the fitted path (a model or an adapter retrained in place), are refused, and
    the error says which; a file without the digest knows a model by its path alone, a hub id by
    its name."""
    from prefopt.evaluate.calibration import calibration_record, read_calibration
    from prefopt.model.digest import weights_sha256
    from prefopt.tasks import get_task

    monkeypatch.setenv("PREFOPT_HOME", str(tmp_path / "home"))

    def folder(name: str, weights: bytes, file: str = "model.safetensors"):
        (tmp_path / name).mkdir(parents=True)
        (tmp_path / name / file).write_bytes(weights)
        return tmp_path / name

    fitted, adapter = folder("models/m", b"the weights"), folder("run/sft", b"lora", "adapter_model.safetensors")
    fit = {"temperature": 1.7, "n": 4, "nll_before": 1.0, "nll_after": 0.9, "bound": None}
    record = calibration_record(fit, get_task("portal"), task_options={}, model=str(fitted), adapter=str(adapter),
                                data=None, records=4, uncalibrated={}, fitted_on="the records evaluated")
    assert record["model"] == str(fitted.resolve()) and record["model_sha256"] == weights_sha256(fitted)
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps(record))
    copied, other = folder("deployed/m", b"the weights"), folder("other", b"other weights")
    for given in (fitted, copied):
        assert read_calibration(path, task="portal", model=str(given), adapter=str(adapter)) == 1.7
    with pytest.raises(ValueError, match=f"fitted for model {fitted}, not {other}, whose weights differ"):
        read_calibration(path, task="portal", model=str(other), adapter=str(adapter))
    with pytest.raises(ValueError, match=f"fitted for model {fitted}, not org/name: a temperature"):
        read_calibration(path, task="portal", model="org/name", adapter=str(adapter))
    (copied / "model.safetensors").write_bytes(b"retrained weights")
    with pytest.raises(ValueError, match=f"fitted for model {fitted}, not {copied}, whose weights differ"):
        read_calibration(path, task="portal", model=str(copied), adapter=str(adapter))
    (adapter / "adapter_model.safetensors").write_bytes(b"lora trained again")
    with pytest.raises(ValueError, match=f"fitted for adapter {adapter} as its weights were then; others were saved "
                                         "there since: a temperature"):
        read_calibration(path, task="portal", model=str(fitted), adapter=str(adapter))
    old = {k: v for k, v in record.items() if k not in ("model_sha256", "adapter_sha256")}  # written before digests
    path.write_text(json.dumps(old))
    assert read_calibration(path, task="portal", model=str(fitted), adapter=str(adapter)) == 1.7
    with pytest.raises(ValueError, match=f"not {tmp_path}/deployed/m \\(the file, from before 2026-12-08, names its "
                                         "model by its path alone\\)"):
        read_calibration(path, task="portal", model=str(tmp_path / "deployed" / "m"), adapter=str(adapter))
    path.write_text(json.dumps({**record, "model": "org/name", "model_sha256": None, "adapter": None,
                                "adapter_sha256": None}))  # fitted on a hub id: its name says which weights
    assert read_calibration(path, task="portal", model="org/name", adapter=None) == 1.7
    with pytest.raises(ValueError, match=f"fitted for model org/name, not {fitted}: a temperature"):
        read_calibration(path, task="portal", model=str(fitted), adapter=None)


def test_a_calibration_fitted_on_a_4bit_base_is_refused_in_full_precision_and_the_other_way(tiny_model, tmp_path,
                                                                                            capsys):
    """The 4-bit base's probabilities are not full precision's: calibration.json says how its model
    was loaded (eval --quantize), and predict and eval refuse it for the other way before the
    model loads; a file from before that, which does not say, is taken either way."""
    from prefopt.evaluate.calibration import read_calibration

    data = tmp_path / "m.jsonl"
    data.write_text("".join(json.dumps({"id": f"m{i}", "message": f"A rash for {i} days", "urgency": "routine",
                                        "staff": "nurse"}) + "\n" for i in range(4)))
    common = ["--task", "portal", "--model", str(tiny_model), "--data", str(data), "--max-new-tokens", "2"]
    assert main(["eval", *common, "--split", "all", "--confidence", "--fit-temperature", "--quantize", "nf4",
                 "--output", str(tmp_path / "fit")]) == 0
    fitted = tmp_path / "fit" / "calibration.json"
    assert json.loads(fitted.read_text())["quantized"] == "nf4"
    capsys.readouterr()
    assert main(["predict", *common, "--calibration", str(fitted), "--output", str(tmp_path / "p")]) == 2
    assert (f"--calibration {fitted} was fitted on the model in 4 bits (--quantize nf4), not in full precision (no "
            "--quantize): a temperature fits one model's probabilities") in capsys.readouterr().err
    assert not (tmp_path / "p").exists()
    t = json.loads(fitted.read_text())["temperature"]
    assert read_calibration(fitted, task="portal", model=str(tiny_model), adapter=None, quantized="nf4") == t
    with pytest.raises(ValueError, match=r"fitted on the model in 4 bits \(--quantize nf4\), not in 4 bits "
                                         r"\(--quantize nf4-dq\)"):
        read_calibration(fitted, task="portal", model=str(tiny_model), adapter=None, quantized="nf4-dq")
    record = json.loads(fitted.read_text())
    fitted.write_text(json.dumps(record | {"quantized": None}))
    with pytest.raises(ValueError, match=r"fitted on the model in full precision \(no --quantize\), not in 4 bits"):
        read_calibration(fitted, task="portal", model=str(tiny_model), adapter=None, quantized="nf4")
    fitted.write_text(json.dumps({k: v for k, v in record.items() if k != "quantized"}))  # an older file
    for quantized in (None, "nf4"):
        assert read_calibration(fitted, task="portal", model=str(tiny_model), adapter=None, quantized=quantized) == t


def test_a_calibration_is_refused_over_other_labels(tiny_model, tmp_path, capsys):
    """A task whose labels are read off its data: a temperature fitted over three labels is
    refused for a file that holds two (its prompt lists two, and the probability is spread over
    them), and served where the same labels are given in another order (--task-option labels=);
    a file from before, which does not say, is taken."""
    from prefopt.evaluate.calibration import read_calibration

    def rows(labels):
        return "".join(json.dumps({"text": f"note {i}", "label": label}) + "\n" for i, label in enumerate(labels))

    three, two = tmp_path / "three.jsonl", tmp_path / "two.jsonl"
    three.write_text(rows(["urgent", "routine", "soon", "urgent"]))
    two.write_text(rows(["urgent", "routine", "urgent", "routine"]))
    common = ["eval", "--task", "text_classification", "--model", str(tiny_model), "--max-new-tokens", "2",
              "--split", "all", "--confidence"]
    assert main([*common, "--data", str(three), "--fit-temperature", "--output", str(tmp_path / "fit")]) == 0
    fitted = tmp_path / "fit" / "calibration.json"
    record = json.loads(fitted.read_text())
    assert set(record["labels"]["label"]) == {"urgent", "routine", "soon"}
    capsys.readouterr()
    assert main([*common, "--data", str(two), "--calibration", str(fitted), "--output", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err
    assert f"--calibration {fitted} was fitted over the labels label: " in err and "soon" in err
    assert ", not label: " in err and "a temperature spreads the probability over one set of labels" in err
    assert not (tmp_path / "e").exists()  # (refused before the model loaded)
    assert main([*common, "--data", str(two), "--task-option", "labels=soon,routine,urgent", "--calibration",
                 str(fitted), "--output", str(tmp_path / "e")]) == 0
    t = record["temperature"]
    fitted.write_text(json.dumps({k: v for k, v in record.items() if k != "labels"}))  # an older file
    assert read_calibration(fitted, task="text_classification", model=str(tiny_model), adapter=None,
                            labels={"label": ["a", "b"]}) == t


def test_a_list_of_columns_given_typed_or_as_text_is_one_prompt_option(tmp_path):
    """``feature_columns`` typed (a compare config's list, JSON on the command line) or as text
    split at commas (``age, sex``) asks the same prompts: recorded as the list the task reads, and
    a file that recorded it as given is read so; other columns are refused, with the list to pass."""
    from prefopt.evaluate.calibration import read_calibration
    from prefopt.evaluate.confidence import SCORING
    from prefopt.tasks import prompt_options

    typed = prompt_options("numeric_table", {"feature_columns": ["age", "sex"]})
    assert typed == prompt_options("numeric_table", {"feature_columns": "age, sex"}) == \
        {"feature_columns": ["age", "sex"], "names": None, "question": None}
    assert prompt_options("numeric_table", {})["feature_columns"] is None  # (every column: the default)
    path = tmp_path / "calibration.json"
    for recorded in ("age, sex", ["age", "sex"]):  # (as an earlier prefopt recorded the text: as given)
        path.write_text(json.dumps({"temperature": 1.2, "task": "numeric_table", "model": "m", "adapter": None,
                                    "confidence_scoring": SCORING, "prompt_options": {**typed, "feature_columns":
                                                                                      recorded}}))
        assert read_calibration(path, task="numeric_table", model="m", adapter=None, prompts=typed) == 1.2
    with pytest.raises(ValueError, match=r'feature_columns=\["age", "sex"\], not feature_columns=\["age", "bmi"\]: '
                                         r'.*or --task-option feature_columns=\["age", "sex"\]$'):
        read_calibration(path, task="numeric_table", model="m", adapter=None,
                         prompts=prompt_options("numeric_table", {"feature_columns": "age,bmi"}))


def test_a_calibration_is_refused_for_prompts_made_with_other_task_options(tiny_model, tmp_path, capsys):
    """Prompts cut shorter (max_chars) or asked with another instruction are other prompts: a
    temperature fitted on one kind is refused for the other, each option that differs named with
    what to pass; options that only say how to read the file (a column, the delimiter) are no
    matter, and a file from before, which does not say, is taken."""
    from prefopt.evaluate.calibration import read_calibration
    from prefopt.tasks import prompt_options

    assert prompt_options("text_classification", {"text_column": "note", "max_chars": "800", "delimiter": ";"}) == \
        {"max_chars": 800, "instruction": None}  # (the number read as the task reads it; defaults filled in)
    data = tmp_path / "d.csv"
    data.write_text("note,label\n" + "".join(f"note {i} with a long tail of words,{'ab'[i % 2]}\n" for i in range(4)))
    renamed = tmp_path / "r.csv"
    renamed.write_text(data.read_text().replace("note,label", "text,label", 1))
    common = ["eval", "--task", "text_classification", "--model", str(tiny_model), "--max-new-tokens", "2",
              "--split", "all", "--confidence"]
    assert main([*common, "--data", str(data), "--task-option", "text_column=note", "--task-option", "max_chars=10",
                 "--fit-temperature", "--output", str(tmp_path / "fit")]) == 0
    fitted = tmp_path / "fit" / "calibration.json"
    record = json.loads(fitted.read_text())
    assert record["prompt_options"] == {"max_chars": 10, "instruction": None}
    capsys.readouterr()
    assert main([*common, "--data", str(data), "--task-option", "text_column=note", "--task-option",
                 "instruction=Sort this note.", "--calibration", str(fitted), "--output", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err
    assert (f"--calibration {fitted} was fitted on prompts made with the task options instruction=(unset), "
            "max_chars=10, not instruction=Sort this note., max_chars=1500: a temperature fits the probabilities of "
            "the prompts it was fitted on") in err
    assert "or leave --task-option instruction out; --task-option max_chars=10" in err
    assert not (tmp_path / "e").exists()  # (refused before the model loaded)
    # the same prompts from a file whose text column has the default name: served
    assert main([*common, "--data", str(renamed), "--task-option", "max_chars=10", "--calibration", str(fitted),
                 "--output", str(tmp_path / "e")]) == 0
    t = record["temperature"]
    fitted.write_text(json.dumps({k: v for k, v in record.items() if k != "prompt_options"}))  # an older file
    assert read_calibration(fitted, task="text_classification", model=str(tiny_model), adapter=None,
                            prompts={"max_chars": 1500, "instruction": None}) == t


def test_a_calibration_is_refused_for_prompts_rendered_by_another_chat_template(tiny_model, tmp_path, capsys):
    """The same weights with their chat template edited (or updated on the hub) render other
    prompts: calibration.json records the template's SHA-256 and predict refuses it for another
    before the model loads; the template as it was serves again, and a file from before the
    digest was recorded is taken."""
    import shutil

    from prefopt.evaluate.calibration import read_calibration, template_sha256
    from prefopt.tokenizer import load_tokenizer

    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    data = formats.write_jsonl(tmp_path / "m.jsonl", [{"message": f"A rash for {i} days", "urgency": "routine",
                                                       "staff": "nurse"} for i in range(4)])
    common = ["--task", "portal", "--model", str(model), "--data", str(data), "--max-new-tokens", "2"]
    assert main(["eval", *common, "--split", "all", "--confidence", "--fit-temperature", "--output",
                 str(tmp_path / "fit")]) == 0
    fitted = tmp_path / "fit" / "calibration.json"
    record = json.loads(fitted.read_text())
    assert record["chat_template_sha256"] == template_sha256(load_tokenizer(model)) is not None
    config = model / "tokenizer_config.json"
    before = config.read_text()
    tokenizer = json.loads(before)
    tokenizer["chat_template"] = tokenizer["chat_template"].replace("helpful", "careful")  # (its system prompt)
    config.write_text(json.dumps(tokenizer))
    edited = template_sha256(load_tokenizer(model))
    assert edited != record["chat_template_sha256"]
    capsys.readouterr()
    assert main(["predict", *common, "--calibration", str(fitted), "--output", str(tmp_path / "p")]) == 2
    assert (f"--calibration {fitted} was fitted on prompts rendered by another chat template (SHA-256 "
            f"{record['chat_template_sha256'][:12]}..., the model's now {edited[:12]}...: the template in the model's "
            "folder was edited or updated since, or this copy has another): a temperature fits one model's "
            "probabilities") in capsys.readouterr().err
    assert not (tmp_path / "p").exists()
    t = record["temperature"]
    fitted.write_text(json.dumps({k: v for k, v in record.items() if k != "chat_template_sha256"}))  # an older file
    assert read_calibration(fitted, task="portal", model=str(model), adapter=None, template=edited) == t
    config.write_text(before)
    fitted.write_text(json.dumps(record))
    assert main(["predict", *common, "--calibration", str(fitted), "--output", str(tmp_path / "p")]) == 0
