"""``prefopt compare``'s confidence: each stage's label probabilities, added to its evaluation
without answering again, and set side by side in the report (prefopt.evaluate.stage_confidence)."""
import json
from dataclasses import asdict

import pytest
import torch

from prefopt.evaluate.compare import CompareConfig, run_compare
from prefopt.evaluate.confidence import auroc, label_probabilities
from prefopt.evaluate.report import console_lines
from prefopt.evaluate.stage_confidence import add_confidence, confidence_console_lines, confidence_lines
from prefopt.tasks import get_task
from prefopt.tokenizer import load_tokenizer
from tests import _formats as formats
from tests._tiny import build_hf_model

TINY = {"max_train": 8, "test": 4, "sft_steps": 2, "dpo_steps": 2, "batch_size": 2, "max_length": 256,
        "eval_batch_size": 8}
STAGES = ("base", "sft", "dpo")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    build_hf_model(d, max_position_embeddings=4096)
    return d


def _rows(out, stage):
    return [json.loads(line) for line in (out / stage / "predictions.jsonl").read_text().splitlines()]


def _metrics(out, stage):
    return json.loads((out / stage / "metrics.json").read_text())


def _test_records(task, out, data=None):
    ids = json.loads((out / "split.json").read_text())["test"]
    by_id = {r.id: r for r in task.read(data)}
    return [by_id[i] for i in ids]


@pytest.mark.slow
def test_each_stage_is_scored_later_without_answering_again_and_the_report_sets_them_side_by_side(
        tiny_model, tmp_path, monkeypatch, capsys):
    """A run made with ``confidence=false`` has none; the same run with it on trains nothing and
    answers nothing again, loads each stage's model once, and adds what the stage's own model gives:
    the probabilities :func:`label_probabilities` computes on it, their AUROC by hand, and the
    likeliest labels. A rerun then has nothing to do."""
    import prefopt.evaluate.compare as compare
    import prefopt.pretrained

    out = tmp_path / "run"
    off = CompareConfig(task="portal", model=str(tiny_model), output=str(out), n_resamples=100,
                        overrides={**TINY, "confidence": False})
    run_compare(off)
    before = {s: _rows(out, s) for s in STAGES}
    assert all("confidence" not in _metrics(out, s) and "confidence" not in before[s][0] for s in STAGES)
    assert "## Confidence" not in (out / "report.md").read_text()
    adapters = {s: (out / s / "train" / "final" / "adapter_model.safetensors").read_bytes() for s in ("sft", "dpo")}

    calls, loads, load = [], [], prefopt.pretrained.load_model
    monkeypatch.setattr(compare, "predict", lambda *a, **k: calls.append(k))
    monkeypatch.setattr(prefopt.pretrained, "load_model",
                        lambda *a, **kw: loads.append(kw.get("adapter")) or load(*a, **kw))
    capsys.readouterr()
    report = run_compare(CompareConfig(**{**asdict(off), "overrides": TINY}))  # on by default
    log = capsys.readouterr().out
    assert calls == [] and loads == [None, out / "sft/train/final", out / "dpo/train/final"]
    assert adapters == {s: (out / s / "train" / "final" / "adapter_model.safetensors").read_bytes()
                        for s in ("sft", "dpo")}
    task, tok = get_task("portal"), load_tokenizer(str(tiny_model))
    test = _test_records(task, out)
    for stage in STAGES:
        assert f"{stage}: scored every label of the 4 test items" in log
        rows, metrics = _rows(out, stage), _metrics(out, stage)
        # the answers are the ones made before; only the two keys are new
        assert [{k: v for k, v in r.items() if k not in ("confidence", "likeliest")} for r in rows] == before[stage]
        adapter = None if stage == "base" else out / stage / "train" / "final"
        model = load(str(tiny_model), dtype=torch.float32, adapter=adapter, merge=adapter is not None)
        probs = label_probabilities(model, tok, task, test, show_progress=False)
        for row, p in zip(rows, probs):
            for f in task.fields:
                named = row["prediction"][f.name]
                assert row["confidence"][f.name] == (None if named is None else pytest.approx(p[f.name][named]))
                assert row["likeliest"][f.name] == max(p[f.name], key=p[f.name].get)
        for f in task.fields:
            c = metrics["confidence"][f.name]
            conf = [r["confidence"][f.name] or 0.0 for r in rows]
            right = [r["prediction"][f.name] == r["labels"][f.name] for r in rows]
            assert c["auroc"] == auroc(conf, right)
            named = [r["confidence"][f.name] is not None for r in rows]
            assert c["named"] == sum(named) / len(rows)
            assert c["auroc_named"] == auroc([x for x, n in zip(conf, named) if n], [x for x, n in zip(right, named) if n])
            assert c["accuracy_likeliest"] == pytest.approx(
                sum(r["likeliest"][f.name] == r["labels"][f.name] for r in rows) / len(rows))
        assert report["stages"][stage]["metrics"]["confidence"] == metrics["confidence"]

    text = (out / "report.md").read_text()
    table = text.split("## Confidence", 1)[1].split("\n## ", 1)[0]
    body = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| stage")]
    assert [tuple(cell.strip() for cell in line.split("|")[1:3]) for line in body] == [
        (name, field) for name in ("base", "SFT", "SFT+DPO") for field in ("urgency", "staff")]
    likeliest = _metrics(out, "dpo")["confidence"]["staff"]["accuracy_likeliest"]
    assert body[-1].split("|")[-2].strip() == f"{likeliest:.3f}"
    said = [line for line in console_lines(report) if "AUROC" in line]  # the terminal's summary, a line per field
    assert said == confidence_console_lines({n: _metrics(out, s) for n, s in zip(("base", "SFT", "SFT+DPO"), STAGES)})
    assert [line.split(":")[0] for line in said] == ["confidence in urgency", "confidence in staff"]

    capsys.readouterr()
    run_compare(CompareConfig(**{**asdict(off), "overrides": TINY}))
    assert "scored every label" not in capsys.readouterr().out and len(loads) == 3


def test_a_free_text_task_is_not_scored_and_a_bad_value_stops_the_run_before_its_folder(tiny_model, tmp_path,
                                                                                       monkeypatch):
    """MeQSum's answers are free text: its stages are evaluated without confidence (the base stage
    here; the run stops before training). ``confidence=maybe`` is refused before any work, and the
    folder is not claimed."""
    import prefopt.evaluate.compare as compare

    data = formats.write_jsonl(tmp_path / "meqsum.jsonl", formats.meqsum_rows(8))
    with pytest.raises(ValueError, match="confidence: true or false"):
        run_compare(CompareConfig(task="meqsum", model=str(tiny_model), output=str(tmp_path / "bad"),
                                  data=str(data), overrides={**TINY, "confidence": "maybe"}))
    assert not (tmp_path / "bad").exists()

    class Stop(Exception):
        pass

    def stop(*a, **k):
        raise Stop

    monkeypatch.setattr(compare, "_sft", stop)
    out = tmp_path / "run"
    with pytest.raises(Stop):
        run_compare(CompareConfig(task="meqsum", model=str(tiny_model), output=str(out), data=str(data),
                                  overrides={**TINY, "max_new_tokens": 4}))
    assert "rougeL" in _metrics(out, "base")
    assert "confidence" not in _metrics(out, "base") and "confidence" not in _rows(out, "base")[0]


def test_add_confidence_refuses_answers_to_other_items(tiny_model, tmp_path):
    task = get_task("portal")
    records = task.read(None)[:3]
    rows = [{"id": r.id, "prediction": {"urgency": None, "staff": None}} for r in records]
    with pytest.raises(ValueError, match="other items than the test set"):
        add_confidence(None, None, task, records[::-1], tmp_path, rows, {}, batch_size=4)
    assert not (tmp_path / "metrics.json").exists()


def test_the_sections_need_every_stage_scored_and_say_n_a_where_auroc_is_undefined():
    c = {"auroc": None, "auroc_named": None, "named": 1.0, "accuracy_confident_half": 1.0, "accuracy_other_half": None,
         "median": 0.9, "accuracy_likeliest": 1.0}
    scored = {"triage": {"accuracy": 1.0}, "confidence": {"triage": c}}
    assert confidence_lines({"base": {"triage": {}}, "SFT": scored}) == []
    assert confidence_console_lines({"base": {}, "SFT": scored}) == []
    lines = confidence_lines({"SFT": scored})
    assert lines[-1] == "| SFT | triage | 1.000 | 1.000 | — | — | 1.000 | — | 0.900 | 1.000 |"
    assert confidence_console_lines({"SFT": scored}) == [
        "confidence in triage: AUROC among answers that named a label SFT n/a; accuracy of the likeliest labels "
        "SFT 1.000"]
