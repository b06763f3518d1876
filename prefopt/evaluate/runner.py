"""Run a model on a task's records: generate, parse, score, and write the results."""
from __future__ import annotations

import sys
import warnings
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .._deps import progress
from ..data.records import control_token_problem
from ..fileio import json_records, json_text, jsonl_text, read_json, read_jsonl, write_json_atomic, write_text_atomic
from ..model.generate import MAX_NEW_TOKENS, PastContext, generate, row_seeds, shared_start
from ..model.length_batches import length_batches
from ..tasks.parsing import final_answer, opens_reasoning
from ..tokenizer import NO_TEMPLATE_WHERE
from ..train.answer_estimate import answer_fit_note

# the settings of greedy decoding an evaluation may set (compare: --set KEY=VALUE), with what None means
DECODING = {"max_new_tokens": None, "repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "repeat_scope": "all"}


def decoding(settings: dict, task=None) -> dict:
    """The decoding settings in ``settings`` (a compare run's, or eval's flags), None replaced by what
    it means: ``max_new_tokens`` the task's own (with a task), the others none. These go into
    ``metrics.json``."""
    out = {k: settings.get(k) if settings.get(k) is not None else v for k, v in DECODING.items()}
    if task is not None:
        out["max_new_tokens"] = out["max_new_tokens"] or task.max_new_tokens
    return out


def require_chat(tok, model: str) -> None:
    """Tasks ask in chat messages: a tokenizer without a chat template (a base model's) is refused
    here, before any work, not at the first prompt."""
    if not tok.chat_template:
        raise ValueError(f"{model}: its tokenizer has no chat template ({NO_TEMPLATE_WHERE}), and the tasks' "
                         "prompts are chat messages; use an instruct (chat) model, or copy the chat_template.jinja "
                         "of its instruct version into its folder")


def placement(model) -> dict:
    """Where ``model`` runs, for ``metrics.json``: ``{"device": "cuda:0", "dtype": "bfloat16"}``, and
    ``"quantized": "nf4"`` for a 4-bit base. Greedy answers can differ between precisions (a near
    tie between two tokens breaks the other way)."""
    w = model.output_weight
    return expected_placement(w.device, w.dtype, getattr(model, "quantized", None))


def expected_placement(device, dtype, quantize: str | None = None) -> dict:
    """:func:`placement` as a model loaded onto ``device`` in ``dtype`` (``--quantize``'s kind, where
    given) would give it, without loading one (placement builds its own from the loaded weights
    so): predict's stamp, to find a finished run's answers before any weights are read. A guess
    that differs from the load (another GPU index) only means the model is loaded after all."""
    import torch

    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    where = {"device": str(device), "dtype": str(dtype).removeprefix("torch.")}
    return {**where, "quantized": quantize} if quantize else where


def weights_digests(model: str, adapter: str | None, **more: str | None) -> dict:
    """The SHA-256 of the weights an evaluation or its answers came from, for the files that record
    them: ``model_sha256`` (:func:`~prefopt.model.digest.weights_sha256`), ``adapter_sha256`` and
    one ``NAME_sha256`` per adapter in ``more`` (:func:`~prefopt.lora_files.adapter_sha256`); None
    where no files are on this machine, and for no adapter."""
    from ..lora_files import adapter_sha256
    from ..model.digest import weights_sha256

    return {"model_sha256": weights_sha256(model), "adapter_sha256": adapter_sha256(adapter),
            **{f"{name}_sha256": adapter_sha256(path) for name, path in more.items()}}


def prompt_settings(tok) -> dict:
    """What ``tok``'s chat template was given beyond the messages, for ``metrics.json``: the answers
    depend on it. ``chat_date`` where the template prints the date (it is in every prompt);
    ``chat_vars`` where there are any (``{"enable_thinking": False}``)."""
    dated = {"chat_date": tok.chat_date.isoformat()} if tok.prints_date and tok.chat_date else {}
    return dated | ({"chat_vars": dict(tok.chat_vars)} if tok.chat_vars else {})


def check_prompts(tok, task, records, data: str | None = None, targets: bool = False) -> None:
    """Refuse, naming the record (of the file ``data``), a prompt that holds one of the model's
    special tokens written out (``records.control_token_problem``): the model would read a turn's
    end there, and the text after it as a turn of another (a message can steer the answer so).
    ``targets``: the reference answers too (compare trains on them)."""
    for r in records:
        texts = [(f"its prompt's {m['role']} message", m["content"]) for m in task.messages(r)]
        for what, text in texts + ([("its reference answer", r.target)] if targets else []):
            if isinstance(text, str) and (problem := control_token_problem(text, tok)):
                raise ValueError(f"{data or task.name}: record {r.id!r}: {what} {problem}")


def context_of(model) -> int | None:
    """The number of positions ``model`` was trained on (its config's ``max_position_embeddings``;
    a :class:`~prefopt.model.config.ModelConfig` too), None where not known."""
    return getattr(getattr(model, "config", model), "max_position_embeddings", None)


def past_context(named: list[tuple[Any, int]], context: int | None, new_tokens: int) -> list[tuple[Any, int]]:
    """Those of ``named`` (a prompt's name or record, its number of tokens) whose prompt with
    ``new_tokens`` answer tokens runs past the model's ``context`` (none where it is not known)."""
    return [(name, n) for name, n in named if n + new_tokens > context] if context else []


def past_context_text(long: list[tuple[str, int]], total: int, what: str, context: int, new_tokens: int,
                      fix: str) -> str:
    """The warning for ``long`` (:func:`past_context`) of ``total`` ``what`` (``"records' prompts
    and answers"``): how many, the first three by name with their tokens, and ``fix``, what
    shortens them."""
    named = "; ".join(f"{name}: {n} prompt tokens + {new_tokens} to answer" for name, n in long[:3])
    more = f", and {len(long) - 3} more" if len(long) > 3 else ""
    return (f"{len(long)} of {total} {what} run past the model's context of {context} tokens ({named}{more}): "
            f"positions it never trained on, so their answers are not to be trusted; {fix}")


def past_context_records(tok, task, records, context: int | None, new_tokens: int) -> list[tuple[Any, int]]:
    """Those of ``records`` whose chat prompt with ``new_tokens`` answer tokens runs past the
    model's ``context``, each with its prompt's number of tokens."""
    if not context:
        return []
    lengths = [len(tok.apply_chat_template(task.messages(r), add_generation_prompt=True)) for r in records]
    return past_context(list(zip(records, lengths)), context, new_tokens)


def past_context_line(tok, task, records, context: int | None, new_tokens: int, what: str = "records") -> str | None:
    """Where some of ``records``' prompts with ``new_tokens`` answer tokens run past the model's
    ``context`` (``max_position_embeddings``; positions it never trained on, where an answer is not
    to be trusted): a line that says how many, names the first three (a folder's document by its
    file) and what shortens them; None where all fit or the context is not known. ``what``: what
    the line calls the records (``"test items"``)."""
    long = past_context_records(tok, task, records, context, new_tokens)
    return _records_line(task, long, len(records), context, new_tokens, what) if long else None


def _records_line(task, long: list[tuple[Any, int]], total: int, context: int, new_tokens: int, what: str) -> str:
    """:func:`past_context_line`'s line for the records ``long`` of ``total``."""
    def named(r) -> str:
        file = r.meta.get("row", {}).get("file")  # (a folder's document: predict --data FOLDER)
        return f"record {r.id!r}{f', {file}' if file else ''}"

    from ..tasks import task_options

    fix = ("a lower --task-option max_chars cuts them" if "max_chars" in task_options(task.name) else
           "shorten those texts")
    return past_context_text([(named(r), n) for r, n in long], total, f"{what}' prompts and answers", context,
                             new_tokens, fix)


@contextmanager
def quiet_past_context() -> Iterator[None]:
    """Inside: :func:`~prefopt.model.generate.generate`'s warning of a prompt past the model's
    context (which names no prompt) not said, where a command named them before answering."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PastContext)
        yield


@contextmanager
def past_context_said(command: str, model, tok, task, records, new_tokens: int) -> Iterator[set[str]]:
    """Around answering ``records``: where some run past the model's context, a warning that names
    them (:func:`past_context_line`) first, and :func:`~prefopt.model.generate.generate`'s own
    (which names none) not again inside. Yields those records' ids (predict's review column)."""
    context = context_of(model)
    long = past_context_records(tok, task, records, context, new_tokens)
    if long:
        line = _records_line(task, long, len(records), context, new_tokens, "records")
        print(f"prefopt {command}: warning: {line}", file=sys.stderr, flush=True)
    with quiet_past_context():
        yield {r.id for r, _ in long}


def predict(model, tok, task, records, *, batch_size: int = 16, max_new_tokens: int | None = None,
            repetition_penalty: float | None = None, no_repeat_ngram_size: int | None = None,
            repeat_scope: str | None = None, desc: str = "generating", show_progress: bool = True,
            return_ended: bool = False) -> list[str] | tuple[list[str], list[bool]]:
    """Greedy answers to each record's chat prompt, batched by prompt length. ``repetition_penalty``,
    ``no_repeat_ngram_size``, ``repeat_scope``: see :func:`~prefopt.model.generate.generate` (None:
    none). ``return_ended``: also whether each answer ended with an end-of-turn token (False:
    ``max_new_tokens`` stopped it)."""
    settings = decoding(dict(max_new_tokens=max_new_tokens, repetition_penalty=repetition_penalty,
                             no_repeat_ngram_size=no_repeat_ngram_size, repeat_scope=repeat_scope), task)
    check_prompts(tok, task, records)
    prompts = [tok.apply_chat_template(task.messages(r), add_generation_prompt=True) for r in records]
    texts, ended = answer_prompts(model, tok, prompts, batch_size=batch_size, desc=desc, show_progress=show_progress,
                                  **settings)
    return (texts, ended) if return_ended else texts


def answer_prompts(model, tok, prompts: list[list[int]], *, batch_size: int = 16, desc: str = "generating",
                   show_progress: bool = True, unit: str = "it", **settings) -> tuple[list[str], list[bool]]:
    """The model's answer to each prompt (token ids), batched by prompt length
    (:func:`~prefopt.model.length_batches.length_batches`: at most ``batch_size`` prompts, fewer
    where one is far longer than the rest), in the prompts' order, and whether each ended with an
    end-of-turn token (False: ``max_new_tokens`` stopped it); ``settings``:
    :func:`~prefopt.model.generate.generate`'s; a sampling ``seed`` seeds each prompt by its
    place among them all (``row_seeds``), so that its answer does not depend on ``batch_size``.
    The model runs in eval mode, and goes back to the mode it was in (``generate``)."""
    seeds = row_seeds(settings.pop("seed", None), prompts)
    steps = settings.get("max_new_tokens") or MAX_NEW_TOKENS
    _warn_if_too_large(model, prompts, batch_size, steps)
    texts: list[str] = [""] * len(prompts)
    ended = [False] * len(prompts)
    eos = set(tok.eos_token_ids)
    bar = progress(total=len(prompts), desc=desc, unit=unit, disable=not show_progress)
    start = shared_start(prompts, None, None)  # (each batch runs its own start once: at least this)
    device = getattr(getattr(model, "output_weight", None), "device", "cpu")  # (a stand-in without a head: a CPU's)
    for chunk in length_batches([len(p) for p in prompts], batch_size, steps, device, start):
        new = generate(model, [prompts[i] for i in chunk], **settings, eos_token_ids=tok.eos_token_ids,
                       pad_token_id=tok.pad_token_id or 0, seed=None if seeds is None else [seeds[i] for i in chunk])
        for i, ids in zip(chunk, new):
            texts[i] = tok.decode(ids).strip()
            ended[i] = bool(ids) and ids[-1] in eos
        bar.update(len(chunk))
    bar.close()
    return texts, ended


# each model's answering already checked for fit (a trainer's evaluator answers its items every few steps)
_CHECKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _warn_if_too_large(model, prompts: list[list[int]], batch_size: int, new_tokens: int) -> None:
    """Warn where a batch of the longest ``prompts`` will not fit (:func:`answer_fit_note`), once
    for the same model and prompts: a trainer's evaluator answers its items every few steps."""
    key = (len(prompts), max(map(len, prompts), default=0), batch_size, new_tokens)
    try:
        checked = _CHECKED.setdefault(model, set())
    except TypeError:  # an object no weak reference can name: checked every time
        checked = set()
    if key in checked:
        return
    checked.add(key)
    if note := answer_fit_note(model, prompts, batch_size, new_tokens):
        warnings.warn(note, stacklevel=3)


def task_evaluator(task, records, *, batch_size: int = 16, prefix: str = "val_", answers: str | Path | None = None,
                   **decode):
    """An evaluator for the trainers (``evaluators=[...]``): greedy answers to ``records`` scored by
    ``task``, as ``{prefix + metric: value}`` (``val_macro_f1``, ...; numbers only), so that
    ``best_metric="val_macro_f1"`` keeps the weights that answer best. ``decode``: :func:`predict`'s
    decoding settings (``max_new_tokens``, ``repetition_penalty``, ...), to score the answers as the
    test set's are made. ``answers``: a JSONL file that gets one line per evaluation, ``{"step",
    "ids", "predictions"}`` (the main process writes it; :func:`read_answers` reads it back), to
    compare two evaluations item by item. The trainer needs its ``tokenizer``."""
    def evaluate(trainer) -> dict[str, float]:
        if trainer.tokenizer is None:
            raise ValueError("task_evaluator needs the trainer's tokenizer: pass tokenizer=tok to the trainer")
        texts = predict(trainer.model, trainer.tokenizer, task, records, batch_size=batch_size, show_progress=False,
                        **decode)
        preds, metrics = score(task, records, texts, opened=reasoning_opened(trainer.tokenizer, task, records))
        if answers is not None and trainer.dist.is_main:
            with open(answers, "a", encoding="utf-8") as f:
                f.write(json_text({"step": trainer.step, "ids": [r.id for r in records], "predictions": preds}) + "\n")
        return {prefix + k: float(v) for k, v in metrics.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "n"}
    return evaluate


def read_answers(path: str | Path) -> dict[int, dict]:
    """``{step: {"ids", "predictions"}}`` from a :func:`task_evaluator` answers file (a step
    evaluated twice, as a resumed run may, keeps its last line; a line a crash cut short is passed
    over, :func:`~prefopt.fileio.json_records`); {} where there is no file."""
    path = Path(path)
    if not path.is_file():
        return {}
    return {r["step"]: {"ids": r["ids"], "predictions": r["predictions"]} for r in json_records(path)
            if {"step", "ids", "predictions"} <= r.keys()}


def fit_max_new_tokens(task, tok, records) -> tuple[int | None, int]:
    """``(max_new_tokens, cut)``: for a free-text task whose longest reference answer would not fit in
    its ``max_new_tokens``, room for it (10% more, rounded up to 32 tokens) and how many references
    the default would have cut; else ``(None, 0)`` (the task's own). Scoring an answer cut before it
    could end would measure the cap, not the model (ACI-Bench notes: 84 of 87 past its old 256)."""
    if task.kind != "generation" or not records:
        return None, 0
    lengths = [len(tok.encode(r.target)) + 1 for r in records]  # + the end-of-turn token
    cut = sum(n > task.max_new_tokens for n in lengths)
    if not cut:
        return None, 0
    return -(-int(1.1 * max(lengths)) // 32) * 32, cut


def choose_max_new_tokens(task, tok, records, flag: str) -> tuple[int | None, str | None]:
    """:func:`fit_max_new_tokens`'s cap, and the line that says why where it raised the task's
    (naming ``flag``, which sets it by hand), for compare and eval to print."""
    cap, cut = fit_max_new_tokens(task, tok, records)
    if not cut:
        return cap, None
    return cap, (f"max_new_tokens {cap}, not {task.name}'s {task.max_new_tokens}: {cut} of {len(records)} reference "
                 f"answers are longer, and would be cut before they end ({flag} to choose)")


def score(task, records, texts: list[str], ended: list[bool] | None = None, settings: dict | None = None,
          opened: bool = False) -> tuple[list, dict]:
    """Parsed predictions and the task's metrics for generated ``texts``; with ``ended`` (from
    :func:`predict`), also the share ``unfinished`` that the ``max_new_tokens`` cap stopped, and
    the decoding ``settings`` that made them (:func:`decoding`). A reasoning model's output is
    parsed after its reasoning (:func:`~prefopt.tasks.parsing.final_answer`; ``opened``: the
    generation prompt opened the block, :func:`reasoning_opened`), and the metrics say which
    share ``reasoning_unfinished`` never got past it."""
    found = [final_answer(t, opened) for t in texts]
    preds = [task.parse(answer, r) for (answer, _), r in zip(found, records)]
    metrics = task.metrics(records, preds)
    metrics["n"] = len(records)
    if ended is not None:
        metrics["unfinished"] = 1 - sum(ended) / max(len(ended), 1)  # stopped by the cap, not by the model
        metrics.update(decoding(settings or {}, task))
    if opened or any(state for _, state in found):
        metrics["reasoning_unfinished"] = sum(state == "unfinished" for _, state in found) / max(len(found), 1)
        metrics["reasoning_opened"] = opened
    return preds, metrics


def thinking_note(tok, flag: str = "--chat-vars") -> str | None:
    """The line that says a chat template has a thinking switch left unset (Qwen3's
    ``enable_thinking``: unset, a hybrid model reasons before it answers, which a task's short token
    cap cuts off), naming ``flag``; None where the template has none or it is set."""
    from ..chat_template import thinking_switch_unset

    if not thinking_switch_unset(tok.chat_template, tok.chat_vars):
        return None
    return ("the chat template has a thinking switch, enable_thinking, left unset (its default: a hybrid model such "
            f"as Qwen3 reasons before it answers); {flag} enable_thinking=false answers at once")


def reasoning_opened(tok, task, records) -> bool:
    """Whether the chat template's generation prompt opens a reasoning block (DeepSeek-R1's ends
    in ``<think>``), so that the answers begin inside it."""
    if not records:
        return False
    ids = tok.apply_chat_template(task.messages(records[0]), add_generation_prompt=True)
    return opens_reasoning(tok.decode(ids[-32:], skip_special_tokens=False))


def reasoning_note(metrics: dict, flag: str) -> str | None:
    """The line that says how many answers a reasoning model had not reached when the token cap
    stopped it (scored as naming nothing), naming ``flag``; None where none."""
    share = metrics.get("reasoning_unfinished")
    if not share:
        return None
    cap = metrics.get("max_new_tokens")
    return (f"{share:.0%} of the answers were still reasoning when {f'the {cap}-token cap' if cap else 'the cap'} "
            f"stopped them, so they name no answer (scored wrong); reasoning models need room: raise {flag}, or, "
            "where the chat template has a switch for it, answer without thinking (Qwen3: --chat-vars "
            "enable_thinking=false)")


ROW_KEYS = ("id", "target", "output", "prediction", "correct", "score", "labels")  # write_results' own; extra adds more


def write_results(out_dir: str | Path, task, records, texts, preds, metrics, extra: dict | None = None) -> None:
    """``predictions.jsonl`` (one line per item) and ``metrics.json`` in ``out_dir``, atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    scores = task.item_scores(records, preds)
    lines = []
    for r, t, p, s in zip(records, texts, preds, scores):
        row = {"id": r.id, "target": r.target, "output": t, "prediction": p, "correct": bool(task.correct(r, p)),
               "score": float(s), **({"labels": r.labels} if r.labels else {})}
        for k, v in (extra or {}).items():
            row[k] = v[len(lines)]
        lines.append(json_text(row))
    write_text_atomic(out / "predictions.jsonl", "\n".join(lines) + "\n")
    write_json_atomic(out / "metrics.json", metrics)


def keep_earlier(out_dir: str | Path, files: tuple[str, ...] = ("predictions.jsonl", "metrics.json", "paired.json")
                 ) -> Path | None:
    """Move the evaluation in ``out_dir`` (its ``files``) to ``out_dir/earlier/N/`` (the next free
    N), out of the way of a new one; return that folder, or None where there was nothing to move."""
    out = Path(out_dir)
    names = [n for n in files if (out / n).is_file()]
    if not names:
        return None
    n = 1
    while (out / "earlier" / str(n)).exists():
        n += 1
    dest = out / "earlier" / str(n)
    dest.mkdir(parents=True)
    for name in names:
        (out / name).replace(dest / name)
    return dest


def read_results(out_dir: str | Path) -> tuple[list[dict], dict] | None:
    """The rows and metrics a finished evaluation left in ``out_dir``, or ``None``."""
    out = Path(out_dir)
    if not (out / "metrics.json").is_file() or not (out / "predictions.jsonl").is_file():
        return None
    return read_jsonl(out / "predictions.jsonl"), read_json(out / "metrics.json")


def read_earlier_rows(against: str | Path | None, rows_name: str, command: str) -> list[dict] | None:
    """The rows an earlier ``command`` (eval-pairs, eval-nll) wrote to ``against/rows_name``, read
    before any model loads; None without ``--against``."""
    if not against:
        return None
    path = Path(against) / rows_name
    if not path.is_file():
        article = "an" if command[0] in "aeiou" else "a"
        raise FileNotFoundError(f"--against {against}: no {rows_name} ({article} {command} output folder)")
    return read_jsonl(path)


def write_evaluation(out_dir: str | Path, rows_name: str, rows: list[dict], metrics: dict, paired: dict | None,
                     against: str | None, say) -> Path:
    """An eval-pairs or eval-nll result in ``out_dir``: ``rows_name`` (one JSON line a row),
    ``metrics.json`` and, with ``--against``, ``paired.json``; an earlier result there moves to
    ``earlier/N/`` first (said through ``say``)."""
    kept = keep_earlier(out_dir, (rows_name, "metrics.json", "paired.json"))
    if kept:
        say(f"{out_dir} held an evaluation; it is kept in {kept}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / rows_name, jsonl_text(rows))
    write_json_atomic(out / "metrics.json", metrics)
    if paired is not None:
        write_json_atomic(out / "paired.json", {"against": str(against), **paired})
    return out
