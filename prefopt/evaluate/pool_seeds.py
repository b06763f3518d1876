"""``prefopt pool-seeds RUN RUN ... --output DIR``: finished compare runs that differ only in their
seed, each in a folder of its own (run one by one with ``--seed N``, before ``--seeds`` existed, or
named by hand), pooled as ``prefopt compare --seeds`` pools its seeds (:mod:`.seeds`): seeds.md,
seeds.json and the forest plot in DIR. Each run must be finished (its ``report.json``), the seeds
different, and every setting that changes a score the same as the first run's, decoding included
(``--from``, resamples, the device and memory settings may differ, as a resumed run's may)."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..fileio import read_json
from .compare import CompareConfig
from .compare_config import differences, runs_in
from .runner import DECODING
from .seeds import console_lines, summarize, write_summary

# settings a resumed run may change (its stages evaluated or chosen again) but that change a finished
# run's scores: pooled runs must agree on them too
_SCORES = (*DECODING, "dpo_max_p")


def other_settings(first: dict, config: dict) -> list[str]:
    """How ``config`` differs from ``first`` (``compare_config.json``'s) in what changes a finished
    run's scores, each ``"settings.beta: 0.1 -> 0.2"``."""
    diff = differences(first, config, ignore=("seed",))
    a, b = ({f"{part}.{k}": (c.get(part) or {}).get(k) for part in ("settings", "overrides") for k in _SCORES}
            for c in (first, config))
    return diff + [line for k in a if a[k] != b[k] and (line := f"{k}: {a[k]!r} -> {b[k]!r}") not in diff]


def read_runs(runs: list[str | Path]) -> tuple[list[dict], dict[int, dict], dict[int, str]]:
    """Each run's ``compare_config.json``, and its ``report.json`` and folder by seed; refused with
    what is wrong: not a compare run (a ``--seeds`` folder: name its seed-S folders), unfinished, a
    seed twice, a setting other than the seed differing from the first run's."""
    if len(runs) < 2:
        raise ValueError("pool-seeds: give two or more runs (three or more: with two, Student's t with 1 degree "
                         "of freedom leaves the pooled CI very wide)")
    configs, reports, outputs = [], {}, {}
    for run in map(Path, runs):
        if not (run / "compare_config.json").is_file():
            inside = runs_in(run, "seed-*")
            raise ValueError(f"{run}: not a prefopt compare run (no compare_config.json there)" + (
                f"; a compare --seeds folder, whose seeds.md already pools {', '.join(inside)}" if inside else ""))
        if not (run / "report.json").is_file():
            raise ValueError(f"{run}: not finished (no report.json): rerun its prefopt compare command to finish it")
        config = read_json(run / "compare_config.json")
        seed = config.get("seed", 0)
        if seed in outputs:
            raise ValueError(f"{run} and {outputs[seed]} are both seed {seed}'s runs: pool each seed once")
        if configs and (diff := other_settings(configs[0], config)):
            raise ValueError(f"{run} was run with other settings than {runs[0]} ({'; '.join(diff)}): only the seed "
                             "may differ between the runs pooled")
        configs.append(config)
        reports[seed] = read_json(run / "report.json")
        outputs[seed] = str(run)
    return configs, reports, outputs


def pool_seeds(runs: list[str | Path], output: str | Path) -> dict:
    """The runs pooled into ``output`` (seeds.md, seeds.json, seeds_forest.png); ``seeds.json``'s content."""
    configs, reports, outputs = read_runs(runs)
    first = configs[0]
    cfg = CompareConfig(task=first["task"], model=first["model"], output=str(output),
                        loss=first.get("loss", "sigmoid"), preset=first.get("preset", "quick"),
                        test_data=first.get("test_data"))
    summary = summarize(cfg, reports, outputs)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    write_summary(out, summary)
    return summary


def add_command(sub) -> None:
    p = sub.add_parser("pool-seeds", help="pool finished compare runs that differ only in --seed, each in its own "
                       "folder (run one by one), as compare --seeds pools its seeds: each seed's scores and tests, "
                       "and the differences pooled by a random-effects meta-analysis; writes seeds.md, seeds.json "
                       "and seeds_forest.png")
    p.add_argument("runs", nargs="+", metavar="RUN", help="finished prefopt compare output folders, one per seed")
    p.add_argument("--output", required=True, help="folder for seeds.md, seeds.json and seeds_forest.png")
    p.set_defaults(func=_pool)


def _pool(args: argparse.Namespace) -> int:
    summary = pool_seeds(args.runs, args.output)
    print("\n".join(console_lines(summary)))
    print(f"prefopt pool-seeds: over the seeds: {Path(args.output) / 'seeds.md'}")
    return 0
