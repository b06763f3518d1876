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
