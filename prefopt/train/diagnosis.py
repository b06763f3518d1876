"""What a DPO run's log says went wrong, in words: the pair accuracy stayed near chance (it never
learned to rank its pairs), or the chosen answers became less likely (DPO without an NLL term);
for KTO, its completions stayed near chance on their label's side of the reference point.
Read from the first and last quarter of the logged steps (:func:`.metrics.first_and_last`), each
only where those quarters judged :data:`JUDGED` pairs or more;
said at the end of ``prefopt dpo``, in the model card and in compare's report."""
from __future__ import annotations

from ..losses import UNPAIRED, reads_nll

LEARNED = 0.6  # a final pair accuracy below this: DPO did not learn to rank its training pairs
JUDGED = 16  # pairs (KTO: examples) a quarter must have judged before its figures are read as a failure
CHOSEN_DROP = 1.0  # nats: a larger fall of the chosen answers' mean log-prob is pointed out


# what the sentences read ("pairs", "examples": each logged step's count, since 2026-12-06)
WARNING_KEYS = ("rewards/accuracies", "logps/chosen", "kto/accuracies", "pairs", "examples")


def too_few(d: dict, noun: str, parts: tuple[str, ...] = ("last",)) -> bool:
    """Whether a window of ``d`` (a ``first_and_last``; ``parts``: "first", "last") judged fewer
    than :data:`JUDGED` of ``noun`` (each logged step's count; a log from before they were logged
    is read as enough): a model that ranks 0.75 of its pairs right shows under 0.6 one time in 4
    from 4 pairs (a 3-step run of 4 a step), one in 13 from 16 (binomial); and a few pairs' mean
    log-prob moves with which answers, long or short, the batch drew."""
    counts = [d[part].get(noun) for part in parts]
    return any(n is not None and n * d.get("window", 1) < JUDGED for n in counts)


def dpo_warnings(d: dict, loss: str | None) -> list[str]:
    """Sentences for ``d``, a ``first_and_last`` of a DPO log; ``loss``: the preference loss. Not
    one where the log's last step is its first: a step logs the model as it was before the step's
    update, so no update is in that log (an adapter then equals its reference: every pair ties)."""
    if d.get("steps") == 1:
        return []
    if loss in UNPAIRED:
        return kto_warnings(d)
    out = []
    acc = d["last"].get("rewards/accuracies")
    if acc is not None and acc < LEARNED and not too_few(d, "pairs"):
        out.append(f"DPO did not learn to rank its training pairs: pair accuracy {acc:.2f} at the end, where 0.5 is "
                   "chance. Any change in its answers is then a shift in what the model prefers overall (a class, a "
                   "length), not item knowledge. More pairs or steps, or a larger model, may help.")
    a, b = d["first"].get("logps/chosen"), d["last"].get("logps/chosen")
    if (a is not None and b is not None and a - b > CHOSEN_DROP and not reads_nll(loss)
            and not too_few(d, "pairs", ("first", "last"))):
        out.append(f"DPO made the chosen (right) training answers less likely: their log-prob fell by {a - b:.2f}, a "
                   "known failure of DPO without an NLL term. `--loss rpo` adds the chosen answers' NLL; in "
                   "docs/results.md it kept their log-prob where sigmoid DPO lowered it.")
    return out


def kto_warnings(d: dict) -> list[str]:
    """KTO's counterpart of the pair accuracy: the share of its training completions on their
    label's side of the reference point stayed near chance."""
    share = d["last"].get("kto/accuracies")
    if share is None or share >= LEARNED or too_few(d, "examples"):
        return []
    return [f"KTO did not learn to tell its training completions apart: {share:.2f} of them lie on their label's "
            "side of the reference point at the end, where 0.5 is chance. Any change in its answers is then a shift "
            "in what the model prefers overall (a class, a length), not item knowledge. More examples or steps, or a "
            "larger model, may help."]
