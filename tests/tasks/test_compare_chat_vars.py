"""``--chat-vars`` in the task layer: eval and predict render every prompt with them and record
them; a compare run gives them to every stage, its training included, keeps them when resumed,
and gives the judge (another model, another template) none."""
import json
from dataclasses import asdict

import pytest

from prefopt.evaluate.compare import CompareConfig, run_compare
from tests._tiny import THINKING, build_hf_model, build_tokenizer
from tests.tasks.conftest import StopAtSFT

TINY = {"max_train": 8, "test": 4, "sft_steps": 2, "dpo_steps": 2, "batch_size": 2, "max_length": 256,
        "eval_batch_size": 8, "max_new_tokens": 4}
EMPTY_THOUGHT = "<think>\n\n</think>\n\n"


@pytest.fixture(scope="module")
def thinking(tmp_path_factory):
    d = tmp_path_factory.mktemp("thinking")
    build_hf_model(d, tokenizer=False, max_position_embeddings=4096)
    build_tokenizer(d, template=THINKING)
    return d


@pytest.fixture
def prompts(monkeypatch) -> list[list[int]]:
    """The ids of every prompt the evaluations generate from."""
    import prefopt.evaluate.runner as runner

    seen, generate = [], runner.generate
    monkeypatch.setattr(runner, "generate", lambda model, ids, **kw: seen.extend(ids) or generate(model, ids, **kw))
    return seen


def test_eval_renders_with_the_chat_vars_and_records_them_and_answers_keeps_them(thinking, tmp_path, prompts,
                                                                                 capsys):
    from prefopt.cli import main
    from prefopt.tokenizer import load_tokenizer

    tok, out = load_tokenizer(thinking), tmp_path / "eval"
    assert main(["eval", "--task", "portal", "--model", str(thinking), "--output", str(out), "--limit", "3",
                 "--max-new-tokens", "4", "--chat-vars", "enable_thinking=false"]) == 0
    said = capsys.readouterr().out
    assert "prefopt eval: every prompt is rendered with enable_thinking=false" in said
    assert "enable_thinking, left unset" not in said
    assert len(prompts) == 3 and all(tok.decode(p, False).endswith(EMPTY_THOUGHT) for p in prompts)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["chat_vars"] == {"enable_thinking": False}
    assert main(["eval", "--task", "portal", "--answers", str(out), "--output", str(tmp_path / "again"),
                 "--limit", "3"]) == 0
    assert json.loads((tmp_path / "again" / "metrics.json").read_text())["chat_vars"] == {"enable_thinking": False}
    assert main(["eval", "--task", "portal", "--model", str(thinking), "--output", str(tmp_path / "on"),
                 "--limit", "3", "--max-new-tokens", "4"]) == 0
    assert "chat_vars" not in json.loads((tmp_path / "on" / "metrics.json").read_text())
    assert ("prefopt eval: the chat template has a thinking switch, enable_thinking, left unset (its default: a "
            "hybrid model such as Qwen3 reasons before it answers); --chat-vars enable_thinking=false answers at "
            "once") in capsys.readouterr().out
    assert not any(tok.decode(p, False).endswith(EMPTY_THOUGHT) for p in prompts[3:])
    assert main(["eval", "--task", "portal", "--model", str(thinking), "--output", str(tmp_path / "bad"),
                 "--chat-vars", "enable_thinkng=false"]) == 2
    assert "does not read 'enable_thinkng' (did you mean 'enable_thinking'?)" in capsys.readouterr().err


def test_predict_renders_with_the_chat_vars_and_records_them(thinking, tmp_path, prompts):
    from prefopt.cli import main
    from prefopt.tokenizer import load_tokenizer

    data = tmp_path / "new.jsonl"
    data.write_text("".join(json.dumps({"id": f"m{i}", "message": f"Rash on my arm for {i} days."}) + "\n"
                            for i in range(2)))
    out = tmp_path / "pred"
    assert main(["predict", "--task", "portal", "--model", str(thinking), "--data", str(data), "--output", str(out),
                 "--max-new-tokens", "4", "--chat-vars", "enable_thinking=false"]) == 0
    tok = load_tokenizer(thinking)
    assert len(prompts) == 2 and all(tok.decode(p, False).endswith(EMPTY_THOUGHT) for p in prompts)
    assert json.loads((out / "predict.json").read_text())["chat_vars"] == {"enable_thinking": False}


def test_a_compare_run_trains_and_evaluates_with_its_chat_vars_and_keeps_them(thinking, tmp_path, prompts,
                                                                             sft_configs, capsys):
    from prefopt.tokenizer import load_tokenizer

    judge = tmp_path / "judge"
    build_hf_model(judge, max_position_embeddings=4096)  # ChatML: its template reads no enable_thinking, so giving it the model's would fail

    out = tmp_path / "run"
    cfg = CompareConfig(task="portal", model=str(thinking), output=str(out), overrides=TINY, judge=str(judge),
                        chat_vars=["enable_thinking=false"])
    with pytest.raises(StopAtSFT):
        run_compare(cfg)
    assert "every prompt is rendered with enable_thinking=false" in capsys.readouterr().out
    assert json.loads((out / "compare_config.json").read_text())["chat_vars"] == {"enable_thinking": False}
    assert json.loads((out / "base" / "metrics.json").read_text())["chat_vars"] == {"enable_thinking": False}
    tok = load_tokenizer(thinking)
    assert prompts and all(tok.decode(p, False).endswith(EMPTY_THOUGHT) for p in prompts[:4])  # the model's 4
    assert sft_configs[0].chat_vars == {"enable_thinking": False}  # SFT trains on the text it is evaluated on

    with pytest.raises(StopAtSFT):  # resumed without them: the run's own
        run_compare(CompareConfig(**{**asdict(cfg), "chat_vars": None}))
    said = capsys.readouterr().out
    assert "base: reusing" in said and sft_configs[1].chat_vars == {"enable_thinking": False}
    assert "left unset" not in said
    with pytest.raises(ValueError, match=r"other settings \(chat_vars: \{'enable_thinking': False\} -> \{\}\)"):
        run_compare(CompareConfig(**{**asdict(cfg), "chat_vars": {}}))
    with pytest.raises(ValueError, match="chat_vars: expected NAME=VALUE"):
        run_compare(CompareConfig(**{**asdict(cfg), "output": str(tmp_path / "x"), "chat_vars": ["thinking"]}))
    assert not (tmp_path / "x").exists()
    capsys.readouterr()
    with pytest.raises(StopAtSFT):  # a judge with a thinking switch is asked to answer at once
        run_compare(CompareConfig(task="portal", model=str(judge), output=str(tmp_path / "judged"), overrides=TINY,
                                  judge=str(thinking)))
    assert "the judge answers with enable_thinking=false (one digit)" in capsys.readouterr().out
    assert tok.decode(prompts[-1], False).endswith(EMPTY_THOUGHT)  # the judge's last prompt


def test_eval_says_when_an_adapter_was_trained_with_other_chat_vars(thinking, tmp_path, capsys):
    """An adapter's run (its train_config.json beside final/) trained with enable_thinking=false:
    evaluating it without the flag says so, and with it says nothing (nor the unset-switch line)."""
    from prefopt import apply_lora, load_model, save_adapter
    from prefopt.cli import main

    run = tmp_path / "run"
    save_adapter(apply_lora(load_model(thinking), r=2, alpha=4, dropout=0.0), run / "final", base_model=str(thinking))
    (run / "train_config.json").write_text(json.dumps({"model": str(thinking), "chat_vars": {"enable_thinking": False}}))
    ask = ["eval", "--task", "portal", "--model", str(thinking), "--adapter", str(run / "final"), "--limit", "2",
           "--max-new-tokens", "2"]
    assert main(ask + ["--output", str(tmp_path / "e1")]) == 0
    said = capsys.readouterr().out
    assert (f"prefopt eval: {run / 'final'} was trained with chat variables enable_thinking=false, and these prompts "
            "are rendered with (none)") in said and "left unset" not in said
    assert main(ask + ["--output", str(tmp_path / "e2"), "--chat-vars", "enable_thinking=false"]) == 0
    assert "was trained with" not in capsys.readouterr().out


def test_a_finished_compare_report_says_its_chat_vars_and_its_commands_pass_them(thinking, tmp_path):
    out = tmp_path / "run"
    report = run_compare(CompareConfig(task="portal", model=str(thinking), output=str(out), overrides=TINY,
                                       n_resamples=100, chat_vars={"enable_thinking": False}))
    text = (out / "report.md").read_text()
    assert "; the chat template given `enable_thinking=false`." in text and report["chat_vars"] == {
        "enable_thinking": False}
    commands = [line for line in text.splitlines() if line.startswith(("prefopt eval", "prefopt predict",
                                                                        "prefopt generate"))]
    assert len(commands) >= 3 and all("--chat-vars enable_thinking=false" in c for c in commands)
    for stage in ("base", "sft", "dpo"):
        assert json.loads((out / stage / "metrics.json").read_text())["chat_vars"] == {"enable_thinking": False}


def test_a_calibration_is_refused_for_prompts_rendered_with_other_chat_vars(thinking, tmp_path, capsys):
    """The thinking switch changes the prompts, so the answers and their probabilities: the
    temperature fitted with --chat-vars enable_thinking=false is refused without them (and the
    other way), before the model loads, saying what to pass; a file from before, which does not
    say, is taken either way."""
    from prefopt.cli import main
    from prefopt.evaluate.calibration import read_calibration

    data = tmp_path / "m.jsonl"
    data.write_text("".join(json.dumps({"id": f"m{i}", "message": f"A cough for {i} days", "urgency": "routine",
                                        "staff": "nurse"}) + "\n" for i in range(4)))
    common = ["--task", "portal", "--model", str(thinking), "--data", str(data), "--max-new-tokens", "2"]
    off = ["--chat-vars", "enable_thinking=false"]
    assert main(["eval", *common, *off, "--split", "all", "--confidence", "--fit-temperature",
                 "--output", str(tmp_path / "fit")]) == 0
    fitted = tmp_path / "fit" / "calibration.json"
    record = json.loads(fitted.read_text())
    assert record["chat_vars"] == {"enable_thinking": False}
    capsys.readouterr()
    assert main(["predict", *common, "--calibration", str(fitted), "--output", str(tmp_path / "p")]) == 2
    assert (f"--calibration {fitted} was fitted on prompts rendered with chat variables enable_thinking=false, not "
            "(none): a temperature fits one model's probabilities, scored one way (fit one for this one: eval "
            "--confidence --fit-temperature); or pass --chat-vars enable_thinking=false") in capsys.readouterr().err
    assert not (tmp_path / "p").exists()
    assert main(["predict", *common, *off, "--calibration", str(fitted), "--output", str(tmp_path / "p")]) == 0
    t, model = record["temperature"], str(thinking)
    fitted.write_text(json.dumps(record | {"chat_vars": None}))
    with pytest.raises(ValueError, match=r"rendered with chat variables \(none\), not enable_thinking=false: .*; or "
                                         "leave --chat-vars out"):
        read_calibration(fitted, task="portal", model=model, adapter=None, chat_vars={"enable_thinking": False})
    assert read_calibration(fitted, task="portal", model=model, adapter=None, chat_vars={}) == t
    fitted.write_text(json.dumps({k: v for k, v in record.items() if k != "chat_vars"}))  # an older file
    for chat_vars in (None, {"enable_thinking": False}):
        assert read_calibration(fitted, task="portal", model=model, adapter=None, chat_vars=chat_vars) == t


def test_a_compare_runs_stage_calibrations_record_its_chat_vars(thinking, tmp_path):
    """With validation items each stage fits a temperature on prompts rendered with the run's chat
    variables, and says so: the report's predict command (which passes them) is served by it."""
    from prefopt.evaluate.calibration import read_calibration

    out = tmp_path / "run"
    run_compare(CompareConfig(task="portal", model=str(thinking), output=str(out), overrides=TINY | {"val": 4},
                              n_resamples=100, chat_vars={"enable_thinking": False}))
    for stage in ("base", "sft", "dpo"):
        assert json.loads((out / stage / "calibration.json").read_text())["chat_vars"] == {"enable_thinking": False}
    sft = str(out / "sft" / "train" / "final")
    assert read_calibration(out / "sft", task="portal", model=str(thinking), adapter=sft,
                            chat_vars={"enable_thinking": False}) > 0
    with pytest.raises(ValueError, match="or pass --chat-vars enable_thinking=false"):
        read_calibration(out / "sft", task="portal", model=str(thinking), adapter=sft)
