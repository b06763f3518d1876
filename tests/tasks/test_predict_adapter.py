"""Which adapter's weights made an evaluation or a prediction: their SHA-256 in metrics.json and
predict.json, and a stopped prediction goes on only with the same weights."""
import json

from prefopt.cli import main
from prefopt.fileio import sha256_of
from tests import _formats as formats
from tests._stops import stop_after_blocks
from tests._tiny import save_random_adapter


def test_a_stopped_prediction_goes_on_only_with_the_same_adapter_weights(tiny_model, tmp_path, monkeypatch):
    """The adapter saved again at its path (retrained in place) while a prediction was stopped: the
    rows its old weights made are not reused; each record's answer comes from the new weights."""
    import prefopt.evaluate.new_records as nr
    from prefopt.evaluate.partial import PARTIAL

    monkeypatch.setattr(nr, "BLOCK", 2)
    adapter = save_random_adapter(tiny_model, tmp_path / "adapter", seed=1)
    data = formats.write_jsonl(tmp_path / "m.jsonl", [{"id": f"m{i}", "message": f"Message {i}: chest pain for {i} h"}
                                                      for i in range(5)])
    argv = ["predict", "--task", "portal", "--model", str(tiny_model), "--adapter", str(adapter), "--data", str(data),
            "--max-new-tokens", "4", "--no-confidence"]
    answered, real = [], nr.predict_rows

    def counted(*a, **kw):  # each block's records, as they are answered
        answered.extend(r.id for r in a[3])
        return real(*a, **kw)

    monkeypatch.setattr(nr, "predict_rows", stop_after_blocks(real, 1))  # a block of two records, then a Ctrl-C
    out = tmp_path / "p"
    assert main(argv + ["--output", str(out)]) == 130
    first = sha256_of(adapter / "adapter_model.safetensors")
    stamp = json.loads((out / PARTIAL).read_text().splitlines()[0])["fingerprint"]
    assert stamp["adapter_sha256"] == first
    save_random_adapter(tiny_model, adapter, seed=2)  # retrained in place
    assert sha256_of(adapter / "adapter_model.safetensors") != first
    monkeypatch.setattr(nr, "predict_rows", counted)
    assert main(argv + ["--output", str(out)]) == 0
    assert answered == [f"m{i}" for i in range(5)]  # all of them again
    made = json.loads((out / "predict.json").read_text())
    assert made["adapter_sha256"] == sha256_of(adapter / "adapter_model.safetensors")
    # the same weights go on from where they stopped (as the same command always has)
    monkeypatch.setattr(nr, "predict_rows", stop_after_blocks(real, 1))
    assert main(argv + ["--output", str(tmp_path / "q")]) == 130
    monkeypatch.setattr(nr, "predict_rows", counted)
    answered.clear()
    assert main(argv + ["--output", str(tmp_path / "q")]) == 0
    assert answered == ["m2", "m3", "m4"]
    # an evaluation records the weights too, and a rescore of its answers keeps the record
    labelled = formats.write_jsonl(tmp_path / "l.jsonl", [
        {"id": "a", "message": "Chest pain", "urgency": "urgent", "staff": "nurse"},
        {"id": "b", "message": "Refill", "urgency": "routine", "staff": "nurse"}])
    common = ["--task", "portal", "--data", str(labelled), "--split", "all"]
    assert main(["eval", *common, "--model", str(tiny_model), "--adapter", str(adapter), "--max-new-tokens", "4",
                 "--output", str(tmp_path / "e")]) == 0
    evaluated = json.loads((tmp_path / "e" / "metrics.json").read_text())["evaluated"]
    assert evaluated["adapter_sha256"] == made["adapter_sha256"]
    assert main(["eval", *common, "--answers", str(tmp_path / "e"), "--output", str(tmp_path / "r")]) == 0
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["evaluated"]["adapter_sha256"] == \
        made["adapter_sha256"]


def test_a_stopped_prediction_starts_over_where_its_model_was_saved_again(tiny_model, tmp_path, monkeypatch):
    """A model folder's weights written again at its path (a merge over it, a new full fine-tune)
    while a prediction was stopped: their digest differs, and every record is answered again; the
    same bytes saved again (a new time: the weights read anew) go on, as the same files always
    have (the stopped-run tests in test_predict.py)."""
    import os
    import shutil

    from safetensors.torch import load_file, save_file

    import prefopt.evaluate.new_records as nr
    from prefopt.model.hub import local_model_path, path_stamp

    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    monkeypatch.setattr(nr, "BLOCK", 2)
    data = formats.write_jsonl(tmp_path / "m.jsonl", [{"id": f"m{i}", "message": f"Message {i}: a rash for {i} days"}
                                                      for i in range(4)])
    argv = ["predict", "--task", "portal", "--model", str(model), "--data", str(data), "--max-new-tokens", "4",
            "--no-confidence"]
    real, answered = nr.predict_rows, []

    def stopped_then_resumed(out: str, save_again) -> list[str]:
        monkeypatch.setattr(nr, "predict_rows", stop_after_blocks(real, 1))
        assert main([*argv, "--output", out]) == 130
        save_again(model / "model.safetensors")
        answered.clear()
        monkeypatch.setattr(nr, "predict_rows", lambda *a, **kw: answered.extend(r.id for r in a[3]) or real(*a, **kw))
        assert main([*argv, "--output", out]) == 0
        return list(answered)

    def touched(weights):  # the same bytes, a new time
        before = path_stamp(local_model_path(model))
        st = weights.stat()
        os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
        assert path_stamp(local_model_path(model)) != before

    def retrained(weights):  # other values, the same size
        tensors = load_file(weights)
        name = next(iter(tensors))
        tensors[name] = tensors[name] + 0.5
        save_file(tensors, weights, metadata={"format": "pt"})

    assert stopped_then_resumed(str(tmp_path / "p"), touched) == ["m2", "m3"]
    assert stopped_then_resumed(str(tmp_path / "q"), retrained) == ["m0", "m1", "m2", "m3"]
    assert local_model_path(str(tmp_path / "none")) is None and local_model_path("org/some-model") is None  # hub id


def test_predict_eval_and_a_rescore_name_the_models_weights_by_their_digest(tiny_model, tmp_path):
    """predict.json and eval's ``evaluated`` record the SHA-256 of the model's weights (each
    ``.safetensors`` and ``config.json`` by name, size and bytes), as a calibration does: the same
    for a copy of the folder elsewhere; a rescore of the answers keeps the earlier one's."""
    import hashlib
    import shutil

    h = hashlib.sha256()
    for p in sorted(p for p in tiny_model.iterdir() if p.suffix == ".safetensors" or p.name == "config.json"):
        h.update(f"{p.name}\0{p.stat().st_size}\0".encode() + p.read_bytes())
    copy = tmp_path / "elsewhere"
    shutil.copytree(tiny_model, copy)
    data = formats.write_jsonl(tmp_path / "m.jsonl", [{"id": "m0", "message": "Chest pain since this morning"}])
    assert main(["predict", "--task", "portal", "--model", str(copy), "--data", str(data), "--max-new-tokens", "4",
                 "--no-confidence", "--output", str(tmp_path / "p")]) == 0
    assert json.loads((tmp_path / "p" / "predict.json").read_text())["model_sha256"] == h.hexdigest()
    labelled = formats.write_jsonl(tmp_path / "l.jsonl", [
        {"id": "a", "message": "Chest pain", "urgency": "urgent", "staff": "nurse"}])
    common = ["--task", "portal", "--data", str(labelled), "--split", "all"]
    assert main(["eval", *common, "--model", str(tiny_model), "--max-new-tokens", "4",
                 "--output", str(tmp_path / "e")]) == 0
    assert main(["eval", *common, "--answers", str(tmp_path / "e"), "--output", str(tmp_path / "r")]) == 0
    for run in ("e", "r"):
        evaluated = json.loads((tmp_path / run / "metrics.json").read_text())["evaluated"]
        assert evaluated["model_sha256"] == h.hexdigest() and evaluated["adapter_sha256"] is None
