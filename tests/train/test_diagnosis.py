"""What a DPO log says went wrong, said at the end of `prefopt dpo`, in its card and in compare's
report: a pair accuracy near chance, chosen answers made less likely (not under RPO/ORPO)."""
import json

from prefopt.train import DPOConfig, TrainConfig
from prefopt.train.diagnosis import dpo_warnings
from prefopt.train.run import outcome_lines


def _log(acc_first, acc_last, chosen_first, chosen_last):
    return {"first": {"rewards/accuracies": acc_first, "logps/chosen": chosen_first},
            "last": {"rewards/accuracies": acc_last, "logps/chosen": chosen_last}}


def test_the_thresholds_by_hand():
    assert dpo_warnings(_log(0.5, 0.6, -3.0, -3.9), "sigmoid") == []  # 0.6 has learned; a fall of 0.9 < 1.0
    learned, fell = dpo_warnings(_log(0.5, 0.55, -3.0, -4.5), "sigmoid")
    assert learned.startswith("DPO did not learn to rank its training pairs: pair accuracy 0.55 at the end")
    assert fell.startswith("DPO made the chosen (right) training answers less likely: their log-prob fell by 1.50")
    assert dpo_warnings(_log(0.5, 0.9, -3.0, -4.5), "rpo") == []  # RPO's NLL term: the fall is not pointed out
    assert dpo_warnings(_log(0.5, 0.9, -3.0, -4.5), "orpo") == []
    assert len(dpo_warnings(_log(0.5, 0.9, -3.0, -4.5), "ipo")) == 1


def test_a_dpo_run_says_it_and_an_sft_run_does_not(tmp_path):
    rows = [{"step": s, "loss": 0.7, "rewards/accuracies": a, "logps/chosen": c}
            for s, a, c in [(1, 0.5, -2.0), (2, 0.5, -2.5), (3, 0.5, -3.5), (4, 0.5, -4.0)]]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "d.jsonl").write_text("")
    dpo = DPOConfig(model="m", data=str(tmp_path / "d.jsonl"), output_dir=str(tmp_path), loss="sigmoid")
    lines = outcome_lines({"total_steps": 4}, dpo)
    assert lines[0].startswith("training loss 0.7000 → 0.7000, pair accuracy 0.50 → 0.50")
    assert lines[1].startswith("DPO did not learn to rank") and "fell by 2.00" in lines[2] and len(lines) == 3
    sft = TrainConfig(model="m", data=str(tmp_path / "d.jsonl"), output_dir=str(tmp_path))
    assert outcome_lines({"total_steps": 4}, sft) == ["training loss 0.7000 → 0.7000 (mean of the first and last "
                                                      "1 of 4 logged steps)"]
    sparse = [{"step": s, "loss": 0.7} for s in range(10, 90, 10)]  # --log-every 10: 8 logged of 80 steps
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in sparse))
    assert outcome_lines({"total_steps": 80}, sft)[0].endswith("(mean of the first and last 2 of 8 logged steps)")


def test_a_one_step_run_is_not_said_to_have_failed_to_learn(tmp_path):
    """Its one logged step measured the model before the step's update: the adapter then equals
    its reference, every pair ties (accuracy 0), and nothing can have been learnt or lost."""
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 0.6931, "rewards/accuracies": 0.0,
                                                        "logps/chosen": -2.0, "kto/accuracies": 0.0}) + "\n")
    (tmp_path / "d.jsonl").write_text("")
    for loss in ("sigmoid", "kto"):
        dpo = DPOConfig(model="m", data=str(tmp_path / "d.jsonl"), output_dir=str(tmp_path), loss=loss)
        lines = outcome_lines({"total_steps": 1}, dpo)
        assert len(lines) == 1 and lines[0].endswith("(mean of the first and last 1 of 1 logged step)"), lines
    assert dpo_warnings({**_log(0.0, 0.0, -2.0, -2.0), "steps": 2}, "sigmoid")  # after one update: said


def test_a_kto_run_that_did_not_learn_says_so_in_kto_terms(tmp_path):
    assert dpo_warnings({"first": {"kto/accuracies": 0.3}, "last": {"kto/accuracies": 0.7}}, "kto") == []
    rows = [{"step": s, "loss": 0.5, "kto/accuracies": a, "kl": 0.1, "logps/completion": c,
             "rewards/accuracies": 0.0, "logps/chosen": c}  # DPO's keys, were they logged, are not read for KTO
            for s, a, c in [(1, 0.33, -2.3), (2, 0.35, -3.0), (3, 0.38, -4.0), (4, 0.38, -4.9)]]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "d.jsonl").write_text("")
    kto = DPOConfig(model="m", data=str(tmp_path / "d.jsonl"), output_dir=str(tmp_path), loss="kto")
    lines = outcome_lines({"total_steps": 4}, kto)
    assert lines[0].startswith("training loss 0.5000 → 0.5000, share on the label's side of the reference point "
                               "0.33 → 0.38, reference point (KL estimate) 0.100 → 0.100, completion log-prob")
    assert lines[1].startswith("KTO did not learn to tell its training completions apart: 0.38 of them lie on their "
                               "label's side") and len(lines) == 2


def test_accuracy_from_too_few_pairs_is_not_called_a_failure(tmp_path):
    """A 3-step run of 4 pairs a step: its last quarter (one step) judged 4 pairs, which read 0.50
    or 0.75 by chance whatever DPO learned, and whose chosen answers' mean log-prob moves with the
    answers drawn; the diagnosis waits for 16 (KTO: examples) in each quarter it reads."""
    from prefopt.train.diagnosis import JUDGED

    few = {**_log(0.5, 0.5, -3.0, -3.0), "window": 1}
    few["last"]["pairs"] = 4
    assert dpo_warnings(few, "sigmoid") == []
    enough = {**few, "window": 4}  # 4 logged steps of 4: 16 pairs
    assert JUDGED == 16 and dpo_warnings(enough, "sigmoid")[0].startswith("DPO did not learn to rank")
    fell = {"first": {"logps/chosen": -3.0, "pairs": 4}, "last": {"logps/chosen": -5.0, "pairs": 4}, "window": 1}
    assert dpo_warnings(fell, "sigmoid") == []  # 4 pairs' mean log-prob: which answers the batch drew
    assert dpo_warnings({**fell, "window": 4}, "sigmoid")[0].startswith("DPO made the chosen (right) training")
    fell["first"]["pairs"] = 2  # both quarters must have judged enough
    assert dpo_warnings({**fell, "window": 4}, "sigmoid") == []
    assert dpo_warnings({"first": {}, "last": {"kto/accuracies": 0.4, "examples": 8}, "window": 1}, "kto") == []
    assert dpo_warnings({"first": {}, "last": {"kto/accuracies": 0.4, "examples": 8}, "window": 2}, "kto")
    rows = [{"step": s, "loss": 0.69, "rewards/accuracies": 0.5, "logps/chosen": -3.0, "pairs": 4} for s in (1, 2, 3)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "d.jsonl").write_text("")
    dpo = DPOConfig(model="m", data=str(tmp_path / "d.jsonl"), output_dir=str(tmp_path), loss="sigmoid")
    assert len(outcome_lines({"total_steps": 3}, dpo)) == 1  # the figures, without the warning
    rows = [{**r, "step": s, "pairs": 8} for s, r in zip((1, 2, 3, 4, 5, 6, 7, 8), rows * 3)]  # 2 of 8 steps: 16
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert outcome_lines({"total_steps": 8}, dpo)[1].startswith("DPO did not learn to rank")
