"""How sure the model is of a classification answer: the probability it gives each label.

A greedy answer names one label; it does not say whether the model nearly named another. For
each record, every possible answer (each combination of the fields' labels, rendered exactly as
the SFT targets were: "Urgency: urgent\\nStaff: nurse") is scored by the model as a whole
assistant turn, its end-of-turn token included, teacher-forced after the record's prompt. The
answers' probabilities, normalised over all of them, give each field's distribution over its
labels by summing out the other fields. Staff can read the least sure answers first.

It costs one forward pass per possible answer and record (batched), about as much again as the
greedy answers for the portal task's 12 combinations.
"""
from __future__ import annotations

import itertools

import torch

from .._deps import progress
from ..data.sft import IGNORE
from ..kernels import sequence_logprobs

MAX_ANSWERS = 64  # the most answer combinations scored per record


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


def label_probabilities(model, tok, task, records, *, batch_size: int = 16, show_progress: bool = True
                        ) -> list[dict[str, dict[str, float]]]:
    """For each record, ``{field: {label: probability}}`` (each field's labels sum to 1): the
    :func:`marginals` of :func:`answer_logprobs`."""
    return [marginals(task, scored) for scored in answer_logprobs(model, tok, task, records, batch_size=batch_size,
                                                                  show_progress=show_progress)]


@torch.no_grad()
def answer_logprobs(model, tok, task, records, *, batch_size: int = 16, show_progress: bool = True
                    ) -> list[list[tuple[dict[str, str], float]]]:
    """For each record, ``(labels, log-prob)`` of every possible answer (:func:`answers`): the sum
    of the log-probs of the answer's tokens, as SFT trained them, after the record's prompt.
    ``batch_size``: sequences per forward pass."""
    why = scorable(task)
    if why:
        raise ValueError(why)
    seqs, owner = [], []  # (ids, prompt length) of every answer to every record; its record and labels
    for i, r in enumerate(records):
        for labels in answers(task, r):
            enc = tok.encode_prompt_response(task.messages(r), task.render(labels, r))
            seqs.append((enc.ids, enc.prompt_len))
            owner.append((i, labels))
    order = sorted(range(len(seqs)), key=lambda k: len(seqs[k][0]))  # similar lengths share a batch
    logp = [0.0] * len(seqs)
    device = model.output_weight.device
    was_training = model.training
    model.eval()
    bar = progress(total=len(records), desc="scoring labels", disable=not show_progress)
    done = 0
    for s in range(0, len(order), batch_size):
        chunk = order[s:s + batch_size]
        T = max(len(seqs[k][0]) for k in chunk)
        ids = torch.full((len(chunk), T), tok.pad_token_id or 0, dtype=torch.long)
        mask = torch.zeros((len(chunk), T), dtype=torch.long)
        labels = torch.full((len(chunk), T), IGNORE, dtype=torch.long)
        for row, k in enumerate(chunk):
            seq, p = seqs[k]
            ids[row, :len(seq)] = torch.tensor(seq)
            mask[row, :len(seq)] = 1
            labels[row, p:len(seq)] = torch.tensor(seq[p:])
        hidden = model(ids.to(device), mask.to(device), return_hidden=True)  # position t predicts token t+1
        lp = sequence_logprobs(hidden[:, :-1], model.output_weight, labels[:, 1:].to(device), ignore_index=IGNORE)
        for k, v in zip(chunk, lp.sum(-1).tolist()):
            logp[k] = v
        finished = (s + len(chunk)) * len(records) // len(seqs)  # the bar counts records, roughly
        bar.update(finished - done)
        done = finished
    bar.close()
    model.train(was_training)
    out: list[list[tuple[dict[str, str], float]]] = [[] for _ in records]
    for (i, labels), v in zip(owner, logp):
        out[i].append((labels, v))
    return out


def marginals(task, scored: list[tuple[dict[str, str], float]]) -> dict[str, dict[str, float]]:
    """Each field's label probabilities from one record's answers' log-probs: a softmax over the
    answers, then each label's answers summed."""
    p = torch.softmax(torch.tensor([v for _, v in scored], dtype=torch.float64), 0).tolist()
    out = {f.name: dict.fromkeys((labels[f.name] for labels, _ in scored), 0.0) for f in task.fields}
    for (labels, _), q in zip(scored, p):
        for name, label in labels.items():
            out[name][label] += q
    return out
