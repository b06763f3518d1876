"""Supervised fine-tuning: next-token loss on response tokens only."""
from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch

from ..data import Records, load_sft, packed_collate, pad_collate
from ..data.sft import IGNORE, TokenizedExample, prompt_len
from ..kernels import nll_sum
from ..model.generate import MIN_SHARED, shared_start
from .data_digest import shared_examples
from .distributed import head_operands
from .loop import Batch, Trainer


def examples_start(examples: Sequence[TokenizedExample]) -> int:
    """How many untrained prompt tokens every example begins with, each keeping one of its own (0
    under ``generate.MIN_SHARED``): what ``packed_collate(examples, start)`` runs once."""
    return shared_start([e.input_ids[:prompt_len(e.labels)] for e in examples], None, None)


class SFTTrainer(Trainer):
    """Completion-only SFT on :class:`~prefopt.data.TokenizedExample` lists.

    Example::

        from prefopt import apply_lora, load_model, load_tokenizer, save_adapter
        from prefopt.data import load_sft
        from prefopt.train import SFTTrainer, TrainConfig

        cfg = TrainConfig(model="smollm2-135m", data="train.jsonl", output_dir="out/sft", max_steps=100)
        tok = load_tokenizer(cfg.model)
        model = apply_lora(load_model(cfg.model), r=cfg.lora_r, alpha=cfg.lora_alpha)
        train, report = load_sft(cfg.data, tok, max_length=cfg.max_length)
        SFTTrainer(model, cfg, train, pad_id=tok.pad_token_id).train()
        save_adapter(model, "out/sft/final", base_model=cfg.model)   # PEFT layout; or run_sft(cfg)
    """

    item_type = TokenizedExample
    item_source = "prefopt.data.load_sft(path or list of dicts, tok)"

    def __init__(self, model, config, train_data: Sequence[TokenizedExample], eval_data=None, *, pad_id: int, **kw):
        """``kw``: the :class:`Trainer` options (``callbacks``, ``tokenizer``, ``evaluators``)."""
        self.pad_id = pad_id
        super().__init__(model, config, train_data, eval_data, **kw)

    def plan(self) -> str:
        """The loop's line, and with ``share_start`` the start all the examples share (a micro-batch
        runs its own, at least as long), or that they share none."""
        if not (self.config.share_start and self.config.pack):
            return super().plan()
        n = examples_start(self.train_data)
        if n:
            return f"{super().plan()}; the {n}+ prompt tokens every example of a micro-batch begins with run once"
        return (f"{super().plan()}; share_start: the examples share no prompt start of {MIN_SHARED}+ tokens, so only "
                "a micro-batch whose examples do runs its start once")

    def collate(self, examples):
        return sft_batch(examples, self.config, self.pad_id)

    def units(self, batch: Batch) -> int:
        return int((batch["labels"][:, 1:] != IGNORE).sum())

    def loss_sum(self, model, batch):
        return sft_loss_sum(model, batch), {}


def sft_batch(examples: Sequence[TokenizedExample], config, pad_id: int) -> Batch:
    """A micro-batch as SFT lays it out: one packed row (``pack``; the examples' shared start
    once with ``share_start``) or padded rows."""
    if not config.pack:
        return pad_collate(examples, pad_id)
    return packed_collate(examples, examples_start(examples) if config.share_start else 0)


def sft_loss_sum(model, batch: Batch) -> torch.Tensor:
    """Summed NLL of the response tokens. The model returns hidden states and only response
    positions reach the lm_head (``prefopt.kernels.nll_sum``): no ``(B, T, V)`` logits."""
    if "lengths" in batch:  # packed: one row, each example attending to itself (packed_collate), and to
        # the start every example has where it leads the row once (share_start)
        hidden = model(batch["input_ids"], packed=batch["lengths"].tolist(),
                       packed_start=int(batch.get("start", 0)), return_hidden=True)  # (1, L, D)
    else:
        hidden = model(batch["input_ids"], batch["attention_mask"], return_hidden=True)  # (B, T, D)
    hidden, weight = head_operands(model, hidden[:, :-1])
    return nll_sum(hidden, weight, batch["labels"][:, 1:], ignore_index=IGNORE)


def split_eval(examples: list, fraction: float, seed: int, records: list[int] | None = None) -> tuple[list, list]:
    """A seeded random split: ``(train, eval)``; eval gets ``round(fraction * n)`` of the ``n``
    records. ``records``: each example's record (:attr:`LoadReport.kept_records`), so that the
    windows of one text (the turns of one conversation) fall on one side; by default each example is its own."""
    if not fraction:
        return examples, []
    records = list(range(len(examples))) if records is None else records
    by_record: dict[int, list] = {}
    for x, r in zip(examples, records, strict=True):
        by_record.setdefault(r, []).append(x)
    keys, n = sorted(by_record), len(by_record)
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=g).tolist()
    n_eval = max(1, round(fraction * n))
    if n_eval >= n:
        noun = "example" if n == len(examples) else "record"
        raise ValueError(f"eval_fraction {fraction:g} of {n} {noun}{'s' * (n != 1)} holds out {n_eval} for eval and "
                         "leaves none to train on; lower it or pass eval_data")
    return ([x for i in order[n_eval:] for x in by_record[keys[i]]],
            [x for i in order[:n_eval] for x in by_record[keys[i]]])


def load_train_eval(config, tok, loader=load_sft, records=None, eval_records=None):
    """Train and eval examples for ``config`` (eval from ``eval_data`` or a seeded split), and
    the load reports. ``loader`` is :func:`load_sft` or ``load_preferences``. ``records`` and
    ``eval_records`` (lists of dicts, DataFrames, a ``datasets.Dataset``) take the place of
    ``data`` and ``eval_data``."""
    for given, name, flag in ((records, "data", "records"), (eval_records, "eval_data", "eval_records")):
        if given is not None and getattr(config, name):
            raise ValueError(f"give {name} (a file) or {flag} (in memory), not both")
    if eval_records is not None and config.eval_fraction:
        raise ValueError("give eval_records or eval_fraction, not both")
    source = records if records is not None else config.data
    if source is None or (isinstance(source, str) and not source.strip()):
        raise ValueError("no training data: set data (--data) to a JSONL, JSON, CSV, TSV, Parquet, .xlsx, .xls or .ods "
                         "file, or pass records")
    kw = dict(max_length=config.max_length, max_prompt_length=config.max_prompt_length,
              skip_bad=config.skip_bad_records, show_progress=config.progress, columns=config.columns,
              encoding=getattr(config, "encoding", None),
              **({"text_windows": True} if config.text_windows else {}))  # SFT's alone (DPO refuses it)
    examples, report = loader(source, tok, sheet=getattr(config, "sheet", None), **kw)
    reports = [report]
    if eval_records is not None or config.eval_data:
        eval_source = Records(eval_records, "<eval_records>") if eval_records is not None else config.eval_data
        eval_examples, eval_report = loader(eval_source, tok, sheet=getattr(config, "eval_sheet", None), **kw)
        reports.append(eval_report)
        if shared := shared_examples(examples, eval_examples):
            warnings.warn(f"{shared} of {len(eval_examples)} eval examples are training examples too, token for "
                          "token: the eval loss on them measures what training saw, not how it generalises; give "
                          "eval data that the training data does not hold", stacklevel=2)
    else:
        examples, eval_examples = split_eval(examples, config.eval_fraction, config.seed, report.kept_records)
    return examples, eval_examples, reports
