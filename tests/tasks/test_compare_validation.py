"""``prefopt compare --set val=N``: items held out of both training stages choose DPO's weights."""
import json

import pytest
from safetensors.torch import load_file

from prefopt.evaluate.compare import CompareConfig, run_compare

TINY = {"max_train": 8, "test": 4, "sft_steps": 2, "dpo_steps": 4, "batch_size": 2, "max_length": 256,
        "eval_batch_size": 8, "val": 4, "dpo_eval_every": 2}


def _ids(path) -> list[str]:
    return [json.loads(line)["id"] for line in path.read_text().splitlines() if line.strip()]


def _loads(monkeypatch) -> list:
    """The adapter folder of each model compare loads (None: the base model)."""
    import prefopt.pretrained

    seen, load = [], prefopt.pretrained.load_model
    monkeypatch.setattr(prefopt.pretrained, "load_model",
                        lambda *a, **kw: seen.append(kw.get("adapter")) or load(*a, **kw))
    return seen


def test_validation_items_are_held_out_and_choose_the_dpo_weights(tiny_model, tmp_path, monkeypatch):
    """The validation items are in neither training set; DPO scores greedy answers to them (the
    task's primary metric) before training and every 2 steps; the best evaluation's weights (ties:
    the earliest) are the ones the "dpo" stage evaluates on the test set, and the report says
    which step that was."""
    from prefopt.tasks import get_task

    loads = _loads(monkeypatch)
    out = tmp_path / "run"
    report = run_compare(CompareConfig(task="portal", model=str(tiny_model), output=str(out), n_resamples=100,
                                       overrides=TINY))
    split = json.loads((out / "split.json").read_text())
    val = set(split["val"])
    assert len(val) == 4 and not val & set(split["train"]) and not val & set(split["test"])
    task = get_task("portal")
    held = {" ".join(r.prompt.split()) for r in task.load() if r.id in val}
    sft_prompts = [json.loads(line)["prompt"][-1]["content"] for line in
                   (out / "data" / "sft_train.jsonl").read_text().splitlines()]
    assert sft_prompts and not held & {" ".join(p.split()) for p in sft_prompts}
    assert not val & set(_ids(out / "data" / "pairs.jsonl"))

    sel = report["training"]["selection"]
    steps = [s for s, _ in sel["curve"]]
    assert steps == [0, 2, 4] and sel["metric"] == "eval_val_macro_f1" and sel["n_val"] == 4
    best = max(v for _, v in sel["curve"])
    assert sel["value"] == best and sel["step"] == min(s for s, v in sel["curve"] if v == best)
    train = out / "dpo" / "train"
    # step 0 is the SFT model: its answers are not made again
    assert loads == [None, out / "sft" / "train" / "final"] + ([train / "best"] if sel["step"] else [])
    assert json.loads((train / "best" / "best.json").read_text())["step"] == sel["step"]
    text = (out / "report.md").read_text()
    assert f"DPO weights chosen on 4 validation items (held out of both training stages): step {sel['step']} of 4" \
        in text
    assert ("Step 0 is the SFT model" in text) == (sel["step"] == 0)
    assert f"the SFT+DPO weights are step {sel['step']} of 4, chosen on 4 validation items" in text.splitlines()[2]


def test_the_dpo_stage_is_the_step_the_validation_score_picks(tiny_model, tmp_path, monkeypatch):
    """With a validation score that peaks at step 2, the "dpo" stage is step 2's adapter, not the
    last step's: the weights in best/ differ from final/'s, and the test set is answered by them."""
    import prefopt.evaluate.selection as selection

    def peak_at_2(task, records, **kw):
        assert len(records) == 4 and "max_new_tokens" in kw  # decoded as the test set is
        return _scripted(2)(task, records, **kw)

    monkeypatch.setattr(selection, "task_evaluator", peak_at_2)
    loads = _loads(monkeypatch)
    out = tmp_path / "run"
    report = run_compare(CompareConfig(task="portal", model=str(tiny_model), output=str(out), n_resamples=100,
                                       overrides={**TINY, "dpo_eval_every": 1}))
    sel = report["training"]["selection"]
    assert sel["step"] == 2 and sel["curve"] == [[0, 0.2], [1, 0.5], [2, 0.9], [3, 0.4], [4, 0.3]]
    train = out / "dpo" / "train"
    assert loads[-1] == train / "best"
    best, final = (load_file(train / d / "adapter_model.safetensors") for d in ("best", "final"))
    assert best.keys() == final.keys() and any(not (best[k] == final[k]).all() for k in best)
    assert "step 2 of 4, validation macro_f1 0.900" in (out / "report.md").read_text()
    # how far the choice could be noise: step 2's answers against step 0's, item by item, alone
    # and as the best of the four evaluated steps (1 to 4; all but step 2 answer as step 0 does)
    from prefopt.evaluate.stats import best_of_bootstrap, paired_bootstrap
    from prefopt.tasks import get_task

    task = get_task("portal")
    val = [r for i in json.loads((out / "split.json").read_text())["val"] for r in task.load() if r.id == i]
    wrong = task.primary_on(val, [task.parse("", r) for r in val])
    right = task.primary_on(val, [task.parse(r.target, r) for r in val])
    expected = {**paired_bootstrap(wrong, right, 4, n_resamples=100, seed=0),
                "best_of": best_of_bootstrap(wrong, [wrong, right, wrong, wrong], 4, chosen=1, n_resamples=2000)}
    assert sel["against_step_0"] == json.loads(json.dumps(expected)) and expected["delta"] > 0
    vs = expected
    assert (f"Against step 0 (the SFT model) on the same validation items: {vs['delta']:+.3f} [{vs['ci'][0]:+.3f}, "
            f"{vs['ci'][1]:+.3f}], bootstrap p = {vs['p_value']:.3g}; allowing for its choice as the best of 4 "
            f"evaluated steps (one-sided), p = {vs['best_of']['p_value']:.3g}") in (out / "report.md").read_text()
    # a rerun reuses every stage, the chosen weights included
    loads.clear()
    assert run_compare(CompareConfig(task="portal", model=str(tiny_model), output=str(out), n_resamples=100,
                                     overrides={**TINY, "dpo_eval_every": 1}))["training"]["selection"] == sel
    assert loads == []


def _scripted(right_at: int | None, right: dict | None = None):
    """A task_evaluator stand-in: scores that peak at step 2, and answers that are all right at
    step ``right_at`` (None: never) and unparsed otherwise; or, given ``right`` (``{step: item
    indices}``), right on those items at those steps."""
    right = right if right is not None else {} if right_at is None else {right_at: range(10**6)}

    def make(task, records, answers, **kw):
        def evaluate(trainer):
            preds = [task.parse(r.target if i in right.get(trainer.step, ()) else "", r)
                     for i, r in enumerate(records)]
            with open(answers, "a") as f:
                f.write(json.dumps({"step": trainer.step, "ids": [r.id for r in records], "predictions": preds}) + "\n")
            return {"val_macro_f1": [0.2, 0.5, 0.9, 0.4, 0.3][trainer.step]}
        return evaluate
    return make


@pytest.mark.parametrize("right_at, kept", [(2, True), (None, False)])
def test_dpo_max_p_keeps_the_chosen_step_only_if_its_gain_is_significant(right_at, kept, tiny_model, tmp_path,
                                                                          monkeypatch):
    """Step 2 has the best score either way; with its answers all right where step 0's are all
    wrong the gain is significant and step 2 stays, with the same answers as step 0's it is not,
    and the SFT+DPO stage is the SFT model (its adapter, its answers)."""
    import prefopt.evaluate.selection as selection

    monkeypatch.setattr(selection, "task_evaluator", _scripted(right_at))
    loads = _loads(monkeypatch)
    out = tmp_path / "run"
    report = run_compare(CompareConfig(task="portal", model=str(tiny_model), output=str(out), n_resamples=100,
                                       overrides={**TINY, "dpo_eval_every": 1, "dpo_max_p": 0.5}))
    sel, sft = report["training"]["selection"], out / "sft" / "train" / "final"
    choice = json.loads((out / "dpo" / "train" / "choice.json").read_text())
    assert sel["step"] == 2 and choice["weights"] == ("best" if kept else "sft") and choice["max_p"] == 0.5
    assert (choice["p_value"] < 0.5) == kept and sel["choice"] == choice
    assert choice["test"] == "best_of" and choice["n_candidates"] == 4  # steps 1 to 4, against step 0
    assert choice["p_value"] == sel["against_step_0"]["best_of"]["p_value"]
    # not kept: the SFT+DPO stage is the SFT model, whose answers are copied, not made again
    assert loads == [None, sft] + ([out / "dpo" / "train" / "best"] if kept else [])
    text = (out / "report.md").read_text()
    if kept:
        assert "as the best of the evaluated steps, below it, so step 2 is the SFT+DPO stage." in text
        assert "not made again" not in text
    else:
        assert "not below it, so the SFT+DPO stage is the SFT model." in text
        assert "the SFT+DPO stage is the SFT model: DPO's best step on 4 validation items (step 2 of 4)" in text
        assert "SFT+DPO's answers are SFT's, not made again: it is the same model." in text
        assert report["stages"]["dpo"]["primary"] == report["stages"]["sft"]["primary"]
        rows = {s: (out / s / "predictions.jsonl").read_text() for s in ("sft", "dpo")}
        assert rows["sft"] == rows["dpo"]
        metrics = {s: json.loads((out / s / "metrics.json").read_text()) for s in ("sft", "dpo")}
        assert metrics["dpo"].pop("answers_of") == "sft" and metrics["dpo"].pop("eval_seconds") == 0
        assert metrics["dpo"].pop("weights") == "sft/train/final"
        assert metrics["dpo"] == {k: v for k, v in metrics["sft"].items() if k != "eval_seconds"}
    # decided once: a rerun with other --n-resamples (a report setting) reuses the decision and every stage
    loads.clear()
    run_compare(CompareConfig(task="portal", model=str(tiny_model), output=str(out), n_resamples=50,
                              overrides={**TINY, "dpo_eval_every": 1, "dpo_max_p": 0.5}))
    assert loads == [] and json.loads((out / "dpo" / "train" / "choice.json").read_text()) == choice


def test_another_dpo_max_p_decides_again_and_trains_nothing(tiny_model, tmp_path, monkeypatch, capsys):
    """dpo_max_p decides only which trained weights the "dpo" stage is: a finished run given another
    value (or none) decides again from the kept validation answers, trains nothing, and evaluates
    the stage again only where its weights changed (the answers it had are kept in earlier/)."""
    import prefopt.evaluate.selection as selection

    # a gain, but not a sure one: step 0 answers one item right, step 2 two others
    monkeypatch.setattr(selection, "task_evaluator", _scripted(None, {0: {0}, 2: {1, 2}}))
    loads = _loads(monkeypatch)
    out, train = tmp_path / "run", tmp_path / "run" / "dpo" / "train"
    sft, best = out / "sft" / "train" / "final", train / "best"

    def run(max_p):
        loads.clear()
        capsys.readouterr()
        report = run_compare(CompareConfig(task="portal", model=str(tiny_model), output=str(out), n_resamples=100,
                                           overrides={**TINY, "dpo_eval_every": 1, "dpo_max_p": max_p}))
        choice = json.loads((train / "choice.json").read_text()) if (train / "choice.json").is_file() else None
        return report, choice, json.loads((out / "dpo" / "metrics.json").read_text())["weights"]

    report, choice, weights = run(None)  # no guard: step 2, the best on validation, is the stage
    assert choice is None and weights == "dpo/train/best" and loads == [None, sft, best]
    trained = {f: f.stat().st_mtime_ns for f in out.rglob("*.safetensors")}
    answers = (out / "dpo" / "predictions.jsonl").read_text()

    report, choice, weights = run(0.9)
    p = choice["p_value"]
    assert 0 < p < 0.9 and choice["weights"] == "best" and choice["max_p"] == 0.9
    assert weights == "dpo/train/best" and loads == [] and "dpo: reusing" in capsys.readouterr().out

    # as a run from before metrics.json named its weights: they are named before the decision changes
    metrics = json.loads((out / "dpo" / "metrics.json").read_text())
    (out / "dpo" / "metrics.json").write_text(json.dumps({k: v for k, v in metrics.items() if k != "weights"}))
    report, choice, weights = run(p / 2)  # the same p, now not below: the stage is the SFT model, SFT's answers
    assert choice["weights"] == "sft" and choice["p_value"] == p and loads == []
    assert weights == "sft/train/final" and report["stages"]["dpo"]["primary"] == report["stages"]["sft"]["primary"]
    assert "made by dpo/train/best, and the stage is now sft/train/final" in capsys.readouterr().out
    assert (out / "dpo" / "earlier" / "1" / "predictions.jsonl").read_text() == answers
    assert "not below it, so the SFT+DPO stage is the SFT model." in (out / "report.md").read_text()

    report, choice, weights = run(0.9)  # back: step 2's answers made again, the SFT copy kept
    assert choice["weights"] == "best" and weights == "dpo/train/best" and loads == [best]
    assert (out / "dpo" / "predictions.jsonl").read_text() == answers
    assert (out / "dpo" / "earlier" / "2" / "predictions.jsonl").read_text() == \
        (out / "sft" / "predictions.jsonl").read_text()

    report, choice, weights = run(None)  # the decision is dropped; the stage was step 2 already
    assert choice is None and weights == "dpo/train/best" and loads == []
    assert "the earlier decision (dpo_max_p 0.9 kept the chosen step) is dropped" in capsys.readouterr().out
    assert "dpo_max_p" not in (out / "report.md").read_text().replace(str(tmp_path), "")  # (the path holds it)
    assert {f: f.stat().st_mtime_ns for f in out.rglob("*.safetensors")} == trained  # nothing trained again


def test_dpo_min_gain_keeps_the_sft_model_over_a_gain_within_it(tiny_model, tmp_path, monkeypatch):
    """The same curve with --set dpo_min_gain=0.75: step 2's 0.9 beats step 0's 0.2 by 0.7, too
    little, so the SFT model (step 0) stays; the report says why."""
    import prefopt.evaluate.selection as selection

    monkeypatch.setattr(selection, "task_evaluator", lambda task, records, **kw: lambda trainer: {
        "val_macro_f1": [0.2, 0.5, 0.9, 0.4, 0.3][trainer.step]})
    out = tmp_path / "run"
    report = run_compare(CompareConfig(task="portal", model=str(tiny_model), output=str(out), n_resamples=100,
                                       overrides={**TINY, "dpo_eval_every": 1, "dpo_min_gain": 0.75}))
    sel = report["training"]["selection"]
    assert sel["step"] == 0 and sel["value"] == 0.2 and sel["min_gain"] == 0.75
    text = (out / "report.md").read_text()
    assert "step 0 of 4, validation macro_f1 0.200 (a step had to beat the best before it by more than 0.75)" in text
    assert "Step 0 is the SFT model: no DPO step answered the validation items better by more than 0.75" in text
    # so the SFT+DPO stage is the SFT adapter itself (best/ holds step 0's copy of it, equal up to rounding)
    from prefopt.evaluate.selection import dpo_weights

    assert dpo_weights(out) == out / "sft" / "train" / "final"
    assert (out / "dpo" / "predictions.jsonl").read_text() == (out / "sft" / "predictions.jsonl").read_text()


def test_dpo_patience_stops_dpo_once_the_validation_score_turns(tiny_model, tmp_path, monkeypatch):
    """The same curve with --set dpo_patience=1: step 3 does not beat step 2, so DPO stops there
    (no step 4); step 2's weights are still the SFT+DPO stage."""
    import prefopt.evaluate.selection as selection

    calls = []
    monkeypatch.setattr(selection, "task_evaluator", lambda task, records, **kw: lambda trainer: calls.append(
        trainer.step) or {"val_macro_f1": [0.2, 0.5, 0.9, 0.4, 0.3][trainer.step]})
    out = tmp_path / "run"
    report = run_compare(CompareConfig(task="portal", model=str(tiny_model), output=str(out), n_resamples=100,
                                       overrides={**TINY, "dpo_eval_every": 1, "dpo_patience": 1}))
    sel = report["training"]["selection"]
    assert calls == [0, 1, 2, 3] and sel["step"] == 2
    assert sel["stopped_early"] == {"step": 3, "patience": 1, "metric": "eval_val_macro_f1"}
    steps = [json.loads(line)["step"] for line in (out / "dpo" / "train" / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == 3
    assert "DPO stopped early at step 3: the evaluation after the best did not replace it." in \
        (out / "report.md").read_text()


@pytest.mark.parametrize("bad, match", [
    ({"val": -1}, r"val: a count of items .* \(got -1\)"), ({"val": 2.5}, r"\(got 2.5\)"),
    ({"val": "ten"}, r"\(got 'ten'\)"), ({"val": None, "dpo_eval_every": 3}, "dpo_eval_every needs val"),
    ({"dpo_eval_every": 0}, r"dpo_eval_every: a whole number of steps >= 1 \(got 0\)"),
    ({"dpo_min_gain": -0.1}, r"dpo_min_gain: a number >= 0, in the task's primary metric \(got -0.1\)"),
    ({"val": 0, "dpo_eval_every": None, "dpo_min_gain": 0.05}, "dpo_min_gain needs val"),
    ({"dpo_patience": 2.5}, r"dpo_patience: a whole number of evaluations >= 0 \(got 2.5\)"),
    ({"dpo_max_p": 0}, r"dpo_max_p: a p-value in \(0, 1\], e.g. 0.1 \(got 0\)"),
    ({"val": None, "dpo_eval_every": None, "dpo_max_p": 0.1}, "dpo_max_p needs val"),
    ({"val": None, "dpo_eval_every": None, "dpo_patience": 3}, "dpo_patience needs val")])
def test_bad_validation_settings_stop_compare_before_it_claims_a_folder(bad, match, tiny_model, tmp_path):
    with pytest.raises(ValueError, match=match):
        run_compare(CompareConfig(task="portal", model=str(tiny_model), output=str(tmp_path / "run"),
                                  overrides={**TINY, **bad}))
    assert not (tmp_path / "run").exists()


def test_a_validation_set_that_leaves_nothing_to_train_on_stops_compare_before_it_claims_a_folder(tiny_model,
                                                                                                   tmp_path,
                                                                                                   sft_configs):
    """Were the split made after the folder is claimed, the corrected rerun would be refused as a
    run "made with other settings"."""
    from tests.tasks.conftest import StopAtSFT

    with pytest.raises(ValueError, match=r"split: test \(4\) \+ val \(400\) leave no training data out of \d+ "
                                         r"records \(a text that recurs counted once\): hold fewer out "
                                         r"\(compare: --set test"):
        run_compare(CompareConfig(task="portal", model=str(tiny_model), output=str(tmp_path / "run"),
                                  overrides={**TINY, "val": 400}))
    assert not (tmp_path / "run").exists()
    with pytest.raises(StopAtSFT):  # the corrected rerun gets to training
        run_compare(CompareConfig(task="portal", model=str(tiny_model), output=str(tmp_path / "run"),
                                  overrides={**TINY, "val": 40}))


def test_given_pairs_in_another_encoding_are_read_in_it_by_both_stages(tiny_model, tmp_path, sft_configs, capsys):
    """Pairs a clinician kept in Excel and saved as CSV on Western-European Windows (cp1252) stopped
    compare with "save the file as UTF-8"; ``--pairs-encoding cp1252`` reads them, where compare
    holds out the test items and where DPO trains (the user's file: compare's own copy of the
    pairs it kept is UTF-8). Without it the error names the flag and shows the line as cp1252."""
    from dataclasses import replace
    from pathlib import Path

    from prefopt.cli import main
    from prefopt.evaluate.compare_train import dpo_config
    from prefopt.tasks import get_task, split_records
    from tests.tasks.conftest import StopAtSFT

    task = get_task("portal")
    splits = split_records(task.load(), test=4, val=4, seed=0, max_train=8)
    given = tmp_path / "ratings.csv"
    given.write_bytes(b"prompt;chosen;rejected\n" + f"{splits['test'][0].prompt.replace(chr(10), ' ')};"
                      "Urgency: routine (caf\u00e9 au lait spots);Urgency: emergency\n".encode("cp1252")
                      + "Is my fever of 38.5 \u00b0C a worry?;Urgency: urgent;Urgency: routine\n".encode("cp1252"))
    args = ["compare", "--task", "portal", "--model", str(tiny_model), "--output", str(tmp_path / "run"),
            "--strategy", "ranked", "--pairs", str(given), *(x for k, v in TINY.items() for x in ("--set", f"{k}={v}"))]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"{given}:2" in err and "(--pairs-encoding cp1252 for Excel's CSV on Western-European Windows; as " \
        "cp1252, line 2 reads ...'" in err and "(caf\u00e9 au lait spots)" in err
    with pytest.raises(StopAtSFT):
        main([*args, "--pairs-encoding", "cp1252"])
    assert f"--pairs {given}: 1 of 2 pairs left out, their prompts the messages of items held out (1 test; the " \
        f"first: line 2, test item {splits['test'][0].id!r})" in capsys.readouterr().out
    cfg = CompareConfig(task="portal", model=str(tiny_model), output=str(tmp_path / "run"), strategy="ranked",
                        pairs=str(given), pairs_encoding="cp1252", overrides=TINY)
    s = cfg.settings()
    assert dpo_config(cfg, s, Path(given), tmp_path / "run").encoding == "cp1252"
    kept = tmp_path / "run" / "data" / "pairs.jsonl"  # (compare's copy, written after SFT)
    kept.parent.mkdir(parents=True, exist_ok=True)
    kept.write_text("")
    assert dpo_config(cfg, s, kept, tmp_path / "run").encoding == "utf-8"
    for wrong, error in [({"pairs_encoding": "cp-nope"}, "encoding 'cp-nope': not one Python knows"),
                         ({"strategy": "wrong_label"}, "pairs_encoding 'cp1252': the encoding of --pairs, which "
                                                       "only strategy 'ranked' reads")]:
        with pytest.raises(ValueError, match=error):
            replace(cfg, **wrong).settings()


def test_given_pairs_on_one_sheet_of_a_workbook_are_read_from_the_sheet_named(tiny_model, tmp_path, sft_configs,
                                                                              capsys):
    """A workbook of pairs beside a sheet of rating instructions stopped compare with "name the one
    to read (--sheet NAME)", and compare's --sheet is the task data's: ``--pairs-sheet`` names the
    pairs' sheet, where compare holds out test items and where DPO trains, and the error names it."""
    from pathlib import Path

    import openpyxl

    from prefopt.cli import main
    from prefopt.evaluate.compare_train import dpo_config
    from prefopt.tasks import get_task, split_records
    from tests.tasks.conftest import StopAtSFT

    splits = split_records(get_task("portal").load(), test=4, val=4, seed=0, max_train=8)
    book = openpyxl.Workbook()
    book.active.title = "how to rate"
    book.active.append(["Choose the answer a triage nurse would give."])
    pairs = book.create_sheet("pairs")
    pairs.append(["prompt", "chosen", "rejected"])
    pairs.append([splits["test"][0].prompt, "Urgency: routine", "Urgency: emergency"])
    pairs.append(["Is a fever of 38.5 C a worry?", "Urgency: urgent", "Urgency: routine"])
    given = tmp_path / "ratings.xlsx"
    book.save(given)
    args = ["compare", "--task", "portal", "--model", str(tiny_model), "--output", str(tmp_path / "run"),
            "--strategy", "ranked", "--pairs", str(given), *(x for k, v in TINY.items() for x in ("--set", f"{k}={v}"))]
    assert main(args) == 2
    assert (f"{given}: 2 sheets hold data ('how to rate', 'pairs'); name the one to read (--pairs-sheet NAME), so "
            "that no other sheet (a test set) is trained on") in capsys.readouterr().err
    with pytest.raises(StopAtSFT):
        main([*args, "--pairs-sheet", "pairs"])
    assert f"--pairs {given}: 1 of 2 pairs left out" in capsys.readouterr().out
    cfg = CompareConfig(task="portal", model=str(tiny_model), output=str(tmp_path / "run"), strategy="ranked",
                        pairs=str(given), pairs_sheet="pairs", overrides=TINY)
    assert dpo_config(cfg, cfg.settings(), Path(given), tmp_path / "run").sheet == "pairs"
    with pytest.raises(ValueError, match="pairs_sheet 'pairs': the sheet of --pairs, which only strategy 'ranked' "
                                         "reads"):
        CompareConfig(task="portal", model=str(tiny_model), output="x", pairs_sheet="pairs").settings()


def test_given_pairs_are_read_as_dpo_reads_them_before_sft_trains(tiny_model, tmp_path, sft_configs, capsys):
    """A pair DPO would refuse (chosen equal to rejected, a column of another name) stopped the DPO
    stage after SFT had trained; every pair is now read first. Columns of other names get the
    flag that reads them, ``--pairs-columns``, as dpo's --columns; KTO's feedback file (prompt,
    completion, label) reads as KTO reads it."""
    from pathlib import Path

    from prefopt.cli import main
    from prefopt.data.records import DataError
    from prefopt.evaluate import given_pairs
    from prefopt.evaluate.compare_train import dpo_config
    from prefopt.tasks import get_task, split_records
    from tests.tasks.conftest import StopAtSFT

    splits = split_records(get_task("portal").load(), test=4, val=4, seed=0, max_train=8)
    given = tmp_path / "ranked.csv"
    given.write_text("question,better,worse\n"
                     f"\"{splits['test'][0].prompt}\",Urgency: routine,Urgency: emergency\n"
                     "Is a fever of 38.5 C a worry?,Urgency: urgent,Urgency: routine\n")
    args = ["compare", "--task", "portal", "--model", str(tiny_model), "--output", str(tmp_path / "run"),
            "--strategy", "ranked", "--pairs", str(given), *(x for k, v in TINY.items() for x in ("--set", f"{k}={v}"))]
    assert main(args) == 2 and not sft_configs  # before SFT
    assert (f"{given}:2: field 'chosen': missing field (a preference record needs 'prompt', 'chosen', 'rejected'); "
            "the record has 'question', 'better', 'worse': --pairs-columns prompt=question chosen=better "
            "rejected=worse reads them, if they hold those fields") in capsys.readouterr().err
    flags = ["--pairs-columns", "prompt=question", "chosen=better", "rejected=worse"]
    with pytest.raises(StopAtSFT):
        main([*args, *flags])
    assert f"--pairs {given}: 1 of 2 pairs left out" in capsys.readouterr().out
    columns = {"prompt": "question", "chosen": "better", "rejected": "worse"}
    kept, _ = given_pairs.held_out(given, {"test": splits["test"]}, columns=columns)
    assert kept == [{"prompt": "Is a fever of 38.5 C a worry?", "chosen": "Urgency: urgent",
                     "rejected": "Urgency: routine"}]
    cfg = CompareConfig(task="portal", model=str(tiny_model), output=str(tmp_path / "run"), strategy="ranked",
                        pairs=str(given), pairs_columns=["prompt=question", "chosen=better", "rejected=worse"],
                        overrides=TINY)
    s = cfg.settings()
    assert cfg.pairs_columns == columns and dpo_config(cfg, s, Path(given), tmp_path / "run").columns == columns
    copy = tmp_path / "run" / "data" / "pairs.jsonl"  # compare's copy holds the fields by their own names
    copy.parent.mkdir(parents=True, exist_ok=True)
    copy.write_text("")
    assert dpo_config(cfg, s, copy, tmp_path / "run").columns == {}
    with pytest.raises(ValueError, match=r"pairs_columns: prompt2=question: no field 'prompt2'"):
        CompareConfig(task="portal", model="m", output="x", strategy="ranked", pairs=str(given),
                      pairs_columns={"prompt2": "question"}).settings()

    same = tmp_path / "same.jsonl"
    same.write_text(json.dumps({"prompt": "Refill?", "chosen": "Urgency: routine", "rejected": "Urgency: routine"})
                    + "\n")
    with pytest.raises(DataError, match=r"same.jsonl:1: field 'rejected': identical to chosen"):
        given_pairs.held_out(same, {"test": splits["test"]})
    feedback = tmp_path / "feedback.jsonl"  # KTO's: each answer labelled, read as --loss kto reads it
    feedback.write_text(json.dumps({"prompt": "Refill?", "completion": "Urgency: routine", "label": True}) + "\n")
    assert given_pairs.held_out(feedback, {"test": splits["test"]}, unpaired=True)[0][0]["label"] is True
    with pytest.raises(DataError, match="field 'chosen': missing field"):
        given_pairs.held_out(feedback, {"test": splits["test"]})
    kto = ["compare", "--task", "portal", "--model", str(tiny_model), "--output", str(tmp_path / "kto"),
           "--strategy", "ranked", "--pairs", str(feedback), "--loss", "kto",
           *(x for k, v in TINY.items() for x in ("--set", f"{k}={v}"))]
    with pytest.raises(StopAtSFT):  # compare reads it as the KTO stage will
        main(kto)


def test_given_pairs_on_held_out_items_are_left_out_and_said_so(tiny_model, tmp_path, sft_configs, capsys):
    """Ranked pairs are the user's: one whose prompt is a test item's message (as chat messages or
    as text in other spacing) would train DPO on what the comparison tests, one on a validation
    item on what chooses its weights. Test items were not looked at (a user's pairs on every
    message leaked a fifth of them into DPO); validation items stopped the run. Both are left
    out, said before anything trains, and DPO reads a copy without them."""
    from prefopt.data.records import DataError
    from prefopt.evaluate import given_pairs
    from prefopt.tasks import get_task, split_records
    from tests.tasks.conftest import StopAtSFT

    task = get_task("portal")
    records = task.load()
    splits = split_records(records, test=4, val=4, seed=0, max_train=8)
    held = {r.id for r in splits["test"] + splits["val"]}
    other = [r for r in records if r.id not in held][:3]
    given = tmp_path / "given.jsonl"
    rows = [{"prompt": task.messages(other[0]), "chosen": "a", "rejected": "b"},
            {"prompt": task.messages(splits["test"][1]), "chosen": "a", "rejected": "b"},
            {"prompt": "  " + splits["val"][0].prompt.replace(" ", "\n", 1), "chosen": "a", "rejected": "b"},
            {"prompt": other[1].prompt, "chosen": "a", "rejected": "b"}]
    given.write_text("".join(json.dumps(r) + "\n" for r in rows))
    kept, left = given_pairs.held_out(given, {"test": splits["test"], "validation": splits["val"]})
    assert kept == [rows[0], rows[3]]
    assert left == [(2, "test", splits["test"][1].id), (3, "validation", splits["val"][0].id)]
    with pytest.raises(StopAtSFT):  # said before anything trains
        run_compare(CompareConfig(task="portal", model=str(tiny_model), output=str(tmp_path / "run"),
                                  strategy="ranked", pairs=str(given), overrides={**TINY, "val": 4}))
    assert (f"--pairs {given}: 2 of 4 pairs left out, their prompts the messages of items held out (1 test, 1 "
            f"validation; the first: line 2, test item {splits['test'][1].id!r}): DPO would train on what the "
            "comparison tests or what chooses its weights; it trains on the other 2") in capsys.readouterr().out
    out = tmp_path / "out"
    path = given_pairs.write_kept(out, given, kept, left)
    assert [json.loads(line) for line in path.read_text().splitlines()] == kept
    assert json.loads((out / "data" / "pairs_report.json").read_text())["left_out"][0] == {
        "line": 2, "split": "test", "item": splits["test"][1].id}
    # a message within the user's own instructions, one without the task's, in other case; a short one by chance
    test, val = splits["test"][2].prompt, splits["val"][1].prompt
    assert len(test) >= given_pairs.SHARED and len(val) >= given_pairs.SHARED
    wrapped = [{"prompt": f"Triage this portal message.\n\n{test.upper()}\n\nAnswer in one word.", "chosen": "a",
                "rejected": "b"}, {"prompt": val[len(val) // 4:], "chosen": "a", "rejected": "b"},
               {"prompt": val[:10], "chosen": "a", "rejected": "b"}, rows[0]]
    (tmp_path / "wrapped.jsonl").write_text("".join(json.dumps(r) + "\n" for r in wrapped))
    kept, left = given_pairs.held_out(tmp_path / "wrapped.jsonl", {"test": splits["test"], "validation": splits["val"]})
    assert kept == wrapped[2:] and left == [(1, "test", splits["test"][2].id), (2, "validation", splits["val"][1].id)]
    every = tmp_path / "every.jsonl"
    every.write_text(json.dumps(rows[1]) + "\n")
    with pytest.raises(ValueError, match="every pair's prompt is the message of an item compare holds out"):
        given_pairs.held_out(every, {"test": splits["test"]})
    every.write_text(json.dumps(rows[0]) + '\n{"prompt": "b", "chosen": \n')  # stops the run now, not after SFT
    with pytest.raises(DataError, match=r"every.jsonl:2: malformed JSON"):
        given_pairs.held_out(every, {"test": splits["test"]})


def test_the_report_names_the_test_a_choice_was_decided_by():
    """A choice.json written before the best-of test (no "test" key) was decided by the plain
    two-sided bootstrap, and an against_step_0 without "best_of" judges noise by the plain p; the
    report says so rather than claim the correction."""
    from prefopt.evaluate.selection import selection_line

    sel = {"metric": "eval_val_macro_f1", "curve": [[0, 0.5], [5, 0.52]], "n_val": 32, "step": 5, "total_steps": 50,
           "value": 0.52, "min_gain": 0.0, "stopped_early": None,
           "against_step_0": {"delta": 0.02, "ci": [-0.05, 0.1], "p_value": 0.6},
           "choice": {"weights": "sft", "max_p": 0.1, "p_value": 0.6}}
    old = selection_line(sel)
    assert "bootstrap p = 0.6: a gain the validation set cannot tell from noise." in old
    assert "by a plain two-sided bootstrap (decided by an earlier prefopt), not below it" in old
    assert "allowing for" not in old
    sel["against_step_0"]["best_of"] = {"p_value": 0.04, "n_candidates": 10}
    sel["choice"] = {"weights": "best", "max_p": 0.1, "p_value": 0.04, "test": "best_of", "n_candidates": 10}
    sel["against_step_0"]["p_value"] = 0.3  # the plain p no longer judges: the best-of p (0.04) does
    new = selection_line(sel)
    assert ("bootstrap p = 0.3; allowing for its choice as the best of 10 evaluated steps (one-sided), p = 0.04."
            in new) and "cannot tell from noise" not in new
    assert "p = 0.04 as the best of the evaluated steps, below it, so step 5 is the SFT+DPO stage." in new


def _selection_run(out, task, val, answers: dict[int, list[bool]], chosen: int):
    """The files a DPO stage with validation items leaves (what require_gain reads): the answers
    at each step (True: the item's right label, False: unparsed), the chosen step's best.json."""
    train = out / "dpo" / "train"
    (train / "best").mkdir(parents=True)
    with open(train / "val_answers.jsonl", "w") as f:
        for step, right in answers.items():
            preds = [task.parse(r.target if ok else "", r) for r, ok in zip(val, right)]
            f.write(json.dumps({"step": step, "ids": [r.id for r in val], "predictions": preds}) + "\n")
    scores = {step: task.primary_on(val, [task.parse(r.target if ok else "", r) for r, ok in zip(val, right)])(
        list(range(len(val)))) for step, right in answers.items()}
    (train / "best" / "best.json").write_text(json.dumps({"metric": "eval_val_macro_f1", "value": scores[chosen],
                                                          "step": chosen}))
    (train / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "eval_val_macro_f1": v}) + "\n"
                                                 for s, v in scores.items()))
    (train / "train_summary.json").write_text(json.dumps({"total_steps": max(answers)}))
    (train / "train_config.json").write_text(json.dumps({"best_min_delta": 0.0}))
    (out / "split.json").write_text(json.dumps({"val": [r.id for r in val]}))
    return scores


def test_dpo_max_p_allows_for_the_step_being_the_best_of_many(tmp_path):
    """Ten evaluated steps, each right on another random half of 40 validation items where step 0
    (the SFT model) is right on the first half; the best of them passes the plain bootstrap at
    p < dpo_max_p but not the best-of test, so the SFT model stays. With the same step the only
    one evaluated, it is kept: the choice among many is what the guard discounts."""
    import numpy as np

    from prefopt.evaluate.selection import against_step_0, require_gain
    from prefopt.tasks import get_task

    task = get_task("portal")
    val = task.load()[:40]
    rng = np.random.default_rng(1)
    answers = {0: [i < 20 for i in range(40)], **{s: list(rng.random(40) < 0.5) for s in range(1, 11)}}
    scores = {s: task.primary_on(val, [task.parse(r.target if ok else "", r) for r, ok in zip(val, right)])(
        list(range(40))) for s, right in answers.items()}
    best = max(scores, key=scores.get)
    one = _selection_run(tmp_path / "one", task, val, {0: answers[0], best: answers[best]}, best)
    many = _selection_run(tmp_path / "many", task, val, answers, best)
    assert one[best] == many[best] > many[0]
    plain = against_step_0(task, val, tmp_path / "many", best, 2000, 0)
    alone, of_many = (against_step_0(task, val, tmp_path / d, best, 2000, 0)["best_of"]["p_value"]
                      for d in ("one", "many"))
    max_p = (alone + of_many) / 2
    assert plain["p_value"] < max_p < of_many and alone < max_p
    settings = {"dpo_max_p": max_p}
    assert "kept" in require_gain(task, val, tmp_path / "one", settings, 0)
    assert "so the SFT+DPO stage is the SFT model" in require_gain(task, val, tmp_path / "many", settings, 0)
    for d, weights in (("one", "best"), ("many", "sft")):
        choice = json.loads((tmp_path / d / "dpo" / "train" / "choice.json").read_text())
        assert choice["weights"] == weights and choice["n_candidates"] == (1 if d == "one" else 10)


def test_bad_numbers_in_set_are_all_named_before_the_folder_is_claimed(tmp_path):
    """``--set sft_steps=0`` failed after the base model's evaluation, naming ``max_steps``; a
    whole number given as 1e3 is taken as one."""
    from prefopt.evaluate.compare_config import CompareConfig

    bad = {"sft_steps": 0, "dpo_lr": -1, "beta": 0, "batch_size": 2.5, "test": 1.5, "max_new_tokens": "many"}
    with pytest.raises(ValueError) as e:
        CompareConfig(task="portal", model="m", output=str(tmp_path / "o"), overrides=bad).settings()
    for part in ("sft_steps: a whole number >= 1 or null (got 0)", "dpo_lr: a number > 0 (got -1)",
                 "beta: a number > 0 (got 0)", "batch_size: a whole number >= 1 (got 2.5)",
                 "test: a fraction in (0, 1) or a whole count of test items (got 1.5)",
                 "max_new_tokens: a whole number >= 1 or null (got 'many')"):
        assert part in str(e.value)
    s = CompareConfig(task="portal", model="m", output=str(tmp_path / "o"),
                      overrides={"max_train": 1e3, "test": 40.0}).settings()
    assert (s["max_train"], s["test"]) == (1000, 40) and isinstance(s["max_train"], int)
    assert not (tmp_path / "o").exists()


def test_each_stage_is_calibrated_on_the_validation_items_for_predict_to_read(tiny_model, tmp_path, capsys):
    """With validation items each stage's label probabilities are also calibrated by the temperature
    fitted on them (the model's answer log-probs on them, computed apart here): metrics.json's
    ``calibrated``, each test row's ``brier_calibrated``, report.md's table with the paired test
    against T = 1, and the stage's calibration.json, which predict --calibration reads."""
    from prefopt.cli import main
    from prefopt.evaluate.calibration import template_sha256
    from prefopt.evaluate.confidence import answer_logprobs, brier_gaps, chosen, marginals
    from prefopt.evaluate.review import review_table, thresholds
    from prefopt.evaluate.temperature import fit_temperature
    from prefopt.fileio import sha256_of
    from prefopt.pretrained import load_model
    from prefopt.tasks import get_task
    from prefopt.tokenizer import load_tokenizer

    out = tmp_path / "run"
    overrides = {k: v for k, v in TINY.items() if k != "dpo_eval_every"} | {"dpo_eval_every": 4}
    report = run_compare(CompareConfig(task="portal", model=str(tiny_model), output=str(out), n_resamples=100,
                                       overrides=overrides))
    assert "and the 4 validation items in" in capsys.readouterr().out
    split = json.loads((out / "split.json").read_text())
    task = get_task("portal")
    by_id = {r.id: r for r in task.load()}
    val, test = [by_id[i] for i in split["val"]], [by_id[i] for i in split["test"]]
    model, tok = load_model(str(tiny_model)), load_tokenizer(str(tiny_model))
    want = fit_temperature(task, val, answer_logprobs(model, tok, task, val, show_progress=False))
    c = json.loads((out / "base" / "metrics.json").read_text())["calibrated"]
    assert c["temperature"] == pytest.approx(want["temperature"], rel=1e-4) and c["fitted_on"] == 4
    rows = [json.loads(line) for line in (out / "base" / "predictions.jsonl").read_text().splitlines()]
    answers = answer_logprobs(model, tok, task, test, show_progress=False)
    calibrated = brier_gaps(task, test, [marginals(task, a, c["temperature"]) for a in answers])
    for row, gap in zip(rows, calibrated):
        assert row["brier_calibrated"] == pytest.approx(gap, abs=1e-6)
    sure = chosen(task, [row["prediction"] for row in rows], [marginals(task, a, c["temperature"]) for a in answers])
    for row, mine in zip(rows, sure):  # the predicted labels' probabilities, as predict --calibration gives them
        assert row["confidence_calibrated"] == pytest.approx(mine, abs=1e-9)
    # the test items each stage would answer alone at each confidence, calibrated: report.json and report.md
    review = report["stages"]["base"]["review"]
    assert review == {"confidence": "confidence_calibrated",
                      **review_table(task, test, [row["prediction"] for row in rows], sure)}
    # a stage from before rows kept their calibrated confidence is scored again, the run resumed
    (out / "base" / "predictions.jsonl").write_text("".join(
        json.dumps({k: v for k, v in row.items() if k != "confidence_calibrated"}) + "\n" for row in rows))
    capsys.readouterr()
    again = run_compare(CompareConfig(task="portal", model=str(tiny_model), output=str(out), n_resamples=100,
                                      overrides=overrides))
    log = capsys.readouterr().out
    assert "base: scored every label of the" in log and "sft: scored every label" not in log
    assert again["stages"]["base"]["review"] == review
    for name in ("urgency", "staff"):
        assert c["fields"][name]["brier"] == pytest.approx(sum(g[name] for g in calibrated) / len(test), abs=1e-6)
    for stage, adapter in (("base", None), ("sft", out / "sft" / "train" / "final")):
        fit = json.loads((out / stage / "calibration.json").read_text())
        assert fit["adapter"] == (None if adapter is None else str(adapter.resolve()))
        assert fit["adapter_sha256"] == (None if adapter is None else sha256_of(adapter / "adapter_model.safetensors"))
        assert fit["temperature"] == json.loads((out / stage / "metrics.json").read_text())["calibrated"]["temperature"]
        assert fit["chat_template_sha256"] == template_sha256(load_tokenizer(tiny_model))
    assert (out / "dpo" / "calibration.json").is_file()
    tested = report["stages"]["sft"]["calibrated_vs_plain"]
    assert set(tested) == {"urgency", "staff"}
    sft_rows = [json.loads(line) for line in (out / "sft" / "predictions.jsonl").read_text().splitlines()]
    assert tested["urgency"]["delta"] == pytest.approx(
        sum(r["brier_calibrated"]["urgency"] - r["brier"]["urgency"] for r in sft_rows) / len(sft_rows))
    text = (out / "report.md").read_text()
    assert "Calibrated: each stage's label probabilities divided by the temperature T fitted on the 4 validation" \
        in text
    for stage, key in (("base", "base"), ("SFT", "sft"), ("SFT+DPO", "dpo")):
        t = json.loads((out / key / "metrics.json").read_text())["calibrated"]["temperature"]
        assert f"| {stage} | {t:.3f}" in text
    assert (f"Answered alone: how many of the {len(test)} test items each stage would answer without a person's "
            "review at each confidence (every field's predicted label given at least that probability, calibrated by "
            "the temperature each stage fitted on the validation items") in text
    assert "| confidence ≥ | base | SFT | SFT+DPO |" in text
    for i, t in enumerate(thresholds(task)):  # a row a threshold, a cell a stage: how many alone, how often right
        cells = []
        for key in ("base", "sft", "dpo"):
            r = report["stages"][key]["review"]["records"][i]
            cells.append(f"{r['n']} ({r['kept']:.0%}): {r['right']:.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]"
                         if r["n"] else "0")
        assert f"| {t:g} | {' | '.join(cells)} |" in text
    # study.md's row of this run: the SFT and SFT+DPO stages' temperatures and test Brier scores, as report.json has
    from prefopt.evaluate.study import ARMS, _row, study_markdown

    row = _row(next(a for a in ARMS if a.task == "portal"), report, 1.0)
    md = study_markdown({"model": "m", "data_root": None, "settings": {}, "arms": [row]})
    assert "Calibrated on each task's validation items (`--set val=N`)" in md
    for stage, key in (("SFT", "sft"), ("SFT+DPO", "dpo")):
        m = report["stages"][key]
        for name in ("urgency", "staff"):
            t = m["calibrated_vs_plain"][name]
            c = m["metrics"]["calibrated"]  # (a temperature at a bound of the search says so)
            bound = {"high": " (the highest tried)", "low": " (the lowest tried)"}.get(c["bound"], "")
            assert (f"| `portal` | {name} | {stage} | {c['temperature']:.3f}{bound} | "
                    f"{m['metrics']['confidence'][name]['brier']:.3f} | "
                    f"{m['metrics']['calibrated']['fields'][name]['brier']:.3f} | {t['delta']:+.3f} [") in md
    # predict reads the SFT stage's temperature for its adapter; the base model's is refused for it
    new = tmp_path / "new.jsonl"
    new.write_text(json.dumps({"id": "n1", "message": "My knee hurts since Monday"}) + "\n")
    argv = ["predict", "--task", "portal", "--model", str(tiny_model), "--adapter",
            str(out / "sft" / "train" / "final"), "--data", str(new), "--max-new-tokens", "4"]
    assert main([*argv, "--output", str(tmp_path / "p"), "--calibration", str(out / "sft")]) == 0
    assert json.loads((tmp_path / "p" / "predict.json").read_text())["temperature"] == \
        json.loads((out / "sft" / "calibration.json").read_text())["temperature"]
    assert main([*argv, "--output", str(tmp_path / "q"), "--calibration", str(out / "base")]) == 2
    assert "was fitted for adapter (none), not" in capsys.readouterr().err
    # the report's predict command reads the SFT+DPO stage's temperature, and runs
    import shlex

    predict = next(shlex.split(line) for line in text.splitlines() if line.startswith("prefopt predict"))
    assert predict[-2:] == ["--calibration", str(out / "dpo")]
    assert main([str(new) if a == "NEW_RECORDS" else a for a in predict[1:]] + ["--max-new-tokens", "4"]) == 0
    assert json.loads((out / "predictions" / "predict.json").read_text())["temperature"] == \
        json.loads((out / "dpo" / "calibration.json").read_text())["temperature"]
    # and its eval of the validation items, calibrated, counts the records answered alone at each confidence
    review = next(shlex.split(line) for line in text.splitlines()
                  if line.startswith("prefopt eval") and "--split-file" in line)
    assert review[review.index("--split") + 1] == "val" and review[-2:] == ["--calibration", str(out / "dpo")]
    assert main(review[1:] + ["--max-new-tokens", "4"]) == 0
    metrics = json.loads((out / "review-val" / "metrics.json").read_text())
    assert metrics["temperature"] == json.loads((out / "dpo" / "calibration.json").read_text())["temperature"]
    assert metrics["review"]["n"] == len(split["val"]) == 4
    assert [json.loads(line)["id"] for line in (out / "review-val" / "predictions.jsonl").read_text().splitlines()] \
        == split["val"]
    # a rerun reuses every stage, calibration and all
    run_compare(CompareConfig(task="portal", model=str(tiny_model), output=str(out), n_resamples=100,
                              overrides=overrides))
    assert "scored every label" not in capsys.readouterr().out
    # the run's folder moved (another disk, another machine): its stages' temperatures still serve its adapters
    import shutil

    moved = tmp_path / "moved"
    shutil.move(str(out), str(moved))
    assert main([*argv[:6], str(moved / "sft" / "train" / "final"), *argv[7:], "--output", str(tmp_path / "m"),
                 "--calibration", str(moved / "sft")]) == 0
    assert json.loads((tmp_path / "m" / "predict.json").read_text())["temperature"] == \
        json.loads((moved / "sft" / "calibration.json").read_text())["temperature"]
    capsys.readouterr()  # and its rerun there reuses every stage
    run_compare(CompareConfig(task="portal", model=str(tiny_model), output=str(moved), n_resamples=100,
                              overrides=overrides))
    assert "scored every label" not in capsys.readouterr().out


def test_a_review_threshold_is_chosen_on_the_validation_items_and_checked_on_the_test_items(tiny_model, tmp_path,
                                                                                            capsys):
    """``--set review_target=A``: each trained stage's threshold is review_target's on the
    validation items (their answers the ones that chose DPO's weights: step 0 for SFT, the chosen
    step for SFT+DPO; their confidence the stage's calibrated probability, kept in
    val_probabilities.jsonl and computed apart here for the base model), and the test items'
    row at it is review_table's; report.md has the table. Another target remakes the report
    alone; a target without val or out of (0, 1) is refused before any work."""
    from prefopt.evaluate.confidence import answer_logprobs, chosen, marginals
    from prefopt.evaluate.review import review_table
    from prefopt.evaluate.selection import dpo_weights
    from prefopt.evaluate.target_search import review_target
    from prefopt.pretrained import load_model
    from prefopt.tasks import get_task
    from prefopt.tokenizer import load_tokenizer

    out = tmp_path / "run"
    overrides = TINY | {"review_target": 0.05}
    report = run_compare(CompareConfig(task="portal", model=str(tiny_model), output=str(out), n_resamples=100,
                                       overrides=overrides))
    assert "review_target" not in capsys.readouterr().out  # (0.05 takes 2 validation items: val holds 4)
    task = get_task("portal")
    by_id = {r.id: r for r in task.load()}
    split = json.loads((out / "split.json").read_text())
    val, test = [by_id[i] for i in split["val"]], [by_id[i] for i in split["test"]]
    # the base model's validation probabilities, calibrated by its temperature: as computed apart
    t = json.loads((out / "base" / "metrics.json").read_text())["calibrated"]["temperature"]
    model, tok = load_model(str(tiny_model)), load_tokenizer(str(tiny_model))
    kept = [json.loads(line) for line in (out / "base" / "val_probabilities.jsonl").read_text().splitlines()]
    assert [k["id"] for k in kept] == [r.id for r in val]
    for k, a in zip(kept, answer_logprobs(model, tok, task, val, show_progress=False)):
        for field, probs in marginals(task, a, t).items():
            assert k["probabilities"][field] == pytest.approx(probs, abs=1e-6)
    answers = {json.loads(line)["step"]: json.loads(line) for line in
               (out / "dpo" / "train" / "val_answers.jsonl").read_text().splitlines()}
    best = json.loads((out / "dpo" / "train" / "best" / "best.json").read_text())["step"]
    chosen_step = 0 if dpo_weights(out) == out / "sft" / "train" / "final" else best
    assert "review_validated" not in report["stages"]["base"]  # (it answered no validation items)
    for stage, step in (("sft", 0), ("dpo", chosen_step)):
        by = dict(zip(answers[step]["ids"], answers[step]["predictions"]))
        preds = [by[r.id] for r in val]
        probs = [json.loads(line)["probabilities"] for line in
                 (out / stage / "val_probabilities.jsonl").read_text().splitlines()]
        found = review_target(task, val, preds, chosen(task, preds, probs), 0.05)
        got = report["stages"][stage]["review_validated"]
        assert got["validation"] == found and got["n_test"] == len(test)
        rows = [json.loads(line) for line in (out / stage / "predictions.jsonl").read_text().splitlines()]
        if found["threshold"] is None:
            assert got["test"] is None
        else:
            table = review_table(task, test, [r["prediction"] for r in rows],
                                 [r["confidence_calibrated"] for r in rows], below=found["threshold"])
            assert got["test"] == next(r for r in table["records"] if r["threshold"] == found["threshold"])
    text = (out / "report.md").read_text()
    assert "Review threshold for answers right at least 0.05 of the time (`--set review_target=0.05`)" in text
    assert "| stage | threshold (validation items: answered alone, right [95% CI]) |" in text
    # another target: the report made again, nothing trained or scored again
    capsys.readouterr()
    again = run_compare(CompareConfig(task="portal", model=str(tiny_model), output=str(out), n_resamples=100,
                                      overrides=TINY | {"review_target": 0.5}))
    log = capsys.readouterr().out
    assert "scored every label" not in log and "Review threshold for answers right at least 0.5 of" in \
        (out / "report.md").read_text()
    assert ("prefopt compare: warning: review_target 0.5: it takes at least 6 validation items answered alone, all "
            "right, to show 0.5 by the exact 95% CI's lower end, and val holds 4: no review threshold can be chosen "
            "(--set val=N of several times 6 would let one be)") in log  # (said as it starts: 0.5 ** 4 > 0.025)
    assert again["stages"]["sft"]["review_validated"]["validation"]["target"] == 0.5
    for bad, why in (({"review_target": 1.0}, "review_target: a probability in (0, 1)"),
                     ({"review_target": 0.9, "val": None, "dpo_eval_every": None}, "review_target needs val"),
                     ({"review_target": 0.9, "confidence": False}, "review_target reads the label probabilities")):
        with pytest.raises(ValueError, match=why.replace("(", r"\(").replace(")", r"\)")):
            run_compare(CompareConfig(task="portal", model=str(tiny_model), output=str(tmp_path / "x"),
                                      overrides=TINY | bad))
        assert not (tmp_path / "x").exists()
