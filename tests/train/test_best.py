"""``best_metric``: the weights of the evaluation that scores best are kept in ``output_dir/best``."""
import json

import pytest
import torch
from safetensors.torch import load_file

from prefopt.cli import main
from prefopt.train import TrainConfig
from prefopt.train.config import best_direction
from prefopt.train.dpo import DPOConfig
from prefopt.train.run import run_dpo, run_sft
from tests.train._fixtures import write_pairs, write_task


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return write_task(tmp_path_factory.mktemp("best"), n=32)


def _cfg(task, out, **kw):
    model_dir, data = task
    base = dict(model=str(model_dir), data=str(data), output_dir=str(out), batch_size=4, max_steps=6, lr=1e-2,
                schedule="constant", lora_r=4, lora_alpha=8, lora_dropout=0.0, eval_fraction=0.25, eval_every=1,
                best_metric="eval_loss", progress=False)
    return TrainConfig(**{**base, **kw})


def _evals(out, key="eval_loss") -> dict[int, float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r[key] for r in rows if key in r}


def _adapter(folder):
    return load_file(folder / "adapter_model.safetensors")


def _spoil_after(at):
    """A callback that, after step ``at`` (its evaluation done), adds noise to every lora_B: the
    evaluations after it score worse, so ``at`` is the best step."""
    def spoil(trainer, step, metrics):
        if step == at:
            g = torch.Generator().manual_seed(0)
            with torch.no_grad():
                for name, p in trainer.model.named_parameters():
                    if p.requires_grad and "lora_B" in name:
                        p.add_(torch.randn(p.shape, generator=g))
    return spoil


@pytest.mark.parametrize("mode,spoil,expected", [("min", None, 6), ("max", None, 0), ("min", 3, 3)])
def test_best_holds_the_weights_of_the_best_evaluation(task, tmp_path, mode, spoil, expected):
    """With a constant learning rate the first k steps do not depend on the run's length, so the
    weights kept for step k are exactly those a k-step run ends with; step 0's are the untrained
    adapter (every lora_B zero). Training lowers the eval loss (best last, or worst first with
    ``max``) unless the weights are spoiled after step 3."""
    out = tmp_path / "run"
    summary = run_sft(_cfg(task, out, best_mode=mode), callbacks=[_spoil_after(spoil)] if spoil else [])
    evals = _evals(out)
    assert sorted(evals) == list(range(7))  # before training, then after every step
    pick = min if mode == "min" else max
    assert evals[expected] == pick(evals.values())
    record = json.loads((out / "best" / "best.json").read_text())
    assert record == {"metric": "eval_loss", "order": mode, "value": pytest.approx(evals[expected], abs=1e-6),
                      "step": expected}
    assert summary["best"]["step"] == expected and summary["best"]["saved"] == str(out / "best")
    best = _adapter(out / "best")
    assert (out / "best" / "tokenizer.json").is_file() and not (out / "best.tmp").exists()
    if expected == 0:
        assert all(not t.any() for k, t in best.items() if "lora_B" in k)
    else:
        run_sft(_cfg(task, tmp_path / "short", max_steps=expected, best_metric=None))
        short = _adapter(tmp_path / "short" / "final")
        assert best.keys() == short.keys()
        assert all((best[k] == short[k]).all() for k in best)


def test_the_cli_says_which_step_was_best(task, tmp_path, capsys):
    model_dir, data = task
    out = tmp_path / "run"
    argv = ["sft", "--model", str(model_dir), "--data", str(data), "--output-dir", str(out), "--max-steps", "3",
            "--eval-fraction", "0.25", "--eval-every", "1", "--best-metric", "loss", "--lr", "1e-2", "--no-progress"]
    assert main(argv) == 0
    record = json.loads((out / "best" / "best.json").read_text())
    assert record["metric"] == "eval_loss" and record["order"] == "min"  # the eval_ prefix is added
    printed = capsys.readouterr().out
    assert f"best eval_loss (min) {record['value']:.4f} at step {record['step']}: weights in {out / 'best'}" in printed


def test_dpo_keeps_the_best_pair_accuracy(task, tmp_path):
    model_dir, _ = task
    out = tmp_path / "dpo"
    cfg = DPOConfig(model=str(model_dir), data=str(write_pairs(tmp_path / "pairs.jsonl", n=32)), output_dir=str(out),
                    batch_size=4, max_steps=4, lr=1e-2, lora_r=4, lora_alpha=8, eval_fraction=0.25, eval_every=2,
                    best_metric="rewards/accuracies", progress=False)
    run_dpo(cfg)
    evals = _evals(out, "eval_rewards/accuracies")
    assert sorted(evals) == [0, 2, 4]
    record = json.loads((out / "best" / "best.json").read_text())
    first_best = min(s for s in evals if evals[s] == max(evals.values()))  # ties keep the earlier step
    assert (record["metric"], record["order"], record["step"]) == ("eval_rewards/accuracies", "max", first_best)


def test_an_interrupted_run_resumed_keeps_the_same_best(task, tmp_path):
    """The best so far (step 3, before the interruption at 4) travels in the checkpoint: a resumed
    run that forgot it would take step 5's weights as the best."""
    whole = tmp_path / "whole"
    run_sft(_cfg(task, whole, save_every=2), callbacks=[_spoil_after(3)])
    assert json.loads((whole / "best" / "best.json").read_text())["step"] == 3

    def ctrl_c(trainer, step, metrics):
        if step == 4:
            raise KeyboardInterrupt

    cut = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        run_sft(_cfg(task, cut, save_every=2), callbacks=[_spoil_after(3), ctrl_c])
    stopped = json.loads((cut / "best" / "best.json").read_text())
    run_sft(_cfg(task, cut, save_every=2, resume=True))
    assert (cut / "best" / "best.json").read_text() == (whole / "best" / "best.json").read_text()
    resumed, uninterrupted = _adapter(cut / "best"), _adapter(whole / "best")
    assert all((resumed[k] == uninterrupted[k]).all() for k in uninterrupted)
    ckpt = json.loads((cut / "checkpoints" / "step-00000004" / "trainer_state.json").read_text())
    assert ckpt["best"] == stopped  # the checkpoint carries the best so far


def test_an_unknown_metric_is_named_before_any_step(task, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=r"best_metric 'eval_rewards/accuracies' is not among this run's eval "
                                         r"metrics: eval_loss"):
        run_sft(_cfg(task, out, best_metric="rewards/accuracies", best_mode="max"))
    assert not (out / "best").exists() and not (out / "final").exists()
    assert sorted(_evals(out)) == [0]  # stopped after the evaluation before training


def test_settings_that_cannot_work_are_refused(task, tmp_path):
    for run in (run_sft, run_dpo):  # before any loading: the folder is not claimed
        with pytest.raises(ValueError, match=r"best_metric 'eval_loss' needs an eval set \(eval_data or eval_fraction"):
            run(_cfg(task, tmp_path / "a", eval_fraction=0.0))
        assert not (tmp_path / "a").exists()
    with pytest.raises(ValueError, match="best_mode: say min or max for best_metric 'eval_logps/chosen'"):
        _cfg(task, tmp_path / "b", best_metric="logps/chosen")
    with pytest.raises(ValueError, match=r"best_mode must be one of \('auto', 'min', 'max'\) \(got 'lowest'\)"):
        _cfg(task, tmp_path / "c", best_mode="lowest")
    assert _cfg(task, tmp_path / "d", best_metric="logps/chosen", best_mode="max").best_order() == "max"


def test_a_trainer_built_in_python_without_eval_data_refuses_best_metric(task, tmp_path):
    from prefopt import SFTTrainer, load_model, load_tokenizer
    from prefopt.data.sft import load_sft

    model_dir, data = task
    tok = load_tokenizer(model_dir)
    examples = load_sft(data, tok, max_length=64)[0]
    cfg = _cfg(task, tmp_path / "run", data=None, eval_fraction=0.0)
    with pytest.raises(ValueError, match="best_metric 'eval_loss' needs an eval set"):
        SFTTrainer(load_model(model_dir), cfg, examples, pad_id=tok.pad_token_id or 0)


@pytest.mark.parametrize("name,order", [("eval_loss", "min"), ("nll", "min"), ("eval_rewards/accuracies", "max"),
                                        ("rewards/margins", "max"), ("logps/chosen", None), ("rewards/chosen", None)])
def test_which_way_a_metric_improves(name, order):
    assert best_direction(name) == order


def _steps(out) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_patience_stops_the_run_after_that_many_evaluations_without_a_better_one(task, tmp_path, capsys):
    """Spoiled after step 2, the evaluations at 3 and 4 are worse than step 2's: with patience 2
    the run stops at step 4 of 8; its last evaluation is not repeated (or logged twice)."""
    out = tmp_path / "run"
    summary = run_sft(_cfg(task, out, max_steps=8, patience=2), callbacks=[_spoil_after(2)])
    evals = _evals(out)
    assert _steps(out) == [0, 1, 2, 3, 4]
    assert min(evals[3], evals[4]) > evals[2]
    assert summary["stopped_early"] == {"step": 4, "patience": 2, "metric": "eval_loss"}
    assert summary["best"]["step"] == 2 and summary["eval_after"] == {"eval_loss": evals[4]}
    assert (out / "final" / "adapter_model.safetensors").is_file()
    assert "prefopt: stopped early at step 4 of 8: eval_loss had not improved for 2 evaluations" in \
        capsys.readouterr().out


def test_patience_never_stops_a_run_that_keeps_improving(task, tmp_path):
    summary = run_sft(_cfg(task, tmp_path / "run", patience=1))
    assert "stopped_early" not in summary and _steps(tmp_path / "run")[-1] == 6


def test_a_resumed_run_stops_where_an_uninterrupted_one_does(task, tmp_path):
    """The count of evaluations since the best travels in the checkpoint: interrupted at step 4
    (two evaluations since step 2's best), resumed, the run stops at 5 like an uninterrupted one;
    one that forgot the count would train on (step 6 improves) to step 8."""
    kw = dict(max_steps=8, patience=3, save_every=1)
    whole = run_sft(_cfg(task, tmp_path / "whole", **kw), callbacks=[_spoil_after(2)])
    assert whole["stopped_early"]["step"] == 5

    def ctrl_c(trainer, step, metrics):
        if step == 4:
            raise KeyboardInterrupt

    cut = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        run_sft(_cfg(task, cut, **kw), callbacks=[_spoil_after(2), ctrl_c])
    resumed = run_sft(_cfg(task, cut, resume=True, **kw))
    assert resumed["stopped_early"] == whole["stopped_early"] and resumed["best"]["step"] == 2
    assert _evals(cut) == _evals(tmp_path / "whole")


def test_resuming_from_the_checkpoint_written_where_the_run_stopped_stops_there(task, tmp_path):
    from prefopt.train.state import checkpoint_dir

    """A run that stopped early at step 5 left a checkpoint of step 5 (as a run whose final save
    was cut short would): resumed from it, the run stops at once with the same weights, as it did,
    rather than training on to the next evaluation."""
    kw = dict(max_steps=8, patience=3, save_every=1, save_total_limit=10)
    out = tmp_path / "run"
    first = run_sft(_cfg(task, out, **kw), callbacks=[_spoil_after(2)])
    assert first["stopped_early"]["step"] == 5 and checkpoint_dir(out, 5).is_dir()
    final, evals = _adapter(out / "final"), _evals(out)
    steps = []
    again = run_sft(_cfg(task, out, resume=True, **kw), callbacks=[lambda trainer, step, m: steps.append(step)])
    assert steps == [] and again["stopped_early"] == first["stopped_early"]
    assert again["eval_after"] == first["eval_after"] and again["best"]["step"] == 2
    assert _evals(out) == evals and _steps(out)[-1] == 5
    assert all(torch.equal(final[k], v) for k, v in _adapter(out / "final").items())


def test_patience_needs_best_metric(task, tmp_path):
    with pytest.raises(ValueError, match="patience 2 needs best_metric"):
        _cfg(task, tmp_path / "a", best_metric=None, patience=2)
    with pytest.raises(ValueError, match=r"patience must be >= 0 \(got -1\)"):
        _cfg(task, tmp_path / "b", patience=-1)
    with pytest.raises(ValueError, match=r"patience 3 needs eval_every"):  # it could never stop the run
        _cfg(task, tmp_path / "c", patience=3, eval_every=0)
    with pytest.raises(ValueError) as every:  # every problem at once
        _cfg(task, tmp_path / "d", best_mode="lowest", patience=-1, best_metric="logps/chosen")
    assert "best_mode must be one of" in str(every.value) and "patience must be >= 0" in str(every.value)


def _trainer(task, out, evaluators, eval_fraction=0.25, **kw):
    from prefopt import SFTTrainer, load_tokenizer
    from prefopt.train.run import prepare_model
    from prefopt.train.sft import load_train_eval

    tok = load_tokenizer(task[0])
    train, evals, _ = load_train_eval(_cfg(task, out, eval_fraction=eval_fraction, best_metric=None), tok)
    cfg = _cfg(task, out, eval_fraction=eval_fraction, data=None, **kw)  # examples given, as in a notebook
    return SFTTrainer(prepare_model(cfg), cfg, train, evals, pad_id=tok.pad_token_id or 0, tokenizer=tok,
                      evaluators=evaluators), tok


def test_an_evaluator_adds_metrics_of_its_own_that_best_metric_can_use(task, tmp_path):
    """An evaluator runs at every evaluation, in eval mode without gradients; its metrics are
    logged with the eval_ prefix and can pick the best weights (here the smallest lora_B norm:
    before training, when every lora_B is zero)."""
    seen = []

    def lora_b_norm(trainer):
        seen.append((trainer.step, trainer.model.training, torch.is_grad_enabled()))
        norm = sum(float(p.norm() ** 2) for n, p in trainer.model.named_parameters() if "lora_B" in n) ** 0.5
        return {"lora_b_norm": norm}

    trainer, _ = _trainer(task, tmp_path / "run", [lora_b_norm], best_metric="eval_lora_b_norm", best_mode="min")
    summary = trainer.train()
    assert seen == [(s, False, False) for s in range(7)]
    norms = _evals(tmp_path / "run", "eval_lora_b_norm")
    assert norms[0] == 0 and all(norms[s] > 0 for s in range(1, 7))
    assert "eval_loss" in summary["eval_after"] and summary["best"]["step"] == 0


def test_a_task_score_of_greedy_answers_as_the_best_metric(task, tmp_path):
    """The use it is for: score greedy answers to held-out prompts (here the tiny task's colour
    codes) and keep the weights that answer best, with no eval loss at all."""
    from prefopt import generate

    def code_accuracy(trainer):
        tok, right = trainer.tokenizer, 0
        prompts = [tok.apply_chat_template([{"role": "user", "content": f"Case {i}: triage code for patient "
                                             f"{i % 4}?"}], add_generation_prompt=True) for i in range(100, 108)]
        answers = generate(trainer.model, prompts, max_new_tokens=4, eos_token_ids=tok.eos_token_ids,
                           pad_token_id=tok.pad_token_id or 0)
        for i, ids in zip(range(100, 108), answers):
            right += ["red", "blue", "green", "amber"][i % 4] in tok.decode(ids)
        return {"code_accuracy": right / 8}

    trainer, _ = _trainer(task, tmp_path / "run", [code_accuracy], eval_fraction=0.0, best_metric="code_accuracy",
                          max_steps=4)
    summary = trainer.train()
    scores = _evals(tmp_path / "run", "eval_code_accuracy")
    assert sorted(scores) == [0, 1, 2, 3, 4] and all(0 <= v <= 1 for v in scores.values())
    assert summary["best"]["order"] == "max"  # auto: an accuracy
    best = max(scores.values())
    assert summary["best"]["value"] == best and summary["best"]["step"] == min(s for s in scores if scores[s] == best)
    assert (tmp_path / "run" / "best" / "best.json").is_file() and "eval_loss" not in summary["eval_after"]


def _lora_b_norm(trainer):
    return {"lora_b_norm": sum(float(p.norm() ** 2) for n, p in trainer.model.named_parameters() if "lora_B" in n)}


def test_run_sft_and_run_dpo_take_evaluators_in_place_of_an_eval_set(task, tmp_path):
    """``prefopt compare``'s validation messages reach DPO this way: no eval split, an evaluator
    instead, and the best weights kept by its metric (here step 0, the only one with lora_B zero)."""
    model_dir, _ = task
    sft = run_sft(_cfg(task, tmp_path / "sft", eval_fraction=0.0, eval_every=2, max_steps=4,
                       best_metric="lora_b_norm", best_mode="min"), evaluators=[_lora_b_norm])
    dpo = run_dpo(DPOConfig(model=str(model_dir), data=str(write_pairs(tmp_path / "pairs.jsonl", n=16)),
                            output_dir=str(tmp_path / "dpo"), batch_size=4, max_steps=4, lr=1e-2, lora_r=4,
                            lora_alpha=8, eval_every=2, best_metric="lora_b_norm", best_mode="min", progress=False),
                  evaluators=[_lora_b_norm])
    for summary, out in ((sft, tmp_path / "sft"), (dpo, tmp_path / "dpo")):
        norms = _evals(out, "eval_lora_b_norm")
        assert sorted(norms) == [0, 2, 4] and norms[0] == 0 < norms[4]
        assert summary["best"]["step"] == 0 and "eval_loss" not in summary["eval_after"]
        assert all(float(t.abs().max()) == 0 for k, t in _adapter(out / "best").items() if "lora_B" in k)


@pytest.mark.parametrize("min_delta, step, value", [(0.0, 3, 0.61), (0.05, 2, 0.60), (0.2, 0, 0.50)])
def test_best_min_delta_keeps_the_earlier_weights_over_a_small_gain(task, tmp_path, min_delta, step, value):
    """Scores 0.50, 0.52, 0.60, 0.61, 0.58: every gain counts without a margin (step 3); with 0.05,
    0.52 and 0.61 are too close to the best before them (step 2); with 0.2 nothing beats step 0."""
    scores = [0.50, 0.52, 0.60, 0.61, 0.58]
    out = tmp_path / "run"
    summary = run_sft(_cfg(task, out, eval_fraction=0.0, max_steps=4, best_metric="val_f1",
                           best_min_delta=min_delta), evaluators=[lambda trainer: {"val_f1": scores[trainer.step]}])
    assert {k: summary["best"][k] for k in ("step", "value")} == {"step": step, "value": value}
    assert json.loads((out / "best" / "best.json").read_text())["step"] == step


def test_best_min_delta_works_both_ways_and_must_not_be_negative(task, tmp_path):
    from pathlib import Path

    from prefopt.train.saving import BestWeights

    best = BestWeights(_cfg(task, tmp_path / "a", best_min_delta=0.1), Path(tmp_path))  # eval_loss: min
    best.record = {"value": 1.0}
    assert not best.better(0.95) and not best.better(0.9) and best.better(0.89)
    with pytest.raises(ValueError, match=r"best_min_delta must be >= 0 \(got -0.1\)"):
        _cfg(task, tmp_path / "b", best_min_delta=-0.1)
    with pytest.raises(ValueError, match=r"best_min_delta must be >= 0 \(got nan\)"):
        _cfg(task, tmp_path / "c", best_min_delta=float("nan"))
