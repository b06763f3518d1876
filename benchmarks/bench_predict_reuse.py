"""``prefopt predict`` run again into its folder with only another ``--review-below``: its kept
answers against answering, seconds and peak RSS, each a fresh process, in one run.

A finished predict keeps its answers (``.predict-answers.jsonl``); the same command with another
review threshold (or table format) writes its table from them, and where they match the model as
it would load reads no weights. A team trying thresholds on today's records pays for the answers
once. The records are the first ``--records`` of the bundled (synthetic) portal messages, their
labels left out.

    .venv/bin/python benchmarks/bench_predict_reuse.py                     # SmolLM2-135M, 60 records, ~30 s
    .venv/bin/python benchmarks/bench_predict_reuse.py --adapter runs/seeds-val60/seed-0/sft/train/final
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import rss  # noqa: E402

WAYS = {"answered": "0.7", "reused": "0.9"}  # each way's --review-below; the second reuses the first's answers


def worker(argv: list[str]) -> None:
    """One predict in this process: its seconds (imports included, as a user waits) and peak RSS."""
    from prefopt.cli import main

    code = main(argv)
    print(json.dumps({"code": code, "seconds": time.perf_counter() - START, "peak_rss": rss("VmHWM")}))


def run(argv: list[str]) -> dict:
    """``worker`` in a fresh process; its figures, with what it printed."""
    out = subprocess.run([sys.executable, __file__, "--worker", json.dumps(argv)], capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"predict {argv} failed:\n{out.stderr[-3000:]}")
    *said, last = out.stdout.strip().splitlines()
    return json.loads(last) | {"said": said}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--adapter")
    ap.add_argument("--records", type=int, default=60)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--json", help="write the figures here too")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        return worker(json.loads(a.worker))
    from prefopt.tasks import PORTAL_DATA

    with tempfile.TemporaryDirectory() as tmp:
        data, out = Path(tmp) / "today.jsonl", Path(tmp) / "predict"
        rows = [json.loads(line) for line in PORTAL_DATA.read_text().splitlines()[:a.records]]
        data.write_text("".join(json.dumps({"id": r["id"], "message": r["message"]}) + "\n" for r in rows))
        base = ["predict", "--task", "portal", "--model", str(a.model), *(["--adapter", a.adapter] if a.adapter else []),
                "--data", str(data), "--output", str(out), "--max-new-tokens", str(a.max_new_tokens)]
        runs = {}
        for way, below in WAYS.items():
            runs[way] = run([*base, "--review-below", below])
            runs[way]["answers"] = [json.loads(line)["model_output"] for line in
                                    (out / "predictions.jsonl").read_text().splitlines()]
    reused = any("were answered before" in line for line in runs["reused"]["said"])
    same = runs["reused"]["answers"] == runs["answered"]["answers"]
    first = runs["answered"]
    print(f"prefopt predict, {a.records} portal messages, {a.model}" + (f" + {a.adapter}" if a.adapter else "")
          + f"; {platform.processor() or platform.machine()}; the second run's answers reused: {reused}, the same "
          f"answers: {same}")
    print("\n| run | seconds | peak RSS (MiB) | time / answered | peak RSS / answered |\n|---|---|---|---|---|")
    for way, r in runs.items():
        print(f"| {way} (--review-below {WAYS[way]}) | {r['seconds']:.1f} | {r['peak_rss'] / 2**20:.0f} | "
              f"{r['seconds'] / first['seconds']:.2f}x | {r['peak_rss'] / first['peak_rss']:.2f}x |")
    if a.json:
        Path(a.json).write_text(json.dumps({"reused": reused, "same": same, "runs": runs}, indent=1))


START = time.perf_counter()

if __name__ == "__main__":
    main()
