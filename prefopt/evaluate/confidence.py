"""How sure the model is of a classification answer: the probability it gives each label.

A greedy answer names one label; it does not say whether the model nearly named another. For
each record, every possible answer (each combination of the fields' labels, rendered exactly as
the SFT targets were: "Urgency: urgent\\nStaff: nurse") is scored by the model as a whole
assistant turn, its end-of-turn token included, teacher-forced after the record's prompt. The
answers' probabilities, normalised over all of them, give each field's distribution over its
labels by summing out the other fields. Staff can read the least sure answers first.

Each record's prompt runs once, with its answers after it as a prefix tree, so the tokens they share
from their start run once too (:func:`answer_logprobs`, :func:`_pack`); and the start that every
prompt of a batch shares (the system prompt, the task's instructions) runs once for the batch.
"""
from __future__ import annotations

import itertools

import numpy as np
import torch

from .._deps import progress
from ..kernels import sequence_logprobs
from ..model import KVCache, eval_mode
from ..model.generate import run_shared_start, shared_start
from ..model.length_batches import length_batches
from .stats import average_ranks

MAX_ANSWERS = 64  # the most answer combinations scored per record
# How answers are scored, recorded beside the scores (compare's metrics.json, predict's settings) so that scores made
# otherwise are not reused: 2, MedQA by its letter (Task.scored_prefix); 1 (before it was recorded), whole answers.
SCORING = 2


def answers(task, record) -> list[dict[str, str]]:
    """Every combination of ``task``'s fields' labels that ``record`` may be answered with (for
    MedQA, its own options)."""
    names = [f.name for f in task.fields]
    return [dict(zip(names, combo)) for combo in itertools.product(*[task.choices(f, record) for f in task.fields])]


def scorable(task) -> str | None:
    """None where :func:`label_probabilities` can score ``task``'s answers; else why not."""
    if getattr(task, "kind", None) != "classification":
        return f"{task.name} answers in free text: there is no set of labels to score"
    n = 1
    for f in task.fields:
        n *= max(len(f.labels), 1)
    if n > MAX_ANSWERS:
        return f"{task.name}'s fields have {n} combinations of labels, more than the {MAX_ANSWERS} scored per record"
    return None


def label_probabilities(model, tok, task, records, *, batch_size: int = 16, show_progress: bool = True,
                        desc: str = "scoring labels", temperature: float = 1.0) -> list[dict[str, dict[str, float]]]:
    """For each record, ``{field: {label: probability}}`` (each field's labels sum to 1): the
    :func:`marginals` of :func:`answer_logprobs` (``temperature``: :mod:`.temperature`'s)."""
    return [marginals(task, scored, temperature)
            for scored in answer_logprobs(model, tok, task, records, batch_size=batch_size,
                                          show_progress=show_progress, desc=desc)]


@torch.no_grad()
def answer_logprobs(model, tok, task, records, *, batch_size: int = 16, show_progress: bool = True,
                    desc: str = "scoring labels") -> list[list[tuple[dict[str, str], float]]]:
    """For each record, ``(labels, log-prob)`` of every possible answer (:func:`answers`): the sum
    of the log-probs of the answer's tokens, as SFT trained them, after the record's prompt.

    The prompt runs once per record: a row holds ``[prompt | the answers' prefix tree]`` under a
    mask by which each token sees the prompt and its own answer's tokens before it, at the
    positions it would have alone (:func:`_pack`: as :mod:`prefopt.train.shared_prompt` packs a
    preference pair, and the tokens the answers share from their start run once). The start
    that every prompt of the batch has (:func:`~prefopt.model.generate.shared_start`: at least
    16 tokens) runs once for the batch into a KV cache that each row reads. ``batch_size``: the
    most records a forward pass, batched by prompt length
    (:func:`~prefopt.model.length_batches.length_batches`); ``desc``: the progress bar's label."""
    why = scorable(task)
    if why:
        raise ValueError(why)
    device = model.output_weight.device
    encoded = [_encode(tok, task, r) for r in records]
    with eval_mode(model):  # each module's own mode back after
        bar = progress(total=len(records), desc=desc, disable=not show_progress)
        out: list[list[tuple[dict[str, str], float]]] = [[] for _ in records]
        prompts = [prompt for prompt, _ in encoded]
        common = shared_start(prompts, None, None)  # (each batch runs its own start once: at least this)
        for chunk in length_batches([len(p) for p in prompts], batch_size, device=device, start=common):
            rows = [encoded[i] for i in chunk]
            start = shared_start([prompt for prompt, _ in rows], model.config, None)
            batch = _pack([(prompt, [ids for _, ids in scored]) for prompt, scored in rows], tok.pad_token_id or 0,
                          start)
            cache = None
            if start:
                B, S = batch["input_ids"].shape
                cache = KVCache(model.config, B, start + S, dtype=model.output_weight.dtype, device=device)
                run_shared_start(model, rows[0][0][:start], cache)
            hidden = model(batch["input_ids"].to(device), batch["mask"].to(device), batch["position_ids"].to(device),
                           kv_cache=cache, return_hidden=True)  # (B, S, D)
            h = hidden[batch["row"].to(device), batch["column"].to(device)]  # (U, D): each scored position once
            logp = sequence_logprobs(*model.head(h), batch["label"].to(device)).to(torch.float64)  # (U,)
            sums = torch.zeros(sum(len(scored) for _, scored in rows), dtype=torch.float64, device=device)
            sums.index_add_(0, batch["answer"].to(device), logp[batch["term"].to(device)])
            sums = iter(sums.tolist())
            for i, (_, scored) in zip(chunk, rows):
                out[i] = [(labels, next(sums)) for labels, _ in scored]
            bar.update(len(rows))
        bar.close()
    return out


def _encode(tok, task, record) -> tuple[list[int], list[tuple[dict[str, str], list[int]]]]:
    """The record's prompt ids and each possible answer's ids after it, encoded as SFT encodes
    them: all of them, or where the task names a :meth:`scored_prefix`, the answer's first tokens
    that the prefix alone encodes to as well."""
    prompt, scored = None, []
    messages = task.messages(record)

    def response(text):
        nonlocal prompt
        enc = tok.encode_prompt_response(messages, text)
        if prompt is None:
            prompt = enc.ids[:enc.prompt_len]
        elif enc.ids[:enc.prompt_len] != prompt:
            raise ValueError(f"record {record.id}: the prompt encodes differently before two of its answers")
        return enc.ids[enc.prompt_len:]

    for labels in answers(task, record):
        text = task.render(labels, record)
        ids = response(text)
        head = task.scored_prefix(labels, record)
        if head is not None:
            ids = ids[:_common_start(ids, response(head))]
            if not ids:
                raise ValueError(f"record {record.id}: the answer {text!r} does not start with the tokens of its "
                                 f"scored prefix {head!r}")
        scored.append((labels, ids))
    if len({tuple(ids) for _, ids in scored}) < len(scored):
        raise ValueError(f"record {record.id}: two of its answers have the same scored tokens")
    return prompt, scored


def _common_start(a: list[int], b: list[int]) -> int:
    """How many ids ``a`` and ``b`` share from their start."""
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _tree(answers: list[list[int]]) -> tuple[list[int], list[int], list[list[int]]]:
    """The answers' tokens as a prefix tree, leaving out each answer's last token (it is only
    predicted, never read): ``(tokens, parents, paths)``, one entry of the first two per node in
    the order first met (a parent before its children; parent -1: the prompt), and per answer
    the nodes of its tokens but the last. Answers that start alike share those nodes: the
    portal's twelve answers (123 tokens in SmolLM2's tokenizer) need 42 nodes."""
    nodes: dict[tuple[int, int], int] = {}
    tokens, parents, paths = [], [], []
    for a in answers:
        parent, path = -1, []
        for t in a[:-1]:
            node = nodes.setdefault((parent, t), len(tokens))
            if node == len(tokens):
                tokens.append(t)
                parents.append(parent)
            parent = node
            path.append(node)
        paths.append(path)
    return tokens, parents, paths


def _pack(rows: list[tuple[list[int], list[list[int]]]], pad_id: int, start: int = 0) -> dict[str, torch.Tensor]:
    """One row per record, ``[prompt | its answers' prefix tree (:func:`_tree`) | padding]``:
    ``input_ids`` and ``position_ids`` ``(B, S)``, each node at its answers' position; the
    boolean ``mask`` ``(B, 1, S, start + S)``: the prompt causal, a node sees the prompt, its
    ancestors and itself (so its hidden state is the one it has in each of its answers alone).
    ``start``: the prompts' first tokens, which every prompt has, left out of the rows (a KV
    cache holds them: every real token sees them, and positions count them).

    What to score, each (position, next token) once though answers share it: ``row``,
    ``column`` and ``label`` ``(U,)``, a hidden state and the token it predicts (from the
    prompt's last position the answers' first tokens, from a node its children's); and per
    term of the answers' sums, ``answer`` (its answer, record by record) and ``term`` (its
    entry of those U)."""
    rows = [(prompt[start:], a) for prompt, a in rows]
    trees = [_tree(a) for _, a in rows]
    B = len(rows)
    S = max(len(p) + len(tokens) for (p, _), (tokens, _, _) in zip(rows, trees))
    ids = torch.full((B, S), pad_id, dtype=torch.long)
    pos = torch.zeros((B, S), dtype=torch.long)
    mask = torch.zeros((B, S, S), dtype=torch.bool)
    scored: dict[tuple[int, int, int], int] = {}  # (row, column, label) -> its index in the U
    answer, term, n, ends = [], [], 0, []
    for b, ((prompt, ans), (tokens, parents, paths)) in enumerate(zip(rows, trees)):
        p, m = len(prompt), len(tokens)
        ends.append(p + m)
        ids[b, :p + m] = torch.tensor(prompt + tokens, dtype=torch.long)
        depth = []
        for i, parent in enumerate(parents):
            depth.append(0 if parent < 0 else depth[parent] + 1)
            if parent >= 0:
                mask[b, p + i, p:p + m] = mask[b, p + parent, p:p + m]  # its parent's ancestors
            mask[b, p + i, p + i] = True
        pos[b, :p + m] = start + torch.cat([torch.arange(p), p + torch.tensor(depth, dtype=torch.long)])
        mask[b, :p, :p] = torch.ones(p, p, dtype=torch.bool).tril()
        mask[b, p:p + m, :p] = True
        for a, path in zip(ans, paths):
            for column, label in zip([p - 1] + [p + node for node in path], a):
                answer.append(n)
                term.append(scored.setdefault((b, column, label), len(scored)))
            n += 1
    diagonal = torch.arange(S)
    mask[:, diagonal, diagonal] = True  # padding sees itself: no query without a key
    if start:  # the cached start: seen by every real token
        seen = torch.arange(S)[None] < torch.tensor(ends)[:, None]  # (B, S): the row's real tokens
        mask = torch.cat([seen[:, :, None].expand(B, S, start), mask], 2)
    row, column, label = torch.tensor(list(scored), dtype=torch.long).reshape(-1, 3).T
    return {"input_ids": ids, "position_ids": pos, "mask": mask[:, None], "row": row, "column": column,
            "label": label, "answer": torch.tensor(answer, dtype=torch.long),
            "term": torch.tensor(term, dtype=torch.long)}


def marginals(task, scored: list[tuple[dict[str, str], float]], temperature: float = 1.0
              ) -> dict[str, dict[str, float]]:
    """Each field's label probabilities from one record's answers' log-probs: a softmax over the
    answers (their log-probs divided by ``temperature``: :mod:`.temperature`), then each label's
    answers summed."""
    p = torch.softmax(torch.tensor([v for _, v in scored], dtype=torch.float64) / temperature, 0).tolist()
    out = {f.name: dict.fromkeys((labels[f.name] for labels, _ in scored), 0.0) for f in task.fields}
    for (labels, _), q in zip(scored, p):
        for name, label in labels.items():
            out[name][label] += q
    return out


def auroc(scores, right) -> float | None:
    """The probability that a right answer's score exceeds a wrong one's (ties count half: the
    Mann-Whitney U over the pairs); None without both kinds of answer."""
    scores, right = np.asarray(scores, dtype=float), np.asarray(right, dtype=bool)
    pos, neg = int(right.sum()), int((~right).sum())
    if not pos or not neg:
        return None
    ranks = average_ranks(scores)
    return float((ranks[right].sum() - pos * (pos + 1) / 2) / (pos * neg))


def brier_gaps(task, records, probabilities: list[dict]) -> list[dict[str, float]]:
    """Each record's Brier score per field, ``{field: gap}``: the sum over the field's labels of
    the squared gap between the label's probability and 1 for the record's label, 0 for the
    others (0: certain and right; 2: certain and wrong); their mean is the field's Brier score."""
    return [{f.name: sum((q - (label == r.labels[f.name])) ** 2 for label, q in p[f.name].items())
             + (r.labels[f.name] not in p[f.name])  # a label no answer names: probability 0
             for f in task.fields} for p, r in zip(probabilities, records)]


def reliability(confidence, right, bins: int = 10) -> list[dict]:
    """The answers binned by confidence, ``bins`` of equal width over [0, 1] (1.0 in the last):
    for each bin that holds any, its bounds, how many (``n``), their mean ``confidence`` and their
    ``accuracy``; a calibrated model's lie on the diagonal (the report's calibration plot)."""
    conf, right = np.asarray(confidence, dtype=float), np.asarray(right, dtype=float)
    where = np.minimum((conf * bins).astype(int), bins - 1)
    return [{"bin": [b / bins, (b + 1) / bins], "n": int((where == b).sum()),
             "confidence": float(conf[where == b].mean()), "accuracy": float(right[where == b].mean())}
            for b in np.unique(where).tolist()]


def calibration_error(binned: list[dict]) -> float:
    """The expected calibration error of :func:`reliability`'s bins: each bin's gap between its
    mean confidence and its accuracy, weighted by its share of the answers (0: a label given 0.8
    is right 8 times in 10)."""
    total = sum(b["n"] for b in binned)
    return float(sum(b["n"] / total * abs(b["confidence"] - b["accuracy"]) for b in binned))


def chosen(task, preds: list[dict], probabilities: list[dict]) -> list[dict[str, float | None]]:
    """Each record's confidence in its prediction: ``{field: probability of the predicted label}``
    (None where the answer named no label)."""
    return [{f.name: p[f.name][pred[f.name]] if pred.get(f.name) else None for f in task.fields}
            for pred, p in zip(preds, probabilities)]


def likeliest(task, probabilities: list[dict]) -> list[dict[str, str]]:
    """Each record's likeliest label per field, ``{field: label}``: the one the model gives the
    highest probability (on a tie, the first in the field's order). It is usually the label the
    answer named; where the answer named none, it is the model's best guess."""
    return [{f.name: max(p[f.name], key=p[f.name].get) for f in task.fields} for p in probabilities]


def confidence_possible(task, command: str) -> bool:
    """Whether ``task``'s answers can be scored (:func:`scorable`); where not, ``prefopt
    <command>`` prints a line that says why (free text, too many labels)."""
    why = scorable(task)
    if why:
        print(f"prefopt {command}: no confidence: {why}", flush=True)
    return why is None


def probabilities_for(model, tok, task, records, *, batch_size: int, command: str, show_progress: bool = True,
                      temperature: float = 1.0) -> list[dict] | None:
    """:func:`label_probabilities`, or None where ``task`` cannot be scored
    (:func:`confidence_possible` says why)."""
    if not confidence_possible(task, command):
        return None
    return label_probabilities(model, tok, task, records, batch_size=batch_size, show_progress=show_progress,
                               temperature=temperature)


def confidence_metrics(task, records, preds: list[dict], probabilities: list[dict]) -> dict:
    """Per field, how well the predicted label's probability tells right answers from wrong on
    labelled ``records``: ``auroc``, the accuracy of the more confident half of the answers and of
    the rest, the ``median`` confidence (an answer that named no label has confidence 0, so it
    ranks last and is wrong), and ``accuracy_likeliest``, that of the :func:`likeliest` labels in
    place of the answers'. ``auroc_named`` is the AUROC among the answers that named a label (the
    share ``named``): where many name none, ``auroc`` mostly tells those from the rest, and this
    says whether the probability itself sorts the answers. Calibration, of the label probabilities
    themselves: ``brier``, the mean over records of the squared gaps between each label's
    probability and 1 for the record's label, 0 for the others (0 best, 2 worst), and ``ece``,
    :func:`calibration_error` of the likeliest label's probability against its being right, with
    its bins (``reliability``)."""
    out = {}
    sure = chosen(task, preds, probabilities)
    best = likeliest(task, probabilities)
    gaps = brier_gaps(task, records, probabilities)
    for f in task.fields:
        conf = np.array([s[f.name] or 0.0 for s in sure])
        right = np.array([pred.get(f.name) == r.labels[f.name] for pred, r in zip(preds, records)])
        order = np.argsort(-conf, kind="stable")  # the more confident half: the first ceil(n/2) by confidence
        top = np.zeros(len(conf), dtype=bool)
        top[order[:(len(conf) + 1) // 2]] = True
        named = np.array([s[f.name] is not None for s in sure])
        likely_right = [b[f.name] == r.labels[f.name] for b, r in zip(best, records)]
        binned = reliability([p[f.name][b[f.name]] for p, b in zip(probabilities, best)], likely_right)
        out[f.name] = {"auroc": auroc(conf, right), "auroc_named": auroc(conf[named], right[named]),
                       "named": float(named.mean()), "accuracy_confident_half": float(right[top].mean()),
                       "accuracy_other_half": float(right[~top].mean()) if (~top).any() else None,
                       "median": float(np.median(conf)),
                       "accuracy_likeliest": float(np.mean(likely_right)),
                       "brier": float(np.mean([g[f.name] for g in gaps])),
                       "ece": calibration_error(binned), "reliability": binned}
    return out


def scored_answers(task, records, preds: list[dict], probabilities: list[dict]) -> tuple[dict, dict[str, list]]:
    """What an evaluation with confidence adds (``prefopt eval --confidence``, each ``prefopt
    compare`` stage): ``metrics.json``'s ``confidence`` (:func:`confidence_metrics`) and the
    per-row ``confidence`` (:func:`chosen`), ``likeliest`` (:func:`likeliest`) and ``brier``
    (:func:`brier_gaps`, for stages' calibration to be tested item by item) of ``predictions.jsonl``."""
    return (confidence_metrics(task, records, preds, probabilities),
            {"confidence": chosen(task, preds, probabilities), "likeliest": likeliest(task, probabilities),
             "brier": brier_gaps(task, records, probabilities)})


def confidence_line(c: dict) -> str:
    """One field's :func:`confidence_metrics` in words."""
    auroc_text = "n/a (all right or all wrong)" if c["auroc"] is None else f"{c['auroc']:.3f}"
    other = "" if c["accuracy_other_half"] is None else f", the others {c['accuracy_other_half']:.3f}"
    if c["named"] < 1:  # the answers that named no label rank last, and are wrong
        named = "n/a" if c["auroc_named"] is None else f"{c['auroc_named']:.3f}"
        auroc_text += f"; {named} among the {c['named']:.0%} of answers that named a label"
    calibrated = f"; Brier {c['brier']:.3f}, ECE {c['ece']:.3f}" if "brier" in c else ""  # (not in earlier runs')
    return (f"AUROC {auroc_text} (right vs wrong answers); accuracy of the more confident half "
            f"{c['accuracy_confident_half']:.3f}{other}; median {c['median']:.3f}; accuracy of the likeliest "
            f"labels {c['accuracy_likeliest']:.3f}{calibrated}")
