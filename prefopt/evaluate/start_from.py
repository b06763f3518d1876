"""``prefopt compare --from DIR``: a run that starts from another run's base and SFT stages.

Trying DPO settings (another loss, beta, learning rate, LD-DPO, WPO) on one SFT model is the
study's usual loop, and SFT is most of a run's time. A new ``--output`` trained SFT again, so
runs were started by copying ``base/``, ``sft/``, ``data/`` and ``split.json`` by hand, which
checked nothing: an SFT stage trained with other settings passed as this run's. Here the
earlier run's ``compare_config.json`` must match this one's in every setting but DPO's
(:data:`DPO_ONLY`), its SFT stage must be finished, and then its stages are copied: the base
and SFT evaluations (evaluated again only where this run decodes otherwise, as in any rerun),
the SFT adapter, the split, and, where this run's pairs are the same (strategy, pairs file,
and for ``model_errors`` the decoding that mined them), the pairs and the reference cache
(whose fingerprint rebuilds it where DPO's settings change the reference log-probs).
"""
from __future__ import annotations

import shutil
from pathlib import Path

from ..fileio import read_json
from .compare_config import differences, runs_in
from .runner import DECODING

# settings that change only the DPO stage: they may differ from the run the stages come from
DPO_SETTINGS = ("dpo_steps", "dpo_epochs", "dpo_batch_size", "dpo_lr", "beta", "dpo_eval_every", "dpo_min_gain",
                "dpo_patience", "dpo_max_p", "ld_alpha", "f_divergence", "f_alpha", "wpo")
PAIRS_FLAGS = ("strategy", "pairs", "pairs_encoding", "pairs_sheet", "pairs_columns")  # what makes DPO's pairs
DPO_FLAGS = ("loss", *PAIRS_FLAGS)  # (compare's --loss, ...)
DPO_ONLY = (*DPO_FLAGS, *(f"{part}.{k}" for part in ("settings", "overrides") for k in DPO_SETTINGS))
SFT_ADAPTER = Path("sft") / "train" / "final" / "adapter_model.safetensors"


def source_config(source: str | Path, out: Path) -> dict:
    """``source``'s recorded settings, once it is known to be another compare run whose SFT stage
    is finished."""
    src = Path(source)
    if src.resolve() == out.resolve():
        raise ValueError(f"--from {source} is the --output folder: name the run whose stages this one starts from")
    path = src / "compare_config.json"
    if not path.is_file():
        seeds = runs_in(src, "seed-*")
        raise ValueError(f"--from {source}: not a prefopt compare run (no compare_config.json there)" + (
            f"; a compare --seeds folder ({', '.join(seeds)}): add --seeds to start each seed from its own run, or "
            "name one of them" if seeds else ""))
    if not (src / SFT_ADAPTER).is_file():
        raise ValueError(f"--from {source}: its SFT stage has not finished (no {SFT_ADAPTER}); rerun its own command "
                         "to finish it first")
    return read_json(path)


def check_same_sft(source: str | Path, earlier: dict, config: dict, split: dict) -> None:
    """Refuse where ``config`` (this run's, as ``compare_config.json`` records it) differs from
    ``earlier`` in a setting the base or SFT stage depends on, or this run's ``split`` (each
    part's item ids) from the one ``source`` recorded (its data file changed since). Decoding may
    differ: a stage made with other decoding is evaluated again."""
    diff = differences(earlier, config, ignore=(*DPO_ONLY, *(f"settings.{k}" for k in DECODING),
                                                *(f"overrides.{k}" for k in DECODING)))
    if diff:
        raise ValueError(f"--from {source} was run with other settings than DPO's ({'; '.join(diff)}): its base and "
                         f"SFT stages are not this run's. Only "
                         f"{', '.join((*('--' + k.replace('_', '-') for k in DPO_FLAGS), *DPO_SETTINGS))} "
                         "and decoding may differ")
    recorded = Path(source) / "split.json"
    if not recorded.is_file() or read_json(recorded) != split:
        raise ValueError(f"--from {source} split its items otherwise (its data has changed since, or its split.json "
                         "is missing): its base and SFT stages are not this run's")


def _same_pairs(earlier: dict, config: dict) -> bool:
    """Whether this run's DPO pairs are those ``earlier`` made (the split and seed are already the same)."""
    if [earlier.get(k) for k in PAIRS_FLAGS] != [config.get(k) for k in PAIRS_FLAGS]:
        return False
    if config["strategy"] != "model_errors":
        return True
    return all(earlier.get("settings", {}).get(k) == config["settings"][k] for k in DECODING)


def copy_stages(source: str | Path, out: Path, earlier: dict, config: dict) -> str:
    """Copy ``source``'s stages into ``out``; the line that says what was copied."""
    src, same = Path(source), _same_pairs(earlier, config)
    names = ["split.json", "base", "sft", "data/sft_train.jsonl"]
    if same:
        names += ["data/pairs.jsonl", "data/pairs_report.json", "dpo/ref_cache"]
    copied = []
    for name in names:
        a, b = src / name, out / name
        if a.is_dir():
            shutil.copytree(a, b, dirs_exist_ok=True)
        elif a.is_file():
            b.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(a, b)
        else:
            continue
        copied.append(name)
    pairs = "" if same else "; the DPO pairs are made again (another strategy, pairs file or mining decoding)"
    return f"starting from {src}: copied {', '.join(copied)}{pairs}"
