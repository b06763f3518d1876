"""The ``prefopt`` command line: generate, chat, make-pairs, convert-gguf, export-gguf, sft, dpo, check-data,
curves, merge, stack-adapters (eval, predict, eval-pairs, eval-nll, compare, study, pool-seeds and the rating
commands are registered by ``prefopt.evaluate.cli``)."""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import MISSING
from pathlib import Path

from .cli_parser import CommandParser
from .devices import DTYPES, resolve


def _prompt_text(given: str) -> str:
    """``--prompt``: the text itself, ``@FILE``'s text or, for ``-``, standard input's."""
    if given == "-":
        text, where = sys.stdin.read(), "standard input"
    elif given.startswith("@") and len(given) > 1:
        from .interactive import prompt_file_text

        path = Path(given[1:])
        if not path.is_file():
            raise FileNotFoundError(f"--prompt {given}: no such file {path} (a prompt that starts with @ names a file)")
        text, where = prompt_file_text(path), str(path)
    else:
        return given
    if not text.strip():
        raise ValueError(f"--prompt {given}: {where} is empty")
    return text.rstrip("\n")


def _generate(args: argparse.Namespace) -> int:
    from .interactive import stream_answer

    args.prompt = _prompt_text(args.prompt)
    model, tok = _chat_model(args, "prompt", typed=not args.no_chat)
    if args.no_chat or not tok.chat_template:
        prompt_ids = tok.encode(args.prompt)
    else:
        msgs = ([{"role": "system", "content": args.system}] if args.system else [])
        msgs.append({"role": "user", "content": args.prompt})
        prompt_ids = tok.apply_chat_template(msgs, add_generation_prompt=True)
    stream_answer(model, tok, prompt_ids, stops=args.stop or [], max_new_tokens=args.max_new_tokens,
                  **decoding_of(args))
    return 0


def _chat(args: argparse.Namespace) -> int:
    from .interactive import chat

    model, tok = _chat_model(args, "turn", need_template=True)
    return chat(model, tok, system=args.system, context=model.config.max_position_embeddings,
                max_new_tokens=args.max_new_tokens, **decoding_of(args))


def _chat_model(args: argparse.Namespace, shown_in: str, need_template: bool = False, typed: bool = True):
    """generate's and chat's model (with ``--adapter``) and tokenizer (``--chat-date``, ``--chat-vars``); a device
    this machine lacks, a tokenizer without the chat template chat needs, or a special token written
    out in ``--prompt`` or ``--system`` (where ``typed``: messages the chat template renders) is
    said before the model loads."""
    from .data.records import control_token_problem
    from .pretrained import load_model
    from .tokenizer import load_tokenizer

    device, dtype = resolve(args.device, args.dtype)
    tok = chat_ready(load_tokenizer(args.model), args, shown_in)
    if need_template and not tok.chat_template:
        raise ValueError(f"{args.model}: its tokenizer has no chat template, and chat sends chat messages; use an "
                         "instruct (chat) model, or prefopt generate --no-chat for plain text")
    for flag in ("--prompt", "--system") if typed and tok.chat_template else ():
        text = getattr(args, flag[2:], None)
        if isinstance(text, str) and (problem := control_token_problem(text, tok, "remove it (the template writes "
                                                                       "the model's own turns)")):
            raise ValueError(f"{flag}: {problem}")
    return load_model(args.model, dtype=dtype, device=device, adapter=args.adapter, quantize=args.quantize), tok


def decoding_of(args: argparse.Namespace) -> dict:
    """generate's and chat's sampling and repetition settings (an unset repetition flag: generate's default)."""
    from .evaluate.cli import REPEAT_FLAGS

    return dict(temperature=0.0 if args.greedy else args.temperature, top_p=args.top_p, seed=args.seed,
                **{k: getattr(args, k) for k in REPEAT_FLAGS if getattr(args, k) is not None})


def add_answer_flags(p: argparse.ArgumentParser, system: bool = True) -> None:
    """generate's, chat's and make-pairs' model and decoding flags (``--system`` where ``system``)."""
    from .evaluate.cli import add_device_flags, add_repeat_flags, positive_int

    p.add_argument("--model", required=True, help="model folder, alias (smollm2-135m), hub id or .gguf file")
    p.add_argument("--adapter", help="a LoRA adapter folder to apply (e.g. runs/sft/final)")
    if system:
        p.add_argument("--system", help="system message (chat models)")
    p.add_argument("--max-new-tokens", type=positive_int, default=256)
    p.add_argument("--greedy", action="store_true", help="greedy decoding (default: sampling)")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--seed", type=int, default=0)
    add_device_flags(p, quantize=True)
    add_repeat_flags(p)


def chat_ready(tok, args: argparse.Namespace, shown_in: str):
    """``tok`` given the chat flags (:func:`apply_chat_flags`); says so on stderr (stdout is the
    answer or the check)."""
    for line in apply_chat_flags(tok, args, shown_in):
        print(f"prefopt: {line}", file=sys.stderr)
    return tok


def apply_chat_flags(tok, args: argparse.Namespace, shown_in: str) -> list[str]:
    """Give ``tok`` ``--chat-date`` (None: the clock's date) where its chat template prints today's
    date, and ``--chat-vars``; the lines that say so, for every ``shown_in``."""
    from .chat_template import parse_chat_date
    from .tokenizer import set_chat_date

    if args.chat_date:
        parse_chat_date(args.chat_date, "--chat-date")  # a bad date, named by its flag
    said = [set_chat_date([tok], args.chat_date, shown_in), *apply_chat_vars(tok, args, shown_in)]
    return [line for line in said if line]


def apply_chat_vars(tok, args: argparse.Namespace, shown_in: str) -> tuple[str | None, str | None]:
    """Give ``tok`` ``--chat-vars``; the line that says so (for every ``shown_in``) and the one that
    says ``--adapter`` was trained with others (:func:`adapter_chat_note`), each None where there
    is nothing to say."""
    from .tokenizer import set_chat_vars

    chat_vars = chat_vars_arg(args)
    if chat_vars and getattr(args, "no_chat", False):
        raise ValueError("--chat-vars are the chat template's, and --no-chat does not apply it; leave one out")
    return (set_chat_vars(tok, chat_vars, args.model, shown_in),
            adapter_chat_note(getattr(args, "adapter", None), chat_vars))


def adapter_chat_note(adapter: str | None, chat_vars: dict | None) -> str | None:
    """The line that says ``adapter`` was trained with other chat variables than ``chat_vars`` (its
    run's ``train_config.json``: :func:`~prefopt.lora_stack.run_config`): it answers the prompts
    it was trained on, so the same ``--chat-vars`` belong here. None where they agree or its run
    is not beside it."""
    from .chat_template import describe_chat_vars
    from .lora_stack import run_config

    run = run_config(adapter) if adapter else None
    if run is None:
        return None
    trained = run.get("chat_vars") or {}
    if trained == (chat_vars or {}):
        return None
    fix = f"pass --chat-vars {describe_chat_vars(trained)}" if trained else "leave --chat-vars out"
    return (f"{adapter} was trained with chat variables {describe_chat_vars(trained) or '(none)'}, and these prompts "
            f"are rendered with {describe_chat_vars(chat_vars or {}) or '(none)'}: it answers the prompts it was "
            f"trained on; {fix}")


def chat_vars_arg(args: argparse.Namespace) -> dict | None:
    """``--chat-vars enable_thinking=false`` as ``{"enable_thinking": False}`` (None where not given);
    a ValueError naming the flag where an entry is not NAME=VALUE."""
    from .chat_template import parse_chat_vars

    if getattr(args, "chat_vars", None) is None:
        return None
    try:
        return parse_chat_vars(args.chat_vars)
    except ValueError as e:
        raise ValueError(f"--chat-vars: {e}") from None


def add_chat_flags(p, shown_in: str, date_help: str | None = None) -> None:
    """``--chat-date`` and ``--chat-vars``: what a chat template is given in every ``shown_in``."""
    p.add_argument("--chat-date", metavar="YYYY-MM-DD", help=date_help or "the date a chat template that prints "
                   f"today's date (Llama 3.1+) shows in every {shown_in}, e.g. a training run's chat_date (default: "
                   "today)")
    p.add_argument("--chat-vars", nargs="+", metavar="NAME=VALUE", help="switches the chat template reads, given "
                   f"to every {shown_in} as transformers' apply_chat_template takes them, e.g. enable_thinking=false "
                   "(Qwen3: answer without thinking first); pass a training run's chat_vars to render what it "
                   "trained on")


def _convert_gguf(args: argparse.Namespace) -> int:
    from .convert.gguf import convert_gguf, describe_import
    from .fileio import check_new_dir, new_dir

    check_new_dir(args.out_dir, [args.gguf], args.overwrite)
    with new_dir(args.out_dir) as tmp:
        convert_gguf(args.gguf, tmp, dtype=DTYPES.get(args.dtype, args.dtype))
    print(f"wrote {args.out_dir}: {describe_import(args.out_dir)}")
    return 0


def _export_gguf(args: argparse.Namespace) -> int:
    from .convert.gguf_export import export_gguf
    from .fileio import check_writable

    out = Path(args.output)
    if out.is_dir():
        raise ValueError(f"--output {out}: a folder; name the .gguf file to write")
    if out.exists() and not args.overwrite:
        raise ValueError(f"--output {out}: exists; pass --overwrite to replace it, or choose another name")
    check_writable(out.parent)  # before the model loads
    export_gguf(args.model, out, adapter=args.adapter, out_type=args.type, name=args.name)
    size = out.stat().st_size / 2**20
    print(f"wrote {out} ({size:,.0f} MiB, {args.type}); llama.cpp: llama-cli -m {out}; Ollama: a Modelfile with "
          f"'FROM {out.resolve()}', then ollama create NAME -f Modelfile")
    return 0


def _train(args: argparse.Namespace) -> int:
    from .train import DPOConfig, TrainConfig, run_dpo, run_sft

    cls, run = (DPOConfig, run_dpo) if args.command == "dpo" else (TrainConfig, run_sft)
    overrides = {f: getattr(args, f) for f in _config_fields(cls)}
    nulls = {k: None for k, v in overrides.items() if v is _NULL}  # "--max-grad-norm none"
    overrides.update(nulls)
    estimate = args.estimate_memory
    if estimate and overrides["output_dir"] is None:  # nothing is written: the folder is not needed
        overrides["output_dir"] = "(not written)"
    if args.config:
        config = cls.from_file(args.config, **overrides)
    else:
        needed = ("model",) if estimate else ("model", "data", "output_dir")
        missing = [f"--{f.replace('_', '-')}" for f in needed if overrides[f] is None]
        if missing:
            raise ValueError(f"missing {', '.join(missing)} (or give --config FILE)")
        config = cls(**{k: v for k, v in overrides.items() if v is not None})
    if nulls:
        from dataclasses import replace

        config = replace(config, **nulls)
    if estimate:
        from .train.memory_estimate import estimate_lines

        if os.environ.get("RANK", "0") == "0":  # (under torchrun: once)
            print("\n".join(estimate_lines(config, None if estimate == "auto" else estimate)))
        return 0
    from .train.distributed import run_worker

    run_worker(lambda: run(config))  # under torchrun this process ends here, with exit code 0
    return 0


def _merge(args: argparse.Namespace) -> int:
    from .fileio import check_new_dir, new_dir
    from .model import resolve_model_dir
    from .pretrained import load_model, save_merged
    from .tokenizer import load_tokenizer

    check_new_dir(args.output, [resolve_model_dir(args.model), args.adapter], args.overwrite)  # before any load
    model = load_model(args.model, dtype=DTYPES[args.dtype], adapter=args.adapter)
    with new_dir(args.output) as tmp:
        save_merged(model, tmp, load_tokenizer(args.model), base_model=args.model)  # with its model card
    print(f"wrote {args.output}")
    return 0


def _stack_adapters(args: argparse.Namespace) -> int:
    from .fileio import check_new_dir, new_dir
    from .lora_stack import restack

    check_new_dir(args.output, [args.first, args.second], args.overwrite)
    with new_dir(args.output) as tmp:
        restack(args.first, args.second, tmp)
    print(f"wrote {args.output}")
    return 0


def _curves(args: argparse.Namespace) -> int:
    from .train.curves import plot_curves

    print(f"wrote {plot_curves(args.run_dir, args.output)}")
    return 0


def _check_data(args: argparse.Namespace) -> int:
    from .data.check import SHOW_BAD, check_data
    from .fileio import read_json
    from .model import resolve_model_dir
    from .tokenizer import load_tokenizer

    tok = chat_ready(load_tokenizer(args.model), args, "example")
    show_bad = None if args.all_bad else SHOW_BAD
    if args.task:  # a task's data (compare, eval, predict): read as the task reads it
        from .evaluate.cli import key_values
        from .tasks import get_task
        from .tasks.check import check_task_data, check_test_data, group_lines

        given = [flag for flag, v in (("--kind", args.kind), ("--max-prompt-length", args.max_prompt_length),
                                      ("--columns", args.columns), ("--text-windows", args.text_windows),
                                      ("--encoding", args.data_encoding)) if v]
        if given:
            raise ValueError(f"{given[0]} is for a training file; with --task the records are what compare builds "
                             "from the task's data (its columns: --task-option)")
        if args.data and len(args.data) > 1:
            raise ValueError("--task reads one data file (or the task's folder); join the files first")
        if args.test_sheet and not args.test_data:
            raise ValueError(f"--test-sheet {args.test_sheet}: the sheet of --test-data, which is not given")
        if args.test_data and not Path(args.test_data).exists():
            raise FileNotFoundError(f"--test-data {args.test_data}: no such file")
        task = get_task(args.task, **key_values(args.task_option))
        checked = check_task_data(task, args.data[0] if args.data else None, tok, max_length=args.max_length,
                                  show_bad=show_bad)
        grouped, ok = group_lines(checked.records, args.group_by)
        print("\n".join(checked.lines + grouped))
        bad = checked.n_bad > 0 or not checked.n_kept or not ok  # (none usable: exit 1, as for a training file)
        if args.test_data:  # read after the data, as compare does (a classifier keeps the labels read off it)
            tested = check_test_data(task, args.test_data, args.test_sheet, checked, tok, max_length=args.max_length,
                                     show_bad=show_bad, group_by=args.group_by)
            print("\n".join(tested.lines))
            bad = bad or tested.n_bad > 0 or not tested.n_kept
    elif args.test_data or args.test_sheet or args.group_by:
        flag = "--test-data" if args.test_data else "--test-sheet" if args.test_sheet else "--group-by"
        raise ValueError(f"{flag} is for a task's data, as compare reads it (--task)")
    elif args.data is None:
        raise ValueError("--data FILE is needed (a task's bundled data only with --task)")
    else:
        from .data.columns import column_map
        from .data.files import given_paths

        check = check_data(given_paths(args.data), tok, kind=args.kind,
                           max_length=args.max_length, text_windows=args.text_windows,
                           max_prompt_length=args.max_prompt_length, columns=column_map(args.columns))
        print("\n".join(check.lines(show_bad=show_bad)))
        bad = bool(check.report.skipped or not check.report.n_kept)
    config = resolve_model_dir(args.model) / "config.json"
    context = read_json(config).get("max_position_embeddings") if config.is_file() else None
    if context and args.max_length > context:
        print(f"  max_length={args.max_length} is past the model's context of {context} tokens: training "
              f"refuses examples longer than that; pass --max-length {context} or less")
    return 1 if bad else 0


def _data_kind(given: str) -> str:
    """check-data's ``--kind``: the training command's name stands for its records' kind."""
    return {"dpo": "preference", "kto": "feedback"}.get(given, given)


def _config_fields(cls):
    from dataclasses import fields

    return {f.name: f for f in fields(cls)}


_NULL = object()  # a "none" given to an optional field's flag; unset flags are None


def _or_none(kind):
    """The argparse type of an optional field: its kind, or the word ``none``."""
    def parse(text: str):
        return _NULL if text.strip().lower() == "none" else kind(text)

    parse.__name__ = kind.__name__  # argparse names the kind in its errors
    return parse


def _add_config_flags(p: argparse.ArgumentParser, cls) -> None:
    """One flag per config field; unset flags stay None so a --config file's values win.
    An optional field (``int | None`` ...) also takes ``none``: ``--max-grad-norm none``."""
    kinds = {"int": int, "float": float, "str": str}
    kinds.update({f"{k} | None": _or_none(v) for k, v in kinds.items()})
    for name, f in _config_fields(cls).items():
        flag = "--" + name.replace("_", "-")
        text = f.metadata.get("help", "")
        if f.default is not MISSING and f.default is not None:
            text += f" (default: {f.default})"
        elif f.default_factory is not MISSING and f.default_factory():
            text += f" (default: {' '.join(f.default_factory())})"
        help_ = text.strip().replace("%", "%%")
        if f.type == "bool":
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_)
        elif f.type == "list[str]":
            p.add_argument(flag, nargs="+", default=None, help=help_)
        elif f.type == "str | list[str] | None":  # data files: one or several, read by the config's typed_value
            p.add_argument(flag, nargs="+", default=None, metavar="PATH", help=help_)
        elif f.type == "dict[str, str]":  # FIELD=COLUMN entries, read by the config's typed_value
            p.add_argument(flag, nargs="+", default=None, metavar="FIELD=COLUMN", help=help_)
        elif f.type == "dict[str, Any] | None":  # NAME=VALUE entries (chat_vars), read by the config's typed_value
            p.add_argument(flag, nargs="+", default=None, metavar="NAME=VALUE", help=help_)
        else:
            p.add_argument(flag, type=kinds[f.type], default=None, help=help_)


COMMANDS = {  # prefopt --help's list of the commands by what they are for (each command once)
    "check and train": ["env", "check-data", "sft", "dpo", "curves"],
    "test what training did": ["compare", "study", "pool-seeds", "eval", "eval-pairs", "eval-nll", "rating-sheet",
                               "rating-report"],
    "use a model": ["predict", "generate", "chat", "make-pairs", "reviewed-pairs"],
    "move weights": ["merge", "stack-adapters", "export-gguf", "convert-gguf"],
}


def _commands_epilog() -> str:
    """The commands grouped by what they are for, and where to read on."""
    lines = ["commands by what they are for:"]
    lines += [f"  {what + ':':24}{', '.join(names)}" for what, names in COMMANDS.items()]
    return "\n".join([*lines, "", "prefopt COMMAND --help says what a command takes; docs/getting-started.md walks "
                       "through a first run."])


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from .evaluate.cli import (  # eval, compare (the task layer, imported lazily by them)
        add_commands,
        add_estimate_flag,
        positive_int,
        task_options_epilog,
    )
    from .evaluate.make_pairs_cli import add_command as add_make_pairs
    from .interactive import CHAT_HELP

    p = argparse.ArgumentParser(prog="prefopt", description="Local SFT and DPO fine-tuning for clinical LLMs.",
                                epilog=_commands_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"prefopt {__version__} (torch {_torch_version()})")
    sub = p.add_subparsers(dest="command", required=True, parser_class=CommandParser)

    g = sub.add_parser("generate", help="complete a prompt with a model")
    add_answer_flags(g)
    g.add_argument("--prompt", required=True, help="the prompt; @FILE reads it from a file (a long note: UTF-8 "
                   "text, a Word .docx, a Writer .odt or a PDF's text), - from standard input")
    g.add_argument("--stop", action="append", help="stop string (repeatable)")
    g.add_argument("--no-chat", action="store_true", help="do not apply the chat template")
    add_chat_flags(g, "prompt")
    g.set_defaults(func=_generate)

    ch = sub.add_parser("chat", help="talk to a model (+ adapter) in the terminal, turn by turn; it keeps the "
                        "conversation, and /reset, /system, /file PATH, /save PATH, /exit steer it",
                        description="Each line you type is your turn; the answer streams back and the model sees "
                        "the whole conversation (its earliest exchanges left out, with a note, once it outgrows the "
                        "model's context). " + "; ".join(x.strip() for x in CHAT_HELP.split("   ")) + ".")
    add_answer_flags(ch)
    add_chat_flags(ch, "turn")
    ch.set_defaults(func=_chat)

    add_make_pairs(sub)

    c = sub.add_parser("convert-gguf", help="import a GGUF file into an HF-layout folder")
    c.add_argument("gguf", help="path to a .gguf file (llama, qwen2, qwen3 or gemma3 architecture)")
    c.add_argument("out_dir")
    c.add_argument("--dtype", choices=("auto", *DTYPES), default="auto",
                   help="of the saved weights; auto: an unquantized file's own; a quantized one's float32 (exact) up "
                        "to 1B parameters, bfloat16 past that")
    c.add_argument("--overwrite", action="store_true", help="replace an OUT_DIR that holds files already")
    c.set_defaults(func=_convert_gguf)

    e = sub.add_parser("export-gguf", help="write a model (with a LoRA adapter merged in) as a GGUF file for "
                       "llama.cpp or Ollama")
    e.add_argument("--model", required=True, help="model folder, alias (smollm2-135m), hub id or .gguf file")
    e.add_argument("--adapter", help="a LoRA adapter folder to merge in first (e.g. runs/dpo/final)")
    e.add_argument("--output", required=True, help="the .gguf file to write")
    e.add_argument("--type", choices=("f32", "f16", "bf16", "q8_0"), default="f16",
                   help="the matrices' type: f16 (default: half of f32's size), bf16 (as small; a bfloat16 model's "
                   "values exactly), q8_0 (a quarter: 8-bit blocks) or f32 (exact); norms stay f32. On SmolLM2 f16 and q8_0 moved next-token distributions by a KL of "
                   "3e-6 and 0.002 nats (docs/model.md)")
    e.add_argument("--name", help="general.name in the file (default: the model's name, + the adapter's path)")
    e.add_argument("--overwrite", action="store_true", help="replace an OUTPUT file that exists")
    e.set_defaults(func=_export_gguf)

    from .train import DPOConfig, TrainConfig

    for name, cls, help_ in (("sft", TrainConfig, "supervised fine-tuning (LoRA by default)"),
                             ("dpo", DPOConfig, "preference optimisation: DPO, IPO, hinge, robust, RPO, SimPO, ORPO, "
                                                   "TRL's others (BCO, NCA, EXO, SPPO, APO, DiscoPOP, AOT); KTO")):
        t = sub.add_parser(name, help=help_, description=f"Every {cls.__name__} field is a flag; "
                           "--config FILE (YAML/JSON) sets them too; flags override the file.")
        t.add_argument("--config", help=f"YAML or JSON file with {cls.__name__} fields")
        _add_config_flags(t, cls)
        add_estimate_flag(t, "print how much memory a training step of these settings will hold, on cpu or cuda "
                          "(default: this machine's device), from the model's config.json alone, and exit without "
                          "loading weights or data (dense models; under --fsdp each process's share; the worst "
                          "micro-batch: batch-size examples, or pairs, of max-length tokens)")
        t.set_defaults(func=_train)

    k = sub.add_parser("check-data", help="check a training file before training: bad records (file, line, "
                       "field), token lengths, what --max-length would cut, the answers' mix, repeats; exit 1 if any "
                       "record is bad or none is usable. --task: a task's data, as compare reads it",
                       epilog=task_options_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    k.add_argument("--model", required=True, help="the model whose tokenizer and chat template training will use")
    k.add_argument("--data", nargs="+", metavar="PATH", help="JSONL, JSON, CSV, TSV (also .gz, .bz2, .xz), Parquet, "
                   "Excel (.xlsx, .xls) or LibreOffice (.ods) training file (or several, a folder of one split's "
                   "shards, a quoted pattern: as sft and dpo read them, one check over all); with --task, the task's "
                   "data file or folder (default: its bundled data)")
    k.add_argument("--task", help="check a task's data as compare, eval and predict read it: its class mix per "
                   "field, and the SFT examples compare builds from it (lengths, cuts, repeats)")
    k.add_argument("--task-option", action="append", metavar="KEY=VALUE", help="with --task: a task option")
    k.add_argument("--test-data", metavar="PATH", help="with --task: compare's --test-data, checked as the data is, "
                   "then set against it: the training records compare leaves out as the same text, test labels no "
                   "training record holds (compare refuses those), each label's share in both")
    k.add_argument("--test-sheet", metavar="NAME", help="the sheet of --test-data where it is a workbook, as "
                   "compare's")
    k.add_argument("--group-by", metavar="COLUMN", help="with --task: as compare's --set group_by (a patient's id): "
                   "how many groups the records make, and with --test-data the training records of a test patient")
    k.add_argument("--kind", choices=["sft", "preference", "feedback"], type=_data_kind,
                   help="feedback: unpaired records for dpo --loss kto (a preference file read as KTO reads it); "
                   "dpo and kto stand for preference and feedback; default: from the first record's fields")
    k.add_argument("--columns", nargs="+", metavar="FIELD=COLUMN", help="read a record's field from a column of "
                   "another name, as sft and dpo --columns do (e.g. prompt=question 'chosen=good answer')")
    add_data_file_flags(k)
    k.add_argument("--max-length", type=positive_int, default=1024, help="the training max_length to measure against")
    k.add_argument("--max-prompt-length", type=positive_int)
    k.add_argument("--text-windows", action="store_true", help="as sft --text-windows: a text record longer than "
                   "--max-length is split into windows, not cut")
    k.add_argument("--all-bad", action="store_true", help="list every bad record (default: the first 10)")
    add_chat_flags(k, "example")
    k.set_defaults(func=_check_data)

    cv = sub.add_parser("curves", help="draw a training run's metrics.jsonl (loss, eval loss, DPO's pair accuracy, "
                        "margins and log-probs) as a PNG; also while it runs")
    cv.add_argument("run_dir", help="the run's --output-dir (or its metrics.jsonl)")
    cv.add_argument("--output", help="the image to write, in the format its name says: .png, .svg, .pdf (default: "
                    "RUN_DIR/training_curves.png)")
    cv.set_defaults(func=_curves)

    m = sub.add_parser("merge", help="fold a LoRA adapter into its base model and save an HF folder")
    m.add_argument("--model", required=True)
    m.add_argument("--adapter", required=True, help="PEFT-layout adapter folder")
    m.add_argument("--output", required=True)
    m.add_argument("--dtype", choices=DTYPES, default="float32")
    m.add_argument("--overwrite", action="store_true", help="replace an --output folder that holds files already")
    m.set_defaults(func=_merge)

    st = sub.add_parser("stack-adapters", help="one adapter on the base model from an SFT adapter and a DPO "
                        "adapter trained on top of it (for DPO adapters saved alone, before prefopt stacked them)")
    st.add_argument("first", help="the SFT adapter folder")
    st.add_argument("second", help="the adapter trained with the first merged in")
    st.add_argument("output")
    st.add_argument("--overwrite", action="store_true", help="replace an output folder that holds files already")
    st.set_defaults(func=_stack_adapters)

    add_commands(sub)
    en = sub.add_parser("env", help="what this machine gives prefopt: versions, the device and precision a run "
                        "would take, the log-prob path, the cache and default model, each optional package (and "
                        "how to install one that is missing); for checking an offline install, and bug reports")
    en.add_argument("--json", action="store_true", help="the same as JSON")
    en.add_argument("--model", help="also which weights this model is here: its folder, files and their SHA-256, "
                    "as calibration.json and predict.json record it (read once, then kept in the cache)")
    en.add_argument("--adapter", help="also this adapter's SHA-256, and the base weights it was trained on: "
                    "whether they are --model's")
    en.set_defaults(func=_env)
    p.commands = sub.choices  # each command's own parser, for parse_args' errors
    return p


def _env(args: argparse.Namespace) -> int:
    from .environment import facts, report, weights_facts
    from .fileio import json_text

    found = facts()
    if args.model is not None or args.adapter is not None:
        found["weights"] = weights_facts(args.model, args.adapter)
    print(json_text(found, indent=2) if args.json else "\n".join(report(found)))
    return 0


def _torch_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("torch")
    except PackageNotFoundError:
        return "not installed"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, parsed; a flag the command does not have is refused by that command
    (its own usage line), with the flag it most likely meant: ``--learning-rate``: ``--lr``; a
    word given without its flag, with the flag it needs: ``pairs.jsonl``: ``--data`` (also where
    argparse stops first at a missing required flag)."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    for each in (parser, *parser.commands.values()):  # (their errors name what the line likely meant)
        each.argv = argv
    args, extra = parser.parse_known_args(argv)
    if extra:
        parser.commands[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    return args


# bad input, a missing extra, a file that cannot be read or written (a full disk), a run that ran out of memory
# (prefopt.train.out_of_memory.OutOfMemory: what to change): one line, no traceback
USER_ERRORS = (OSError, ValueError, ImportError, MemoryError)


@contextlib.contextmanager
def _warnings_as_lines(prog: str) -> Iterator[None]:
    """Warnings as one line each, ``prog: warning: ...``, not Python's two lines that name
    the file inside prefopt or torch that raised them (``PREFOPT_DEBUG=1``: Python's)."""
    if os.environ.get("PREFOPT_DEBUG"):
        yield
        return
    with warnings.catch_warnings():
        warnings.showwarning = lambda message, *_: _line(f"{prog}: warning: {message}")
        yield


def _line(text: str) -> None:
    """``text`` on stderr as a line of its own: above a progress bar that is being drawn (tqdm's
    ``write`` clears the bar and draws it again under the line), not in the middle of its line."""
    try:
        from tqdm import tqdm
    except ImportError:
        print(text, file=sys.stderr)
    else:
        tqdm.write(text, file=sys.stderr)


def _terminated() -> type[Exception]:
    """:class:`prefopt.train.stop_signal.Terminated`, imported only when an exception is matched (an
    ``except`` clause's class is looked up then): ``prefopt --help`` need not load the trainers."""
    from .train.stop_signal import Terminated

    return Terminated


def _guarded(job: Callable[[], int | None], prog: str, error_code: int, batch_size: int | None = None) -> int | None:
    """``job()``'s result, run as prefopt runs its commands: warnings as one line; Ctrl-C gives
    130 (the trainer has said where it stopped and how to go on), SIGTERM during training 143
    (after a checkpoint); ``| head`` closing the pipe, 141, quietly; bad input
    (:data:`USER_ERRORS`) and PyTorch running out of memory one line, ``prog: error: ...``, and
    ``error_code`` (``batch_size``: the command's --batch-size, named there).
    ``PREFOPT_DEBUG=1``: the traceback instead."""
    try:
        with _warnings_as_lines(prog):
            return job()
    except KeyboardInterrupt:
        if os.environ.get("PREFOPT_DEBUG"):
            raise
        return 130
    except _terminated():  # SIGTERM: the trainer saved a checkpoint and said so; exit as SIGTERM ends a process
        return 143
    except BrokenPipeError:  # stop quietly, as shell tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # else Python's exit flush fails again
        return 141
    except USER_ERRORS as e:
        if os.environ.get("PREFOPT_DEBUG"):
            raise
        print(f"{prog}: error: {e or type(e).__name__}", file=sys.stderr)  # (a bare MemoryError says nothing)
        return error_code
    except RuntimeError as e:  # PyTorch's out of memory where no run said what to change (generate, eval, ...)
        from .train.out_of_memory import is_out_of_memory, torch_words

        if os.environ.get("PREFOPT_DEBUG") or not is_out_of_memory(e):
            raise
        fewer = f"; a smaller --batch-size (now {batch_size}) needs less" if batch_size and batch_size > 1 else ""
        print(f"{prog}: error: out of memory ({torch_words(e)}){fewer}", file=sys.stderr)
        return error_code


def run_script(main: Callable[[], object], prog: str) -> None:
    """Run a script's ``main`` (``examples/``) as ``prefopt`` runs its commands (:func:`_guarded`);
    bad input exits 1."""
    def job() -> None:
        main()  # what it returns is not an exit code

    code = _guarded(job, prog, 1)
    if code:
        sys.exit(code)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def run() -> int:
        from .data.decoding import encoding_scope, naming_encoding_by
        from .data.sheets import sheet_scope

        # --sheet: each workbook's sheet to read; --encoding: each text file's encoding, where the command has
        # the flag (sft and dpo: their config's), which a bad byte's error then names
        flags = {"data_encoding": "--encoding", "encoding": "--encoding", "pairs_encoding": "--pairs-encoding"}
        named_by = next((f"{flag} cp1252" for dest, flag in flags.items() if dest in vars(args)), None)
        with sheet_scope(getattr(args, "data_sheet", None)), encoding_scope(getattr(args, "data_encoding", None)), \
                naming_encoding_by(named_by):
            return args.func(args)

    return _guarded(run, f"prefopt {args.command}", 2, getattr(args, "batch_size", None))


def add_data_file_flags(p: argparse.ArgumentParser) -> None:
    """``--sheet``: the sheet of each Excel workbook in ``--data`` to read; ``--encoding``: each
    text file's encoding (sft and dpo take them as their config's ``sheet`` and ``encoding``; a
    task's data, as the task options)."""
    p.add_argument("--sheet", dest="data_sheet", metavar="NAME", help="the sheet of an Excel workbook in --data to "
                   "read (else its one sheet in view that holds data)")
    add_encoding_flag(p, "--data's CSV, TSV, JSON and JSONL files")


def add_encoding_flag(p: argparse.ArgumentParser, files: str, flag: str = "--encoding", dest: str = "data_encoding"
                      ) -> None:
    """``--encoding``: the text encoding of the ``files`` the command reads (:func:`main` reads
    them in it, and a bad byte's error then names the flag); compare's ``--pairs-encoding``, of
    its ``--pairs`` alone (``dest`` ``pairs_encoding``, read by compare itself)."""
    p.add_argument(flag, dest=dest, metavar="NAME", type=_encoding,
                   help=f"the text encoding of {files} (default: utf-8; cp1252 for Excel's CSV on Western-European "
                   "Windows)")


def _encoding(name: str) -> str:
    """An argparse type: an encoding Python knows (:func:`~prefopt.data.decoding.checked_encoding`)."""
    from .data.decoding import checked_encoding

    try:
        return checked_encoding(name)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def data_file_settings(args: argparse.Namespace) -> dict:
    """``--sheet`` and ``--encoding`` where given, as a command's settings record them."""
    return {k: v for k, v in (("sheet", args.data_sheet), ("encoding", args.data_encoding)) if v}


if __name__ == "__main__":
    sys.exit(main())
