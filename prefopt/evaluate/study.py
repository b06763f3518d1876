"""``prefopt study``: the study's base → SFT → SFT+DPO comparison on every task family in one
command, one ``prefopt compare`` run per dataset, and one table of them all.

Savage et al. (JMIR 2025) asked, per kind of task, whether DPO after SFT beats SFT alone. This
runs :func:`~.compare.run_compare` on each public dataset of those kinds found under a data root
(laid out as ``../shared/data``: ``text_classification/medical_abstracts/medical_tc.csv``, ...),
plus the bundled synthetic portal messages, into ``OUTPUT/<task>/``, and writes ``study.md`` and
``study.json`` after each. A dataset that is absent is listed as not run; one that fails is
listed with its error and the others still run. Every task's run is checked before the first
trains (:func:`~.compare.check_compare`: its data, settings an earlier run in its folder or
``--from``'s used), so such a failure is said at the start, not after hours of the others.
Rerunning resumes: finished stages are reused; ``--tasks`` reruns some tasks and keeps the
table's other rows. ``--from DIR`` starts each task
from the base and SFT stages of ``DIR/<task>`` (an earlier study's run of it; :mod:`.start_from`),
so another DPO trains on every task without SFT again.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..fileio import read_json, write_json_atomic, write_text_atomic
from ..train.cost import cost_parts, duration_text, what_peak
from .compare import CompareConfig, check_compare, run_compare
from .pooling import p_cell, paired_figures
from .report import NAMES
from .runner import keep_earlier
from .seeds import check_seeds, direction, dpo_is_sft, pooled_line, run_seeds
from .seeds_calibration import stage_calibration
from .stage_confidence import auroc_named_text, bound_text, fmt, paired_text
from .start_from import source_config
from .validated_review import table_lines, target_of, validated_of


@dataclass(frozen=True)
class Arm:
    kind: str  # the study's kind of task
    task: str
    data: str | None  # relative to the data root; None: the task's bundled data
    study: str  # what the study reported for this kind of task (8B models, its own data)
    options: dict = field(default_factory=dict)


ARMS = (
    Arm("text classification", "medical_abstracts", "text_classification/medical_abstracts/medical_tc.csv",
        "F1 0.63 → 0.98 with SFT; no gain from DPO"),
    Arm("numeric classification", "uci_heart", "numeric_classification/uci_heart_disease", "—"),
    Arm("clinical reasoning", "medqa", "clinical_reasoning/medqa/medqa_usmle_4options.jsonl",
        "accuracy 28% → 36% (Llama3), 33% → 40% (Mistral)"),
    Arm("clinical reasoning", "pubmedqa", "clinical_reasoning/pubmedqa/ori_pqal.json", "(as MedQA)"),
    Arm("summarization", "meqsum", "summarization/meqsum/meqsum.jsonl", "Likert 4.21 → 4.34"),
    Arm("summarization", "aci_bench", "summarization/aci_bench", "(as MeQSum)"),
    Arm("triage", "ktas", "triage/ktas/data.csv", "F1 0.58 → 0.74"),
    Arm("triage (synthetic)", "portal", None, "(as KTAS)"),
)
TASK_NAMES = tuple(a.task for a in ARMS)


def pick(tasks: list[str] | str | None) -> tuple[Arm, ...]:
    """The arms to run: all, or those named (a list, or a comma-separated string)."""
    if tasks is None:
        return ARMS
    names = [t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks) if t.strip()]
    unknown = [t for t in names if t not in TASK_NAMES]
    if unknown or not names:
        raise ValueError(f"study tasks: unknown {', '.join(unknown) or '(none given)'}; choose from "
                         f"{', '.join(TASK_NAMES)}")
    return tuple(a for a in ARMS if a.task in names)


def run_study(model: str, output: str | Path, data_root: str | Path | None = None, *,
              tasks: list[str] | str | None = None, start_from: str | Path | None = None,
              seeds: list[int] | None = None, **compare) -> dict:
    """One :class:`~.compare.CompareConfig` per arm (``compare``: its other fields, shared by
    all: preset, loss, seed, overrides, device...), each into ``output/<task>``; returns
    ``study.json``'s content. Every arm is checked before the first one runs
    (:func:`~.compare.check_compare`); one that fails the check is listed as failed and the others
    run.
    ``start_from``: an earlier study's folder; each arm starts from its run of the same task
    (``--from``), and an arm that has none finished there is not run. ``seeds``: each arm is
    ``prefopt compare --seeds`` (:mod:`.seeds`) into ``output/<task>/seed-S``, its row the seeds'
    mean scores and pooled differences."""
    out = Path(output)
    if start_from is not None:
        if not Path(start_from).is_dir():
            raise ValueError(f"--from {start_from}: no such folder (an earlier study's --output)")
        if (Path(start_from) / "compare_config.json").is_file():
            raise ValueError(f"--from {start_from} is one task's compare run: name the earlier study's --output, "
                             "which holds a run per task (or start that one task with prefopt compare --from)")
    root = Path(data_root) if data_root is not None else None
    if root is not None and not root.is_dir():
        raise ValueError(f"--data-root {root}: no such folder")
    if compare.get("chat_vars"):  # a switch the template does not read would fail every arm, one by one
        from ..chat_template import check_chat_vars, parse_chat_vars
        from ..tokenizer import load_tokenizer

        check_chat_vars(load_tokenizer(model).chat_template, parse_chat_vars(compare["chat_vars"]), model)
    plan, rows, absent, picked, found = [], [], [], pick(tasks), False
    for arm in picked:
        path = None if arm.data is None else (root / arm.data if root is not None else None)
        if arm.data is not None and (path is None or not path.exists()):
            absent.append({"task": arm.task, "kind": arm.kind, "status": "not run",
                           "why": f"no {path}" if path is not None else "needs --data-root"})
            rows.append(absent[-1])
            continue
        found = found or arm.data is not None
        cfg = CompareConfig(task=arm.task, model=model, output=str(out / arm.task),
                            data=None if path is None else str(path), task_options=dict(arm.options), **compare)
        cfg.settings()  # a bad --set or device stops the study here
        if start_from is not None and seeds is not None:  # each seed's source is checked with its run (below)
            cfg = replace(cfg, start_from=str(Path(start_from) / arm.task))
        elif start_from is not None:
            source = Path(start_from) / arm.task
            if not (out / arm.task / "compare_config.json").is_file():  # (a run there goes on with its own stages)
                try:
                    source_config(source, out / arm.task)
                except ValueError as e:
                    rows.append({"task": arm.task, "kind": arm.kind, "status": "not run", "why": str(e)})
                    continue
            cfg = replace(cfg, start_from=str(source))
        try:  # bad data, a --from run or an earlier run here with other settings: said before hours of the others
            if seeds is not None:
                check_seeds(cfg, seeds)  # (a task folder holding a one-seed run too)
            else:
                check_compare(cfg)
        except (ValueError, OSError, RuntimeError) as e:  # as a run's own failure is taken (below)
            rows.append({"task": arm.task, "kind": arm.kind, "status": "failed", "why": f"{type(e).__name__}: {e}"})
            continue
        plan.append((arm, cfg))
    if root is not None and absent and not found:
        tops = sorted({a.data.split("/")[0] + "/" for a in ARMS if a.data})
        raise ValueError(f"--data-root {root}: none of the datasets is there ({absent[0]['why']}, ...); it is the folder "
                         f"that holds {', '.join(tops)}")
    if not plan:
        raise ValueError("study: no task to run (" + "; ".join(f"{r['task']}: {r['why']}" for r in rows) + ")")
    for r in rows:
        print(f"prefopt study: {r['task']} {r['status']}: {r['why']}", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    header = _header(model, root, {**compare, **({"seeds": seeds} if seeds is not None else {})})
    rows += _kept(out, header, {a.task for a in picked})
    for i, (arm, cfg) in enumerate(plan, 1):
        print(f"prefopt study: {i} of {len(plan)}: {arm.task} ({arm.kind}) into {cfg.output}", flush=True)
        start = time.perf_counter()
        try:
            if seeds is not None:
                summary = run_seeds(cfg, seeds, run=run_compare, check=check_compare)
            else:
                report = run_compare(cfg)
        except (ValueError, OSError, RuntimeError) as e:  # this arm only: the others still run
            print(f"prefopt study: {arm.task} failed: {e}", flush=True)
            rows.append({"task": arm.task, "kind": arm.kind, "status": "failed", "why": f"{type(e).__name__}: {e}"})
        else:
            if seeds is not None:
                rows.append(_seeds_row(arm, summary, time.perf_counter() - start, cfg.start_from))
            else:
                recorded = read_json(Path(cfg.output) / "compare_config.json")
                rows.append(_row(arm, report, time.perf_counter() - start, recorded.get("start_from")))
        study = _write(out, header, rows)  # after each task: the table so far
    return study


def estimate_study(model: str, output: str | Path, *, tasks: list[str] | str | None = None, on: str | None = None,
                   **compare) -> list[str]:
    """What a training step of each task's SFT and DPO stage, and answering its test set (and
    DPO's validation items, with ``val``), will hold on ``on`` (``"cpu"`` or ``"cuda"``; default
    the runs' device on this machine), in words (``prefopt study ... --estimate-memory``):
    compare's estimate (:mod:`.compare_train`) for every arm, its data found or not (the
    settings and the task's ``max_length`` and answer length decide it), each set of settings
    estimated once (most tasks share them). Nothing is read but the model's
    ``config.json``, and nothing is written."""
    from ..fileio import size_text
    from ..tasks import get_task
    from ..train.memory_estimate import estimate_memory
    from .compare_train import NOT_COUNTED, estimate_answering, stage_configs
    from .runner import decoding

    known: dict[str, object] = {}
    answered: dict[str, list] = {}
    rows, notes = [], []
    for arm in pick(tasks):
        cfg = CompareConfig(task=arm.task, model=model, output=str(Path(output) / arm.task),
                            task_options=dict(arm.options), **compare)
        cells, configs = [], stage_configs(cfg, notes.append)
        for name, config in configs:
            key = _settings_key(config)
            if key not in known:
                known[key] = estimate_memory(config, on)
            est = known[key]
            cells.append(f"{name} {size_text(est.peak)} ({est.sequences} sequences of {est.tokens} tokens)")
        # answering: the same for the tasks whose settings and answer lengths are the same
        s = cfg.settings()
        key = json.dumps([_settings_key(c) for _, c in configs] + [cfg.eval_dtype, s["eval_batch_size"], s["val"],
                                                                   decoding(s, get_task(arm.task, **arm.options))])
        if key not in answered:
            answered[key] = estimate_answering(cfg, dict(configs), on)
        for name, ans in answered[key]:
            cells.append(f"{'answers' if name.startswith('Test') else 'validation answers'} {size_text(ans.peak)} "
                         f"({ans.prompts} prompts of {ans.prompt_tokens} + {ans.new_tokens} tokens)")
        rows.append(f"  {arm.task:<18} {', '.join(cells)}")
    est, ans = next(iter(known.values())), next(iter(answered.values()))[0][1]
    return [*notes, f"memory estimate for one training step of each task's stages {est.on()}, {est.dtype} weights"
            f"{est.recomputed()}, and for answering the test set ({ans.dtype} weights): the peak of tensors at once "
            f"(add {est.beyond()})", *rows, NOT_COUNTED]


def _settings_key(config) -> str:
    """A stage's training settings, less where its files go: stages of the same key hold the same."""
    return json.dumps({k: v for k, v in config.to_dict().items()
                       if k not in ("data", "output_dir", "sft_adapter", "ref_cache")}, sort_keys=True, default=str)


def _row(arm: Arm, report: dict, seconds: float, start_from: str | None = None) -> dict:
    """``arm``'s row from its run's report (``start_from``: where its base and SFT stages came from)."""
    st, c = report["stages"], report["comparisons"]
    return {"task": arm.task, "kind": arm.kind, "status": "ran", "study": arm.study, "n_test": report["n_test"],
            "metric": report["metric"], "seconds": round(seconds, 1), **({"start_from": start_from} if start_from else {}),
            **{s: {"primary": st[s]["primary"], "ci": st[s]["ci"]} for s in ("base", "sft", "dpo")},
            "sft_vs_base": paired_figures(c["base->sft"]["primary"]),
            "dpo_vs_sft": paired_figures(c["sft->dpo"]["primary"]),
            "verdict": c["sft->dpo"]["verdict"],
            **({"cost": cost} if (cost := {s: d["cost"] for s, d in report.get("training", {}).items()
                                           if s in ("sft", "dpo") and "cost" in d}) else {}),
            **({"confidence": {s: {name: {k: v.get(k) for k in ("auroc", "auroc_named", "named", "accuracy_likeliest",
                                                                 "brier", "ece")}
                                    for name, v in st[s]["metrics"]["confidence"].items()} for s in st},
                "auroc_dpo_vs_sft": c["sft->dpo"].get("confidence_auroc", {}),
                "brier_dpo_vs_sft": c["sft->dpo"].get("brier", {})}
               if all("confidence" in st[s]["metrics"] for s in st) else {}),
            **({"calibrated": calibrated} if (calibrated := stage_calibration(st)) else {}),
            **_reviewed(report)}


def _reviewed(report: dict) -> dict:
    """A run's review thresholds (:func:`~.validated_review.validated_of`), for its row, with
    whether its SFT+DPO stage is the SFT model; nothing for a run without them."""
    found = validated_of(report)
    return {"review_validated": found, "dpo_is_sft": dpo_is_sft(report)} if found else {}


def _seeds_row(arm: Arm, summary: dict, seconds: float, start_from: str | None = None) -> dict:
    """``arm``'s row from its ``compare --seeds`` summary (:mod:`.seeds`): each stage's mean over
    the seeds, the differences pooled; ``n_test`` the fewest test items a seed had (each seed
    draws its own split), ``n_test_seeds`` each seed's."""
    runs = summary["runs"]
    return {"task": arm.task, "kind": arm.kind, "status": "ran", "study": arm.study, "seeds": summary["seeds"],
            "n_test": min(r["n_test"] for r in runs), "n_test_seeds": [r["n_test"] for r in runs],
            "metric": summary["metric"], "seconds": round(seconds, 1),
            **({"start_from": start_from} if start_from else {}),
            **{s: {"primary": sum(r[s] for r in runs) / len(runs)} for s in ("base", "sft", "dpo")},
            "sft_vs_base": summary["pooled"]["base->sft"], "dpo_vs_sft": summary["pooled"]["sft->dpo"],
            "verdict": f"{pooled_line('sft', 'dpo', summary['pooled']['sft->dpo'])}; {direction(runs, 'sft->dpo')}.",
            **({"calibration": summary["calibration"]} if summary.get("calibration") else {}),
            **({"review_seeds": reviewed} if (reviewed := [{k: r[k] for k in ("seed", "review_validated", "dpo_is_sft")}
                                                           for r in runs if r.get("review_validated")]) else {})}


def _test_items(row: dict) -> str:
    """A row's test items: a range where its seeds' splits held different numbers (60-61)."""
    n = row.get("n_test_seeds") or [row["n_test"]]
    return f"{min(n)}-{max(n)}" if min(n) != max(n) else str(n[0])


def _header(model: str, root: Path | None, compare: dict) -> dict:
    """``study.json``'s fields other than its rows: what every arm was run with."""
    return {"model": model, "data_root": None if root is None else str(root),
            "settings": json.loads(json.dumps(compare, default=str))}


def _kept(out: Path, header: dict, picked: set[str]) -> list[dict]:
    """The rows of an earlier ``study.json`` in ``out`` for the tasks this command does not run
    (``--tasks ktas`` after a whole study keeps the other tasks' rows), where it was made with
    the same model, data root and settings; where not, its table moves to ``earlier/N/``."""
    path = out / "study.json"
    if not path.is_file():
        return []
    earlier = read_json(path)
    if {k: earlier.get(k) for k in header} != header:
        kept = keep_earlier(out, ("study.json", "study.md"))
        print(f"prefopt study: {out} held a study made with other settings; its table is kept in {kept}", flush=True)
        return []
    return [r for r in earlier.get("arms", []) if r["task"] not in picked]


def _write(out: Path, header: dict, rows: list[dict]) -> dict:
    order = {t: i for i, t in enumerate(TASK_NAMES)}
    rows = sorted(rows, key=lambda r: order[r["task"]])
    study = {**header, "arms": rows}
    write_json_atomic(out / "study.json", study)
    write_text_atomic(out / "study.md", study_markdown(study))
    return study


def study_markdown(study: dict) -> str:
    s = study["settings"]
    ran = [r for r in study["arms"] if r["status"] == "ran"]
    lines = ["# prefopt study: base → SFT → SFT+DPO on each kind of task", "",
             f"Model `{study['model']}`; preset `{s.get('preset', 'quick')}`; loss `{s.get('loss', 'sigmoid')}`; "
             + (f"seeds {', '.join(map(str, s['seeds']))} (each stage's score the mean over them; the "
                "differences pooled over them by random effects, Student's t: `prefopt compare --seeds`)"
                if s.get("seeds") else f"seed {s.get('seed', 0)}")
             + ("; " + " ".join(f"`--set {k}={v}`" for k, v in s["overrides"].items()) if s.get("overrides") else "")
             + (f"; data root `{study['data_root']}`" if study["data_root"] else "; no data root (bundled data only)")
             + ". Each row is one `prefopt compare` run in the folder named by its "
             "task, whose report.md has the details. The study (Savage et al., JMIR 2025) fine-tuned 8B models on its "
             "own data: its figures are there for orientation, not as the same measurement.", "",
             "| kind of task | task | study (8B) | test items | metric | base | SFT | SFT+DPO | SFT vs base | "
             "SFT+DPO vs SFT: Δ [95% CI], p |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in ran:
        a, d = r["sft_vs_base"], r["dpo_vs_sft"]
        lines.append(f"| {r['kind']} | `{r['task']}` | {r['study']} | {_test_items(r)} | {r['metric']} | "
                     f"{r['base']['primary']:.3f} | {r['sft']['primary']:.3f} | {r['dpo']['primary']:.3f} | "
                     f"{a['delta']:+.3f}, p {p_cell(a)} | {paired_text(d)} |")
    copied = [r for r in ran if r.get("start_from")]
    if copied:
        lines += ["", "Base and SFT stages from earlier runs (`--from`; only DPO trained): "
                  + "; ".join(f"`{r['task']}` from `{r['start_from']}`" for r in copied) + "."]
    if ran:
        lines += ["", "Does DPO after SFT beat SFT alone?", ""]
        lines += [f"- `{r['task']}`: {r['verdict']}" for r in ran]
    lines += _confidence_lines(ran)
    lines += _calibrated_lines(ran)
    lines += _seeds_calibration_lines(ran)
    lines += _review_lines(ran)
    lines += _cost_lines(ran)
    for status, title in (("failed", "Failed (rerun the same command after fixing it; finished stages are kept)"),
                          ("not run", "Not run")):
        rest = [r for r in study["arms"] if r["status"] == status]
        if rest:
            lines += ["", f"{title}:", ""] + [f"- `{r['task']}`: {r['why']}" for r in rest]
    return "\n".join(lines) + "\n"


def _confidence_lines(ran: list[dict]) -> list[str]:
    """study.md's table of each stage's confidence, for the tasks whose answers are labels."""
    scored = [r for r in ran if r.get("confidence")]
    if not scored:
        return []

    def cells(r: dict, name: str, key: str) -> str:  # an AUROC over fewer than all answers says over how many
        stages = [r["confidence"][s][name] for s in ("base", "sft", "dpo")]
        return " | ".join(auroc_named_text(c, r["n_test"]) if key == "auroc_named" else fmt(c.get(key)) for c in stages)

    def test(r: dict, name: str, key: str = "auroc_dpo_vs_sft") -> str:  # SFT+DPO's against SFT's, paired
        return paired_text(r.get(key, {}).get(name))

    lines = ["", "How sure is each stage of its answers? AUROC: how well the probability of the label an answer "
             "named tells right answers from wrong, among the answers that named a label (0.5: not at all; —: all "
             "right or all wrong; how many named one where not all did), and SFT+DPO's against SFT's by the paired "
             "bootstrap. Likeliest: the accuracy of the labels each stage gives the highest probability, where its "
             "answers named one or not (each task's report.md, Confidence, has more).", "",
             "| task | field | AUROC base | SFT | SFT+DPO | SFT+DPO vs SFT: ΔAUROC [95% CI], p | likeliest base "
             "| SFT | SFT+DPO |", "|---|---|---|---|---|---|---|---|---|"]
    for r in scored:
        lines += [f"| `{r['task']}` | {name} | {cells(r, name, 'auroc_named')} | {test(r, name)} | "
                  f"{cells(r, name, 'accuracy_likeliest')} |" for name in r["confidence"]["base"]]
    calibrated = [r for r in scored if any(c.get("brier") is not None for c in r["confidence"]["base"].values())]
    if calibrated:  # (rows of runs scored before 2026-12-06 hold no Brier: left out)
        lines += ["", "Are the stages' label probabilities calibrated? Brier: the mean squared gap between each "
                  "label's probability and the truth (0 best, 2 worst), and SFT+DPO's against SFT's by the paired "
                  "bootstrap (negative: nearer the truth); ECE: the gap between the likeliest label's probability "
                  "and how often it is right, over ten bins (0: a label given 0.8 is right 8 times in 10).", "",
                  "| task | field | Brier base | SFT | SFT+DPO | SFT+DPO vs SFT: ΔBrier [95% CI], p | ECE base | SFT "
                  "| SFT+DPO |", "|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| `{r['task']}` | {name} | {cells(r, name, 'brier')} | {test(r, name, 'brier_dpo_vs_sft')} | "
                  f"{cells(r, name, 'ece')} |" for r in calibrated for name in r["confidence"]["base"]]
    return lines


def _calibrated_lines(ran: list[dict]) -> list[str]:
    """study.md's table of the SFT and SFT+DPO stages calibrated on each task's validation items
    (a study run with ``--set val=N``): their temperatures and the test items' Brier scores."""
    rows = [r for r in ran if r.get("calibrated")]
    if not rows:
        return []
    lines = ["", "Calibrated on each task's validation items (`--set val=N`): each stage's label probabilities divided "
             "by the temperature T fitted on them (T > 1: the stage was too sure), and the test items' Brier score at "
             "T = 1 and calibrated, by the paired bootstrap (ΔBrier < 0: nearer the truth; each task's report.md, "
             "Calibrated, has the ECE and the base model too).", "",
             "| task | field | stage | T | Brier | calibrated | ΔBrier [95% CI], p |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        for stage in ("sft", "dpo"):
            c = r["calibrated"].get(stage)
            for name, f in (c or {}).get("fields", {}).items():
                lines.append(f"| `{r['task']}` | {name} | {NAMES[stage]} | "
                             f"{c['temperature']:.3f}{bound_text(c)} | {fmt(f['brier'])} | {fmt(f['calibrated'])} | "
                             f"{paired_text(f['test'])} |")
    return lines


def _review_lines(ran: list[dict]) -> list[str]:
    """study.md's table of each task's review thresholds (a study run with ``--set val=N --set
    review_target=A``: :mod:`.validated_review`), a row a task, or a task's seed."""
    rows = [(f"`{r['task']}`", r["review_validated"], r["dpo_is_sft"]) for r in ran if r.get("review_validated")]
    rows += [(f"`{r['task']}` seed {x['seed']}", x["review_validated"], x["dpo_is_sft"]) for r in ran
             for x in r.get("review_seeds", [])]
    if not rows:
        return []
    target = target_of(rows)
    return ["", f"Review thresholds for answers right at least {target:g} of the time (`--set review_target="
            f"{target:g}`): each trained stage's, chosen on the task's validation items (how many it answered alone "
            "there, and how often rightly), then checked on its test items (each task's report.md has more).", "",
            *table_lines("task", rows)]


def _seeds_calibration_lines(ran: list[dict]) -> list[str]:
    """study.md's table of the label probabilities' Brier score over seeds (a study run with
    ``--seeds``: each task's seeds.json ``calibration``): SFT+DPO's against SFT's pooled, and with
    ``--set val=N`` each stage's temperatures and calibrated Brier against T = 1, pooled."""
    rows = [r for r in ran if r.get("calibration")]
    if not rows:
        return []

    def stage(cal: dict, s: str, name: str) -> str:  # a stage's temperatures (each seed's), calibrated vs T = 1
        ts = cal.get("temperatures", {}).get(s)
        return ("—" if ts is None else ", ".join(f"{t:.2f}" for t in ts)) + " | " + paired_text(
            cal.get("calibrated", {}).get(s, {}).get(name))

    lines = ["", "Over the seeds, the label probabilities' Brier score (lower: nearer the truth): SFT+DPO's against "
             "SFT's, and with `--set val=N` each stage's temperature on each seed's validation items (T > 1: too sure) "
             "and its calibrated Brier against the same at T = 1, each pooled over the seeds as the metric is "
             "(each task's seeds.md, Calibration, has each seed's).", "",
             "| task | field | SFT+DPO vs SFT: ΔBrier [95% CI], p | SFT: T | SFT calibrated: ΔBrier | SFT+DPO: T "
             "| SFT+DPO calibrated: ΔBrier |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        cal = r["calibration"]
        lines += [f"| `{r['task']}` | {name} | {paired_text(p)} | {stage(cal, 'sft', name)} | "
                  f"{stage(cal, 'dpo', name)} |" for name, p in cal["brier"]["sft->dpo"].items()]
    return lines


def _cost_lines(ran: list[dict]) -> list[str]:
    """study.md's table of what each task's run and training stages took (those that recorded it:
    report.json's ``training``, from each stage's train_summary.json)."""
    timed = [r for r in ran if r.get("cost")]
    if not timed:
        return []

    def stage(c: dict | None) -> str:  # its time as the report says it, and its peak's MiB
        if c is None:
            return "— | —"
        peak = c.get("peak_mem_mb")
        return f"{cost_parts(c)[0]} | {'—' if peak is None else f'{peak:.0f}'}"

    devices = sorted({c.get("device", "?") for r in timed for c in r["cost"].values()})
    lines = ["", f"What each run took on {' and '.join(devices)}: the whole `prefopt compare` (training, answering, "
             "scoring), and each training stage's steps and their wall time, and its peak memory in MiB since its "
             f"training began ({what_peak(devices[0])}).", "",
             "| task | whole run | SFT training | SFT peak | DPO training | DPO peak | DPO peak / SFT peak |",
             "|---|---|---|---|---|---|---|"]
    for r in timed:
        sft, dpo = r["cost"].get("sft"), r["cost"].get("dpo")
        ratio = (f"{dpo['peak_mem_mb'] / sft['peak_mem_mb']:.2f}" if sft and dpo and sft.get("peak_mem_mb")
                 and dpo.get("peak_mem_mb") else "—")
        lines.append(f"| `{r['task']}` | {duration_text(r['seconds'])} | {stage(sft)} | {stage(dpo)} | {ratio} |")
    return lines
