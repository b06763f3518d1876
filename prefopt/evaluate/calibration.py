"""``calibration.json``: a temperature (:mod:`.temperature`) fitted by ``prefopt eval
--confidence --fit-temperature``, with what it was fitted for and what it did, written; and read
back by ``eval --calibration`` and ``predict --calibration``, which refuse it for another task,
model, adapter or way of scoring. A model and an adapter are told by their weights' digests as
well as by their paths, so a model folder or a run's folder moved or copied to another machine
(the one that predicts) still serves; other weights saved at the same path do not."""
from __future__ import annotations

import hashlib
from datetime import date
from pathlib import Path

from ..fileio import read_json, write_json_atomic
from ..lora_files import adapter_sha256
from ..model.digest import gguf_file_sha256, weights_sha256
from .confidence import SCORING, confidence_metrics, marginals
from .temperature import BOUNDS, cross_fitted, fit_temperature

FILE = "calibration.json"


def template_sha256(tok) -> str | None:
    """The SHA-256 of ``tok``'s chat template (the text that renders every prompt: a model folder's
    ``chat_template.jinja`` or its tokenizer_config.json's), as ``calibration.json`` records it;
    None without one."""
    text = getattr(tok, "chat_template", None)
    return hashlib.sha256(text.encode()).hexdigest() if text else None


def calibration_fit(task, records: list, preds: list[dict], scored: list, confidence: dict, *, model: str,
                    adapter: str | None, task_options: dict, data: str | None, quantized: str | None = None,
                    chat_vars: dict | None = None, template: str | None = None) -> dict:
    """``calibration.json`` of ``eval --fit-temperature``: :func:`~.temperature.fit_temperature` on
    ``records``' answers' log-probs (``scored``) as :func:`calibration_record` writes it, with each
    field's Brier score and ECE under cross-fitting (:func:`~.temperature.cross_fitted`; None with
    fewer than four records) beside those at T = 1 (``confidence``: the evaluation's
    :func:`~.confidence.confidence_metrics`)."""
    try:
        folds = cross_fitted(task, records, scored)
    except ValueError:  # too few records to hold half out (or a half none of whose labels an answer names)
        cross = None
    else:
        metrics = confidence_metrics(task, records, preds, [marginals(task, s, t) for s, t in zip(scored, folds)])
        cross = {name: {"brier": c["brier"], "ece": c["ece"]} for name, c in metrics.items()}
    return calibration_record(fit_temperature(task, records, scored), task, task_options=task_options, model=model,
                              adapter=adapter, data=data, records=len(records), uncalibrated=confidence,
                              fitted_on="the records evaluated", cross_fitted=cross, quantized=quantized,
                              chat_vars=chat_vars, template=template)


def calibration_record(fit: dict, task, *, task_options: dict, model: str, adapter: str | None, data: str | None,
                       records: int, uncalibrated: dict, fitted_on: str, quantized: str | None = None,
                       chat_vars: dict | None = None, template: str | None = None, **more) -> dict:
    """What ``calibration.json`` holds: the ``fit`` (:func:`~.temperature.fit_temperature`), the
    task, model, adapter, 4-bit base (``quantized``: ``--quantize``'s kind, None in full
    precision), the chat template (``template``: its :func:`template_sha256`, as
    ``chat_template_sha256``) and its variables (``chat_vars``: ``--chat-vars``, None without) and
    each field's labels and the task options that shape its prompts (``prompt_options``:
    :func:`~prefopt.tasks.prompt_options`) it is for (:func:`read_calibration` checks them), the data and how
    many of its ``records`` it was fitted on (``fitted_on``: which), each field's Brier score and
    ECE at T = 1 (``uncalibrated``: :func:`~.confidence.confidence_metrics`), ``more``, the date."""
    from ..tasks import prompt_options

    return {**{k: fit[k] for k in ("temperature", "n", "nll_before", "nll_after", "bound")}, "task": task.name,
            "task_options": task_options, "prompt_options": prompt_options(task.name, task_options),
            "model": where(model), "model_sha256": weights_sha256(model),
            "adapter": where(adapter), "adapter_sha256": adapter_sha256(adapter), "quantized": quantized,
            "chat_template_sha256": template, "chat_vars": chat_vars or None, "labels": labels_of(task),
            "confidence_scoring": SCORING,
            "data": where(data) or "the task's bundled data", "records": records, "fitted_on": fitted_on,
            "uncalibrated": {name: {"brier": c["brier"], "ece": c["ece"]} for name, c in uncalibrated.items()},
            **more, "date": date.today().isoformat()}


def write_calibration(out_dir: str | Path, fitted: dict) -> Path:
    """``fitted`` (:func:`calibration_fit`) as ``out_dir/calibration.json``; what it holds is
    printed."""
    path = Path(out_dir) / FILE
    write_json_atomic(path, fitted)
    for line in calibration_lines(fitted):
        print(f"prefopt eval: {line}", flush=True)
    print(f"prefopt eval: wrote {path}: predict and eval --calibration {path} divide by its temperature", flush=True)
    return path


def calibration_lines(fitted: dict) -> list[str]:
    """A fit (``calibration.json``) in words: the temperature and the NLL of the right answers,
    then per field the Brier score and ECE before and, cross-fitted, after."""
    t = fitted["temperature"]
    what = "softens over-confident probabilities" if t > 1 else "sharpens under-confident probabilities"
    lines = [f"temperature {t:.3f} fitted on {fitted['n']} records ({what}); the mean NLL of their right answers "
             f"{fitted['nll_before']:.3f} -> {fitted['nll_after']:.3f}"]
    if fitted["bound"] == "high":
        lines.append(f"the fit stopped at T = {BOUNDS[1]:g}, the highest tried: the scores barely tell the right "
                     "answers from the others")
    elif fitted["bound"] == "low":
        lines.append(f"the fit stopped at T = {BOUNDS[0]:g}, the lowest tried: every right answer is far ahead")
    if fitted.get("n") != fitted.get("records"):
        lines.append(f"{fitted['records'] - fitted['n']} of {fitted['records']} records left out of the fit: a label "
                     "of theirs is none of the answers scored")
    cross, before = fitted.get("cross_fitted"), fitted.get("uncalibrated", {})
    if cross is None:
        lines.append("no estimate of its effect on records it did not see: cross-fitting needs four records, and "
                     "each half with a label an answer names")
        return lines
    lines.append("on records it did not see (cross-fitted: each half scaled by the other half's fit): " + "; ".join(
        f"{name} Brier {before[name]['brier']:.3f} -> {c['brier']:.3f}, ECE {before[name]['ece']:.3f} -> "
        f"{c['ece']:.3f}" for name, c in cross.items() if name in before))
    return lines


def read_calibration(path: str | Path, *, task: str, model: str, adapter: str | None,
                     quantized: str | None = None, chat_vars: dict | None = None,
                     labels: dict[str, list[str]] | None = None, prompts: dict | None = None,
                     template: str | None = None) -> float:
    """The temperature in ``path`` (a ``calibration.json``, or the folder that holds one), where
    it was fitted on ``task``'s answers by the same model and adapter, scored the same way: a
    temperature fits one model's probabilities, and another's is refused by name. A model or
    adapter at another path is the same where its weights' digest is the one recorded (hashing
    a model read once, :func:`~prefopt.model.digest.weights_sha256`). A base loaded in 4 bits
    (``quantized``) gives other probabilities than in full precision, and prompts rendered by
    another chat template (``template``: its :func:`template_sha256`; the same weights with a
    template that was edited or updated since) or with other chat variables (``chat_vars``: a
    thinking switch) other answers, and a temperature
    spreads the probability over one set of labels (``labels``, each field's: a task whose labels
    were read off other data), and so do prompts asked otherwise (``prompts``: the task options
    that shape them, :func:`~prefopt.tasks.prompt_options`, such as ``max_chars``): a file that
    says how its model was loaded, its prompts rendered and asked and over what labels is refused
    for another (an older one, which does not, is not)."""
    path = Path(path)
    if path.is_dir():
        path = path / FILE
    if not path.is_file():
        raise FileNotFoundError(f"--calibration {path}: no such file (eval --confidence --fit-temperature writes "
                                f"{FILE})")
    fit = read_json(path)
    if not isinstance(fit, dict) or not isinstance(fit.get("temperature"), (int, float)) or fit["temperature"] <= 0:
        raise ValueError(f"--calibration {path}: not an eval --fit-temperature {FILE} (no positive \"temperature\")")
    for name, given, fitted in (("task", task, fit.get("task")), ("model", model, fit.get("model")),
                                ("adapter", adapter, fit.get("adapter")),
                                ("scoring", SCORING, fit.get("confidence_scoring"))):
        if name in ("task", "scoring"):
            same, why = given == fitted, f", not {given or '(none)'}"
        else:
            same, why = _same_weights(name, given, fitted, fit.get(f"{name}_sha256"))
        if not same:
            raise ValueError(f"--calibration {path} was fitted for {name} {fitted or '(none)'}{why}: {_ONE_MODEL}")
    if "quantized" in fit and fit["quantized"] != quantized:
        raise ValueError(f"--calibration {path} was fitted on the model {_loaded(fit['quantized'])}, not "
                         f"{_loaded(quantized)}: {_ONE_MODEL}")
    if template and fit.get("chat_template_sha256") and fit["chat_template_sha256"] != template:
        raise ValueError(f"--calibration {path} was fitted on prompts rendered by another chat template (SHA-256 "
                         f"{fit['chat_template_sha256'][:12]}..., the model's now {template[:12]}...: the template in "
                         f"the model's folder was edited or updated since, or this copy has another): {_ONE_MODEL}")
    if "chat_vars" in fit and (fit["chat_vars"] or {}) != (chat_vars or {}):
        from ..chat_template import describe_chat_vars

        theirs = describe_chat_vars(fit["chat_vars"] or {})
        fix = f"pass --chat-vars {theirs}" if theirs else "leave --chat-vars out"
        raise ValueError(f"--calibration {path} was fitted on prompts rendered with chat variables "
                         f"{theirs or '(none)'}, not {describe_chat_vars(chat_vars or {}) or '(none)'}: {_ONE_MODEL}; "
                         f"or {fix}")
    if labels is not None and "labels" in fit and _label_sets(fit["labels"]) != _label_sets(labels):
        raise ValueError(f"--calibration {path} was fitted over the labels {_said(fit['labels'])}, not "
                         f"{_said(labels)}: a temperature spreads the probability over one set of labels (fit one for "
                         "these: eval --confidence --fit-temperature)")
    if prompts is not None and isinstance(fit.get("prompt_options"), dict):
        from ..tasks import prompt_options

        _check_prompts(path, prompt_options(task, fit["prompt_options"]), prompts)  # (as it records them now)
    return float(fit["temperature"])


def _check_prompts(path: Path, fitted: dict, given: dict) -> None:
    """Refuses a calibration fitted on prompts made with other task options than ``given``: each
    that differs named, with what it was then."""
    differ = sorted(key for key in fitted.keys() | given.keys() if fitted.get(key) != given.get(key))
    if differ:
        def said(options: dict) -> str:
            return ", ".join(f"{key}={_option_text(options.get(key))}" for key in differ)

        fix = [f"--task-option {key}={_option_text(fitted[key])}" if fitted.get(key) is not None else
               f"leave --task-option {key} out" for key in differ]
        raise ValueError(f"--calibration {path} was fitted on prompts made with the task options {said(fitted)}, "
                         f"not {said(given)}: a temperature fits the probabilities of the prompts it was fitted on "
                         f"(fit one for these: eval --confidence --fit-temperature); or {'; '.join(fix)}")


def _option_text(value) -> str:
    """A task option's value as ``--task-option KEY=VALUE`` gives it (None: unset)."""
    import json

    return "(unset)" if value is None else value if isinstance(value, str) else json.dumps(value)


def labels_of(task) -> dict[str, list[str]]:
    """Each of ``task``'s fields' labels, as ``calibration.json`` records them and
    :func:`read_calibration` is given them."""
    return {f.name: list(f.labels) for f in task.fields}


def _label_sets(labels: dict) -> dict:
    return {name: set(values) for name, values in labels.items()}  # (their order in the prompt aside)


def _said(labels: dict) -> str:
    return "; ".join(f"{name}: {', '.join(values)}" for name, values in labels.items())


_ONE_MODEL = ("a temperature fits one model's probabilities, scored one way (fit one for this one: eval --confidence "
              "--fit-temperature)")


def _loaded(quantized: str | None) -> str:
    return f"in 4 bits (--quantize {quantized})" if quantized else "in full precision (no --quantize)"


def _model_sha256(model: str) -> str | None:
    """:func:`~prefopt.model.digest.weights_sha256` of ``model``, a GGUF file imported first where it
    is not yet (on the machine it was copied to: its import is what loads, and what a calibration
    fitted on it recorded; the run that reads the calibration imports it next anyway)."""
    from ..model.hub import ensure_gguf, is_gguf

    if is_gguf(model) and Path(model).is_file():
        ensure_gguf(model)
    return weights_sha256(model)


_DIGESTS = {"model": _model_sha256, "adapter": adapter_sha256}  # which weights: None where no files are here
_BEFORE = {"model": "before 2026-12-08", "adapter": "before 2026-12-07"}  # a file without the digest: from when


def _same_weights(name: str, given: str | None, fitted: str | None, recorded: str | None) -> tuple[bool, str]:
    """Whether ``given`` (the model or the adapter) is the one a calibration was ``fitted`` for,
    and where not, what its error says after the fitted one's name. By the digest of its weights
    where the file ``recorded`` one and ``given`` has one (the same weights wherever they are now;
    others saved at the same path since are not), else by path (an alias is the folder it is
    imported into)."""
    from .compare_config import same_path

    at_path = same_path(_imported(given), _imported(fitted))
    not_given = f", not {given or '(none)'}"
    digest = _DIGESTS[name](given) if recorded and given else None
    if digest is not None:
        if digest == recorded or (at_path and recorded == gguf_file_sha256(given)):
            return True, ""
        return False, " as its weights were then; others were saved there since" if at_path else \
            f"{not_given}, whose weights differ"
    if at_path:
        return True, ""
    if given and fitted and not recorded and Path(fitted).is_absolute():
        return False, f"{not_given} (the file, from {_BEFORE[name]}, names its {name} by its path alone)"
    return False, not_given


def _imported(model: str | None) -> str | None:
    """A model alias or GGUF file as the folder it is imported into (whether or not it is there
    yet: nothing is imported); another name (an adapter's too: no alias is one) as it is."""
    from ..model.hub import ALIASES, alias_dir, gguf_dir, is_gguf

    if model in ALIASES:
        return str(alias_dir(model))
    return str(gguf_dir(model)) if is_gguf(model) else model


def where(path: str | None) -> str | None:
    """A model, adapter or data file as ``calibration.json`` and an evaluation's ``metrics.json``
    record it: an existing file or folder by its absolute path (so the check above holds from any
    working directory), else as given (an alias, a hub name)."""
    return str(Path(path).resolve()) if path and Path(path).exists() else path
