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
