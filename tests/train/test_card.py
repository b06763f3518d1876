"""The model card in a run's final/: what the weights are, the data file by its SHA-256, the
settings that differ from the defaults, how the run went (the console's lines), how to use it."""
import hashlib
import json

import pytest

from prefopt import load_model
from prefopt.cli import main
from tests.train._fixtures import write_pairs, write_task


def _card(folder):
    text = (folder / "README.md").read_text()
    head, body = text.split("---\n")[1], text.split("---\n", 2)[2]
    return head, body


def test_an_sft_adapter_says_what_trained_it(tmp_path, capsys):
    model_dir, data = write_task(tmp_path, n=16)
    out = tmp_path / "sft"
    assert main(["sft", "--model", str(model_dir), "--data", str(data), "--output-dir", str(out), "--max-steps", "3",
                 "--batch-size", "4", "--lora-r", "4", "--lr", "1e-3", "--no-progress", "--eval-fraction", "0.25",
                 "--eval-every", "1", "--best-metric", "eval_loss", "--lora-targets", "q_proj", "v_proj"]) == 0
    console = [x.removeprefix("prefopt: ") for x in capsys.readouterr().out.splitlines()]
    head, body = _card(out / "final")
    assert head == f"base_model: {model_dir}\nlibrary_name: peft\ntags:\n- prefopt\n- sft\n- lora\n"
    assert body.startswith(f"\n# LoRA adapter (r 4, alpha 32) for {model_dir}, trained with SFT\n")
    digest = hashlib.sha256(data.read_bytes()).hexdigest()
    assert f"- `data`: `{data.resolve()}` (SHA-256 `{digest}`)" in body
    assert "- 12 training examples, 4 for evaluation (0.25 of the data held out); max_length 1024" in body
    table = [line for line in body.splitlines() if line.startswith("| `")]
    settings = {line.split("`")[1]: line.split("`")[3] for line in table}
    assert settings["lr"] == "0.001" and settings["lora_r"] == "4" and settings["max_steps"] == "3"
    assert settings["lora_targets"] == "q_proj, v_proj"  # as the command line gives it, not a Python list
    from prefopt.train.card import _shown

    assert _shown({"prompt": "Message | note", "chosen": "good"}) == "prompt=Message \\| note, chosen=good"
    assert "output_dir" not in settings and "eval_data" not in settings and "lora_dropout" not in settings  # default
    went = body.split("## How the run went\n\n")[1].split("\n\n")[0].splitlines()
    assert went and [x.removeprefix("- ") for x in went] == [x for x in console if x in body]
    assert went[0].startswith("- training loss ") and "- eval loss: " in went[1]
    assert went[-1].startswith("- trained on cpu: 3 steps in ") and ", peak " in went[-1]  # train_summary.json's
    assert f"prefopt generate --model {model_dir} --adapter THIS_FOLDER" in body and "clinical use" in body
    assert load_model(model_dir, adapter=out / "final") is not None  # the folder loads as before
    assert "(torch " in body and ", 3 steps); these are the last step's weights. The run's folder" in body
    best = json.loads((out / "best" / "best.json").read_text())  # the best evaluation's weights say so
    _, best_body = _card(out / "best")
    assert (f"these are the best evaluation's (eval_loss {best['value']:.4f} at step {best['step']}) weights."
            in best_body)
    assert best_body.split("## Training data")[1] == body.split("## Training data")[1]


def test_full_weights_and_dpo_after_sft_say_so(tmp_path):
    model_dir, data = write_task(tmp_path, n=8)
    assert main(["sft", "--model", str(model_dir), "--data", str(data), "--output-dir", str(tmp_path / "full"),
                 "--max-steps", "1", "--batch-size", "4", "--no-lora", "--no-progress"]) == 0
    head, body = _card(tmp_path / "full" / "final")
    assert "library_name: transformers" in head and "- lora" not in head
    assert f"# Full weights for {model_dir}, trained with SFT" in body and "--model THIS_FOLDER" in body
    assert json.loads((tmp_path / "full" / "final" / "config.json").read_text())  # still an HF model folder
    assert main(["sft", "--model", str(model_dir), "--data", str(data), "--output-dir", str(tmp_path / "sft"),
                 "--max-steps", "1", "--batch-size", "4", "--no-progress"]) == 0
    pairs = write_pairs(tmp_path / "pairs.jsonl", n=8)
    assert main(["dpo", "--model", str(model_dir), "--data", str(pairs), "--output-dir", str(tmp_path / "dpo"),
                 "--sft-adapter", str(tmp_path / "sft" / "final"), "--max-steps", "1", "--batch-size", "4",
                 "--loss", "ipo", "--beta", "0.5", "--no-progress"]) == 0
    head, body = _card(tmp_path / "dpo" / "final")
    assert head.endswith("tags:\n- prefopt\n- dpo\n- ipo\n- lora\n")
    assert "trained with ipo preference loss (DPO family), beta 0.5" in body
    assert (f"- trained on top of the SFT adapter `{(tmp_path / 'sft' / 'final').resolve()}`, whose update these "
            "weights include: load them on the base model alone") in body
    assert "- 8 training pairs, 0 for evaluation; max_length 1024" in body


def test_an_f_dpo_ld_dpo_and_wpo_run_says_so(tmp_path):
    model_dir, _ = write_task(tmp_path, n=8)
    pairs = write_pairs(tmp_path / "pairs.jsonl", n=8)
    assert main(["dpo", "--model", str(model_dir), "--data", str(pairs), "--output-dir", str(tmp_path / "dpo"),
                 "--max-steps", "1", "--batch-size", "4", "--f-divergence", "alpha_divergence", "--f-alpha", "0.3",
                 "--ld-alpha", "0.5", "--wpo", "--no-progress"]) == 0
    head, body = _card(tmp_path / "dpo" / "final")
    assert head.endswith("tags:\n- prefopt\n- dpo\n- sigmoid\n- lora\n- f-dpo\n- ld-dpo\n- wpo\n")
    assert ("trained with sigmoid preference loss (DPO family), beta 0.1, f-DPO with the alpha divergence (alpha 0.3), "
            "LD-DPO (tokens past the shorter answer's length weigh 0.5), WPO (each pair weighed by how likely the "
            "policy finds its answers)\n") in body
    assert "| `f_divergence` | `alpha_divergence` |" in body and "| `f_alpha` | `0.3` |" in body
    assert "| `wpo` | `True` |" in body


def test_a_merged_model_carries_its_adapters_card(tmp_path):
    model_dir, data = write_task(tmp_path, n=8)
    assert main(["sft", "--model", str(model_dir), "--data", str(data), "--output-dir", str(tmp_path / "sft"),
                 "--max-steps", "1", "--batch-size", "4", "--no-progress"]) == 0
    adapter = tmp_path / "sft" / "final"
    assert main(["merge", "--model", str(model_dir), "--adapter", str(adapter), "--output", str(tmp_path / "m"),
                 "--dtype", "bfloat16"]) == 0
    head, body = _card(tmp_path / "m")
    assert head == f"base_model: {model_dir}\nlibrary_name: transformers\ntags:\n- prefopt\n- merged\n"
    assert body.startswith(f"\n# {model_dir} with the adapter `{adapter.resolve()}` merged in\n")
    assert "weights saved in bfloat16" in body and 'prefopt generate --model THIS_FOLDER --prompt "..."' in body
    _, own = _card(adapter)  # the adapter's card follows, a level down, without its adapter-loading "Use"
    assert f"\n## LoRA adapter (r 16, alpha 32) for {model_dir}, trained with SFT\n" in body
    assert "\n### Training data\n" in body and "\n### Before anyone relies on it\n" in body
    assert "--adapter THIS_FOLDER" in own and "--adapter THIS_FOLDER" not in body and "### Use" not in body
    assert own.split("## Training data")[1].split("## Use")[0].replace("\n## ", "\n### ") in body
    assert load_model(tmp_path / "m") is not None
    from prefopt import save_merged  # from Python: the same card, the base named by the adapter's config

    save_merged(load_model(model_dir, adapter=adapter), tmp_path / "py")
    head, py = _card(tmp_path / "py")
    assert head.startswith(f"base_model: {model_dir}\n") and "weights saved in float32" in py
    assert py.split("The adapter's own card:")[1] == body.split("The adapter's own card:")[1]
    save_merged(load_model(model_dir), tmp_path / "plain")  # no adapter: nothing to say
    assert not (tmp_path / "plain" / "README.md").exists()


def test_a_windows_export_is_read_in_the_encoding_named_by_check_data_dpo_and_the_evaluations(tmp_path, capsys):
    """Excel's plain CSV on a Western-European Windows machine is cp1252, where "fièvre" is not
    UTF-8: each command that reads --data is told ``--encoding cp1252`` (dpo and sft through
    their config's ``encoding``), says so in its error, and records it (train_config.json, the
    model card, eval-pairs' and eval-nll's metrics.json)."""
    model_dir, _ = write_task(tmp_path, n=1)
    rows = [("Fièvre à 39 °C, code A. Triage ?", "urgent review", "routine visit"),
            ("Renouvellement, code B. Triage ?", "routine visit", "urgent review")] * 4
    data = tmp_path / "export.csv"
    data.write_bytes(("prompt;chosen;rejected\r\n" + "".join(";".join(r) + "\r\n" for r in rows)).encode("cp1252"))
    check = ["check-data", "--model", str(model_dir), "--data", str(data)]
    assert main(check) == 2
    assert ("export.csv:2: not utf-8 text (byte 0xe8 at column 3); save the file as UTF-8 (in Excel: Save As \"CSV "
            "UTF-8\"; or pass the .xlsx workbook itself), or name the encoding it was saved in (--encoding cp1252 for "
            "Excel's CSV on Western-European Windows; as cp1252, line 2 reads 'Fièvre "
            "à 39 °C, code A. Triage ?'...)") in capsys.readouterr().err
    assert main(check + ["--encoding", "cp1252"]) == 0
    assert "export.csv: preference pairs; 8 of 8 records kept" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # argparse's exit 2
        main(check + ["--encoding", "klingon"])
    assert "argument --encoding: encoding 'klingon': not one Python knows" in capsys.readouterr().err
    assert main(check + ["--task", "triage", "--encoding", "cp1252"]) == 2  # a task's file: its own option
    assert "--encoding is for a training file" in capsys.readouterr().err
    out = tmp_path / "dpo"
    assert main(["dpo", "--model", str(model_dir), "--data", str(data), "--encoding", "cp1252", "--output-dir",
                 str(out), "--max-steps", "1", "--batch-size", "4", "--no-progress"]) == 0
    assert json.loads((out / "train_config.json").read_text())["encoding"] == "cp1252"
    _, body = _card(out / "final")
    assert f"- `data`: `{data.resolve()}` (read as cp1252, SHA-256 `" in body
    assert main(["eval-pairs", "--model", str(model_dir), "--adapter", str(out / "final"), "--data", str(data),
                 "--encoding", "cp1252", "--output", str(tmp_path / "eval")]) == 0
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["encoding"] == "cp1252"
    notes = tmp_path / "notes.csv"
    notes.write_bytes("prompt;completion\r\nFièvre à 39 °C ?;Urgent.\r\n".encode("cp1252"))
    assert main(["eval-nll", "--model", str(model_dir), "--data", str(notes), "--encoding", "cp1252", "--output",
                 str(tmp_path / "nll")]) == 0
    assert json.loads((tmp_path / "nll" / "metrics.json").read_text())["encoding"] == "cp1252"
    assert main(["dpo", "--model", str(model_dir), "--data", str(data), "--encoding", "ascii", "--output-dir",
                 str(tmp_path / "ascii"), "--max-steps", "1", "--no-progress"]) == 2
    assert "export.csv:2: not ascii text (byte 0xe8 at column 3)" in capsys.readouterr().err
