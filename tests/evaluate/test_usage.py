"""The report's "The models" section: the adapters it names and commands that parse as written."""
import shlex

import pytest

from prefopt.cli import build_parser
from prefopt.evaluate.cli import REPEAT_FLAGS, key_values
from prefopt.evaluate.compare import CompareConfig
from prefopt.evaluate.usage import eval_flags, models_lines
from prefopt.lora_stack import STACK_FILE
from prefopt.tasks import get_task


def _commands(lines: list[str]) -> list[list[str]]:
    block = "\n".join(lines).split("```bash\n", 1)[1].split("```", 1)[0]
    return [shlex.split(line) for line in block.splitlines() if line and not line.startswith("#")]


def test_eval_command_asks_as_the_run_did(tmp_path):
    """Task options (lists as JSON) and every decoding setting the run changed become eval's flags,
    which eval's own parser reads back to the same values; defaults add nothing."""
    options = {"text_column": "Notiz", "labels": ["dringend", "routine"], "encoding": "cp1252", "label_column": "2024"}
    cfg = CompareConfig(task="text_classification", model="my model", output=str(tmp_path / "run 1"),
                        data="x.csv", task_options=options)
    task = get_task("text_classification", **options)
    assert eval_flags(cfg, task, {"max_new_tokens": task.max_new_tokens, "repetition_penalty": 1.0,
                                  "no_repeat_ngram_size": 0, "repeat_scope": "all"})[-1] == 'label_column="2024"'
    decoded = {"max_new_tokens": 40, "repetition_penalty": 1.2, "no_repeat_ngram_size": 4, "repeat_scope": "output"}
    (tmp_path / "run 1/dpo/train/best").mkdir(parents=True)
    (tmp_path / "run 1/dpo/train/best" / STACK_FILE).write_text("{}")
    lines = models_lines(cfg, task, tmp_path / "run 1", {"sft": "sft/train/final", "dpo": "dpo/train/best"}, decoded)
    evaluate, against, predict, generate, merge, export, reviewed = _commands(lines)
    args = build_parser().parse_args([a if a != "NEW_FILE" else "new.csv" for a in evaluate[1:]])
    assert key_values(args.task_option) == options
    assert (args.max_new_tokens, args.repetition_penalty, args.no_repeat_ngram_size, args.repeat_scope) == (
        40, 1.2, 4, "output")
    assert (args.model, args.adapter, args.split) == ("my model", str(tmp_path / "run 1" / "dpo/train/best"), "all")
    assert args.confidence  # a classifier: whether predict's confidence column means much
    sft = build_parser().parse_args([a if a != "NEW_FILE" else "new.csv" for a in against[1:]])
    assert (sft.adapter, sft.against) == (str(tmp_path / "run 1" / "sft/train/final"), args.output)
    assert {k: v for k, v in vars(sft).items() if k not in ("adapter", "against", "output")} == \
        {k: v for k, v in vars(args).items() if k not in ("adapter", "against", "output")}
    assert build_parser().parse_args(generate[1:]).adapter == build_parser().parse_args(merge[1:]).adapter == args.adapter
    assert build_parser().parse_args(export[1:]).adapter == args.adapter
    new = build_parser().parse_args([a if a != "NEW_RECORDS" else "new.csv" for a in predict[1:]])
    assert (new.command, new.adapter, new.data, new.output) == ("predict", args.adapter, "new.csv",
                                                                str(tmp_path / "run 1" / "predictions"))
    assert key_values(new.task_option) == options  # the records asked as the run asked, decoded alike
    assert {k: getattr(new, k) for k in ("task", "model", "max_new_tokens", *REPEAT_FLAGS, "device", "dtype")} == \
        {k: getattr(args, k) for k in ("task", "model", "max_new_tokens", *REPEAT_FLAGS, "device", "dtype")}
    pairs = build_parser().parse_args([a if a != "REVIEWED" else "reviewed.csv" for a in reviewed[1:]])
    assert (pairs.command, pairs.task, pairs.data) == ("reviewed-pairs", "text_classification", "reviewed.csv")
    assert pairs.output == str(tmp_path / "run 1" / "reviewed")
    assert key_values(pairs.task_option) == options  # (the table read as the run read its records)
    assert "- SFT+DPO: `dpo/train/best` (one adapter holding the SFT update and the chosen DPO step's)" in lines


def test_labels_read_off_the_runs_data_are_pinned(tmp_path):
    """A task that reads its labels off the data lists them in every prompt: eval on another file
    (which may lack a class) must be given the run's, in the run's order."""
    data = tmp_path / "t.csv"
    data.write_text("text,label\nchest pain,urgent\nrefill,routine\nrash,soon\n")
    cfg = CompareConfig(task="text_classification", model="m", output=str(tmp_path), data=str(data))
    task = get_task("text_classification")
    prompt = task.load(data)[0].prompt
    flags = eval_flags(cfg, task, {})
    assert flags == ["--task-option", "labels=routine,soon,urgent"]
    other = tmp_path / "other.csv"
    other.write_text("text,label\nchest pain,urgent\nrefill,routine\n")
    assert get_task("text_classification", **key_values(flags[1::2])).load(other)[0].prompt == prompt
    assert get_task("text_classification").load(other)[0].prompt != prompt  # what a bare eval would ask
    task.fields[0].labels = ["a, b", "c"]  # a label with a comma goes as a JSON list
    assert key_values(eval_flags(cfg, task, {})[1::2]) == {"labels": ["a, b", "c"]}
    assert eval_flags(cfg, get_task("portal"), {}) == []  # a task whose labels are its own
    # a label_map's label no row held is left out of the map with the labels read (eval would refuse the map)
    cfg.task_options = {"label_map": "u=urgent,R=routine,x=never seen"}
    task = get_task("text_classification", **cfg.task_options)
    task.load(data)
    flags = eval_flags(cfg, task, {})
    assert flags == ["--task-option", "label_map=u=urgent,R=routine", "--task-option", "labels=routine,soon,urgent"]
    assert get_task("text_classification", **key_values(flags[1::2])).load(other)[0].prompt == prompt
    cfg.task_options = {"label_map": "x=never seen"}  # no entry left: no option
    task = get_task("text_classification", **cfg.task_options)
    task.load(data)
    assert eval_flags(cfg, task, {}) == ["--task-option", "labels=routine,soon,urgent"]
    with pytest.raises(ValueError, match="label_map: x=never seen: 'never seen' is not one of the task's labels"):
        get_task("text_classification", **cfg.task_options, labels="routine,soon,urgent")
    cfg.task_options = {"text_column": "note", "sheet": "Train"}  # the run's workbook's sheet: not a new file's
    assert eval_flags(cfg, get_task("text_classification", text_column="note", labels="a"), {}) == [
        "--task-option", "text_column=note", "--task-option", "labels=a"]


def test_an_adapter_saved_alone_is_stacked_first_and_the_sft_model_said_so(tmp_path):
    cfg = CompareConfig(task="portal", model="smollm2-135m", output=str(tmp_path))
    task = get_task("portal")
    (tmp_path / "dpo/train/final").mkdir(parents=True)
    weights = {"sft": "sft/train/final", "dpo": "dpo/train/final"}
    lines = models_lines(cfg, task, tmp_path, weights, {})
    assert (f"make one adapter of both first (`prefopt stack-adapters {tmp_path}/sft/train/final "
            f"{tmp_path}/dpo/train/final OUT`)") in "\n".join(lines)
    (tmp_path / "dpo/train/final" / STACK_FILE).write_text("{}")  # saved by prefopt since adapters stack
    lines = models_lines(cfg, task, tmp_path, weights, {})
    assert "- SFT+DPO: `dpo/train/final` (one adapter holding the SFT update and the DPO one)" in lines
    lines = models_lines(cfg, task, tmp_path, {"sft": "sft/train/final", "dpo": "sft/train/final"}, {})
    assert "- SFT+DPO: `sft/train/final` (the SFT adapter: the SFT+DPO stage is the SFT model)" in lines
    assert build_parser().parse_args(_commands(models_lines(
        cfg, get_task("meqsum"), tmp_path, weights, {}))[0][1:]).confidence is False  # free text: nothing to score
    commands = _commands(lines)  # no SFT evaluation to test it against: the SFT+DPO stage is the SFT model
    assert [c[1] for c in commands] == ["eval", "predict", "generate", "merge", "export-gguf", "reviewed-pairs"]
    assert all(c[c.index("--adapter") + 1] == f"{tmp_path}/sft/train/final" for c in commands if "--adapter" in c)


def test_a_4bit_run_is_used_on_its_4bit_base_and_its_adapters_are_named(tmp_path, monkeypatch):
    """The report says what the adapters are (read off the SFT one) and, for a run on a 4-bit base,
    every command that answers loads it that way (an adapter trained on 4 bits is worse on the
    full-precision base); merging warns that the merged model is not the one evaluated. (The alias
    is not imported here: no digest of its weights to show.)"""
    from prefopt import apply_lora, load_model, save_adapter
    from tests._tiny import build_hf_model

    monkeypatch.setenv("PREFOPT_HOME", str(tmp_path / "home"))

    build_hf_model(tmp_path / "base", tokenizer=False)
    save_adapter(apply_lora(load_model(tmp_path / "base"), r=4, alpha=8, target_modules=["q_proj", "v_proj"],
                            layers=[1]), tmp_path / "run" / "sft/train/final")
    (tmp_path / "run" / "dpo/train/final").mkdir(parents=True)
    (tmp_path / "run" / "dpo/train/final" / STACK_FILE).write_text("{}")
    cfg = CompareConfig(task="portal", model="smollm2-135m", output=str(tmp_path / "run"))
    weights = {"sft": "sft/train/final", "dpo": "dpo/train/final"}
    lines = models_lines(cfg, get_task("portal"), tmp_path / "run", weights, {"quantized": "nf4-dq"})
    assert ("LoRA r4 (alpha 8) on q_proj, v_proj in layer 1, on `smollm2-135m` (its nf4-dq 4-bit base); each "
            "stage's adapter, with its tokenizer:") in lines
    commands = _commands(lines)
    assert [c[1] for c in commands] == ["eval", "eval", "predict", "generate", "merge", "export-gguf",
                                        "reviewed-pairs"]
    for c in commands[:4]:
        assert build_parser().parse_args([a if not a.startswith("NEW_") else "x.csv" for a in c[1:]]).quantize == "nf4-dq"
    assert "in full precision: the adapter learnt the nf4-dq base's corrections too" in "\n".join(lines)
    plain = models_lines(cfg, get_task("portal"), tmp_path / "run", weights, {})
    assert not any("--quantize" in c for c in _commands(plain)) and "in full precision" not in "\n".join(plain)


def test_the_commands_render_the_prompts_as_the_run_did(tmp_path):
    """A run whose template printed a date, and which gave it chat variables: every command that
    answers takes both, and each parses back to the run's values (a text value with a space too)."""
    from prefopt.cli import chat_vars_arg

    cfg = CompareConfig(task="portal", model="m", output=str(tmp_path))
    (tmp_path / "dpo/train/final").mkdir(parents=True)
    (tmp_path / "dpo/train/final" / STACK_FILE).write_text("{}")
    ran = {"chat_date": "2026-11-30", "chat_vars": {"enable_thinking": False, "style": "very brief"}}
    commands = _commands(models_lines(cfg, get_task("portal"), tmp_path,
                                      {"sft": "sft/train/final", "dpo": "dpo/train/final"}, ran))
    assert [c[1] for c in commands] == ["eval", "eval", "predict", "generate", "merge", "export-gguf",
                                        "reviewed-pairs"]
    for c in commands[:4]:
        args = build_parser().parse_args([{"NEW_FILE": "n.jsonl", "NEW_RECORDS": "n.jsonl"}.get(a, a) for a in c[1:]])
        assert args.chat_date == "2026-11-30" and chat_vars_arg(args) == ran["chat_vars"], c
    assert all("--chat-vars" not in c and "--chat-date" not in c for c in commands[4:])  # they render no prompt
    plain = _commands(models_lines(cfg, get_task("portal"), tmp_path, {"sft": "sft/train/final",
                                                                       "dpo": "dpo/train/final"}, {}))
    assert not any("--chat-vars" in c or "--chat-date" in c for c in plain)


def test_the_base_model_is_named_with_the_start_of_its_weights_digest(tmp_path):
    """A base whose files are on this machine: report.md names it with the first 12 hex digits of
    its weights' SHA-256 (report.json holds all of it), beside the 4-bit note where there is one."""
    from prefopt import apply_lora, load_model, save_adapter
    from prefopt.model.digest import weights_sha256
    from tests._tiny import build_hf_model

    base = tmp_path / "base"
    build_hf_model(base, tokenizer=False)
    save_adapter(apply_lora(load_model(base), r=4, alpha=8, target_modules=["q_proj"]),
                 tmp_path / "run" / "sft" / "train" / "final")
    cfg = CompareConfig(task="portal", model=str(base), output=str(tmp_path / "run"))
    weights = {"sft": "sft/train/final", "dpo": "sft/train/final"}
    digest = weights_sha256(base)
    for quantized, note in ((None, f"weights SHA-256 {digest[:12]}"),
                            ("nf4", f"its nf4 4-bit base, weights SHA-256 {digest[:12]}")):
        lines = models_lines(cfg, get_task("portal"), tmp_path / "run", weights, {"quantized": quantized})
        assert (f"LoRA r4 (alpha 8) on q_proj, on `{base}` ({note}); each stage's adapter, with its tokenizer:"
                in lines)


def test_a_threshold_chosen_on_the_validation_items_goes_into_predicts_command(tmp_path):
    """With ``--set review_target=A`` the validation items' eval searches for it again
    (``--review-target A``) and predict sends the records below the SFT+DPO stage's threshold to
    review (``--review-below T``), both parsing back to those values; where none reached A,
    predict's command has no threshold; a run without a calibration (no validation items) has
    neither."""
    cfg = CompareConfig(task="portal", model="m", output=str(tmp_path))
    weights = {"sft": "sft/train/final", "dpo": "sft/train/final"}
    (tmp_path / "dpo").mkdir()
    (tmp_path / "dpo" / "calibration.json").write_text("{}")
    found = {"validation": {"target": 0.5, "threshold": 0.7487}, "test": None, "n_test": 60}
    commands = _commands(models_lines(cfg, get_task("portal"), tmp_path, weights, {}, found))
    assert [c[1] for c in commands] == ["eval", "eval", "predict", "generate", "merge", "export-gguf",
                                        "reviewed-pairs"]
    review, predict = (build_parser().parse_args([{"NEW_RECORDS": "n.jsonl"}.get(a, a) for a in c[1:]])
                       for c in commands[1:3])
    assert review.split == "val" and review.review_target == 0.5
    assert predict.review_below == 0.7487 and predict.calibration == str(tmp_path / "dpo")
    none = {"validation": {"target": 0.5, "threshold": None}, "test": None, "n_test": 60}
    commands = _commands(models_lines(cfg, get_task("portal"), tmp_path, weights, {}, none))
    assert "--review-below" not in commands[2] and commands[1][-2:] == ["--review-target", "0.5"]
    (tmp_path / "dpo" / "calibration.json").unlink()
    commands = _commands(models_lines(cfg, get_task("portal"), tmp_path, weights, {}, found))
    assert not any("--review-below" in c or "--review-target" in c for c in commands)
