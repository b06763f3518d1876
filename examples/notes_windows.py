"""Continued training on whole clinical notes: each note cut to max_length, or in windows.

Trains two LoRA adapters on the same notes with the same number of steps: one on each note
cut to ``--max-length`` (its start kept, the default), one on every note in windows
(``text_windows``: every token trained once). Then scores held-out notes, whole, in windows of
``--max-length``: the negative log-likelihood per token of the base model and of each adapter,
over each note's first window (what both runs trained on) and past it (what only the windows
run saw), with a paired bootstrap over notes for windows vs cut.

By default it reads ACI-Bench's visit notes from ../shared/data/summarization/aci_bench
(``train.csv`` to train, ``valid.csv`` held out; CC BY 4.0, Yim et al., Scientific Data 2023).
Any CSV, TSV, JSONL or Parquet file with a text column works (``--column``).

    .venv/bin/python examples/notes_windows.py --output runs/notes-windows
    .venv/bin/python examples/notes_windows.py --train my_notes.csv --eval held_out.csv --column text
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch

from prefopt import load_model, load_tokenizer
from prefopt.cli import run_script
from prefopt.data import load_sft
from prefopt.evaluate.stats import p_text, paired_bootstrap
from prefopt.train import TrainConfig, run_sft

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "summarization" / "aci_bench"
PARTS = ("first", "tail")  # a note's first window; the tokens past it


def note_nll(model, windows: list, records: list[int]) -> np.ndarray:
    """``(notes, 4)``: per note, the NLL summed and the tokens counted over its first window and
    over the windows after it (a window's first token is read, not scored)."""
    out = np.zeros((max(records) + 1, 4))
    seen: set[int] = set()
    with torch.no_grad():
        for w, r in zip(windows, records):
            ids = torch.tensor([list(w.input_ids)])
            logp = torch.log_softmax(model(ids)[0, :-1].float(), dim=-1)
            nll = -logp.gather(-1, ids[0, 1:, None])
            col = 0 if r not in seen else 2
            seen.add(r)
            out[r, col] += float(nll.sum())
            out[r, col + 1] += nll.numel()
    return out


def per_token(table: np.ndarray, part: int):
    """The pooled NLL per token of ``part`` (0: first window, 1: the rest) over notes ``idx``."""
    def stat(idx: np.ndarray) -> float:
        tokens = table[idx, 2 * part + 1].sum()
        return float(table[idx, 2 * part].sum() / tokens) if tokens else math.nan
    return stat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=Path, default=DEFAULT_DATA / "train.csv")
    ap.add_argument("--eval", type=Path, default=DEFAULT_DATA / "valid.csv")
    ap.add_argument("--column", default="note", help="the column that holds each note's text")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--max-steps", type=int, default=50)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--output", type=Path, default=Path("runs/notes-windows"))
    ap.add_argument("--overwrite", action="store_true", help="replace earlier runs in --output")
    args = ap.parse_args()
    for path in (args.train, args.eval):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file (pass --train and --eval)")
    columns = {"text": args.column}
    tok = load_tokenizer(args.model)
    held, report = load_sft(args.eval, tok, max_length=args.max_length, columns=columns, text_windows=True)
    print(f"held out: {report.summary()}; {len(held)} windows of at most {args.max_length} tokens", flush=True)
    adapters = {}
    for name, windows in (("cut", False), ("windows", True)):
        out = args.output / name
        run_sft(TrainConfig(model=args.model, data=str(args.train), columns=columns, output_dir=str(out),
                            max_length=args.max_length, text_windows=windows, max_steps=args.max_steps,
                            batch_size=args.batch_size, lr=args.lr, seed=args.seed, overwrite=args.overwrite))
        adapters[name] = out / "final"
    tables = {name: note_nll(load_model(args.model, adapter=adapter).eval(), held, report.kept_records)
              for name, adapter in {"base": None, **adapters}.items()}
    result = {"train": str(args.train), "eval": str(args.eval), "max_length": args.max_length,
              "max_steps": args.max_steps, "notes": int(len(tables["base"])),
              "tokens": {p: int(tables["base"][:, 2 * i + 1].sum()) for i, p in enumerate(PARTS)},
              "nll_per_token": {name: {p: per_token(t, i)(np.arange(len(t))) for i, p in enumerate(PARTS)}
                                for name, t in tables.items()},
              "windows_vs_cut": {p: paired_bootstrap(per_token(tables["cut"], i), per_token(tables["windows"], i),
                                                     len(tables["base"]), seed=args.seed)
                                 for i, p in enumerate(PARTS)}}
    (args.output / "nll.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"NLL per token on {result['notes']} held-out notes (first window: {result['tokens']['first']} tokens; "
          f"past it: {result['tokens']['tail']})")
    for name, nll in result["nll_per_token"].items():
        print(f"  {name:>8}: first window {nll['first']:.3f}, past it {nll['tail']:.3f}")
    for p, cmp in result["windows_vs_cut"].items():
        lo, hi = cmp["ci"]
        print(f"  windows - cut, {'first window' if p == 'first' else 'past it'}: {cmp['delta']:+.3f} "
              f"[{lo:+.3f}, {hi:+.3f}], p {p_text(cmp)}")
    print(f"Written: {args.output / 'nll.json'}")


if __name__ == "__main__":
    run_script(main, "notes_windows.py")
