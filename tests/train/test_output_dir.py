"""An output folder holding an earlier run is never trained into silently, and a checkpoint
resumes only under the settings it was written with."""
import json
import shlex
import shutil
import signal
import subprocess
import sys
from contextlib import contextmanager

import pytest
import torch

from prefopt.cli import main
from prefopt.train import TrainConfig
from prefopt.train.dpo import DPOConfig
from prefopt.train.run import run_dpo, run_sft
from tests.train._fixtures import write_pairs, write_task


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return write_task(tmp_path_factory.mktemp("outdir"), n=16)


def _cfg(task, out, **kw):
    model_dir, data = task
    base = dict(model=str(model_dir), data=str(data), output_dir=str(out), batch_size=4, max_steps=3, lr=3e-3,
                lora_r=4, lora_alpha=8, progress=False)
    return TrainConfig(**{**base, **kw})


def _files(out):
    return {p.relative_to(out).as_posix(): p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}


def test_a_second_run_into_the_same_folder_is_refused_and_changes_nothing(task, tmp_path, capsys):
    out = tmp_path / "run"
    run_sft(_cfg(task, out, save_every=1))
    before = _files(out)
    with pytest.raises(ValueError, match="holds an earlier run .*checkpoints.*--overwrite"):
        run_sft(_cfg(task, out, lr=1e-3))
    with pytest.raises(ValueError, match="holds an earlier run"):  # said before anything loads
        run_sft(_cfg(task, out, model=str(tmp_path / "no-such-model")))
    model_dir, data = task
    argv = ["sft", "--model", str(model_dir), "--data", str(data), "--output-dir", str(out), "--max-steps", "2",
            "--no-progress"]
    assert main(argv) == 2
    assert "holds an earlier run" in capsys.readouterr().err
    assert _files(out) == before  # nothing written, nothing removed


def test_dpo_refuses_an_earlier_run_but_keeps_its_reference_cache_on_overwrite(task, tmp_path):
    model_dir, _ = task
    out = tmp_path / "dpo"
    cfg = dict(model=str(model_dir), data=str(write_pairs(tmp_path / "pairs.jsonl", n=16)), output_dir=str(out),
               batch_size=4, max_steps=2, lora_r=4, lora_alpha=8, progress=False, ref_cache=str(out / "ref_cache"))
    run_dpo(DPOConfig(**cfg))
    cache = {p.name: p.stat().st_mtime_ns for p in (out / "ref_cache").iterdir()}
    with pytest.raises(ValueError, match="holds an earlier run"):
        run_dpo(DPOConfig(**cfg))
    summary = run_dpo(DPOConfig(**cfg, overwrite=True))
    assert summary["reference_forwards"] == 0
    assert {p.name: p.stat().st_mtime_ns for p in (out / "ref_cache").iterdir()} == cache  # reused, not refilled


def test_overwrite_replaces_the_earlier_run_and_keeps_other_files(task, tmp_path):
    out = tmp_path / "run"
    run_sft(_cfg(task, out, save_every=1, max_steps=4))
    (out / "ref_cache").mkdir()
    (out / "ref_cache" / "keep.txt").write_text("a cache shared between runs")
    run_sft(_cfg(task, out, overwrite=True, max_steps=2))
    assert not (out / "checkpoints").exists()  # the old run's step-1..3 are gone, so --resume cannot mix runs
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert json.loads((out / "train_config.json").read_text())["max_steps"] == 2
    assert (out / "ref_cache" / "keep.txt").is_file()


def test_overwrite_with_bad_data_keeps_the_earlier_run(task, tmp_path):
    """--overwrite clears the earlier run only once the new run's data has loaded: a typo in the
    data (here a malformed line) must not cost the run it was meant to replace."""
    out = tmp_path / "run"
    run_sft(_cfg(task, out, save_every=1))
    before = _files(out)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": \n')
    with pytest.raises(ValueError, match="bad.jsonl:2: malformed JSON"):
        run_sft(_cfg(task, out, overwrite=True, data=str(bad)))
    assert _files(out) == before


def test_resume_needs_a_checkpoint_and_the_same_settings(task, tmp_path):
    out = tmp_path / "run"
    run_sft(_cfg(task, out, save_every=0))
    with pytest.raises(ValueError, match="no checkpoint to resume from .*--overwrite"):
        run_sft(_cfg(task, out, resume=True))
    run_sft(_cfg(task, out, overwrite=True, save_every=1, max_steps=3))
    with pytest.raises(ValueError, match=r"other settings \(batch_size: 4 -> 2; lr: 0.003 -> 0.001\)"):
        run_sft(_cfg(task, out, resume=True, lr=1e-3, batch_size=2))
    summary = run_sft(_cfg(task, out, resume=True, max_steps=5, eval_every=2, progress=False))
    assert summary["resumed_from_step"] == 2 and summary["total_steps"] == 5  # longer: allowed


class _Killed(Exception):
    """Stands for SIGKILL (or a SIGTERM in the first evaluation): the run ends with nothing saved."""


def _killed_at(step):
    def callback(trainer, at, metrics):
        if at == step:
            raise _Killed
    return callback


def test_resume_starts_again_where_the_run_before_saved_nothing(task, tmp_path, capsys):
    """A scheduler requeues a preempted job with the same ``--resume``: where the first attempt
    stopped before its first checkpoint (and left no trained weights: at most a ``best/`` of step
    0), it starts again at step 0, and ends as an uninterrupted run; a run with trained weights
    and no checkpoint is still refused."""
    from safetensors.torch import load_file

    kw = dict(eval_fraction=0.25, eval_every=2, best_metric="eval_loss", save_every=0, max_steps=4, lora_dropout=0.0)
    run_sft(_cfg(task, tmp_path / "whole", **kw))
    out = tmp_path / "run"
    with pytest.raises(_Killed):
        run_sft(_cfg(task, out, resume=True, **kw), callbacks=[_killed_at(1)])
    assert sorted(p.name for p in out.iterdir()) == ["best", "metrics.jsonl", "train_config.json"]
    assert json.loads((out / "best" / "best.json").read_text())["step"] == 0  # the weights before training
    capsys.readouterr()
    summary = run_sft(_cfg(task, out, resume=True, **kw))
    assert (f"prefopt: --resume: the run in {out} stopped before its first checkpoint (train_config.json, "
            f"metrics.jsonl, best replaced); starting again at step 0") in capsys.readouterr().out
    assert summary["resumed_from_step"] == 0
    assert [m["step"] for m in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())] == \
        [m["step"] for m in map(json.loads, (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines())]
    for folder in ("final", "best"):
        got, want = (load_file(o / folder / "adapter_model.safetensors") for o in (out, tmp_path / "whole"))
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    # trained weights in best/ (step 2) and no checkpoint: a resume has nothing to go on from, and they are kept
    shutil.rmtree(out)
    with pytest.raises(_Killed):
        run_sft(_cfg(task, out, **kw), callbacks=[_killed_at(3)])
    assert json.loads((out / "best" / "best.json").read_text())["step"] == 2
    with pytest.raises(ValueError, match=r"holds an earlier run \(train_config.json, metrics.jsonl, best\) with no "
                                         r"checkpoint to resume from \(save_every was 0, or it stopped before its "
                                         r"first save\): pass --overwrite"):
        run_sft(_cfg(task, out, resume=True, **kw))
    assert (out / "best" / "adapter_model.safetensors").is_file()


def test_sigterm_in_the_first_evaluation_says_how_to_go_on_and_resume_starts_again(task, tmp_path, capsys):
    """The evaluation before step 1 may take minutes (evaluators that generate); SIGTERM there
    ended the process without a word. Nothing is trained yet: it stops where the signal lands,
    says so, and ``--resume`` starts the run again."""
    import os

    from prefopt.train import Terminated

    calls = []

    def evaluator(trainer):
        calls.append(trainer.step)
        if len(calls) == 1:
            assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL  # (else the signal ends pytest itself)
            os.kill(os.getpid(), signal.SIGTERM)
        return {"steps": float(trainer.step)}

    kw = dict(eval_fraction=0.0, eval_every=2, save_every=0, max_steps=2, resume=True)
    out = tmp_path / "run"
    with pytest.raises(Terminated):
        run_sft(_cfg(task, out, **kw), evaluators=[evaluator])
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # put back
    assert ("prefopt: stopped by SIGTERM in the evaluation before the first step, with nothing trained yet; rerun "
            "with --resume to start again") in capsys.readouterr().err
    assert run_sft(_cfg(task, out, **kw), evaluators=[evaluator])["eval_after"] == {"eval_steps": 2.0}
    assert calls == [0, 0, 2]


def test_a_checkpoint_from_before_a_setting_existed_resumes_at_its_default(task, tmp_path):
    """best_metric and best_mode came after checkpoints that do not record them: those resume
    where the new settings keep their defaults, and not under another value."""
    out = tmp_path / "run"
    run_sft(_cfg(task, out, save_every=1, max_steps=3))
    state_file = out / "checkpoints" / "step-00000002" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    for key in ("best_metric", "best_mode"):
        del state["config"][key]
    state_file.write_text(json.dumps(state))
    with pytest.raises(ValueError, match=r"other settings \(best_mode: 'auto' -> 'max'\)"):
        run_sft(_cfg(task, out, resume=True, save_every=1, max_steps=4, best_mode="max"))
    assert run_sft(_cfg(task, out, resume=True, save_every=1, max_steps=4))["resumed_from_step"] == 2


def test_a_checkpoint_from_before_packing_resumes_padded_only(task, tmp_path):
    """``pack`` came with a default (True) other than what runs did before it (padded rows): a
    checkpoint that does not record it ran padded, so it resumes with --no-pack, not the default."""
    out = tmp_path / "run"
    run_sft(_cfg(task, out, save_every=1, max_steps=3, pack=False))
    state_file = out / "checkpoints" / "step-00000002" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    del state["config"]["pack"]
    state_file.write_text(json.dumps(state))
    with pytest.raises(ValueError, match=r"other settings \(pack: False -> True\)"):
        run_sft(_cfg(task, out, resume=True, save_every=1, max_steps=4))
    assert run_sft(_cfg(task, out, resume=True, save_every=1, max_steps=4, pack=False))["resumed_from_step"] == 2


def test_resume_into_an_empty_folder_starts_a_new_run(task, tmp_path, capsys):
    """A job rerun with the same command after a preemption; the first run says it starts afresh."""
    summary = run_sft(_cfg(task, tmp_path / "fresh", resume=True))
    assert summary["resumed_from_step"] == 0 and (tmp_path / "fresh" / "final").is_dir()
    assert f"prefopt: --resume: no checkpoint in {tmp_path / 'fresh'} yet; starting at step 0\n" in capsys.readouterr().out


@pytest.mark.parametrize("save_every", [1, 0])
def test_ctrl_c_says_where_the_run_stopped_and_how_to_go_on(task, tmp_path, capsys, monkeypatch, save_every):
    def ctrl_c(trainer, step, metrics):
        if step == 2:
            raise KeyboardInterrupt

    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        run_sft(_cfg(task, out, save_every=save_every, max_steps=4), callbacks=[ctrl_c])
    err = capsys.readouterr().err
    if save_every:
        assert "interrupted at step 2 of 4; rerun with --resume to continue from" in err and "step-00000002" in err
        assert run_sft(_cfg(task, out, save_every=1, max_steps=4, resume=True))["resumed_from_step"] == 2
    else:
        assert "interrupted at step 2 of 4; it saved no checkpoint (set --save-every); rerun with --overwrite" in err


def test_a_full_disk_at_a_checkpoint_says_how_to_go_on_and_gives_back_the_half_written_one(task, tmp_path, capsys,
                                                                                           monkeypatch):
    """The error itself is the CLI's one line; before it, where the run stopped and what to resume
    from once the disk has room; the half-written ``step-N.tmp`` is removed (it held the space)."""
    import prefopt.train.state as state

    written = state.write_optimizer

    def full_at_step_4(sd, folder):
        if folder.name == "step-00000004.tmp":
            (folder / "optimizer.safetensors").write_bytes(b"x" * 100)  # what got written before the disk filled
            raise OSError(28, "No space left on device", str(folder / "optimizer.json"))
        written(sd, folder)

    monkeypatch.setattr(state, "write_optimizer", full_at_step_4)
    model_dir, data = task
    out = tmp_path / "cli"
    cli = ["sft", "--model", str(model_dir), "--data", str(data), "--output-dir", str(out), "--batch-size", "4",
           "--max-steps", "6", "--save-every", "2", "--lora-r", "4", "--no-progress"]
    assert main(cli) == 2
    err = capsys.readouterr().err
    assert err.endswith(f"\nprefopt: stopped by the error below at step 4 of 6; once it is mended, rerun with --resume "
                        f"to continue from {out / 'checkpoints' / 'step-00000002'}\nprefopt sft: error: [Errno 28] No "
                        f"space left on device: '{out / 'checkpoints' / 'step-00000004.tmp' / 'optimizer.json'}'\n")
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["latest", "step-00000002"]
    monkeypatch.setattr(state, "write_optimizer", written)
    assert main(cli + ["--resume"]) == 0 and "resuming from" in capsys.readouterr().out


@pytest.mark.parametrize("how, save_every", [("TERM", 0), ("TERM", 2), ("INT", 0)])
def test_sigterm_or_a_first_ctrl_c_saves_a_checkpoint_after_the_step_and_the_resume_ends_where_the_run_would(
        task, tmp_path, capfd, how, save_every):
    """A scheduler's preemption (SIGTERM, then SIGKILL) ended the process at once, and Ctrl-C
    raised wherever the step was: every step since the last checkpoint was lost, all of them with
    save_every 0. Now the step ends, a checkpoint holds it (a real signal, sent to this process at
    step 2), the run says how to go on, and the resume ends bit-identical to an uninterrupted
    run. The handlers are put back after."""
    import os

    import torch
    from safetensors.torch import load_file

    from prefopt.train.stop_signal import FIRST_CTRL_C, Terminated

    def preempt(trainer, step, metrics):
        if step == 2:
            os.kill(os.getpid(), getattr(signal, f"SIG{how}"))

    before = signal.signal(signal.SIGINT, signal.default_int_handler)  # (as in a terminal; a test worker's may differ)
    try:
        handlers = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
        run_sft(_cfg(task, tmp_path / "whole", save_every=save_every, max_steps=4))
        out = tmp_path / "run"
        with pytest.raises(Terminated if how == "TERM" else KeyboardInterrupt):
            run_sft(_cfg(task, out, save_every=save_every, max_steps=4), callbacks=[preempt])
        assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == handlers
    finally:
        signal.signal(signal.SIGINT, before)
    what = "stopped by SIGTERM" if how == "TERM" else "interrupted"
    err = capfd.readouterr().err  # (the first Ctrl-C's line may go to fd 2)
    assert (f"prefopt: {what} at step 2 of 4; rerun with --resume to continue from "
            f"{out / 'checkpoints' / 'step-00000002'}\n") in err
    assert (FIRST_CTRL_C in err) == (how == "INT")
    assert run_sft(_cfg(task, out, save_every=save_every, max_steps=4, resume=True))["resumed_from_step"] == 2
    whole, resumed = (load_file(d / "final" / "adapter_model.safetensors") for d in (tmp_path / "whole", out))
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


@pytest.mark.parametrize("how", ["TERM", "INT"])
def test_a_signal_in_the_final_evaluation_saves_the_final_weights_first(task, tmp_path, capsys, monkeypatch, how):
    """With save_every 0, SIGTERM or Ctrl-C in the evaluation after the last step lost the whole
    run; now its weights are saved as the last step's checkpoint, and the resume evaluates them
    again and ends as an uninterrupted run."""
    import os

    import torch
    from safetensors.torch import load_file

    from prefopt.train.loop import Trainer
    from prefopt.train.stop_signal import Terminated

    run_sft(_cfg(task, tmp_path / "whole", max_steps=3, eval_fraction=0.25))
    evaluate = Trainer.evaluate

    def signalled(self):
        if self.step == self.total_steps:
            os.kill(os.getpid(), getattr(signal, f"SIG{how}"))  # lands here, inside the evaluation
            raise AssertionError("not reached")
        return evaluate(self)

    monkeypatch.setattr(Trainer, "evaluate", signalled)
    out = tmp_path / "run"
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(Terminated if how == "TERM" else KeyboardInterrupt):
            run_sft(_cfg(task, out, max_steps=3, eval_fraction=0.25))
    finally:
        signal.signal(signal.SIGINT, before)
    what = "stopped by SIGTERM" if how == "TERM" else "interrupted"
    assert (f"prefopt: {what} in the final evaluation at step 3 of 3; rerun with --resume to continue from "
            f"{out / 'checkpoints' / 'step-00000003'}\n") in capsys.readouterr().err
    assert not (out / "final").exists()
    monkeypatch.undo()
    assert run_sft(_cfg(task, out, max_steps=3, eval_fraction=0.25, resume=True))["resumed_from_step"] == 3
    whole, resumed = (load_file(d / "final" / "adapter_model.safetensors") for d in (tmp_path / "whole", out))
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


class _Killed(Exception):
    """Stands for the end of the process where SIGTERM kept Python's default (a test cannot die)."""


def _killed(signum, frame):
    raise _Killed


@contextmanager
def _signals_at_their_defaults():
    """SIGTERM as its default would end the process (raising :class:`_Killed`) and Ctrl-C at
    Python's own handler, as in a terminal (a test worker's may differ); put back after."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler), signal.signal(signal.SIGTERM, _killed)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before[0])
        signal.signal(signal.SIGTERM, before[1])


@pytest.mark.parametrize("how", ["TERM", "INT"])
def test_a_signal_while_final_is_written_waits_for_it_to_be_whole(task, tmp_path, capfd, monkeypatch, how):
    """SIGTERM or Ctrl-C while final/ was written ended the process there: with save_every 0 no
    checkpoint held the run, and all of it was lost. Now final/ and its card are written whole
    first, and the run stops as asked (the CLI's 143 or 130), saying it is complete."""
    import os

    import torch
    from safetensors.torch import load_file

    import prefopt.train.run as run_module
    from prefopt.train.stop_signal import Terminated, ctrl_c_line

    run_sft(_cfg(task, tmp_path / "whole", max_steps=3))
    save = run_module.save_weights

    def signalled(trainer, out, *a, **k):
        os.kill(os.getpid(), getattr(signal, f"SIG{how}"))  # lands here, before a byte of final/ is written
        return save(trainer, out, *a, **k)

    monkeypatch.setattr(run_module, "save_weights", signalled)
    out = tmp_path / "run"
    with _signals_at_their_defaults(), pytest.raises(Terminated if how == "TERM" else KeyboardInterrupt):
        run_sft(_cfg(task, out, max_steps=3))
    err = capfd.readouterr().err
    who = "SIGTERM" if how == "TERM" else "Ctrl-C"
    assert f"prefopt: {who} came while the run was saved: it is complete, in {out / 'final'}\n" in err
    assert (ctrl_c_line("once final/ is saved") in err) == (how == "INT")
    assert (out / "final" / "README.md").is_file() and not (out / "checkpoints").exists()
    whole, saved = (load_file(d / "final" / "adapter_model.safetensors") for d in (tmp_path / "whole", out))
    assert all(torch.equal(whole[k], saved[k]) for k in whole)


def test_sigterm_while_best_is_written_after_the_last_step_saves_a_checkpoint_and_resumes(task, tmp_path, capsys,
                                                                                          monkeypatch):
    """best/ after the final evaluation was written with SIGTERM at Python's default: a signal
    there ended the run with its weights unsaved. Now best/ is written whole, the final weights
    go into a checkpoint, and the resume ends as an uninterrupted run."""
    import os

    import torch
    from safetensors.torch import load_file

    import prefopt.train.saving as saving
    from prefopt.train.stop_signal import Terminated

    kw = dict(max_steps=3, eval_fraction=0.25, eval_every=1, best_metric="eval_loss")
    run_sft(_cfg(task, tmp_path / "whole", **kw))
    save = saving.save_weights

    def signalled(trainer, out, *a, **k):
        if trainer.step == trainer.total_steps:
            os.kill(os.getpid(), signal.SIGTERM)
        return save(trainer, out, *a, **k)

    monkeypatch.setattr(saving, "save_weights", signalled)
    out = tmp_path / "run"
    with _signals_at_their_defaults(), pytest.raises(Terminated):
        run_sft(_cfg(task, out, **kw))
    assert json.loads((out / "best" / "best.json").read_text())["step"] == 3
    assert (f"prefopt: stopped by SIGTERM in the final evaluation at step 3 of 3; rerun with --resume to continue "
            f"from {out / 'checkpoints' / 'step-00000003'}\n") in capsys.readouterr().err
    monkeypatch.undo()
    assert run_sft(_cfg(task, out, resume=True, **kw))["resumed_from_step"] == 3
    whole, resumed = (load_file(d / "final" / "adapter_model.safetensors") for d in (tmp_path / "whole", out))
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


def _noise(trainer):
    """An evaluator that draws from torch's generator (as sampling would)."""
    import torch

    return {"noise": torch.rand(()).item()}


def _by_step(folder):
    """The logged losses and eval metrics, one record per step (a step whose evaluation a signal
    put off to the resume has two lines: its training's and its evaluation's)."""
    from prefopt.train.metrics import read_metrics

    merged = {}
    for r in read_metrics(folder):
        merged.setdefault(r["step"], {}).update({k: v for k, v in r.items() if k.startswith(("eval_", "loss"))})
    return merged


@pytest.mark.parametrize("how, where", [("TERM", "evaluation"), ("INT", "evaluation"), ("TERM", "step")])
def test_a_signal_before_or_in_an_evaluation_during_the_run_does_not_wait_for_it(task, tmp_path, capfd, monkeypatch,
                                                                                    how, where):
    """An evaluation after a step (eval_every; minutes where evaluators generate answers) ran to its
    end before a signal was acted on, past a scheduler's grace period. Now one process stops at
    once: the step's checkpoint says its evaluation is owed, with the random generators as before
    it, and the resume evaluates first and ends as an uninterrupted run: the same weights, best/,
    and metrics, a drawing evaluator's included."""
    import os

    import torch
    from safetensors.torch import load_file

    from prefopt.train.loop import Trainer
    from prefopt.train.stop_signal import Terminated

    kw = dict(max_steps=6, eval_fraction=0.25, eval_every=2, best_metric="eval_loss", lora_dropout=0.1)
    run_sft(_cfg(task, tmp_path / "whole", **kw), evaluators=[_noise])
    evaluate, train_step, evaluated = Trainer.evaluate, Trainer.train_step, []

    def in_evaluation(self):
        evaluated.append(self.step)
        if self.step == 4:
            torch.rand(3)  # the generators move before the signal lands
            os.kill(os.getpid(), getattr(signal, f"SIG{how}"))
            raise AssertionError("not reached")
        return evaluate(self)

    def in_step(self, i):
        if i == 3:  # the step that ends at 4: it finishes, its evaluation is not begun
            os.kill(os.getpid(), signal.SIGTERM)
        return train_step(self, i)

    if where == "step":
        monkeypatch.setattr(Trainer, "train_step", in_step)
        monkeypatch.setattr(Trainer, "evaluate", lambda self: evaluated.append(self.step) or evaluate(self))
    else:
        monkeypatch.setattr(Trainer, "evaluate", in_evaluation)
    out = tmp_path / "run"
    with _signals_at_their_defaults(), pytest.raises(Terminated if how == "TERM" else KeyboardInterrupt):
        run_sft(_cfg(task, out, **kw), evaluators=[_noise])
    assert evaluated == ([0, 2, 4] if where == "evaluation" else [0, 2])
    ckpt = out / "checkpoints" / "step-00000004"
    assert json.loads((ckpt / "trainer_state.json").read_text())["eval_owed"] is True
    what = "stopped by SIGTERM" if how == "TERM" else "interrupted"
    assert (f"prefopt: {what} at step 4 of 6, before its evaluation; rerun with --resume to continue from {ckpt}\n"
            in capfd.readouterr().err)
    if how == "TERM" and where == "evaluation":  # in the owed evaluation, on the resume: it stops there, still owed
        with _signals_at_their_defaults(), pytest.raises(Terminated):  # (it raised _Killed: SIGTERM's default)
            run_sft(_cfg(task, out, resume=True, **kw), evaluators=[_noise])
        assert evaluated == [0, 2, 4, 4]
        assert json.loads((ckpt / "trainer_state.json").read_text())["eval_owed"] is True
        assert (f"prefopt: stopped by SIGTERM in the evaluation that step 4's checkpoint owes; rerun with --resume "
                f"to evaluate and continue from {ckpt}\n") in capfd.readouterr().err
    monkeypatch.undo()
    assert run_sft(_cfg(task, out, resume=True, **kw), evaluators=[_noise])["resumed_from_step"] == 4

    assert _by_step(out) == _by_step(tmp_path / "whole") and "eval_noise" in _by_step(out)[4]
    for name in ("final", "best"):
        whole, resumed = (load_file(d / name / "adapter_model.safetensors") for d in (tmp_path / "whole", out))
        assert all(torch.equal(whole[k], resumed[k]) for k in whole)


def test_an_owed_evaluation_that_runs_out_of_patience_stops_the_resumed_run_there(task, tmp_path, monkeypatch):
    """The evaluation a signal put off is the one where patience ends the run (step 3 here): the
    resume evaluates, stops early as the uninterrupted run did, and trains no step more."""
    import os

    import torch
    from safetensors.torch import load_file

    from prefopt.train.loop import Trainer
    from prefopt.train.stop_signal import Terminated

    kw = dict(max_steps=8, lr=3e-2, eval_fraction=0.25, eval_every=1, best_metric="eval_loss", patience=1,
              lora_dropout=0.1)
    whole = run_sft(_cfg(task, tmp_path / "whole", **kw))
    assert whole["stopped_early"]["step"] == 3
    evaluate = Trainer.evaluate

    def in_evaluation(self):
        if self.step == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return evaluate(self)

    monkeypatch.setattr(Trainer, "evaluate", in_evaluation)
    out = tmp_path / "run"
    with _signals_at_their_defaults(), pytest.raises(Terminated):
        run_sft(_cfg(task, out, **kw))
    monkeypatch.undo()
    steps = []
    resumed = run_sft(_cfg(task, out, resume=True, **kw), callbacks=[lambda tr, step, m: steps.append(step)])
    assert steps == [] and resumed["stopped_early"] == whole["stopped_early"] and resumed["best"]["step"] == 2
    assert _by_step(out) == _by_step(tmp_path / "whole")
    for name in ("final", "best"):
        a, b = (load_file(d / name / "adapter_model.safetensors") for d in (tmp_path / "whole", out))
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_second_ctrl_c_stops_at_once(task, tmp_path, capsys):
    import os

    def twice(trainer, step, metrics):
        if step == 2:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)  # raises here, before the step's end is reached
            raise AssertionError("not reached")

    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            run_sft(_cfg(task, tmp_path / "run", max_steps=4), callbacks=[twice])
    finally:
        signal.signal(signal.SIGINT, before)
    assert "interrupted at step 2 of 4; it saved no checkpoint (set --save-every)" in capsys.readouterr().err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_the_first_ctrl_c_line_reaches_fd_2_when_the_signal_lands_inside_a_write(capfd, monkeypatch):
    import sys

    from prefopt.train.stop_signal import _say

    class Busy:  # what a buffered stream does with a write nested in its own
        def write(self, text):
            raise RuntimeError("reentrant call inside <_io.BufferedWriter name='<stderr>'>")

    monkeypatch.setattr(sys, "stderr", Busy())
    _say("prefopt: Ctrl-C\n")
    monkeypatch.undo()
    assert capfd.readouterr().err == "prefopt: Ctrl-C\n"


def test_the_cli_exits_143_on_sigterm(task, tmp_path, monkeypatch, capsys):
    import os

    from prefopt.train.sft import SFTTrainer

    original, calls = SFTTrainer.train_step, []

    def step(self, i):
        calls.append(i)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # during the first step: it finishes, then the run stops
        return original(self, i)

    monkeypatch.setattr(SFTTrainer, "train_step", step)
    model_dir, data = task
    out = tmp_path / "cli"
    assert main(["sft", "--model", str(model_dir), "--data", str(data), "--output-dir", str(out), "--max-steps", "3",
                 "--no-progress"]) == 143
    assert calls == [0] and (out / "checkpoints" / "step-00000001").is_dir()
    assert "stopped by SIGTERM at step 1 of 3" in capsys.readouterr().err


def test_the_cli_exits_130_on_ctrl_c(task, tmp_path, monkeypatch):
    import prefopt.train

    def interrupted(config, callbacks=()):
        raise KeyboardInterrupt

    monkeypatch.setattr(prefopt.train, "run_sft", interrupted)
    model_dir, data = task
    assert main(["sft", "--model", str(model_dir), "--data", str(data), "--output-dir", str(tmp_path / "cli")]) == 130


def test_resume_on_changed_data_is_refused(task, tmp_path):
    """The settings match but the examples do not: the data file was edited (or it tokenizes
    differently). The checkpoint's data digest says so, where the resume was silently inexact."""
    _, data = task
    copy = tmp_path / "moved" / "sft.jsonl"
    copy.parent.mkdir()
    copy.write_text(data.read_text())
    out = tmp_path / "run"
    run_sft(_cfg(task, out, save_every=1, max_steps=3, data=str(copy)))
    lines = copy.read_text().splitlines()
    copy.write_text("\n".join([*lines[:5], lines[5].replace("Code", "Triage code"), *lines[6:]]) + "\n")
    with pytest.raises(ValueError, match=r"other training data \(16 examples then and now, but other tokens\): the "
                                         r"data changed \(a file edited, or files named in another order\).*chat_date"):
        run_sft(_cfg(task, out, resume=True, data=str(copy), max_steps=4))
    copy.write_text(copy.read_text() + lines[0] + "\n")
    with pytest.raises(ValueError, match=r"\(16 examples then, 17 now\)"):
        run_sft(_cfg(task, out, resume=True, data=str(copy), max_steps=4))
    summary = run_sft(_cfg(task, out, resume=True, max_steps=4))  # the same examples, from where they first were
    assert summary["resumed_from_step"] == 2


def test_data_digest_sees_tokens_and_order_and_skips_unknown_items():
    from prefopt.data.preference import PairExample
    from prefopt.data.sft import TokenizedExample
    from prefopt.train.data_digest import data_digest

    a, b = TokenizedExample([1, 2, 3], [-100, 2, 3]), TokenizedExample([1, 2, 4], [-100, 2, 4])
    d = data_digest([a, b])
    assert d["examples"] == 2
    assert data_digest([TokenizedExample([1, 2, 3], [-100, 2, 3]), b]) == d  # by value
    assert data_digest([b, a]) != d  # the order is what a resumed run replays
    assert data_digest([a, TokenizedExample([1, 2, 4], [-100, -100, 4])]) != d  # labels count
    assert data_digest([PairExample(a, b)]) != data_digest([PairExample(b, a)])
    assert data_digest([{"input_ids": [1, 2], "note": "x"}]) != data_digest([{"input_ids": [1, 2], "note": "y"}])
    assert data_digest([object()]) is None  # no reproducible bytes: unchecked rather than refused


def test_a_run_resumed_on_another_day_shows_its_own_date(tmp_path, monkeypatch, capsys):
    """Llama 3.1's chat template prints today's date in every prompt. A run pins the day it
    started (``chat_date``, recorded in its checkpoints), so resuming it the next day renders the
    same tokens; with the clock's date the data digest would refuse the resume."""
    from tests._clock import DAY, move_to_next_day, set_today
    from tests._tiny import LLAMA31, build_hf_model, build_tokenizer
    from tests.train._fixtures import COLORS

    model_dir = tmp_path / "model"
    build_hf_model(model_dir, tokenizer=False, initializer_range=0.1)
    build_tokenizer(model_dir, template=LLAMA31, bos="<|begin_of_text|>", eos="<|eot_id|>")
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Case {i}?", "completion": f"Code {COLORS[i % 4]}."}) + "\n"
                            for i in range(16)))
    out, today = tmp_path / "run", set_today(monkeypatch, DAY)
    run_sft(_cfg((model_dir, data), out, save_every=1, max_steps=3))
    assert (f"every example shows {today:%d %b %Y} (chat_date {today.isoformat()})" in capsys.readouterr().out)
    assert json.loads((out / "train_config.json").read_text())["chat_date"] == today.isoformat()

    tomorrow = move_to_next_day(monkeypatch)
    with pytest.raises(ValueError, match=rf"other settings \(chat_date: '{today.isoformat()}' -> '2020-01-01'\)"):
        run_sft(_cfg((model_dir, data), out, resume=True, max_steps=4, chat_date="2020-01-01"))
    assert json.loads((out / "train_config.json").read_text())["chat_date"] == today.isoformat()  # as it was
    assert run_sft(_cfg((model_dir, data), out, resume=True, max_steps=4))["resumed_from_step"] == 2
    run_sft(_cfg((model_dir, data), tmp_path / "new", max_steps=1))  # a new run: the new day
    assert json.loads((tmp_path / "new" / "train_config.json").read_text())["chat_date"] == tomorrow.isoformat()
    with pytest.raises(ValueError, match=r"chat_date must be a date as YYYY-MM-DD \(got '30/11/2026'\)"):
        _cfg((model_dir, data), tmp_path / "x", chat_date="30/11/2026")


def test_a_checkpoint_holds_no_pickle_and_its_optimizer_state_round_trips(task, tmp_path):
    """Weights, moments and RNG states in safetensors, the rest in JSON: nothing is unpickled on
    resume. The optimizer state read back equals the one written, tensor for tensor. A checkpoint
    from before 2026-11-30 (optimizer.pt, a pickle) is refused, not passed over, and the line the
    error gives converts it: the run then resumes from it."""
    import torch

    from prefopt.train.state import latest_checkpoint, read_optimizer, write_optimizer

    out = tmp_path / "O'Brien's run"  # (the line the error gives is quoted for any path)
    run_sft(_cfg(task, out, save_every=1, max_steps=3))
    ckpt = latest_checkpoint(out)
    assert sorted(p.suffix for p in ckpt.iterdir()) == [".json", ".json", ".safetensors", ".safetensors",
                                                       ".safetensors"]
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.8, 0.95), foreach=True)
    for _ in range(3):
        model(torch.randn(5, 3)).square().sum().backward()
        opt.step()
    sd = opt.state_dict()
    write_optimizer(sd, tmp_path)
    back = read_optimizer(tmp_path)
    assert back["param_groups"] == sd["param_groups"] and back["state"].keys() == sd["state"].keys()
    assert all(torch.equal(back["state"][i][k], v) for i, st in sd["state"].items() for k, v in st.items())
    fresh = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.8, 0.95), foreach=True)
    fresh.load_state_dict(back)
    assert fresh.param_groups[0]["betas"] == (0.8, 0.95)
    saved = read_optimizer(ckpt)
    (ckpt / "optimizer.safetensors").unlink()
    (ckpt / "optimizer.json").unlink()
    torch.save(saved, ckpt / "optimizer.pt")
    with pytest.raises(ValueError) as refused:
        run_sft(_cfg(task, out, save_every=1, max_steps=4, resume=True))
    message = str(refused.value)
    assert message.startswith(f"{ckpt} holds its optimizer state as optimizer.pt, a pickle written by prefopt "
                              "before 2026-11-30; prefopt reads no pickles")
    assert sorted(p.name for p in ckpt.iterdir()) == ["optimizer.pt", "rng-rank0.safetensors",
                                                     "trainable.safetensors", "trainer_state.json"]
    command = message.split("convert it once: ")[1].removesuffix(" and resume again")
    python, *rest = shlex.split(command)
    assert python == "python"
    subprocess.run([sys.executable, *rest], check=True)
    back = read_optimizer(ckpt)
    assert all(torch.equal(back["state"][i][k], v) for i, st in saved["state"].items() for k, v in st.items())
    run_sft(_cfg(task, out, save_every=1, max_steps=4, resume=True))
    step = json.loads((ckpt / "trainer_state.json").read_text())["step"]
    assert json.loads((out / "train_summary.json").read_text())["resumed_from_step"] == step > 0


def test_an_output_folder_that_cannot_be_written_is_refused_before_anything_loads(task, tmp_path, monkeypatch):
    """A file in the way, or a place nothing can be written (a read-only mount): said at once, with
    the folder, not as a bare errno after the model and data have loaded and training ran."""
    (tmp_path / "afile").write_text("x")
    loaded = []
    monkeypatch.setattr("prefopt.train.run.load_tokenizer", lambda *a: loaded.append(a))
    for out, error in [(tmp_path / "afile", "afile: is a file, not a folder"),
                       (tmp_path / "afile" / "run", "run: cannot be made: .*afile is a file")]:
        with pytest.raises(ValueError, match=error):
            run_sft(_cfg(task, out))

    def refuse(*a, **k):
        raise PermissionError(13, "Read-only file system")

    (tmp_path / "ro").mkdir()
    monkeypatch.setattr("prefopt.fileio.tempfile.TemporaryDirectory", refuse)
    with pytest.raises(ValueError, match=r"ro/run: cannot write in .*ro \(Read-only file system\)"):
        run_sft(_cfg(task, tmp_path / "ro" / "run"))
    assert loaded == [] and not (tmp_path / "ro" / "run").exists()


def test_a_run_keeps_its_chat_vars_when_resumed(tmp_path, capsys):
    """``--chat-vars`` (Qwen3's enable_thinking=false) reaches every example, is recorded in the
    run's settings and card, and a resume without it keeps the run's own (the data digest would
    refuse other text); a resume with others is refused, and a misspelt one stops the run before
    its folder is made."""
    from tests._tiny import THINKING, build_hf_model, build_tokenizer
    from tests.train._fixtures import COLORS

    model_dir = tmp_path / "model"
    build_hf_model(model_dir, tokenizer=False, initializer_range=0.1)
    build_tokenizer(model_dir, template=THINKING)
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Case {i}?", "completion": f"Code {COLORS[i % 4]}."}) + "\n"
                            for i in range(16)))
    out = tmp_path / "run"
    assert main(["sft", "--model", str(model_dir), "--data", str(data), "--output-dir", str(out), "--batch-size", "4",
                 "--max-steps", "3", "--save-every", "1", "--lr", "3e-3", "--lora-r", "4", "--lora-alpha", "8",
                 "--no-progress", "--chat-vars", "enable_thinking=false"]) == 0
    assert "every example is rendered with enable_thinking=false" in capsys.readouterr().out
    assert json.loads((out / "train_config.json").read_text())["chat_vars"] == {"enable_thinking": False}
    assert "| `chat_vars` | `enable_thinking=false` |" in (out / "final" / "README.md").read_text()

    assert run_sft(_cfg((model_dir, data), out, resume=True, max_steps=4))["resumed_from_step"] == 2
    assert json.loads((out / "train_config.json").read_text())["chat_vars"] == {"enable_thinking": False}
    with pytest.raises(ValueError, match=r"other settings \(chat_vars: \{'enable_thinking': False\} -> \{\}\)"):
        run_sft(_cfg((model_dir, data), out, resume=True, max_steps=5, chat_vars={}))
    # a refused resume leaves the run's record as it was (it wrote the refused settings there before)
    assert json.loads((out / "train_config.json").read_text())["chat_vars"] == {"enable_thinking": False}
    run_sft(_cfg((model_dir, data), tmp_path / "new", max_steps=1))  # a new run: the template's own default
    assert json.loads((tmp_path / "new" / "train_config.json").read_text())["chat_vars"] is None
    with pytest.raises(ValueError, match="does not read 'thinking'"):
        run_sft(_cfg((model_dir, data), tmp_path / "typo", chat_vars=["thinking=false"]))
    assert not (tmp_path / "typo").exists()

    # its adapter used without them: said, with the flag that renders what it was trained on
    ask = ["generate", "--model", str(model_dir), "--adapter", str(out / "final"), "--prompt", "Case 1?", "--greedy",
           "--max-new-tokens", "2"]
    assert main(ask) == 0
    assert (f"{out / 'final'} was trained with chat variables enable_thinking=false, and these prompts are rendered "
            "with (none): it answers the prompts it was trained on; pass --chat-vars enable_thinking=false"
            ) in capsys.readouterr().err
    assert main(ask + ["--chat-vars", "enable_thinking=false"]) == 0 and "was trained with" not in capsys.readouterr().err
    new = ["generate", "--model", str(model_dir), "--adapter", str(tmp_path / "new" / "final"), "--prompt", "Case 1?",
           "--max-new-tokens", "2", "--chat-vars", "enable_thinking=false"]
    assert main(new) == 0 and "leave --chat-vars out" in capsys.readouterr().err


def test_a_checkpoint_folder_a_crash_left_before_its_rename_is_neither_resumed_nor_reused(task, tmp_path):
    """step-N.tmp holds every file before its rename; without ``latest`` (the crash came first)
    the newest complete checkpoint is resumed, not the .tmp one, and a save at that step again
    starts from an empty folder: a stale file (another rank's RNG state) does not pass into it."""
    from prefopt.train.state import latest_checkpoint

    out = tmp_path / "run"
    run_sft(_cfg(task, out, save_every=2, max_steps=5))  # checkpoints at steps 2 and 4
    root = out / "checkpoints"
    (root / "latest").unlink()
    stale = root / "step-00000006.tmp"
    shutil.copytree(root / "step-00000004", stale)
    (stale / "rng-rank1.safetensors").write_bytes(b"stale")
    assert latest_checkpoint(out) == root / "step-00000004"
    run_sft(_cfg(task, out, save_every=2, max_steps=7, resume=True))
    assert latest_checkpoint(out) == root / "step-00000006" and not stale.exists()
    assert not (root / "step-00000006" / "rng-rank1.safetensors").exists()


def test_a_damaged_checkpoint_is_passed_over_for_the_one_before_and_the_resume_stays_exact(task, tmp_path, capsys):
    """A checkpoint whose file was cut short (a disk that filled, a copy stopped halfway) failed the
    resume with safetensors' error: the one before it is resumed, with a warning naming the file,
    and the run ends where an uninterrupted one does. Checkpoints are taken by step, not by
    ``latest`` (a crash between the rename and ``latest`` leaves it naming the one before). With no
    whole checkpoint left, the refusal says why."""
    import torch
    from safetensors.torch import load_file

    from prefopt.train.state import latest_checkpoint, resume_point

    out = tmp_path / "run"
    run_sft(_cfg(task, out, save_every=2, max_steps=5))  # checkpoints at steps 2 and 4
    whole = load_file(out / "final" / "adapter_model.safetensors")
    root = out / "checkpoints"
    (root / "latest").write_text("step-00000002\n")
    assert latest_checkpoint(out) == root / "step-00000004"
    weights = root / "step-00000004" / "trainable.safetensors"
    size = weights.stat().st_size
    weights.write_bytes(weights.read_bytes()[: size // 2])
    assert resume_point(out) == (root / "step-00000002",
                                 [f"step-00000004: trainable.safetensors is cut short: {size // 2} bytes of {size}"])
    capsys.readouterr()
    assert run_sft(_cfg(task, out, save_every=2, max_steps=5, resume=True))["resumed_from_step"] == 2
    err = capsys.readouterr().err
    assert (f"prefopt: warning: checkpoint step-00000004: trainable.safetensors is cut short: {size // 2} bytes of "
            f"{size}; passed over for step-00000002\n") in err
    again = load_file(out / "final" / "adapter_model.safetensors")
    assert again.keys() == whole.keys() and all(torch.equal(again[k], whole[k]) for k in whole)
    assert resume_point(out) == (root / "step-00000004", [])  # saved again at step 4, whole

    (root / "step-00000004" / "trainer_state.json").write_bytes(b"\0" * 64)
    (root / "step-00000002" / "rng-rank0.safetensors").unlink()
    with pytest.raises(ValueError, match=r"whose checkpoints cannot be resumed \(step-00000004: trainer_state.json "
                                         r"cannot be read \(.*\); step-00000002: rng-rank0.safetensors is missing\): "
                                         r"pass --overwrite"):
        run_sft(_cfg(task, out, save_every=2, max_steps=5, resume=True))


def test_checkpoint_problem_reads_headers_and_json(tmp_path):
    """What makes a checkpoint unresumable is found from the files' headers and sizes alone."""
    import torch

    from prefopt.model.safetensors_io import file_problem, save_file_atomic
    from prefopt.train.state import checkpoint_problem

    f = tmp_path / "t.safetensors"
    save_file_atomic({"a": torch.ones(4), "b": torch.zeros(2, 3)}, f)
    data = f.read_bytes()
    assert file_problem(f) is None
    f.write_bytes(data + b"x")
    assert file_problem(f) == f"t.safetensors is longer than its header says: {len(data) + 1} bytes of {len(data)}"
    f.write_bytes(b"")
    assert file_problem(f) == "t.safetensors is empty"
    f.write_bytes(b"\0" * len(data))
    assert file_problem(f) == "t.safetensors: not a safetensors file (unreadable header)"
    f.write_bytes(b"\xff" * 16)
    assert file_problem(f) == "t.safetensors: not a safetensors file (header length 18446744073709551615)"
    assert file_problem(tmp_path / "none.safetensors") == "none.safetensors is missing"

    ckpt = tmp_path / "step-00000001"
    ckpt.mkdir()
    assert checkpoint_problem(ckpt) == "trainer_state.json is missing"
    (ckpt / "trainer_state.json").write_text('{"world": 2}')
    assert checkpoint_problem(ckpt) == "trainer_state.json holds no step"
    (ckpt / "trainer_state.json").write_text('{"step": 1, "world": 2}')
    assert checkpoint_problem(ckpt) == "optimizer.json is missing"
    (ckpt / "optimizer.json").write_text("{")
    assert checkpoint_problem(ckpt).startswith("optimizer.json cannot be read (")
    (ckpt / "optimizer.json").write_text("{}")
    for name in ("trainable", "rng-rank0", "rng-rank1", "optimizer"):
        assert checkpoint_problem(ckpt) == f"{name}.safetensors is missing"
        save_file_atomic({"x": torch.ones(1)}, ckpt / f"{name}.safetensors")
    assert checkpoint_problem(ckpt) is None
    (ckpt / "optimizer.json").unlink()
    (ckpt / "optimizer.safetensors").unlink()
    (ckpt / "optimizer.pt").write_bytes(b"old")  # before 2026-11-30: refused whole by resume_point, never read
    assert checkpoint_problem(ckpt) == "optimizer.json is missing"


def test_a_disk_too_small_for_the_runs_checkpoints_is_said_before_the_first_step(task, tmp_path, capsys, monkeypatch):
    """A run whose checkpoints would fill the disk stopped at a save, hours in: it is said before
    step 1, with what the run writes; the estimate is the size a checkpoint has on disk."""
    import re

    import prefopt.train.run_notes as run_notes

    out = tmp_path / "run"
    run_sft(_cfg(task, out, save_every=1, max_steps=3))  # plenty of room: nothing said
    assert "disk" not in capsys.readouterr().err
    monkeypatch.setattr(run_notes, "free_space", lambda path: 1000)
    run_sft(_cfg(task, tmp_path / "small", save_every=1, max_steps=3, save_total_limit=1))
    said = re.search(r"prefopt: warning: the disk under (.*) has 1 kB free, and this run writes about (\d+) kB there "
                     r"\(2 checkpoints at once of (\d+) kB each \(the weights and AdamW's two moments\), final/ of "
                     r"(\d+) kB\): it would stop when the disk fills\. Free some space or choose another --output-dir; "
                     r"lower --save-total-limit or save less often \(--save-every\)\n", capsys.readouterr().err)
    assert said and said[1] == str(tmp_path / "small")
    total, each, final = map(int, said.groups()[1:])
    assert abs(total - (2 * each + final)) <= 2 and abs(each - 3 * final) <= 1
    from safetensors.torch import load_file

    ckpt = out / "checkpoints" / "step-00000002"  # its tensors (the files' headers and RNG states are small beside)
    held = sum(t.nbytes for f in ("trainable", "optimizer") for t in load_file(ckpt / f"{f}.safetensors").values())
    assert abs(each * 1000 - held) <= 1000, (each, held)
