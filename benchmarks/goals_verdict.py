"""Issue 5's GPU goals read off the ``goals`` step's tables, and what they decide.

    python3 benchmarks/goals_verdict.py OUT/goals.json OUT/goals_frozen.json

Reads the rows ``bench_logprobs.py --json`` wrote at D=4096, V=128256, N=16384 (trainable head,
then frozen) and prints, as markdown for docs/benchmarks.md:

- each of prefopt's methods against the three goals: extra peak ≤ 256 MB (244.1 MiB), time ≤
  1.3× the bare GEMMs of the same run, faster than Liger's fused DPO loss and no slower than
  cut-cross-entropy (its default, filtering, and exact);
- what they decide (docs/benchmarks.md, "Rerunning"): for each head, trainable and frozen, the
  fastest of prefopt's methods within the memory goal, against the trainers' CUDA default (the
  one-pass loss since 2026-12-04: ``DEFAULT``).

It only reads and compares; it changes no default. ``gpu_session.sh goals`` runs it after the
tables (its output follows the trainable table in ``goals.txt``).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

MiB = 2**20
MEMORY_GOAL = 256e6  # bytes: the 256 MB
TIME_GOAL = 1.3  # × the bare GEMMs
OURS = ("triton", "chunked", "onepass")
DEFAULT = "onepass"  # what the trainers' summed losses use on CUDA since 2026-12-04 (onepass.wanted)


def _rows(path: str | Path) -> dict[str, dict]:
    """The rows of a bench_logprobs --json file by method (the goal shape only)."""
    rows = json.loads(Path(path).read_text())
    return {r["method"]: r for r in rows if (r.get("D"), r.get("V"), r.get("N")) == (4096, 128256, 16384)}


def judge(rows: dict[str, dict]) -> list[dict]:
    """For each of prefopt's methods measured: its time, ratio and memory, and each goal met or not
    (None where a baseline is missing or failed)."""
    def baseline(name):
        r = rows.get(name, {})
        return r.get("seconds")

    liger, cce, cce_exact = baseline("liger"), baseline("cce"), baseline("cce-exact")
    out = []
    for m in OURS:
        r = rows.get(m)
        if r is None:
            continue
        if "seconds" not in r:
            out.append({"method": m, "error": r.get("error", "no time")})
            continue
        t = r["seconds"]
        ratio = t / r["gemm_limit"]
        out.append({"method": m, "ms": t * 1e3, "ratio": ratio, "extra_mib": r["extra_peak"] / MiB,
                    "memory": r["extra_peak"] <= MEMORY_GOAL, "time": ratio <= TIME_GOAL,
                    "liger": None if liger is None else t < liger,
                    "cce": None if cce is None else t <= cce,
                    "cce_exact": None if cce_exact is None else t <= cce_exact})
    return out


def _mark(v) -> str:
    return "n/a" if v is None else ("yes" if v else "**no**")


def table(verdicts: list[dict], title: str) -> str:
    lines = [f"**{title}**", "", "| method | ms | × GEMM | extra MiB | ≤ 256 MB | ≤ 1.3× | < Liger | ≤ CCE | ≤ CCE exact |",
             "|---|---|---|---|---|---|---|---|---|"]
    for v in verdicts:
        if "error" in v:
            lines.append(f"| {v['method']} | {v['error']} | | | | | | | |")
            continue
        lines.append(f"| {v['method']} | {v['ms']:.2f} | {v['ratio']:.2f} | {v['extra_mib']:.0f} | {_mark(v['memory'])} "
                     f"| {_mark(v['time'])} | {_mark(v['liger'])} | {_mark(v['cce'])} | {_mark(v['cce_exact'])} |")
    return "\n".join(lines)


def decisions(trainable: list[dict], frozen: list[dict]) -> list[str]:
    """The lines that say what the tables decide: for each head, the fastest of prefopt's methods
    within the memory goal against the CUDA default, and issue 5's point 3."""
    out = []
    for head, verdicts in (("trainable head", trainable), ("frozen head", frozen)):
        ok = {v["method"]: v for v in verdicts if "error" not in v}
        within = [v for v in ok.values() if v["memory"]]
        if not within:
            out.append(f"- {head}: no method within 256 MB measured")
            continue
        best = min(within, key=lambda v: v["ms"])
        liger = "faster than Liger" if best["liger"] else ("Liger missing" if best["liger"] is None else
                                                           "**slower than Liger**")
        if best["method"] == DEFAULT:
            change = "; it is the CUDA default (onepass.wanted)"
        else:
            d = ok.get(DEFAULT)
            why = ("not measured" if d is None else f"over 256 MB ({d['extra_mib']:.0f} MiB)" if not d["memory"]
                   else f"slower ({d['ms']:.2f} ms)")
            change = f"; the CUDA default, {DEFAULT}, is {why}: make {best['method']} the default there (onepass.wanted)"
        out.append(f"- {head}: fastest within 256 MB is {best['method']} ({best['ms']:.2f} ms, {best['ratio']:.2f}×; "
                   f"{liger}){change}")
    ok = [v for v in trainable if "error" not in v]
    met = [v["method"] for v in ok if v["memory"] and v["time"] and v["liger"] and v["cce"]]
    unjudged = [v["method"] for v in ok if v["memory"] and v["time"] and None in (v["liger"], v["cce"])]
    line = f"- issue 5 point 3 (trainable head): {'met by ' + ', '.join(met) if met else 'not met by any method'}"
    if met and DEFAULT not in met:
        line += " (not the current default: switch it first)"
    if unjudged:  # within time and memory, but a baseline to beat is missing: not met until it is measured
        line += f"; {', '.join(unjudged)} within time and memory, but Liger or CCE was not measured"
    out.append(line)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("trainable", help="goals.json (bench_logprobs.py --json, trainable head)")
    ap.add_argument("frozen", help="goals_frozen.json (the same with --frozen-weight)")
    a = ap.parse_args(argv)
    trainable, frozen = judge(_rows(a.trainable)), judge(_rows(a.frozen))
    print(table(trainable, "Trainable head (D=4096, V=128256, N=16384, bf16)"))
    print()
    print(table(frozen, "Frozen head"))
    print()
    print("\n".join(decisions(trainable, frozen)))


if __name__ == "__main__":
    main()
