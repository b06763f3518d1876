"""A run's time and peak memory: the outcome's line (console, model card) and the compare
report's, from train_summary.json; the figures themselves are tested where the trainers run
(test_sft, test_dpo, test_cuda_training)."""
import pytest

from prefopt.evaluate.dynamics import dynamics_lines
from prefopt.train.cost import cost_line, duration_text

SFT = {"total_steps": 60, "resumed_from_step": 0, "train_seconds": 95.3, "peak_mem_mb": 1180.4, "device": "cpu"}
DPO = {"total_steps": 50, "resumed_from_step": 20, "train_seconds": 3725.0, "peak_mem_mb": 1250.0, "device": "cpu",
       "reference_fill_seconds": 7.25}


@pytest.mark.parametrize("seconds, text", [(0.04, "0.0 s"), (7.25, "7.2 s"), (9.96, "10.0 s"), (10.4, "10 s"),
                                           (59.4, "59 s"), (59.6, "1 min 00 s"), (95.3, "1 min 35 s"),
                                           (3599.4, "59 min 59 s"), (3725, "1 h 02 min"), (90000, "25 h 00 min")])
def test_a_duration_reads_as_people_say_it(seconds, text):
    assert duration_text(seconds) == text


def test_the_outcome_says_what_the_run_took():
    assert cost_line(SFT) == ("trained on cpu: 60 steps in 1 min 35 s, peak 1180 MiB (the process's resident "
                              "memory from the start of training, the weights included)")
    # a resumed run counts the steps it trained; a fill of the reference cache is said before it
    assert cost_line(DPO).startswith("trained on cpu: 30 steps in 1 h 02 min (resumed at step 20), after 7.2 s "
                                     "computing the reference log-probs, peak 1250 MiB")
    cuda = cost_line({**SFT, "device": "cuda"})
    assert cuda.endswith("peak 1180 MiB (CUDA memory allocated from the start of training, the weights included)")
    assert cost_line({**SFT, "peak_mem_mb": None}) == "trained on cpu: 60 steps in 1 min 35 s"  # not readable here
    assert cost_line({**SFT, "total_steps": 1, "peak_mem_mb": None}) == "trained on cpu: 1 step in 1 min 35 s"
    assert cost_line({"total_steps": 60, "resumed_from_step": 0}) is None  # a run from before they were recorded


def _dyn(sft=SFT, dpo=DPO, loss="sigmoid"):
    window = {"steps": 4, "window": 1, "first": {"loss": 1.0}, "last": {"loss": 0.5}}
    return {"sft": {**window, **({"cost": sft} if sft else {})},
            "dpo": {**window, "loss": loss, **({"cost": dpo} if dpo else {})}}


def test_the_compare_report_says_what_each_stage_took():
    last = dynamics_lines(_dyn())[-1]
    assert last == ("- Time and memory on cpu: SFT 60 steps in 1 min 35 s, peak 1180 MiB; DPO 30 steps in 1 h 02 min "
                    "(resumed at step 20), after 7.2 s computing the reference log-probs, peak 1250 MiB (peak: the "
                    "process's resident memory from the start of training, the weights included).")
    assert dynamics_lines(_dyn(loss="kto"))[-1].startswith("- Time and memory on cpu: SFT 60 steps in 1 min 35 s, "
                                                           "peak 1180 MiB; KTO 30 steps")
    # a stage trained before the cost was recorded (a run from --from) is left out; none: no line
    assert dynamics_lines(_dyn(sft=None))[-1].startswith("- Time and memory on cpu: DPO 30 steps")
    assert not any("Time and memory" in line for line in dynamics_lines(_dyn(sft=None, dpo=None)))


def test_the_compare_report_counts_the_steps_logged():
    sparse = {"steps": 80, "logged": 8, "window": 2, "first": {"loss": 1.0}, "last": {"loss": 0.5}}  # --log-every 10
    assert dynamics_lines({"sft": sparse})[0] == ("- SFT: token NLL 1.000 → 0.500 (mean of the first and last 2 "
                                                  "of 8 logged steps).")
    assert dynamics_lines(_dyn())[0].endswith("last 1 of 4 logged steps).")  # a report from before: its steps
