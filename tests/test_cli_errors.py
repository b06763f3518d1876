"""How the command line fails (one line naming what went wrong, the exit code a shell expects,
and for a flag the command lacks, the flag it most likely meant), and what --version says."""
import pytest

from prefopt import cli
from prefopt.cli import main


def test_a_flag_the_command_lacks_names_the_one_meant(capsys):
    from prefopt.cli import main

    for argv, hints in [(["sft", "--learning-rate=1e-4", "--num-train-epochs", "2"],
                         ["--learning-rate: prefopt calls it --lr", "--num-train-epochs: prefopt calls it --epochs"]),
                        (["dpo", "--beat", "0.1"], ["--beat: did you mean '--beta'?"]),
                        (["sft", "--use-dora", "--use-rslora"],  # PEFT's names
                         ["--use-dora: prefopt calls it --lora-dora", "--use-rslora: prefopt calls it --lora-rslora"]),
                        (["generate", "--model", "m", "--prompt", "p", "--max-tokens", "5"],
                         ["--max-tokens: did you mean '--max-new-tokens'?"])]:
        with pytest.raises(SystemExit) as e:
            main(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and f"prefopt {argv[0]}: error: unrecognized arguments" in err
        for h in hints:
            assert h in err, (argv, err)
    with pytest.raises(SystemExit):  # a command with no --model: no near miss made of the dashes alone
        main(["stack-adapters", "--model", "m", "a", "b", "c"])
    err = capsys.readouterr().err
    assert "unrecognized arguments: --model" in err and "did you mean" not in err, err
    with pytest.raises(SystemExit):
        main(["sft", "--model", "m", "stray"])
    assert "unrecognized arguments: stray" in capsys.readouterr().err


def _error(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    return capsys.readouterr().err


def test_a_file_or_model_folder_given_without_its_flag_is_named_with_the_flag(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pairs.jsonl").write_text("{}\n")
    (tmp_path / "my model").mkdir()
    (tmp_path / "my model" / "config.json").write_text("{}")
    err = _error(capsys, ["dpo", "pairs.jsonl", "--model", "m", "--output-dir", "o", "--learning-rate", "1e-5"])
    assert err.endswith("error: unrecognized arguments: pairs.jsonl --learning-rate 1e-5\n"
                        "  --learning-rate: prefopt calls it --lr\n  pairs.jsonl: give it as --data pairs.jsonl\n"), err
    assert "give it as --data train.csv" in _error(capsys, ["sft", "--model", "m", "train.csv"])  # named as data is
    # argparse stops at a missing required flag before it lists the words no flag took: the hint comes all the same
    err = _error(capsys, ["eval", "my model", "--task", "portal"])
    assert "the following arguments are required: --output" in err and "give it as --model 'my model'" in err, err
    # a flag's own values, a flag argparse takes by its start (--mod, --dat), or the flag given already: no hint
    for argv in (["sft", "--model", "m", "--eval-data", "pairs.jsonl", "--lr", "-1", "stray"],
                 ["sft", "--mod", "m", "--dat", "pairs.jsonl", "x.jsonl", "--no-lora", "stray"],
                 ["eval", "--mod", "my model", "--task", "portal"],
                 ["sft", "--model", "m", "x" * 5000]):  # a name too long for the filesystem: no traceback
        err = _error(capsys, argv)
        assert "give it as" not in err and "did you mean" not in err, (argv, err)


@pytest.mark.parametrize("error, code, line", [
    (OSError(28, "No space left on device", "/runs/x/checkpoints/step-4"), 2,
     "prefopt generate: error: [Errno 28] No space left on device: '/runs/x/checkpoints/step-4'\n"),
    (PermissionError(13, "Permission denied", "/data/notes.csv"), 2,
     "prefopt generate: error: [Errno 13] Permission denied: '/data/notes.csv'\n"),
    (BrokenPipeError(32, "Broken pipe"), 141, ""),
    (__import__("torch").OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB. GPU 0 has a total capacity "
                                          "of 79.19 GiB of which 1.03 GiB is free. Including non-PyTorch memory, ..."),
     2, "prefopt generate: error: out of memory (CUDA out of memory. Tried to allocate 8.00 GiB. GPU 0 has a total "
        "capacity of 79.19 GiB of which 1.03 GiB is free)\n"),
])
def test_an_os_error_is_one_line_and_a_closed_pipe_is_quiet(monkeypatch, capsys, error, code, line):
    """A full disk, an unreadable file or a GPU out of memory mid-command: one line with the path
    (or what to change; PREFOPT_DEBUG=1: the traceback); ``| head`` closing the pipe: exit 141 and
    nothing on stderr. Any other RuntimeError keeps its traceback (a bug to report)."""
    def fail(args):
        raise error

    monkeypatch.setattr(cli, "_generate", fail)
    if code == 141:  # what main does to stdout after a closed pipe, made harmless under pytest's capture
        monkeypatch.setattr(cli.os, "dup2", lambda *a: None)
        monkeypatch.setattr(cli.os, "open", lambda *a: None)
        monkeypatch.setattr(cli.sys.stdout, "fileno", lambda: 1, raising=False)
    assert main(["generate", "--model", "m", "--prompt", "p"]) == code
    assert capsys.readouterr().err == line
    monkeypatch.setenv("PREFOPT_DEBUG", "1")
    if code == 2:
        with pytest.raises(type(error)):
            main(["generate", "--model", "m", "--prompt", "p"])
    monkeypatch.delenv("PREFOPT_DEBUG")
    monkeypatch.setattr(cli, "_generate", lambda args: [][1])
    with pytest.raises(IndexError):
        main(["generate", "--model", "m", "--prompt", "p"])

    def bug(args):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")
    monkeypatch.setattr(cli, "_generate", bug)
    with pytest.raises(RuntimeError, match="shapes"):
        main(["generate", "--model", "m", "--prompt", "p"])


def test_out_of_memory_in_a_command_with_batches_names_its_batch_size(monkeypatch, capsys, tmp_path):
    import torch

    import prefopt.evaluate.cli as evaluate_cli

    def oom(args):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB. GPU 0 has a total capacity of "
                                     "79.19 GiB of which 1.03 GiB is free. Including non-PyTorch memory, ...")

    monkeypatch.setattr(evaluate_cli, "_eval", oom)
    assert main(["eval", "--task", "portal", "--model", "m", "--output", str(tmp_path / "o"), "--batch-size",
                 "32"]) == 2
    assert capsys.readouterr().err.endswith("1.03 GiB is free); a smaller --batch-size (now 32) needs less\n")


def test_version_says_prefopt_and_torch(capsys):
    import prefopt

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.startswith(f"prefopt {prefopt.__version__} (torch 2.")


@pytest.mark.parametrize("argv, message", [
    (["eval", "--task", "portal", "--model", "m", "--output", "o", "--batch-size", "0"],
     "argument --batch-size: must be at least 1, got 0"),
    (["eval", "--task", "portal", "--model", "m", "--output", "o", "--limit", "0"], "argument --limit: must be at least 1"),
    (["eval", "--task", "portal", "--model", "m", "--output", "o", "--test", "1.5"],
     "argument --test: a fraction between 0 and 1 or a whole count, got 1.5"),
    (["predict", "--task", "portal", "--model", "m", "--data", "d", "--output", "o", "--max-new-tokens", "0"],
     "argument --max-new-tokens: must be at least 1"),
    (["generate", "--model", "m", "--prompt", "p", "--max-new-tokens", "many"],
     "argument --max-new-tokens: expected a whole number, got 'many'"),
])
def test_counts_below_one_are_refused_by_the_parser(argv, message, capsys, tmp_path, monkeypatch):
    """--batch-size 0 failed deep in the evaluation (range() arg 3 must not be zero); --limit 0 and
    --max-new-tokens 0 wrote metrics of nothing."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
