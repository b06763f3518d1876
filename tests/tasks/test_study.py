"""``prefopt study``: one compare run per dataset found under a data root, one table of them all."""
import json
from pathlib import Path

import pytest

from prefopt.cli import main
from prefopt.evaluate.seeds import pooled_line, seed_folder
from prefopt.evaluate.stats import p_text
from prefopt.evaluate.study import ARMS
from prefopt.train.cost import duration_text
from tests import _formats as formats
from tests._tiny import build_hf_model, build_tokenizer

TINY = {"max_train": 8, "test": 4, "sft_steps": 2, "dpo_steps": 2, "batch_size": 2, "max_length": 256,
        "eval_batch_size": 8}


def _root(tmp_path):
    """A data root laid out as ../shared/data with synthetic rows in five of the seven datasets'
    formats (PubMedQA and ACI-Bench absent)."""
    root = tmp_path / "data"
    paths = {a.task: root / a.data for a in ARMS if a.data}
    for p in paths.values():
        p.parent.mkdir(parents=True, exist_ok=True)
    formats.write_abstracts(paths["medical_abstracts"], 14)
    formats.write_uci(paths["uci_heart"], 16)
    formats.write_jsonl(paths["medqa"], formats.medqa_rows(14))
    formats.write_jsonl(paths["meqsum"], formats.meqsum_rows(14))
    formats.write_ktas(paths["ktas"], 15)
    return root, paths


@pytest.mark.slow
def test_study_runs_every_dataset_present_and_tabulates_them(tmp_path, capsys):
    model = tmp_path / "tiny"
    build_hf_model(model, max_position_embeddings=4096)
    root, paths = _root(tmp_path)
    good_ktas = paths["ktas"].read_bytes()
    paths["ktas"].write_bytes(good_ktas.replace(b";diagnosis 3;", b";diagnosis 3;;"))  # a row with a cell too many
    out = tmp_path / "study"
    argv = ["study", "--model", str(model), "--output", str(out), "--data-root", str(root), "--n-resamples", "200",
            *[a for k, v in TINY.items() for a in ("--set", f"{k}={v}")]]
    assert main(argv) == 1  # one arm failed; the others ran
    log = capsys.readouterr().out
    assert "prefopt study: 5 of 5: portal" in log and "prefopt study: ktas failed: DataError: " in log
    assert f"prefopt study: pubmedqa not run: no {root / 'clinical_reasoning/pubmedqa/ori_pqal.json'}\n" in log
    assert log.index("not run: no") < log.index("prefopt study: 1 of 5")  # said before the hours of work
    assert log.index("ktas failed") < log.index("prefopt study: 1 of 5")  # its data checked before any task trains
    assert "prefopt study: 5 ran, 1 failed, 2 not run" in log
    study = json.loads((out / "study.json").read_text())
    status = {r["task"]: r["status"] for r in study["arms"]}
    assert status == {"medical_abstracts": "ran", "uci_heart": "ran", "medqa": "ran", "pubmedqa": "not run",
                      "meqsum": "ran", "aci_bench": "not run", "ktas": "failed", "portal": "ran"}
    arms = {r["task"]: r for r in study["arms"]}
    assert "more cells than the header" in arms["ktas"]["why"]
    assert arms["pubmedqa"]["why"] == f"no {root / 'clinical_reasoning/pubmedqa/ori_pqal.json'}"
    for task in ("medical_abstracts", "uci_heart", "medqa", "meqsum", "portal"):  # each row is its run's report
        report = json.loads((out / task / "report.json").read_text())
        row = arms[task]
        assert row["n_test"] == report["n_test"] and row["metric"] == report["metric"]
        assert row["dpo"]["primary"] == report["stages"]["dpo"]["primary"]
        assert row["dpo_vs_sft"]["p_value"] == report["comparisons"]["sft->dpo"]["primary"]["p_value"]
        assert row["sft_vs_base"]["se"] == report["comparisons"]["base->sft"]["primary"]["se"]  # for pooling elsewhere
        assert row["verdict"] == report["comparisons"]["sft->dpo"]["verdict"]
    assert arms["meqsum"]["metric"] == "rougeL" and arms["medqa"]["metric"] == "accuracy"
    md = (out / "study.md").read_text()
    main_md, sure_md = md.split("How sure is each stage", 1)
    sure_md, cost_md = sure_md.split("What each run took on cpu", 1)
    sure_md, calibrated_md = sure_md.split("Are the stages' label probabilities calibrated?", 1)
    table = [line for line in main_md.splitlines() if line.startswith("| ") and "`" in line]
    assert [line.split("`")[1] for line in table] == ["medical_abstracts", "uci_heart", "medqa", "meqsum", "portal"]
    # confidence: every task whose answers are labels, a row per field, as its report.json has it (not meqsum)
    sure = [[c.strip() for c in line.split("|")[1:-1]] for line in sure_md.splitlines() if line.startswith("| `")]
    assert [(r[0], r[1]) for r in sure] == [("`medical_abstracts`", "label"), ("`uci_heart`", "label"),
                                            ("`medqa`", "answer"), ("`portal`", "urgency"), ("`portal`", "staff")]
    counted = 0  # AUROCs over fewer than all answers, which say over how many
    for r in sure:
        report = json.loads((out / r[0].strip("`") / "report.json").read_text())
        c = [report["stages"][s]["metrics"]["confidence"][r[1]] for s in ("base", "sft", "dpo")]
        t = report["comparisons"]["sft->dpo"]["confidence_auroc"][r[1]]  # SFT+DPO's named AUROC against SFT's
        tested = "—" if t is None else (f"{t['delta']:+.3f} [{t['ci'][0]:+.3f}, {t['ci'][1]:+.3f}], "
                                        f"p {p_text(t).lstrip('= ')}")
        n = report["n_test"]
        aurocs = ["—" if x["auroc_named"] is None else f"{x['auroc_named']:.3f}" for x in c]
        aurocs = [a if x["named"] == 1 else f"{a} ({round(x['named'] * n)} of {n} named)" for a, x in zip(aurocs, c)]
        assert r[2:] == aurocs + [tested] + [f"{x['accuracy_likeliest']:.3f}" for x in c]
        counted += sum(x["named"] < 1 for x in c)
        assert arms[r[0].strip("`")]["confidence"]["dpo"][r[1]]["auroc"] == c[2]["auroc"]
    assert counted and "named)" in sure_md
    # calibration: the same tasks and fields, each stage's Brier and ECE and SFT+DPO's Brier tested against SFT's
    calibrated = [[c.strip() for c in line.split("|")[1:-1]] for line in calibrated_md.splitlines()
                  if line.startswith("| `")]
    assert [r[:2] for r in calibrated] == [r[:2] for r in sure]
    for r in calibrated:
        report = json.loads((out / r[0].strip("`") / "report.json").read_text())
        c = [report["stages"][s]["metrics"]["confidence"][r[1]] for s in ("base", "sft", "dpo")]
        t = report["comparisons"]["sft->dpo"]["brier"][r[1]]
        assert r[2:] == ([f"{x['brier']:.3f}" for x in c]
                         + [f"{t['delta']:+.3f} [{t['ci'][0]:+.3f}, {t['ci'][1]:+.3f}], p {p_text(t).lstrip('= ')}"]
                         + [f"{x['ece']:.3f}" for x in c])
        assert t["delta"] == pytest.approx(c[2]["brier"] - c[1]["brier"])
    # what each run took: every task that ran, its stages' figures as its report.json has them
    cost = [[c.strip() for c in line.split("|")[1:-1]] for line in cost_md.splitlines() if line.startswith("| `")]
    assert [r[0] for r in cost] == [line.split("|")[2].strip() for line in table]
    for r in cost:
        report = json.loads((out / r[0].strip("`") / "report.json").read_text())
        sft, dpo = (report["training"][s]["cost"] for s in ("sft", "dpo"))
        assert r[1] == duration_text(arms[r[0].strip("`")]["seconds"])
        assert r[2].startswith(f"{sft['total_steps']} steps in ") and r[4].startswith(f"{dpo['total_steps']} steps in ")
        assert "reference_fill_seconds" in dpo  # compare's DPO stage fills its reference cache first (tiny: 0.0 s)
        assert r[3] == f"{sft['peak_mem_mb']:.0f}" and r[5] == f"{dpo['peak_mem_mb']:.0f}"
        assert r[6] == f"{dpo['peak_mem_mb'] / sft['peak_mem_mb']:.2f}"
    assert "confidence" not in arms["meqsum"]
    assert "| triage (synthetic) | `portal` | (as KTAS) |" in md and "F1 0.63 → 0.98 with SFT" in md
    assert "- `ktas`: DataError: " in md and "more cells than the header" in md and "- `aci_bench`: no " in md

    assert main(argv + ["--tasks", "portal"]) == 0  # KTAS's failure was an earlier command's: kept in the table
    assert "prefopt study: 1 ran, 0 failed, 0 not run" in capsys.readouterr().out
    assert "- `ktas`: DataError: " in (out / "study.md").read_text()

    paths["ktas"].write_bytes(good_ktas)  # fixed: the rerun trains only KTAS
    assert main(argv) == 0
    log = capsys.readouterr().out
    assert log.count("base: reusing") == 5 and "prefopt study: 6 ran, 0 failed, 2 not run" in log
    whole = json.loads((out / "study.json").read_text())
    assert {r["task"] for r in whole["arms"] if r["status"] == "ran"} == \
        {"medical_abstracts", "uci_heart", "medqa", "meqsum", "ktas", "portal"}

    capsys.readouterr()
    assert main(argv + ["--tasks", "ktas"]) == 0  # one task again: the table keeps the others' rows
    assert "prefopt study: 1 ran, 0 failed, 0 not run" in capsys.readouterr().out  # this command's tasks
    again = json.loads((out / "study.json").read_text())
    assert [r["task"] for r in again["arms"]] == [r["task"] for r in whole["arms"]]
    assert [r for r in again["arms"] if r["task"] != "ktas"] == [r for r in whole["arms"] if r["task"] != "ktas"]
    assert (out / "study.md").read_text().split("How sure")[0].count("| `") == 6
    capsys.readouterr()
    assert main(argv + ["--tasks", "portal", "--n-resamples", "300"]) == 0  # other settings: a new table
    assert f"held a study made with other settings; its table is kept in {out / 'earlier' / '1'}" in \
        capsys.readouterr().out
    assert json.loads((out / "earlier" / "1" / "study.json").read_text()) == again
    assert [r["task"] for r in json.loads((out / "study.json").read_text())["arms"]] == ["portal"]


def test_study_refuses_bad_settings_before_any_task_runs(tmp_path, capsys):
    out = tmp_path / "study"
    assert main(["study", "--model", "m", "--output", str(out), "--tasks", "medqa,triage"]) == 2
    assert "study tasks: unknown triage; choose from medical_abstracts," in capsys.readouterr().err
    assert main(["study", "--model", "m", "--output", str(out), "--tasks", "medqa"]) == 2  # no --data-root
    assert "study: no task to run (medqa: needs --data-root)" in capsys.readouterr().err
    assert main(["study", "--model", "m", "--output", str(out), "--set", "sft_stepz=3"]) == 2
    assert "unknown compare settings ['sft_stepz']" in capsys.readouterr().err
    # a --data-root that is not there, or holds none of the datasets, ran the bundled portal task alone
    assert main(["study", "--model", "m", "--output", str(out), "--data-root", str(tmp_path / "typo")]) == 2
    assert f"--data-root {tmp_path / 'typo'}: no such folder" in capsys.readouterr().err
    (tmp_path / "shared" / "data").mkdir(parents=True)
    assert main(["study", "--model", "m", "--output", str(out), "--data-root", str(tmp_path / "shared")]) == 2
    assert (f"--data-root {tmp_path / 'shared'}: none of the datasets is there (no {tmp_path / 'shared'}/"
            "text_classification/medical_abstracts/medical_tc.csv, ...); it is the folder that holds "
            "clinical_reasoning/, numeric_classification/, summarization/, text_classification/, triage/") \
        in capsys.readouterr().err
    model = build_tokenizer(tmp_path / "chatml")  # a switch its template does not read: no arm runs
    assert main(["study", "--model", str(model), "--output", str(out), "--tasks", "portal", "--chat-vars",
                 "enable_thinking=false"]) == 2
    assert "does not read 'enable_thinking'" in capsys.readouterr().err
    assert not out.exists()


def test_a_p_value_of_0_is_shown_at_the_resamples_resolution():
    """As the report does: p = 0 from 200 resamples is "< 0.005", not the default's "< 0.0005"."""
    from prefopt.evaluate.study import study_markdown

    vs = {"delta": 0.25, "ci": [0.1, 0.4], "p_value": 0.0, "n_resamples": 200}
    row = {"task": "ktas", "kind": "triage", "status": "ran", "study": "F1 0.58 → 0.74", "n_test": 60,
           "metric": "macro_f1", "base": {"primary": 0.1}, "sft": {"primary": 0.35}, "dpo": {"primary": 0.6},
           "sft_vs_base": vs, "dpo_vs_sft": {**vs, "p_value": 0.0123}, "verdict": "**Yes**"}
    md = study_markdown({"model": "m", "data_root": "d", "settings": {}, "arms": [row]})
    assert "| 0.100 | 0.350 | 0.600 | +0.250, p < 0.005 | +0.250 [+0.100, +0.400], p 0.0123 |" in md


def test_a_row_over_seeds_whose_splits_held_different_numbers_of_test_items_gives_the_range():
    """Each seed draws its own split: UCI heart's three seeds held 61, 60 and 60 test items."""
    from prefopt.evaluate.study import study_markdown

    vs = {"delta": 0.25, "ci": [0.1, 0.4], "p_value": 0.0, "n_resamples": 200}
    row = {"task": "uci_heart", "kind": "numeric classification", "status": "ran", "study": "—", "n_test": 60,
           "n_test_seeds": [61, 60, 60], "metric": "macro_f1", "base": {"primary": 0.1}, "sft": {"primary": 0.35},
           "dpo": {"primary": 0.6}, "sft_vs_base": vs, "dpo_vs_sft": vs, "verdict": "no"}
    md = study_markdown({"model": "m", "data_root": "d", "settings": {}, "arms": [row]})
    assert "| `uci_heart` | — | 60-61 | macro_f1 |" in md
    md = study_markdown({"model": "m", "data_root": "d", "settings": {}, "arms": [{**row, "n_test_seeds": [60] * 3}]})
    assert "| `uci_heart` | — | 60 | macro_f1 |" in md
    pooled = {"delta": -0.12, "ci": [-0.2, -0.04], "p_value": 0.012}  # (seeds' pooled figures: no resamples)
    cal = {"brier": {"sft->dpo": {"heart_disease": {"delta": 0.08, "ci": [0.05, 0.11], "p_value": 0.00001}}},
           "calibrated": {"dpo": {"heart_disease": pooled}}, "temperatures": {"sft": [0.8, 0.9, 1.1],
                                                                            "dpo": [3.2, 2.5, 4.0]}}
    md = study_markdown({"model": "m", "data_root": "d", "settings": {}, "arms": [{**row, "calibration": cal}]})
    assert ("| `uci_heart` | heart_disease | +0.080 [+0.050, +0.110], p < 0.0001 | 0.80, 0.90, 1.10 | — | 3.20, 2.50, "
            "4.00 | -0.120 [-0.200, -0.040], p 0.012 |") in md


def test_the_study_says_what_each_run_and_stage_took():
    """A row's cost (report.json's, from each stage's train_summary.json): a resumed stage counts
    the steps after the resume; a stage without a peak (not readable there) or without a record
    (trained before they were kept) shows a dash, and no ratio; a row without
    any is left out of the table."""
    from prefopt.evaluate.study import study_markdown

    vs = {"delta": 0.0, "ci": [-0.1, 0.1], "p_value": 1.0, "n_resamples": 200}
    base = {"kind": "triage", "status": "ran", "study": "(as KTAS)", "n_test": 60, "metric": "macro_f1",
            "base": {"primary": 0.1}, "sft": {"primary": 0.35}, "dpo": {"primary": 0.6}, "sft_vs_base": vs,
            "dpo_vs_sft": vs, "verdict": "no", "seconds": 3725.0}
    sft = {"total_steps": 60, "resumed_from_step": 0, "train_seconds": 95.3, "peak_mem_mb": 1000.0, "device": "cpu"}
    dpo = {"total_steps": 50, "resumed_from_step": 20, "train_seconds": 125.0, "peak_mem_mb": 1250.4,
           "device": "cpu", "reference_fill_seconds": 9.5}
    rows = [{**base, "task": "portal", "cost": {"sft": sft, "dpo": dpo}},
            {**base, "task": "ktas", "cost": {"dpo": {**dpo, "peak_mem_mb": None}}},
            {**base, "task": "medqa"}]
    md = study_markdown({"model": "m", "data_root": "d", "settings": {}, "arms": rows})
    assert ("What each run took on cpu: the whole `prefopt compare` (training, answering, scoring), and each "
            "training stage's steps and their wall time, and its peak memory in MiB since its training began (the "
            "process's resident memory from the start of training, the weights included).") in md
    dpo_time = "30 steps in 2 min 05 s (resumed at step 20), after 9.5 s computing the reference log-probs"
    assert f"| `portal` | 1 h 02 min | 60 steps in 1 min 35 s | 1000 | {dpo_time} | 1250 | 1.25 |" in md
    assert f"| `ktas` | 1 h 02 min | — | — | {dpo_time} | — | — |" in md
    assert md.split("What each run took")[1].count("| `") == 2
    assert "What each run took" not in study_markdown({"model": "m", "data_root": "d", "settings": {},
                                                      "arms": [rows[2]]})


def test_an_auroc_among_fewer_than_all_answers_says_among_how_many():
    """The portal base model named a label in 8 and 2 of 60 answers: its AUROCs say so; one over
    every answer does not, nor does a row from before ``named`` was kept."""
    from prefopt.evaluate.study import study_markdown

    vs = {"delta": 0.0, "ci": [-0.1, 0.1], "p_value": 1.0, "n_resamples": 200}

    def c(auroc, named):
        return {"auroc": auroc, "auroc_named": auroc, **({} if named is None else {"named": named}),
                "accuracy_likeliest": 0.5}

    row = {"task": "portal", "kind": "triage", "status": "ran", "study": "(as KTAS)", "n_test": 60,
           "metric": "macro_f1", "base": {"primary": 0.1}, "sft": {"primary": 0.35}, "dpo": {"primary": 0.6},
           "sft_vs_base": vs, "dpo_vs_sft": vs, "verdict": "no",
           "confidence": {"base": {"urgency": c(0.933, 8 / 60), "staff": c(None, 0.0)},
                          "sft": {"urgency": c(0.736, 1.0), "staff": c(0.7, None)},
                          "dpo": {"urgency": c(0.681, 55 / 60), "staff": c(0.651, 45 / 60)}},
           "auroc_dpo_vs_sft": {}}
    md = study_markdown({"model": "m", "data_root": "d", "settings": {}, "arms": [row]})
    assert "| `portal` | urgency | 0.933 (8 of 60 named) | 0.736 | 0.681 (55 of 60 named) | — |" in md
    assert "| `portal` | staff | — (0 of 60 named) | 0.700 | 0.651 (45 of 60 named) | — |" in md
    assert "calibrated?" not in md  # a run scored before Brier was kept: no calibration table
    for s, (brier, ece) in {"base": (0.9, 0.4), "sft": (0.4, 0.1), "dpo": (0.5, 0.2)}.items():
        for name in ("urgency", "staff"):
            row["confidence"][s][name].update(brier=brier, ece=ece)
    row["brier_dpo_vs_sft"] = {"urgency": {**vs, "delta": 0.1, "p_value": 0.03}, "staff": None}
    md = study_markdown({"model": "m", "data_root": "d", "settings": {}, "arms": [row]})
    assert ("| `portal` | urgency | 0.900 | 0.400 | 0.500 | +0.100 [-0.100, +0.100], p 0.03 | 0.400 | 0.100 | "
            "0.200 |") in md
    assert "| `portal` | staff | 0.900 | 0.400 | 0.500 | — | 0.400 | 0.100 | 0.200 |" in md


def test_a_study_from_an_earlier_one_trains_only_dpo(tmp_path, capsys, monkeypatch):
    """``--from DIR`` starts each task from its run in an earlier study (compare's --from); a task
    whose run there did not finish is not run, and said so before the others train."""
    import shutil

    from prefopt.train.sft import SFTTrainer

    model = tmp_path / "tiny"
    build_hf_model(model, max_position_embeddings=4096)
    root, _ = _root(tmp_path)
    first, out = tmp_path / "first", tmp_path / "rpo"
    argv = ["study", "--model", str(model), "--data-root", str(root), "--n-resamples", "200",
            *[a for k, v in TINY.items() for a in ("--set", f"{k}={v}")]]
    assert main([*argv, "--tasks", "medqa,portal", "--output", str(first)]) == 0
    shutil.rmtree(first / "medqa" / "sft" / "train" / "final")  # as if it stopped in SFT
    shared, argv = argv, [*argv, "--output", str(out), "--from", str(first), "--loss", "rpo"]
    assert main([*argv, "--from", str(tmp_path / "typo")]) == 2
    assert f"--from {tmp_path / 'typo'}: no such folder" in capsys.readouterr().err
    assert main([*argv, "--from", str(first / "portal")]) == 2  # a task's run, not the study
    assert f"--from {first / 'portal'} is one task's compare run: name the earlier study's --output" in \
        capsys.readouterr().err

    def no_sft(*a, **k):
        raise AssertionError("SFT trained again")

    monkeypatch.setattr(SFTTrainer, "train_step", no_sft)
    assert main([*argv, "--tasks", "medqa,portal"]) == 0
    log = capsys.readouterr().out
    assert (f"prefopt study: medqa not run: --from {first / 'medqa'}: its SFT stage has not finished "
            "(no sft/train/final/adapter_model.safetensors)") in log
    assert log.index("medqa not run") < log.index("1 of 1: portal")
    assert f"prefopt compare: starting from {first / 'portal'}: copied split.json, base, sft" in log
    assert "prefopt study: 1 ran, 0 failed, 1 not run" in log
    arms = {r["task"]: r for r in json.loads((out / "study.json").read_text())["arms"]}
    was = {r["task"]: r for r in json.loads((first / "study.json").read_text())["arms"]}
    assert arms["portal"]["start_from"] == str(first / "portal") and "start_from" not in was["portal"]
    assert arms["portal"]["sft"] == was["portal"]["sft"] and arms["portal"]["base"] == was["portal"]["base"]
    assert arms["medqa"]["status"] == "not run"
    assert (f"Base and SFT stages from earlier runs (`--from`; only DPO trained): `portal` from `{first / 'portal'}`."
            in (out / "study.md").read_text())
    # the same command again goes on with its runs: nothing copied or trained again
    assert main([*argv, "--tasks", "portal"]) == 0
    log = capsys.readouterr().out
    assert "starting from" not in log and "dpo: reusing" in log
    assert json.loads((out / "study.json").read_text())["arms"][-1]["start_from"] == str(first / "portal")
    # refused before any work, where the study's own folder or --from's run was made with other settings
    study_json = (out / "study.json").read_text()
    assert main([*argv, "--tasks", "portal", "--set", "beta=0.5"]) == 2
    err = capsys.readouterr().err
    assert f"study: no task to run (portal: ValueError: {out / 'portal'} holds a run made with other settings" in err
    assert "settings.beta: 0.1 -> 0.5" in err and (out / "study.json").read_text() == study_json
    other = tmp_path / "other"
    assert main([*shared, "--output", str(other), "--from", str(first), "--tasks", "portal", "--set", "sft_lr=0.5"]) == 2
    assert (f"portal: ValueError: --from {first / 'portal'} was run with other settings than DPO's "
            "(overrides.sft_lr: None -> 0.5; settings.sft_lr: 0.0003 -> 0.5)") in capsys.readouterr().err
    assert not other.exists()


def test_a_study_over_seeds_runs_each_task_per_seed_and_tabulates_the_pooled_differences(tmp_path, capsys):
    model = tmp_path / "tiny"
    build_hf_model(model, max_position_embeddings=4096)
    sets = [a for k, v in TINY.items() for a in ("--set", f"{k}={v}")]
    out = tmp_path / "study"
    argv = ["study", "--model", str(model), "--output", str(out), "--tasks", "portal", "--seeds", "0,1",
            "--n-resamples", "100", *sets]
    assert main(argv[:7] + argv[9:]) == 0  # first without --seeds: its task's run is then seed 0's
    made = (out / "portal" / "sft" / "train" / "final" / "adapter_model.safetensors").stat().st_mtime_ns
    assert main(argv) == 0
    assert (out / "portal" / "sft" / "train" / "final" / "adapter_model.safetensors").stat().st_mtime_ns == made
    assert not (out / "portal" / "seed-0").exists() and (out / "portal" / "seed-1" / "report.json").is_file()
    study = json.loads((out / "study.json").read_text())
    assert study["settings"]["seeds"] == [0, 1]
    (row,) = study["arms"]
    summary = json.loads((out / "portal" / "seeds.json").read_text())  # the task's compare --seeds
    assert row["seeds"] == [0, 1] and row["dpo_vs_sft"] == summary["pooled"]["sft->dpo"]
    assert row["sft"]["primary"] == pytest.approx(sum(r["sft"] for r in summary["runs"]) / 2)
    assert row["n_test_seeds"] == [r["n_test"] for r in summary["runs"]] and row["n_test"] == min(row["n_test_seeds"])
    for seed in (0, 1):
        assert json.loads((Path(seed_folder(out / "portal", seed)) / "compare_config.json").read_text())["seed"] == seed
    md = (out / "study.md").read_text()
    d = row["dpo_vs_sft"]
    assert "seeds 0, 1 (each stage's score the mean over them; the differences pooled over them" in md
    assert f"| {d['delta']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}], p " in md
    assert f"- `portal`: {pooled_line('sft', 'dpo', d)}; " in md
    assert row["calibration"] == summary["calibration"]  # the label probabilities' Brier, pooled over the seeds
    b = summary["calibration"]["brier"]["sft->dpo"]["urgency"]
    assert f"| `portal` | urgency | {b['delta']:+.3f} [{b['ci'][0]:+.3f}, {b['ci'][1]:+.3f}], p " in md
    assert "| — | — | — | — |" in md  # no validation items: no temperatures
    capsys.readouterr()
    again = tmp_path / "rpo"  # each task's seeds from the earlier study's: only DPO trains
    assert main(["study", "--model", str(model), "--output", str(again), "--tasks", "portal", "--seeds", "0,1",
                 "--from", str(out), "--loss", "rpo", "--n-resamples", "100", *sets]) == 0
    (row2,) = json.loads((again / "study.json").read_text())["arms"]
    assert row2["start_from"] == str(out / "portal") and row2["sft"] == row["sft"]
    assert json.loads((again / "portal" / "seed-1" / "compare_config.json").read_text())["start_from"] == str(
        out / "portal" / "seed-1")
    assert main([*argv, "--seed", "2"]) == 2 and "give --seed or --seeds, not both" in capsys.readouterr().err
    one = tmp_path / "one"  # a task folder that holds a one-seed run: refused before anything trains
    (one / "portal").mkdir(parents=True)
    (one / "portal" / "compare_config.json").write_text('{"seed": 7}')  # (of a seed not among them)
    assert main(["study", "--model", str(model), "--output", str(one), "--tasks", "portal", "--seeds", "0,1",
                 *sets]) == 2
    assert f"{one / 'portal'}: a compare run of seed 7, not among --seeds 0,1: add 7" in capsys.readouterr().err
    assert sorted(p.name for p in (one / "portal").iterdir()) == ["compare_config.json"]


def test_study_md_lists_each_tasks_review_thresholds_and_each_seeds():
    """A study run with ``--set val=N --set review_target=A``: each task's row keeps its stages'
    thresholds from report.json (and whether its SFT+DPO stage is the SFT model), a row over
    seeds each seed's; study.md's table has a row a task or a task's seed, as seeds.md spells
    them."""
    from prefopt.evaluate.study import _reviewed, study_markdown
    from prefopt.evaluate.validated_review import table_lines

    found = {"validation": {"target": 0.8, "n_records": 60, "threshold": 0.75, "n": 9, "kept": 0.15, "right": 8 / 9,
                            "ci": [0.565, 0.98]},
             "test": {"threshold": 0.75, "n": 7, "kept": 7 / 60, "right": 6 / 7, "ci": [0.487, 0.974]}, "n_test": 60}
    report = {"stages": {"base": {}, "sft": {"review_validated": found}, "dpo": {"review_validated": found}},
              "weights": {"sft": "sft/train/final", "dpo": "sft/train/final"}}
    assert _reviewed(report) == {"review_validated": {"sft": found, "dpo": found}, "dpo_is_sft": True}
    assert _reviewed({"stages": {"base": {}, "sft": {}, "dpo": {}}}) == {}
    vs = {"delta": 0.25, "ci": [0.1, 0.4], "p_value": 0.0, "n_resamples": 200}
    row = {"task": "ktas", "kind": "triage", "status": "ran", "study": "—", "n_test": 60, "metric": "macro_f1",
           "base": {"primary": 0.1}, "sft": {"primary": 0.35}, "dpo": {"primary": 0.6}, "sft_vs_base": vs,
           "dpo_vs_sft": vs, "verdict": "no"}
    seeds = [{"seed": 1, "review_validated": {"sft": found, "dpo": found}, "dpo_is_sft": False}]
    md = study_markdown({"model": "m", "data_root": "d", "settings": {}, "arms": [
        {**row, **_reviewed(report)}, {**row, "task": "portal", "review_seeds": seeds}]})
    assert "Review thresholds for answers right at least 0.8 of the time (`--set review_target=0.8`)" in md
    rows = [("`ktas`", {"sft": found, "dpo": found}, True), ("`portal` seed 1", {"sft": found, "dpo": found}, False)]
    assert "\n".join(table_lines("task", rows)) in md
    assert "| `ktas` | 0.75 (9 of 60, 0.889 [0.565, 0.980]) | 7 of 60, 0.857 [0.487, 0.974] | the SFT model: the " \
        "same | the same |" in md
    assert "Review thresholds" not in study_markdown({"model": "m", "data_root": "d", "settings": {}, "arms": [row]})
