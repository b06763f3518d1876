"""Preference pairs with each prompt run once: one packed row per pair.

Chosen and rejected share their prompt, and in the medical tasks the prompt (a note, a
message, a question with its options) is most of the tokens. Run as two full sequences, the
prompt goes through the model twice, forward and backward. Packed, a pair is one row::

    [ prompt | chosen answer | rejected answer | padding ]

with a boolean attention mask (the model's ``(B, 1, S, S)`` form) under which every answer
token sees the prompt and the earlier tokens of its own answer, never the other answer, and
positions that restart after the prompt for each answer. Each answer's tokens then see exactly
the tokens and positions of their unpadded ``prompt + answer`` sequence, so the log-probs equal
the full-sequence forward's up to float rounding (the same sums in another order), and so do
the gradients. The last prompt position predicts the first token of both answers.

:func:`pack_pairs` builds the batch (``None`` when a pair does not share a non-empty prompt
followed by a non-empty answer: the caller falls back to two full sequences), and
:func:`packed_hidden` runs the model and gathers the answers' hidden states into the stacked
``[chosen; rejected]`` layout that ``prefopt.kernels.fused_preference_loss`` takes.

With ``DPOConfig.share_start`` the tokens every pair's prompt begins with (a system prompt, a
task's instructions: :func:`pairs_start`) run once, and a batch's pairs follow them in one row,
``[ start | prompt rest 1 | chosen 1 | rejected 1 | prompt rest 2 | ... ]``
(:func:`pack_pairs_after`): each pair a span of the model's packed layout, seeing the start.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from ..data.collate import as_tensor
from ..data.preference import PairExample
from ..data.sft import IGNORE, TokenizedExample, prompt_len
from ..kernels import sequence_logprobs
from ..ld_dpo import ld_weights
from ..model.generate import shared_start
from .distributed import head_operands


def split_pair(pair: PairExample) -> tuple[Sequence[int], TokenizedExample, TokenizedExample] | None:
    """``(prompt, chosen answer, rejected answer)``, the answers with their labels, or None when
    the two sides do not start with the same non-empty prompt followed by a non-empty answer."""
    c, r = pair.chosen, pair.rejected
    p = prompt_len(c.labels)
    if (p == 0 or p != prompt_len(r.labels) or c.input_ids[:p] != r.input_ids[:p]
            or p == len(c.input_ids) or p == len(r.input_ids)):
        return None
    return c.input_ids[:p], *(TokenizedExample(e.input_ids[p:], e.labels[p:]) for e in (c, r))


def pack_pairs(pairs: Sequence[PairExample], pad_id: int) -> dict[str, torch.Tensor] | None:
    """One row per pair (see the module doc), or None if some pair does not share its prompt.

    Returns ``input_ids``, ``attention_mask`` (1 on real tokens) and ``position_ids``, all
    ``(B, S)``; ``pair_mask`` ``(B, 1, S, S)``; ``labels`` ``(2B, La)`` (chosen rows first, the
    answers' labels, ``IGNORE`` on padding) and ``gather`` ``(2B, La)``: the column whose hidden
    state predicts each label.
    """
    parts = [split_pair(p) for p in pairs]
    if not parts or any(s is None for s in parts):
        return None
    B = len(parts)
    S = max(len(s[0]) + len(s[1].input_ids) + len(s[2].input_ids) for s in parts)
    La = max(len(e.input_ids) for s in parts for e in s[1:])
    ids = torch.full((B, S), pad_id, dtype=torch.long)
    pos = torch.zeros((B, S), dtype=torch.long)
    side = torch.full((B, S), -1, dtype=torch.long)  # 0 prompt, 1 chosen, 2 rejected, -1 padding
    labels = torch.full((2 * B, La), IGNORE, dtype=torch.long)
    gather = torch.zeros((2 * B, La), dtype=torch.long)
    for b, (prompt, *answers) in enumerate(parts):
        p = start = len(prompt)
        ids[b, :p], pos[b, :p], side[b, :p] = as_tensor(prompt), torch.arange(p), 0
        for k, ans in enumerate(answers):
            a = len(ans.input_ids)
            ids[b, start:start + a] = as_tensor(ans.input_ids)
            pos[b, start:start + a], side[b, start:start + a] = p + torch.arange(a), k + 1
            labels[b + k * B, :a] = as_tensor(ans.labels)
            gather[b + k * B, :a] = torch.cat([torch.tensor([p - 1]), start + torch.arange(a - 1)])
            start += a
    # Padding only at the end of a row: a pair's real tokens sit in the same columns whatever
    # else is in the batch, so its sums do not depend on the batch (also in bf16).
    col = torch.arange(S)
    may_see = (col[None, :] <= col[:, None])[None] & (side >= 0)[:, None, :]  # causal in the row, real keys
    may_see &= (side[:, None, :] == 0) | (side[:, None, :] == side[:, :, None])  # the prompt, or its own answer
    return {"input_ids": ids, "attention_mask": (side >= 0).long(), "position_ids": pos, "pair_mask": may_see[:, None],
            "labels": labels, "gather": gather}


def pairs_start(pairs: Sequence[PairExample]) -> int:
    """How many tokens every pair's prompt begins with (the chat template's system prompt, a
    task's instructions), each keeping at least one of its own; 0 where fewer than
    ``generate.MIN_SHARED``, or where some pair does not share its prompt (:func:`split_pair`).

    Taken over a whole dataset, not a batch: a pair's hidden states then come out the same, to
    the bit, in whatever batch it runs (the reference cache's fill and training's micro-batches);
    only the head's GEMM may round its log-probs by the batch's number of rows."""
    parts = [split_pair(p) for p in pairs]
    if any(s is None for s in parts):
        return 0
    return shared_start([s[0] for s in parts], None, None)


def pack_pairs_after(pairs: Sequence[PairExample], start: int) -> dict[str, torch.Tensor] | None:
    """Every pair in one row after the ``start`` tokens all their prompts begin with
    (:func:`pairs_start`; ``DPOConfig.share_start``), run once: ``[start | prompt rest 1 | chosen 1 |
    rejected 1 | prompt rest 2 | ...]``, each pair a span of the model's :class:`Packed` layout
    (``lengths`` ``(B, 3)``: its prompt's rest and its two answers), seeing the start, its
    prompt, and within each answer that answer's earlier tokens. None where some pair does not
    share its prompt or begin with the start.

    Returns ``input_ids`` ``(1, L)``, ``lengths``, ``start``, ``tokens`` (the pairs' tokens, each
    prompt counted once, as :func:`pack_pairs` runs them), and ``labels`` and ``gather``
    ``(2B, La)`` as :func:`pack_pairs` gives them (``gather``: columns of the one row)."""
    parts = [split_pair(p) for p in pairs]
    if not parts or any(s is None for s in parts) or any(
            len(s[0]) <= start or list(s[0][:start]) != list(parts[0][0][:start]) for s in parts):
        return None
    B = len(parts)
    La = max(len(e.input_ids) for s in parts for e in s[1:])
    labels = torch.full((2 * B, La), IGNORE, dtype=torch.long)
    gather = torch.zeros((2 * B, La), dtype=torch.long)
    ids, lengths, end = [as_tensor(parts[0][0][:start])], [], start
    for b, (prompt, *answers) in enumerate(parts):
        rest = as_tensor(prompt[start:])
        ids.append(rest)
        first, end = end + len(rest) - 1, end + len(rest)  # the prompt's last column predicts each answer's first token
        for k, ans in enumerate(answers):
            a = len(ans.input_ids)
            ids.append(as_tensor(ans.input_ids))
            labels[b + k * B, :a] = as_tensor(ans.labels)
            gather[b + k * B, :a] = torch.cat([torch.tensor([first]), end + torch.arange(a - 1)])
            end += a
        lengths.append([len(rest), *(len(a.input_ids) for a in answers)])
    tokens = sum(len(s[0]) + len(s[1].input_ids) + len(s[2].input_ids) for s in parts)
    return {"input_ids": torch.cat(ids).long()[None], "lengths": torch.tensor(lengths), "start": torch.tensor(start),
            "tokens": torch.tensor(tokens), "labels": labels, "gather": gather}


def packed_hidden(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The hidden states ``(2B, La, D)`` that predict ``batch["labels"]``, chosen rows first."""
    if "lengths" in batch:  # every pair in one row after a shared start (pack_pairs_after)
        hidden = model(batch["input_ids"], packed=batch["lengths"], packed_start=int(batch["start"]),
                       return_hidden=True)  # (1, L, D)
        return hidden[0, batch["gather"]]
    hidden = model(batch["input_ids"], batch["pair_mask"], batch["position_ids"], return_hidden=True)  # (B, S, D)
    rows = torch.arange(hidden.shape[0], device=hidden.device).repeat(2)[:, None]
    return hidden[rows, batch["gather"]]


def pair_hidden(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states ``(2B, L, D)`` and the labels ``(2B, L)`` they predict, chosen rows first,
    for a packed batch (:func:`pack_pairs`) or a stacked one (``data.preference.pair_collate``)."""
    if "gather" in batch:
        return packed_hidden(model, batch), batch["labels"]
    hidden = model(batch["input_ids"], batch["attention_mask"], return_hidden=True)  # (2B, T, D)
    return hidden[:, :-1], batch["labels"][:, 1:]  # position t predicts token t+1


def pair_logp_sums(model: torch.nn.Module, batch: dict[str, torch.Tensor], ld_alpha: float | None = None
                   ) -> torch.Tensor:
    """Sequence log-prob sums ``(2B,)`` of the answers, chosen rows first, either layout;
    with ``ld_alpha``, LD-DPO's weighted sums (``prefopt.ld_dpo``)."""
    hidden, labels = pair_hidden(model, batch)
    per_token = sequence_logprobs(*head_operands(model, hidden), labels, ignore_index=IGNORE)
    if ld_alpha is None:
        return per_token.sum(-1)
    return (per_token * ld_weights(labels, ld_alpha, IGNORE).to(per_token.dtype)).sum(-1)


@torch.no_grad()
def shared_prompt_logps(model: torch.nn.Module, pairs: Sequence[PairExample], pad_id: int,
                        device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Chosen and rejected sequence log-prob sums ``(B,)`` each, fp32, each prompt run once.

    ``model`` is a prefopt causal LM (or a wrapper with ``.module``); every pair must share its
    prompt (:func:`split_pair`).
    """
    batch = pack_pairs(pairs, pad_id)
    if batch is None:
        raise ValueError("shared_prompt_logps needs pairs whose chosen and rejected start with the same prompt")
    sums = pair_logp_sums(model, {k: v.to(device) for k, v in batch.items()}).float()
    return sums[:len(pairs)], sums[len(pairs):]
