"""A training run's curves as one PNG beside its ``metrics.jsonl`` (``training_curves.png``).

One panel per kind of number the run logged, each with its training value at every logged step
(thin), a moving average over about a twentieth of the steps (thick) and, where the run was
evaluated, the eval value at each evaluation (dots): the loss; for DPO the pair accuracy, the
reward margin, the rewards and the chosen and rejected log-probs; for KTO the share of
completions on their label's side of the reference point, that point and the log-probs; and
anything else a loss (RPO's NLL...) or an evaluator (compare's held-out score, ``eval_macro_f1``...) logged. Written at the end of every run (``prefopt sft``/``dpo``)
and by ``prefopt curves RUN_DIR`` at any time, also while the run is going. matplotlib is
optional (``pip install 'prefopt[plots]'``): without it nothing is drawn and the caller says so.
"""
from __future__ import annotations

from pathlib import Path

from .._deps import MissingDependencyError, require
from ..fileio import atomic_path
from .metrics import read_metrics

FILE = "training_curves.png"
# (panel title, training keys, eval keys): a panel is drawn when any of its keys was logged
PANELS = (
    ("loss", ("loss",), ("eval_loss",)),
    ("pair accuracy (chosen above rejected)", ("rewards/accuracies",), ("eval_rewards/accuracies",)),
    ("reward margin (chosen − rejected)", ("rewards/margins",), ("eval_rewards/margins",)),
    ("reward (β × log-ratio to the reference)", ("rewards/chosen", "rewards/rejected"),
     ("eval_rewards/chosen", "eval_rewards/rejected")),
    ("log-prob of the response", ("logps/chosen", "logps/rejected"), ("eval_logps/chosen", "eval_logps/rejected")),
    ("KTO: share on its label's side of the reference point", ("kto/accuracies",), ("eval_kto/accuracies",)),
    ("KTO reference point (KL estimate, nats)", ("kl",), ("eval_kl",)),
    ("log-prob of the completion", ("logps/completion",), ("eval_logps/completion",)),
)
_COVERED = {k for _, train, evals in PANELS for k in (*train, *evals)}
# logged, but about the run's pace and schedule, not what it learns (metrics.jsonl keeps them)
NOT_DRAWN = {"step", "epoch", "lr", "tokens", "tokens_per_s", "peak_mem_mb", "grad_norm"}


def curves(rows: list[dict]) -> list[tuple[str, dict[str, list[tuple[int, float]]]]]:
    """The panels the logged ``rows`` hold: ``(title, {key: [(step, value), ...]})``, in the
    order of :data:`PANELS`, then one panel per other ``eval_*`` metric (an evaluator's)."""
    def points(key: str) -> list[tuple[int, float]]:
        return [(int(r["step"]), float(r[key])) for r in rows if isinstance(r.get(key), (int, float))]

    out = []
    for title, train, evals in PANELS:
        found = {k: points(k) for k in (*train, *evals)}
        found = {k: v for k, v in found.items() if v}
        if found:
            out.append((title, found))
    # anything else a loss or an evaluator logged: a panel each, its eval values beside its training ones
    others = {k for r in rows for k, v in r.items() if isinstance(v, (int, float)) and k not in _COVERED | NOT_DRAWN}
    for name in sorted({k.removeprefix("eval_") for k in others}):
        found = {k: points(k) for k in (name, f"eval_{name}") if k in others}
        out.append((name if name in others else f"held-out {name}", found))
    return out


def moving_average(values: list[float], window: int) -> list[float]:
    """The mean of each value and the ``window - 1`` before it (fewer at the start)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_curves(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Draw ``run_dir``'s ``metrics.jsonl`` (or that file, named) into ``out`` (default
    ``run_dir/training_curves.png``) and return its path. Errors: no log, no step logged yet, matplotlib missing
    (:class:`~prefopt._deps.MissingDependencyError`, naming the extra to install)."""
    run_dir = Path(run_dir)
    if run_dir.name == "metrics.jsonl" and run_dir.is_file():  # the log itself named: its run's folder
        run_dir = run_dir.parent
    if not (run_dir / "metrics.jsonl").is_file():
        raise FileNotFoundError(f"{run_dir}: no metrics.jsonl (not a prefopt training run, or it has not logged yet)")
    panels = curves(read_metrics(run_dir))
    if not panels:
        raise ValueError(f"{run_dir / 'metrics.jsonl'}: no step logged yet")
    require("matplotlib", "drawing training curves").use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    out = Path(out) if out is not None else run_dir / FILE
    cols = 2 if len(panels) == 4 else min(len(panels), 3)
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.1 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (title, found) in zip(axes.flat, panels):
        names = list(dict.fromkeys(k.removeprefix("eval_") for k in found))  # a quantity and its eval: one colour
        for key, pts in found.items():
            steps, vals = [s for s, _ in pts], [v for _, v in pts]
            color = f"C{names.index(key.removeprefix('eval_'))}"
            if key.startswith("eval_"):
                ax.plot(steps, vals, "o-", color=color, markersize=4, linewidth=1, label=key)
            else:
                ax.plot(steps, vals, color=color, linewidth=0.6, alpha=0.35)
                ax.plot(steps, moving_average(vals, max(1, len(vals) // 20)), color=color, linewidth=1.8, label=key)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
    fig.suptitle(str(run_dir), fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(out) as tmp:  # a viewer never sees half a file
            fig.savefig(tmp, dpi=110, format=out.suffix.lstrip(".").lower() or "png")  # (tmp's name has no suffix)
    finally:
        plt.close(fig)
    return out


def curves_line(run_dir: str | Path) -> str:
    """Draw the curves at the end of a run and say where they are, or why not: a finished run
    is never failed by its plot."""
    try:
        return f"training curves in {plot_curves(run_dir)}"
    except MissingDependencyError:
        return "training curves not drawn: install matplotlib (pip install 'prefopt[plots]'), then `prefopt curves RUN_DIR`"
    except (OSError, ValueError, RuntimeError) as e:
        return f"training curves not drawn: {type(e).__name__}: {e}"
