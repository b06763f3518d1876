"""A model card, ``README.md`` in a run's ``final/`` (and ``best/``, naming the evaluation it
kept): what the weights are, what trained them and how, and how the run went, so that an
adapter copied to another machine still says where it came from (the data file's SHA-256, the
settings that differ from the defaults, the versions). Its front matter is the Hugging Face
model-card header (``base_model``, ``library_name``, ``tags``), which PEFT and the Hub read;
the folder loads as before."""
from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import torch

from ..data.decoding import is_utf8
from ..data.files import data_files
from ..fileio import sha256_of, write_text_atomic
from ..losses import UNPAIRED, loss_terms

FILE = "README.md"
# settings every card lists; the others only where they differ from the default
ALWAYS = ("model", "data", "eval_data", "max_length", "lr", "batch_size", "grad_accum", "seed")
NOT_SETTINGS = {"output_dir", "resume", "overwrite", "progress", "log_every", "save_every", "save_total_limit"}


def _what(config) -> tuple[str, list[str]]:
    """The card's title and its tags."""
    run = config.run_kind
    dpo = run != "sft"
    method = f"{config.loss} preference loss (DPO family), beta {config.beta:g}" if run == "dpo" else "SFT"
    fdiv = getattr(config, "f_divergence", "reverse_kl")
    if run == "dpo" and fdiv != "reverse_kl":
        method += f", f-DPO with the {fdiv.replace('_', ' ')}" + (f" (alpha {config.f_alpha:g})" if fdiv == "alpha_divergence" else "")
    ld = getattr(config, "ld_alpha", None) if run == "dpo" else None
    if ld is not None:
        method += f", LD-DPO (tokens past the shorter answer's length weigh {ld:g})"
    wpo = run == "dpo" and getattr(config, "wpo", False)
    if wpo:
        method += ", WPO (each pair weighed by how likely the policy finds its answers)"
    if run == "kto":
        method = (f"{UNPAIRED[config.loss]} on unpaired feedback, beta {config.beta:g}, weights {config.kto_desirable_weight:g} "
                  f"(desirable) and {config.kto_undesirable_weight:g} (undesirable)")
    rs = ", rsLoRA" if getattr(config, "lora_rslora", False) else ""
    dora = config.lora and getattr(config, "lora_dora", False)
    kind = "DoRA" if dora else "LoRA"
    weights = f"{kind} adapter (r {config.lora_r}, alpha {config.lora_alpha:g}{rs})" if config.lora else "Full weights"
    on_4bit = f" on its {config.quantize} (4-bit) base" if config.lora and getattr(config, "quantize", None) else ""
    title = f"{weights} for {config.model}{on_4bit}, trained with {method}"
    tags = ["prefopt", "dpo" if dpo else "sft", *(loss_terms(config.loss) if dpo else []), *(["lora"] if config.lora else []),
            *(["dora"] if dora else []), *(["f-dpo"] if run == "dpo" and fdiv != "reverse_kl" else []),
            *(["ld-dpo"] if ld is not None else []), *(["wpo"] if wpo else [])]
    return title, tags


def _data_lines(config, n_train: int, n_eval: int) -> list[str]:
    lines = []
    encoding = getattr(config, "encoding", None)  # said where the text files were not read as UTF-8
    encoding = encoding if encoding and not is_utf8(encoding) else None
    for name, sheet in (("data", "sheet"), ("eval_data", "eval_sheet")):
        try:
            files = data_files(getattr(config, name, None) or [])
        except (OSError, ValueError):  # gone since the run read it
            continue
        how = ", ".join(([f"sheet {getattr(config, sheet)!r}"] if getattr(config, sheet, None) else [])
                        + ([f"read as {encoding}"] if encoding else []))
        if len(files) == 1:
            lines.append(f"- `{name}`: `{files[0].resolve()}` ({how + ', ' if how else ''}"
                         f"SHA-256 `{sha256_of(files[0])}`)")
        elif files:
            lines.append(f"- `{name}`: {len(files)} files, read in this order{f' ({how})' if how else ''}:")
            lines += [f"  - `{f.resolve()}` (SHA-256 `{sha256_of(f)}`)" for f in files]
    if not config.data:
        lines.append("- the training records were given in memory (`records=`), not read from a file: no file "
                     "to hash")
    held = f" ({config.eval_fraction:g} of the data held out)" if not config.eval_data and n_eval else ""
    lines.append(f"- {n_train} training {'pairs' if config.run_kind == 'dpo' else 'examples'}, "
                 f"{n_eval} for evaluation{held}; max_length {config.max_length}")
    if getattr(config, "sft_adapter", None):
        lines.append(f"- trained on top of the SFT adapter `{Path(config.sft_adapter).resolve()}`, whose update these "
                     "weights include: load them on the base model alone")
    return lines


def _settings_lines(config) -> list[str]:
    now, defaults = config.to_dict(), config.defaults()
    keys = [k for k in now if k not in NOT_SETTINGS and now[k] is not None
            and (k in ALWAYS or now[k] != defaults.get(k, object()))]
    return ["| setting | value |", "|---|---|", *[f"| `{k}` | `{_shown(now[k])}` |" for k in keys]]


def _shown(value) -> str:
    """A setting as the command line gives it: ``prompt=question, chosen=good`` and ``q_proj, v_proj``,
    not Python's reprs; a ``|`` escaped, as a table cell needs."""
    if isinstance(value, dict):
        value = ", ".join(f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in value.items())
    elif isinstance(value, list):
        value = ", ".join(map(str, value))
    return str(value).replace("|", "\\|")


def card_text(config, summary: dict, data: list[str], outcome: list[str], device: str,
              weights: str = "the last step's") -> str:
    """The card's Markdown. ``data``: :func:`_data_lines`; ``outcome``: lines on how the run went
    (the console's); ``weights``: which of the run's weights the folder holds."""
    from .. import __version__

    title, tags = _what(config)
    load = f"--model {config.model} --adapter THIS_FOLDER" if config.lora else "--model THIS_FOLDER"
    quantized = getattr(config, "quantize", None) if config.lora else None
    as_trained = f"{load} --quantize {quantized}" if quantized else load  # on the 4-bit base it learnt on
    library = "peft" if config.lora else "transformers"
    lines = ["---", f"base_model: {config.model}", f"library_name: {library}", "tags:", *[f"- {t}" for t in tags],
             "---", "", f"# {title}", "",
             f"Made by prefopt {__version__} on {date.today().isoformat()} (torch {torch.__version__}, {device}, "
             f"{summary.get('total_steps', '?')} steps); these are {weights} weights. The run's folder also holds "
             "`train_config.json` (every setting), `metrics.jsonl` (every logged step) and `training_curves.png`.",
             "",
             "## Training data", "", *data, "",
             "## Settings (those that differ from prefopt's defaults, and the main ones)", "",
             *_settings_lines(config), "", "## How the run went", "", *[f"- {x}" for x in outcome], "",
             "## Use", "", "```bash",
             f"prefopt generate {as_trained} --prompt \"...\"",
             f"prefopt eval --task TASK {as_trained} --data YOUR_HELD_OUT.csv --output runs/eval  # before any use",
             f"prefopt export-gguf {load} --output model.gguf --type q8_0  # for llama.cpp or Ollama"
             + (" (merged in full precision: evaluate the merged model too)" if quantized else ""),
             "```", "",
             "## Before anyone relies on it", "",
             "These weights have not been validated for clinical use. Measure them on held-out data of your own "
             "(`prefopt eval`, `prefopt compare`), with the people who will use the answers, before they inform "
             "any decision about a patient."]
    return "\n".join(lines) + "\n"


def write_cards(folders: dict[str | Path, str], config, summary: dict, n_train: int, n_eval: int,
                outcome: list[str], device: str) -> None:
    """A card in each of ``folders`` (folder → which of the run's weights it holds, e.g. "the last
    step's"); the data files are hashed once for all of them."""
    data = _data_lines(config, n_train, n_eval)
    for folder, weights in folders.items():
        write_text_atomic(Path(folder) / FILE, card_text(config, summary, data, outcome, device, weights))


def merged_card(model: str, adapter: str | Path, dtype: str) -> str:
    """The card of a merged model: which base and which adapter (by absolute path), how to use
    it, then the adapter's own card where it has one (its headings one level down, its "Use"
    section, which loads the adapter, left out)."""
    from .. import __version__

    adapter = Path(adapter).resolve()
    own = adapter / FILE
    lines = ["---", f"base_model: {model}", "library_name: transformers", "tags:", "- prefopt", "- merged", "---", "",
             f"# {model} with the adapter `{adapter}` merged in", "",
             f"Made by `prefopt merge` {__version__} on {date.today().isoformat()}; weights saved in {dtype}. "
             "It loads as a plain model folder, with no adapter:", "", "```bash",
             'prefopt generate --model THIS_FOLDER --prompt "..."', "```"]
    if not own.is_file():
        return "\n".join([*lines, "", "The adapter had no model card (made before prefopt wrote them, or elsewhere)."]) + "\n"
    body = own.read_text(encoding="utf-8").split("---\n", 2)[-1].strip("\n").split("\n## ")
    kept = [body[0]] + [f"## {part}" for part in body[1:] if not part.startswith("Use\n")]
    lines += ["", "The adapter's own card:", ""]
    lines += [("#" + x if x.startswith("#") else x) for x in "\n".join(kept).splitlines()]
    return "\n".join(lines) + "\n"
