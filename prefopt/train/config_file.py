"""A training config's values: their declared kinds, and reading them from a YAML or JSON file.

Every problem a file has is reported at once, each with the file, the line and the setting
(``c.yaml:4: lr: expected a number, got 'fast'``), before anything loads.
"""
from __future__ import annotations

import datetime
import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..data.decoding import read_text
from ..data.readers import RepeatedKey, one_of_each
from ..hints import did_you_mean


def typed_value(kind: str, value: Any) -> Any:
    """``value`` as a setting of the declared ``kind`` (``"float"``, ``"int | None"``,
    ``"list[str]"`` ...); ValueError saying why where it cannot be. Lenient where a file's reader
    is: YAML reads ``1e-4`` (no dot) as text, and an unquoted ``2026-11-30`` as a date."""
    base = kind.removesuffix(" | None")
    if value is None:
        if base != kind:
            return None
        raise ValueError("needs a value (it is empty or null)")
    if base == "bool":
        if isinstance(value, bool):
            return value
        raise ValueError(f"expected true or false, got {value!r}")
    if base == "int" and isinstance(value, int) and not isinstance(value, bool):
        return value  # as it is: a float would round a large one
    if base in ("int", "float"):
        number = None if isinstance(value, bool) else _number(value)
        if number is None:
            raise ValueError(f"expected a number, got {value!r}")
        if base == "float":
            return number
        if number.is_integer():
            return int(number)
        raise ValueError(f"expected a whole number, got {value!r}")
    if base == "str":
        if isinstance(value, datetime.date):
            return value.isoformat()
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        if isinstance(value, str):
            return value
        raise ValueError(f"expected text, got {value!r}")
    if base == "dict[str, str]":  # columns: {field: column}, or FIELD=COLUMN entries
        from ..data.columns import field_columns

        return field_columns(value)
    if base == "dict[str, Any]":  # chat_vars: {name: value}, or NAME=VALUE entries (values read as JSON)
        from ..chat_template import parse_chat_vars

        return parse_chat_vars(value)
    if base == "str | list[str]":  # data: one path, or several (a single one is kept as text)
        paths = [value] if isinstance(value, (str, os.PathLike)) else value
        if isinstance(paths, (list, tuple)) and paths and all(isinstance(p, (str, os.PathLike)) for p in paths):
            paths = [os.fspath(p) for p in paths]
            return paths[0] if len(paths) == 1 else paths
        raise ValueError(f"expected a path or a list of paths, got {value!r}")
    if base == "list[str]":  # names: a list, or text, split at commas and spaces (--lora-targets q_proj,v_proj)
        names = [value] if isinstance(value, str) else value
        if isinstance(names, (list, tuple)) and names and all(isinstance(n, str) for n in names):
            names = [part for n in names for part in n.replace(",", " ").split()]
        if names and isinstance(names, list) and all(isinstance(n, str) for n in names):
            return names
        raise ValueError(f"expected a list of names, got {value!r}")
    return value


def _number(value: Any) -> float | None:
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


# what Hugging Face's TrainingArguments, TRL's configs and PEFT's LoraConfig call prefopt's settings
OTHER_NAMES = {
    "learning_rate": "lr", "num_train_epochs": "epochs", "per_device_train_batch_size": "batch_size",
    "train_batch_size": "batch_size", "gradient_accumulation_steps": "grad_accum", "lr_scheduler_type": "schedule",
    "max_seq_length": "max_length", "logging_steps": "log_every", "eval_steps": "eval_every",
    "save_steps": "save_every", "metric_for_best_model": "best_metric", "loss_type": "loss",
    "r": "lora_r", "target_modules": "lora_targets", "train_file": "data", "dataset": "data",
    "validation_file": "eval_data", "model_name_or_path": "model", "ref_model": "ref",
    "resume_from_checkpoint": "resume", "early_stopping_patience": "patience", "use_dora": "lora_dora",
    "use_rslora": "lora_rslora", "packing": "pack", "padding_free": "pack", "target_parameters": "lora_experts",
}


def setting_hint(name: str, known: Iterable[str]) -> str:
    """`` (prefopt calls it 'lr')`` where ``name`` is another library's name for one of
    ``known``, else :func:`~prefopt.hints.did_you_mean`'s hint."""
    known = list(known)
    if OTHER_NAMES.get(name) in known:
        return f" (prefopt calls it {OTHER_NAMES[name]!r})"
    return did_you_mean(name, known)


def read_config_file(path: str | Path, kinds: dict[str, str]) -> dict[str, Any]:
    """The settings in the YAML (``.yaml``/``.yml``, needs PyYAML) or JSON file ``path``, each
    turned into its kind in ``kinds`` (setting name → declared kind). ValueError naming the
    file (and line) where it is missing, is not YAML/JSON, is not a mapping, names an unknown
    setting or gives one a value of the wrong kind."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such config file")
    text = read_text(path, "utf-8")  # a BOM (Windows Notepad) dropped; a byte not UTF-8 named by line and column
    d = _parse(path, text)
    if d is None:
        d = {}
    if not isinstance(d, dict):
        raise ValueError(f"{path}: expected settings as name: value pairs, got a {type(d).__name__}")
    problems, out = [], {}
    for name, value in d.items():
        where = f"{path}:{_line_of(text, str(name))}"
        if name not in kinds:
            problems.append(f"{where}: unknown setting {name!r}{setting_hint(str(name), kinds)}")
            continue
        try:
            out[name] = typed_value(kinds[name], value)
        except ValueError as e:
            problems.append(f"{where}: {name}: {e}")
    if problems:
        raise ValueError("invalid config file:\n  " + "\n  ".join(problems))
    return out


def _parse(path: Path, text: str) -> Any:
    if path.suffix.lower() in (".yaml", ".yml"):
        from .._deps import require

        yaml = require("yaml", "reading a YAML config")
        try:
            return yaml.load(text, Loader=_once_loader(yaml))
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
            problem = str(getattr(e, "problem", None) or e)
            raise ValueError(f"{where}: {'' if TWICE in problem else 'not valid YAML: '}{problem}") from None
    try:
        return json.loads(text, object_pairs_hook=one_of_each)
    except RepeatedKey as e:
        key = e.args[0]
        raise ValueError(f"{path}:{_line_of(text, key, 2)}: {_twice(key, _line_of(text, key))}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: not valid JSON: {e.msg} (column {e.colno})"
                         + ("; a .yaml or .yml file is read as YAML" if path.suffix.lower() != ".json" else "")) from None


TWICE = "the file would keep the last value without a word; keep one"


def _twice(key, first) -> str:
    return f"{key!r} is set twice (first on line {first}): {TWICE}"


def _once_loader(yaml):
    """PyYAML's safe loader refusing a key given twice in one mapping (``safe_load`` keeps the
    last: a second ``lr:`` further down silently won), at the second one's line."""

    class Loader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            if isinstance(node, yaml.MappingNode):
                seen: dict = {}
                for key_node, _ in node.value:
                    if key_node.tag == "tag:yaml.org,2002:merge":  # '<<: *defaults' may be overridden
                        continue
                    key = self.construct_object(key_node, deep=deep)
                    try:
                        first = seen.setdefault(key, key_node.start_mark.line + 1)
                    except TypeError:  # an unhashable key: the base class says what is wrong
                        continue
                    if first != key_node.start_mark.line + 1:
                        raise yaml.constructor.ConstructorError(None, None, _twice(key, first), key_node.start_mark)
            return super().construct_mapping(node, deep=deep)

    return Loader


def _line_of(text: str, name: str, nth: int = 1) -> int | str:
    """The ``nth`` line that sets ``name`` (``name:`` in YAML, ``"name":`` in JSON), or ``?``."""
    pattern = re.compile(rf"""(?:^|[{{,\s])["']?{re.escape(name)}["']?\s*:""")
    found = [i for i, line in enumerate(text.splitlines(), 1) if pattern.search(line)]
    return found[nth - 1] if len(found) >= nth else "?"
