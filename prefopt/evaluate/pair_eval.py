"""How a model (+ adapter) ranks held-out preference pairs (``prefopt eval-pairs``): DPO's implicit
reward of each answer, ``beta * (log-prob under the model - log-prob under the reference)``, as the
DPO trainer's eval set measures it (TRL's names: ``rewards/accuracies``, ``rewards/margins``,
``logps/chosen``, ``logps/rejected``), with bootstrap intervals; and, with no reference needed,
how often the model alone gives the chosen answer the higher log-prob, summed and per token
(summed log-probs favour the shorter answer)."""
from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext

import numpy as np
import torch

from .._deps import progress
from ..data.preference import PairExample, pair_collate
from ..lora import disable_adapter
from ..model import eval_mode
from ..train.shared_prompt import pack_pairs, pack_pairs_after, pair_logp_sums, pairs_start
from .stats import bootstrap_ci, mcnemar_exact, paired_bootstrap


@torch.no_grad()
def pair_logps(model, pairs: Sequence[PairExample], pad_id: int, *, batch_size: int = 8,
               base: bool = False, desc: str = "scoring pairs") -> tuple[np.ndarray, np.ndarray]:
    """Chosen and rejected answers' log-prob sums ``(n,)`` each, fp32, under ``model`` in eval mode
    (each module's own mode back after; ``base``: with its adapters off); a batch whose pairs
    share their prompts runs each prompt once, as DPO training does
    (:func:`~prefopt.train.shared_prompt.pack_pairs`), and the prompt start all the pairs share
    once a batch, as DPO's ``share_start`` does (:func:`~prefopt.train.shared_prompt.pack_pairs_after`)."""
    device = next(model.parameters()).device
    start = pairs_start(pairs)
    chosen, rejected = [], []
    bar = progress(total=len(pairs), desc=desc, unit="pair", delay=2, leave=False)
    with eval_mode(model), disable_adapter(model) if base else nullcontext():  # modes back after
        for i in range(0, len(pairs), batch_size):
            chunk = pairs[i:i + batch_size]
            # the shared start and each prompt once where they are shared
            batch = (start and pack_pairs_after(chunk, start)) or pack_pairs(chunk, pad_id) or pair_collate(chunk, pad_id)
            sums = pair_logp_sums(model, {k: v.to(device) for k, v in batch.items()})
            sums = sums.float().cpu().numpy()
            chosen.append(sums[:len(chunk)])
            rejected.append(sums[len(chunk):])
            bar.update(len(chunk))
    bar.close()
    return np.concatenate(chosen), np.concatenate(rejected)


def pair_metrics(pairs: Sequence[PairExample], policy: tuple[np.ndarray, np.ndarray],
                 reference: tuple[np.ndarray, np.ndarray] | None, *, beta: float, n_resamples: int = 2000,
                 seed: int = 0) -> tuple[dict, list[dict]]:
    """The metrics and one row per pair. Without ``reference`` only the model's own log-probs."""
    n = len(pairs)
    pc, pr = policy
    tokens_c = np.array([p.chosen.n_label_tokens for p in pairs], float)
    tokens_r = np.array([p.rejected.n_label_tokens for p in pairs], float)

    def share(right: np.ndarray) -> dict:
        return {"value": float(right.mean()), "ci": bootstrap_ci(lambda i: float(right[i].mean()), n,
                                                                 n_resamples=n_resamples, seed=seed)}

    prefers = {"prefers_chosen_logp_sum": pc > pr, "prefers_chosen_logp_per_token": pc / tokens_c > pr / tokens_r}
    m = {"n_pairs": n, "logps/chosen": float(pc.mean()), "logps/rejected": float(pr.mean()),
         **{name: share(right) for name, right in prefers.items()}}
    rows = [{"pair": i + 1, "logp_chosen": float(pc[i]), "logp_rejected": float(pr[i]),
             "tokens_chosen": int(tokens_c[i]), "tokens_rejected": int(tokens_r[i]),
             **{name: bool(right[i]) for name, right in prefers.items()}} for i in range(n)]
    if reference is not None:
        rc, rr = reference
        reward_c, reward_r = beta * (pc - rc), beta * (pr - rr)
        margin = reward_c - reward_r
        m |= {"beta": beta, "rewards/chosen": float(reward_c.mean()), "rewards/rejected": float(reward_r.mean()),
              "rewards/accuracies": share(margin > 0),
              "rewards/margins": {"value": float(margin.mean()), "ci": bootstrap_ci(
                  lambda i: float(margin[i].mean()), n, n_resamples=n_resamples, seed=seed)}}
        for row, c, r in zip(rows, rc, rr):
            row |= {"ref_logp_chosen": float(c), "ref_logp_rejected": float(r),
                    "margin": float(beta * ((row["logp_chosen"] - c) - (row["logp_rejected"] - r)))}
    return m, rows


def summary_lines(m: dict) -> list[str]:
    """The metrics as console lines."""
    def pct(k: str) -> str:
        lo, hi = m[k]["ci"]
        return f"{m[k]['value']:.0%} [{lo:.0%}, {hi:.0%}]"

    lines = []
    if "rewards/accuracies" in m:
        lo, hi = m["rewards/margins"]["ci"]
        lines.append(f"reward accuracy {pct('rewards/accuracies')} of {m['n_pairs']} pairs; mean margin "
                     f"{m['rewards/margins']['value']:.3f} [{lo:.3f}, {hi:.3f}] (beta {m['beta']})")
    lines.append(f"the model alone prefers the chosen answer in {pct('prefers_chosen_logp_sum')} (log-prob sum), "
                 f"{pct('prefers_chosen_logp_per_token')} (per token); mean log-prob chosen {m['logps/chosen']:.2f}, "
                 f"rejected {m['logps/rejected']:.2f}")
    return lines


def against(rows: list[dict], earlier: list[dict], *, n_resamples: int = 2000, seed: int = 0) -> dict:
    """This evaluation's pairs against an earlier one's of the same pairs (another adapter, such
    as the SFT one): how often each model alone prefers the chosen answer (log-prob sum, and per
    token), paired: the difference with its bootstrap interval, and exact McNemar on the pairs
    where the two disagree. Rewards are left out: each is measured against its own reference."""
    check_same_pairs([place(r) for r in rows], earlier)
    out = {"n_pairs": len(rows)}
    for name in ("prefers_chosen_logp_sum", "prefers_chosen_logp_per_token"):  # as pair_metrics put them in rows
        a, b = (np.array([r[name] for r in side], float) for side in (earlier, rows))
        out[name] = {"earlier": float(a.mean()), "this": float(b.mean()),
                     **paired_bootstrap(lambda i, v=a: float(v[i].mean()), lambda i, v=b: float(v[i].mean()),
                                        len(rows), n_resamples=n_resamples, seed=seed),
                     "mcnemar": mcnemar_exact(a.astype(bool), b.astype(bool))}
    return out


def place(row: dict) -> tuple[str | None, int]:
    """Where a pairs.jsonl row's pair is in the data: its file (where several were read) and line."""
    return row.get("file"), row["line"]


def check_same_pairs(places: list[tuple[str | None, int]], earlier: list[dict]) -> None:
    """ValueError unless the earlier evaluation's rows are the pairs at ``places`` of the data
    (:func:`place`)."""
    if places != [place(r) for r in earlier]:
        raise ValueError("--against: that evaluation scored other pairs (their files or lines in the data differ); "
                         "evaluate both on the same data with the same --max-length")


def against_line(c: dict, where: str) -> str:
    """The paired test as a console line."""
    s = c["prefers_chosen_logp_sum"]
    lo, hi = s["ci"]
    m = s["mcnemar"]
    return (f"against {where}: the model alone prefers the chosen answer in {s['this']:.0%} of pairs, there "
            f"{s['earlier']:.0%} (difference {s['delta']:+.1%} [{lo:+.1%}, {hi:+.1%}], bootstrap p = "
            f"{s['p_value']:.3g}; McNemar p = {m['p_value']:.3g}: {m['b_only']} pairs newly right, {m['a_only']} "
            "newly wrong)")
