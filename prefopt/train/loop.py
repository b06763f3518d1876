"""The training loop that SFT and DPO share; they differ only in how a batch becomes a loss.

One optimizer step::

    micro-batches for this rank ──► count loss units (tokens or pairs), all-reduce → U
    for each micro-batch:  loss = Σ unit losses · world / U ;  backward  (DDP syncs on the last)
    clip ─► lr = lr_at(step) ─► AdamW step ─► log / eval / checkpoint / callbacks

Normalising by the global unit count makes N processes with the same global batch take
the same step as one process. The data order is a pure function of (seed, step), so a
resumed run sees exactly the batches the interrupted one would have.
"""
from __future__ import annotations

import functools
import math
import shutil
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from .._deps import progress
from ..devices import resolve_device, slow_half
from ..fileio import read_json, write_json_atomic
from ..lora import lora_layers
from ..model.generate import modes_kept
from . import run_notes
from . import state as ckpt_io
from .config import TrainConfig, autocast_on, no_eval_set
from .data_digest import check_same_data, data_digest
from .distributed import (
    DistInfo,
    all_reduce_sum,
    barrier,
    gather_full,
    init_distributed,
    local_device,
    no_sync,
    shard_like,
    shards_as_it_moves,
    wrap_model,
)
from .diverged import diverged
from .memory_estimate import fit_note
from .metrics import MetricsLog
from .out_of_memory import explained, moved, reraised, torch_words, weights_advice
from .peak_memory import PeakMemory
from .saving import BestWeights
from .schedule import lr_at
from .stop_signal import Terminated, going_on, stop_requests

Batch = dict[str, torch.Tensor]
EVAL_BAR_MIN = 64  # an eval set this small (per process) finishes without a bar
Callback = Callable[["Trainer", int, dict], None]
Evaluator = Callable[["Trainer"], dict[str, float]]


def _check_context(model: torch.nn.Module, examples: Sequence) -> None:
    """Refuse examples longer than the model's context: positions past ``max_position_embeddings``
    were never trained (RoPE would extrapolate silently)."""
    context = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    longest = max((len(ex.input_ids) for ex in examples), default=0)
    if context and longest > context:
        raise ValueError(f"the longest example has {longest} tokens, more than the model's context of {context} "
                         f"(max_position_embeddings); pass max_length={context} or less (sft, dpo: --max-length; "
                         f"compare: --set max_length={context})")


class Trainer:
    """Owns the step, accumulation, evaluation, logging and checkpoints.

    Subclasses implement :meth:`loss_sum` (batch → summed loss, units, metric sums) and
    :meth:`collate`. ``callbacks`` are called as ``cb(trainer, step, metrics)`` after each step.
    ``tokenizer``, optional, is written beside the weights the trainer saves (``best/``; the
    CLI's ``final/``). ``evaluators`` add metrics of your own to every evaluation: each is called
    as ``fn(trainer)`` (model in eval mode, no gradients) and returns ``{name: value}``, logged
    as ``eval_name`` and usable as ``best_metric``, e.g. a task score of greedy answers on a
    validation set. Under torchrun every process calls it and the values are averaged, so
    score the same items on each (or equal shares).
    """

    def __init__(self, model: torch.nn.Module, config: TrainConfig, train_data: Sequence,
                 eval_data: Sequence | None = None, *, callbacks: Sequence[Callback] = (), tokenizer=None,
                 evaluators: Sequence[Evaluator] = ()):
        self.check_config(config)
        self.config = config
        self.tokenizer = tokenizer
        self.evaluators = list(evaluators)
        self.train_data, self.eval_data = list(train_data), list(eval_data or [])
        self._check_items(self.train_data, "train_data")  # before the output folder is claimed
        self._check_items(self.eval_data, "eval_data")
        _check_context(model, self.train_data + self.eval_data)
        if config.best_metric and not (self.eval_data or self.evaluators):
            raise ValueError(no_eval_set(config.best_metric))
        self.device = local_device(resolve_device(config.device))
        self.peak = PeakMemory(self.device)  # entered by train()
        self.dist: DistInfo = init_distributed(self.device)
        self.replaced = ckpt_io.claim_output_dir(config.output_dir, resume=config.resume, overwrite=config.overwrite,
                                                 is_main=self.dist.is_main)  # an earlier run's files, removed
        # weights that do not fit there: said so, not as a failed step; FSDP moves each block as it shards it
        self.model = model if shards_as_it_moves(self.dist, config.fsdp) else moved(self, model)
        self.model.gradient_checkpointing = config.checkpointing()
        self.callbacks = list(callbacks)
        self.output_dir = Path(config.output_dir)
        self.best = BestWeights(config, self.output_dir)
        self.global_batch = config.batch_size * config.grad_accum * self.dist.world
        self.steps_per_epoch = len(self.train_data) // self.global_batch
        if self.steps_per_epoch < 1:
            n = len(self.train_data)
            raise ValueError(f"{n} training example{'s are' if n != 1 else ' is'} fewer than one global batch "
                             f"({config.batch_size} x {config.grad_accum} accumulation x {self.dist.world} processes): "
                             "lower batch_size (--batch-size), or give more data")
        self.total_steps = config.max_steps or math.ceil(config.epochs * self.steps_per_epoch)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("the model has no trainable parameters")
        if merged := [name for name, m in lora_layers(self.model) if m.merged]:
            raise ValueError(f"the model's LoRA adapter is merged into its weights ({len(merged)} layers, e.g. "
                             f"{merged[0]}; merge_lora), where training would not change it: unmerge_lora(model) "
                             "first, or merge_and_unload(model) and apply_lora for a new adapter on top")
        if shards_as_it_moves(self.dist, config.fsdp):  # the weights reach the device here, a block at a time
            self.wrapped = reraised(lambda: wrap_model(self.model, self.dist, fsdp=True, device=self.device),
                                    lambda e: weights_advice(self, self.model, torch_words(e)))
        else:
            self.wrapped = wrap_model(self.model, self.dist, fsdp=config.fsdp)
        self.params = [p for p in self.wrapped.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            self.params, lr=config.lr, betas=(config.adam_beta1, config.adam_beta2), eps=config.adam_eps,
            weight_decay=config.weight_decay, foreach=True,
        )
        self.step = 0
        self.eval_owed = False  # a resumed checkpoint's step still needs its evaluation (a signal came first)
        self._lengths = [self.length(e) for e in self.train_data]
        self._order_cache: tuple[int | None, list[int]] = (None, [])

    # --- what a subclass defines -------------------------------------------------------
    noun = "examples"  # what the training data holds, for the console
    counts_items = False  # a step's loss units are its items (DPO's pairs): their number logged under ``noun``
    item_type: type | None = None  # the class of each training item
    item_source = ""  # the function that makes them, for the error on anything else

    config_type: type = TrainConfig  # what the config must be

    @classmethod
    def check_config(cls, config) -> None:
        if not isinstance(config, cls.config_type):
            raise TypeError(f"{cls.__name__}: config is a {type(config).__name__}, not a {cls.config_type.__name__}"
                            + (f"; {cls.config_type.__name__}(**settings) makes one of a dict"
                               if isinstance(config, dict) else ""))

    def _check_items(self, items: list, name: str) -> None:
        if self.item_type is None:
            return
        bad = next((i for i, x in enumerate(items) if not isinstance(x, self.item_type)), None)
        if bad is not None:
            raise TypeError(f"{type(self).__name__}: {name}[{bad}] is a {type(items[bad]).__name__}, not a "
                            f"{self.item_type.__name__}; tokenize your records first with {self.item_source}")

    def collate(self, examples: Sequence) -> Batch:
        raise NotImplementedError

    def loss_sum(self, model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """Summed loss over the batch's units, and metric sums (divided by units when logged)."""
        raise NotImplementedError

    def units(self, batch: Batch) -> int:
        """How many loss units (tokens for SFT, pairs for DPO) a batch holds."""
        raise NotImplementedError

    def length(self, example) -> int:
        return len(example.input_ids)

    # --- data order ---------------------------------------------------------------------
    def _epoch_order(self, epoch: int) -> list[int]:
        if self._order_cache[0] == epoch:
            return self._order_cache[1]
        g = torch.Generator().manual_seed(self.config.seed * 1_000_003 + epoch)
        order = torch.randperm(len(self.train_data), generator=g).tolist()
        if self.config.group_by_length:  # sort within windows of 50 global batches, then shuffle the batches
            w = self.global_batch * 50
            order = [i for s in range(0, len(order), w)
                     for i in sorted(order[s:s + w], key=lambda i: -self._lengths[i])]
            batches = [order[s:s + self.global_batch] for s in range(0, self.steps_per_epoch * self.global_batch,
                                                                        self.global_batch)]
            perm = torch.randperm(len(batches), generator=g).tolist()
            order = [i for b in perm for i in batches[b]]
        self._order_cache = (epoch, order)
        return order

    def micro_batches(self, step: int) -> list[Batch]:
        """This rank's micro-batches for optimizer step ``step``; a pure function of (seed, step)."""
        epoch, k = divmod(step, self.steps_per_epoch)
        order = self._epoch_order(epoch)
        idx = order[k * self.global_batch:(k + 1) * self.global_batch]
        bs, world, rank = self.config.batch_size, self.dist.world, self.dist.rank
        out = []
        for m in range(self.config.grad_accum):
            chunk = idx[m * bs * world:(m + 1) * bs * world]
            out.append(self.collate([self.train_data[i] for i in chunk[rank * bs:(rank + 1) * bs]]))
        return out

    # --- the loop -----------------------------------------------------------------------
    def _autocast(self):
        enabled = autocast_on(self.device, self.config)
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled)

    def train_step(self, step: int) -> dict[str, Any]:
        self.wrapped.train()
        micro = self.micro_batches(step)
        units = all_reduce_sum(torch.tensor(float(sum(self.units(b) for b in micro))), self.dist).item()
        loss_total = torch.zeros((), device=self.device)
        sums: dict[str, float] = {}
        n_tokens = 0
        for i, batch in enumerate(micro):
            batch = {k: v.to(self.device) for k, v in batch.items()}
            # the examples' tokens ("tokens" where a layout runs fewer: SFT's share_start)
            n_tokens += int(batch["tokens"]) if "tokens" in batch else int(batch["attention_mask"].sum())
            with no_sync(self.wrapped, i == len(micro) - 1), self._autocast():
                loss, metrics = self.loss_sum(self.wrapped, batch)
                (loss * self.dist.world / max(units, 1.0)).backward()
            loss_total += loss.detach()
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + float(v)
        # the norm of the (reduced) gradients, clipped to max_grad_norm where it is set (inf: only measured)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, self.config.max_grad_norm or math.inf))
        if not math.isfinite(grad_norm):  # AdamW would spread the NaN into every weight: stop before it
            self.optimizer.zero_grad(set_to_none=True)
            raise diverged(self, step, grad_norm, float(loss_total) / max(units, 1.0))
        lr = self.lr(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        reduced = all_reduce_sum(torch.tensor([float(loss_total), float(n_tokens), *sums.values()]), self.dist)
        out = {"loss": reduced[0].item() / max(units, 1.0), "lr": lr, "tokens": int(reduced[1])}
        out.update({k: reduced[2 + j].item() / max(units, 1.0) for j, k in enumerate(sums)})
        if self.counts_items:  # all ranks' (units is reduced above)
            out[self.noun] = int(units)
        if self.config.max_grad_norm:
            out["grad_norm"] = grad_norm
        return out

    def lr(self, step: int) -> float:
        c = self.config
        return lr_at(step, base_lr=c.lr, total_steps=self.total_steps, warmup_steps=c.warmup_steps,
                     schedule=c.schedule, min_lr_ratio=c.min_lr_ratio)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Loss (and metrics) over the whole eval set, per unit, sharded across ranks; then the
        ``evaluators``' metrics."""
        out = self._eval_loss() if self.eval_data else {}
        if self.evaluators:
            self.wrapped.eval()
            mine = {}
            for fn in self.evaluators:
                with self._autocast():  # as the loss is evaluated (bf16 on CUDA)
                    mine.update({f"eval_{k}": float(v) for k, v in fn(self).items()})
            keys = sorted(mine)
            r = all_reduce_sum(torch.tensor([mine[k] for k in keys], dtype=torch.float64), self.dist)
            out.update({k: r[j].item() / self.dist.world for j, k in enumerate(keys)})
        return out

    def _eval_loss(self) -> dict[str, float]:
        self.wrapped.eval()
        bs, world, rank = self.config.batch_size, self.dist.world, self.dist.rank
        mine = self.eval_data[rank::world]
        total, units, sums = 0.0, 0.0, {}
        bar = progress(total=len(mine), desc="eval", unit=self.noun.rstrip("s"), leave=False,
                       disable=not (self.config.progress and self.dist.is_main) or len(mine) <= EVAL_BAR_MIN)
        for s in range(0, len(mine), bs):
            part = mine[s:s + bs]
            batch = {k: v.to(self.device) for k, v in self.collate(part).items()}
            with self._autocast():
                loss, metrics = self.loss_sum(self.model, batch)
            total += float(loss)
            units += self.units(batch)
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            bar.update(len(part))
        bar.close()
        keys = sorted(sums)
        r = all_reduce_sum(torch.tensor([total, units, *[sums[k] for k in keys]]), self.dist)
        out = {"eval_loss": r[0].item() / max(r[1].item(), 1.0)}
        out.update({f"eval_{k}": r[2 + j].item() / max(r[1].item(), 1.0) for j, k in enumerate(keys)})
        return out

    def train(self) -> dict[str, Any]:
        """Run the training (from its checkpoint with ``resume``); the summary. The model's modules
        are left in the modes they had (a loaded model: eval), so a forward of the user's own after
        training runs without the adapter's dropout. Running out of memory raises
        :class:`~prefopt.train.out_of_memory.OutOfMemory`, which says what to change."""
        with modes_kept(self.wrapped), self.peak:  # the peak memory logged: this run's (peak_memory.py)
            return explained(self, self._train)

    def _train(self) -> dict[str, Any]:
        c = self.config
        started = time.perf_counter()
        resume_from, passed = ckpt_io.resume_point(self.output_dir) if c.resume else (None, [])
        if resume_from is not None:
            self._load_checkpoint(resume_from)
        log = MetricsLog(self.output_dir, resume_step=self.step if resume_from else None) if self.dist.is_main else None
        if log:
            print(f"prefopt: {self.plan()}", flush=True)
            if note := self.precision_note():
                print(f"prefopt: {note}", flush=True)
            for dtype in {p.dtype for p in self.model.parameters() if p.is_floating_point()}:
                if note := slow_half(dtype, self.device):  # (a 16-bit base on such a CPU: every step crawls)
                    print(f"prefopt: warning: {note}", file=sys.stderr, flush=True)
            if note := self.space_note():
                print(f"prefopt: warning: {note}", file=sys.stderr, flush=True)
            if note := fit_note(c, self.model, self.device, max(self._lengths, default=0)):
                print(f"prefopt: warning: {note}", file=sys.stderr, flush=True)
        if log and resume_from:
            for why in passed:  # newest first: the steps since resume_from are trained again
                print(f"prefopt: warning: checkpoint {why}; passed over for {resume_from.name}", file=sys.stderr,
                      flush=True)
            print(f"prefopt: resuming from {resume_from} (step {self.step})", flush=True)
        elif log and c.resume:
            if self.replaced and not c.overwrite:  # a run that stopped before it saved anything (saved_nothing)
                print(f"prefopt: --resume: the run in {self.output_dir} stopped before its first checkpoint "
                      f"({', '.join(self.replaced)} replaced); starting again at step 0", flush=True)
            else:
                print(f"prefopt: --resume: no checkpoint in {self.output_dir} yet; starting at step 0", flush=True)
        summary: dict[str, Any] = {"total_steps": self.total_steps, "resumed_from_step": self.step}
        if self.step == 0:
            first = self._first_evaluation()
            if first and log:
                log.write({"step": 0, **first})
            summary["eval_before"] = first
            self.best.consider(self, first, 0)
        if resume_from is not None and self.best.out_of_patience:  # written at the step the run stopped early
            stopped = self.evaluate()  # the same weights: the evaluation that stopped it, again (not logged twice)
        else:
            stopped = self._owed_evaluation(log) if self.eval_owed else None
            if stopped is None:
                stopped = self._train_with_bar(log)
        if stopped is not None:  # the weights were just evaluated, and judged
            final_eval = stopped
            summary["stopped_early"] = {"step": self.step, "patience": c.patience, "metric": c.best_metric}
        else:
            final_eval = self._final_evaluation()
            if final_eval and log:
                log.write({"step": self.step, **final_eval})
        summary["eval_after"] = final_eval
        if self.best.record is not None:
            summary["best"] = {**self.best.record, "saved": str(self.best.folder)}
        summary.update(train_seconds=round(time.perf_counter() - started, 1), device=self.device.type,
                       peak_mem_mb=self.peak.mb(), **self.before_training())
        if log:
            log.close()
            write_json_atomic(self.output_dir / "train_summary.json", summary)
        return summary

    def _first_evaluation(self) -> dict[str, float]:
        """The evaluation before step 1. Nothing is trained yet, so SIGTERM or Ctrl-C stop it where
        they land and the run says how to go on: ``--resume`` starts it again
        (:func:`~prefopt.train.state.saved_nothing`)."""
        return self._stopped_at_once(self.evaluate, lambda: "in the evaluation before the first step, with nothing "
                                     f"trained yet; {going_on().resume} to start again")

    def _stopped_at_once(self, job: Callable[[], Any], said: Callable[[], str]) -> Any:
        """``job()``, work that nothing is lost by stopping (an evaluation before step 1 or one a
        checkpoint owes, a reference cache's fill): SIGTERM or Ctrl-C stop it where they land, and
        the main process says ``prefopt: stopped by SIGTERM {said()}`` (or ``interrupted``)."""
        try:
            with stop_requests(at_once=True):
                return job()
        except (Terminated, KeyboardInterrupt) as e:
            if self.dist.is_main:
                how = "stopped by SIGTERM" if isinstance(e, Terminated) else "interrupted"
                print(f"\nprefopt: {how} {said()}", file=sys.stderr, flush=True)
            raise

    def _final_evaluation(self) -> dict[str, float]:
        """The evaluation after the last step, and ``best/`` where it scores best. SIGTERM or Ctrl-C
        during them ended the run with the final weights unsaved (all of the run, with
        ``save_every`` 0); now they are saved as the last step's checkpoint first, and ``--resume``
        evaluates them again. One process stops where a signal lands in the evaluation; under
        torchrun the ranks finish it and stop together. A signal while ``best/`` or the checkpoint
        is written waits for it to be whole."""
        with stop_requests(ctrl_c="once its weights are saved") as asked:
            out, signum = self._evaluation_unless_stopped()
            if not signum:
                self.best.consider(self, out, self.step)
                signum = self._stop_requested(asked)
            if signum:
                self.save_checkpoint()
        if not signum:
            return out
        if self.dist.is_main:
            how = "stopped by SIGTERM" if signum == signal.SIGTERM else "interrupted"
            self._say_stopped(f"{how} in the final evaluation")
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise Terminated(f"stopped by SIGTERM in the final evaluation, after saving the weights of step {self.step} "
                         f"as a checkpoint: {going_on().resume} to evaluate them again")

    def _evaluation_unless_stopped(self) -> tuple[dict[str, float], int]:
        """``(metrics, 0)``, or ``({}, signal)`` where SIGTERM or Ctrl-C came during the evaluation:
        one process stops it where the signal lands, torchrun ranks finish it and agree after it.
        Called inside a :func:`stop_requests` block, which holds a signal that comes after this
        one's handlers are put back; the ``try`` takes in their putting back too."""
        try:
            with stop_requests(at_once=not self.dist.enabled) as asked:
                out = self.evaluate()
                signum = self._stop_requested(asked)
        except Terminated:
            return {}, signal.SIGTERM
        except KeyboardInterrupt:
            return {}, signal.SIGINT
        return (out, 0) if not signum else ({}, signum)

    def _train_with_bar(self, log: MetricsLog | None) -> dict[str, float] | None:
        """:meth:`_run_steps` under the progress bar; a Ctrl-C says where the run stopped."""
        bar = progress(total=self.total_steps, initial=self.step, desc="train", unit="step",
                       disable=not (self.config.progress and self.dist.is_main)) if self.dist.is_main else None
        try:
            with stop_requests() as asked:
                return self._run_steps(log, bar, asked)
        except Terminated:  # SIGTERM: the step finished and a checkpoint holds it (a first Ctrl-C's: below)
            if self.dist.is_main:
                self._say_stopped("stopped by SIGTERM")
            raise
        except KeyboardInterrupt:  # Ctrl-C: say where the run stopped and how to go on
            if self.dist.is_main:
                self._say_stopped("interrupted")
            raise
        except OSError:  # a full disk, a lost mount: the error follows (the CLI's one line); say how to go on
            if self.dist.is_main:
                self._say_stopped("stopped by the error below", "once it is mended, ")
            raise
        finally:
            if bar is not None:
                bar.close()

    def before_training(self) -> dict[str, float]:
        """What the trainer did before ``train()`` that train_summary.json records (DPO: the
        reference log-probs' fill); none here."""
        return {}

    def plan(self) -> str:
        """One line on what the run will do: data, steps, what trains, where (:func:`~.run_notes.plan_line`)."""
        return run_notes.plan_line(self)

    def precision_note(self) -> str | None:
        """A warning where trainable weights are 16-bit (:func:`~.run_notes.precision_note`)."""
        return run_notes.precision_note(self.params)

    def space_note(self) -> str | None:
        """A warning where the disk lacks room for the run's saves (:func:`~.run_notes.space_note`)."""
        return run_notes.space_note(self)

    def _run_steps(self, log: MetricsLog | None, bar, asked: Callable[[], int]) -> dict[str, float] | None:
        """Train from ``self.step`` to ``total_steps``: log, evaluate, save and call back as configured.
        Returns the last evaluation's metrics where ``patience`` stopped the run early, else None.
        Once ``asked()`` says a stop was requested (SIGTERM or a first Ctrl-C, on any rank), the
        step ends with a checkpoint and :class:`~prefopt.train.stop_signal.Terminated` (or
        KeyboardInterrupt)."""
        c = self.config
        t0, tokens = time.perf_counter(), 0
        while self.step < self.total_steps:
            metrics = self.train_step(self.step)
            self.step += 1
            tokens += metrics["tokens"]
            elapsed = time.perf_counter() - t0
            metrics.update(step=self.step, epoch=self.step / self.steps_per_epoch,
                           tokens_per_s=tokens / max(elapsed, 1e-9), peak_mem_mb=self.peak.mb())
            stop = False
            if c.eval_every and self.step % c.eval_every == 0 and self.step < self.total_steps:
                evaluated = self._evaluation_in_run(asked, log, metrics)
                metrics.update(evaluated)
                self.best.consider(self, evaluated, self.step)
                stop = self.best.out_of_patience  # judged on an evaluation only
            if log and (self.step % c.log_every == 0 or self.step == self.total_steps or stop):
                log.write(metrics)
            if bar is not None:
                bar.set_postfix(loss=f"{metrics['loss']:.4f}", lr=f"{metrics['lr']:.2e}",
                                tok_s=f"{metrics['tokens_per_s']:.0f}", refresh=False)  # drawn by update
                bar.update(1)
            saved = bool(c.save_every and self.step % c.save_every == 0 and self.step < self.total_steps)
            if saved:
                self.save_checkpoint()
            for cb in self.callbacks:
                cb(self, self.step, metrics)
            if signum := self._stop_requested(asked):
                if not saved:
                    self.save_checkpoint()
                if signum == signal.SIGINT:  # a first Ctrl-C: the CLI's 130, the message of any Ctrl-C
                    raise KeyboardInterrupt
                raise Terminated(f"stopped by SIGTERM at step {self.step} of {self.total_steps}, after saving a "
                                 f"checkpoint: {going_on().resume} to continue from it")
            if stop:  # every rank sees the same all-reduced metrics, so all stop here
                return evaluated
        return None

    def _evaluation_in_run(self, asked: Callable[[], int], log: MetricsLog | None, metrics: dict) -> dict[str, float]:
        """The evaluation after a step (``eval_every``). In one process a signal that came during
        the step, or comes during the evaluation, does not wait for it (evaluators that generate
        answers take minutes, longer than a scheduler's grace period): the step's checkpoint is
        saved with the evaluation owed (the random generators as they were before it), and
        ``--resume`` evaluates first (:meth:`_owed_evaluation`). Under torchrun the ranks agree
        before it (one all-reduce an evaluation): a signal on any rank during the step stops them
        all without it; one during it waits for its end, and the ranks stop after the step."""
        before, signum = ckpt_io.rng_states(), self._stop_requested(asked)
        if not signum:
            if self.dist.enabled:  # a signal during it: the ranks stop after the step (its end's all-reduce)
                return self.evaluate()
            out, signum = self._evaluation_unless_stopped()
            if not signum:
                return out
        ckpt_io.set_rng_states(before)
        if log and self.step % self.config.log_every == 0:
            log.write(metrics)  # the step's training metrics; its evaluation's follow on the resume
        self.eval_owed = True  # the checkpoint says so
        self.save_checkpoint()  # (a signal now waits: the block of _train_with_bar)
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise Terminated(f"stopped by SIGTERM at step {self.step} of {self.total_steps}, before its evaluation, "
                         f"after saving a checkpoint: {going_on().resume} to evaluate and continue")

    def _owed_evaluation(self, log: MetricsLog | None) -> dict[str, float] | None:
        """The evaluation a signal kept the checkpoint's step from (:meth:`_evaluation_in_run`), as
        the run would have done it: logged, judged for ``best/``; its metrics where ``patience``
        stops the run there, else None. A signal stops it where it lands: the checkpoint still owes it."""
        evaluated = self._stopped_at_once(
            self.evaluate, lambda: f"in the evaluation that step {self.step}'s checkpoint owes; {going_on().resume} "
            f"to evaluate and continue from {ckpt_io.latest_checkpoint(self.output_dir)}")
        self.best.consider(self, evaluated, self.step)
        stop = self.best.out_of_patience
        if log and (self.step % self.config.log_every == 0 or stop):
            log.write({"step": self.step, **evaluated})
        self.eval_owed = False
        return evaluated if stop else None

    def _stop_requested(self, asked: Callable[[], int]) -> int:
        """The signal that asked any rank to stop (SIGTERM before SIGINT), or 0: all ranks stop at
        the same point (one all-reduce of two numbers each call, under torchrun only: after each
        step, before each evaluation during the run, after the final evaluation)."""
        if not self.dist.enabled:
            return asked()
        mine = asked()
        term, ctrl_c = all_reduce_sum(torch.tensor([float(mine == signal.SIGTERM), float(mine == signal.SIGINT)]),
                                      self.dist).tolist()
        return signal.SIGTERM if term else (signal.SIGINT if ctrl_c else 0)

    def _say_stopped(self, how: str, first: str = "") -> None:
        """The line a stop ends with: where the run stopped and how to go on (:func:`going_on`),
        after ``first`` (``"once it is mended, "``)."""
        last, words = ckpt_io.latest_checkpoint(self.output_dir), going_on()
        if last is not None:
            what = f"{first}{words.resume} to continue from {last}"
        else:
            what = f"it saved no checkpoint{words.save_more}; {first}{words.restart} to start again"
        owed = ", before its evaluation" if self.eval_owed else ""
        print(f"\nprefopt: {how} at step {self.step} of {self.total_steps}{owed}; {what}", file=sys.stderr, flush=True)

    # --- checkpoints --------------------------------------------------------------------
    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The trained parameters as full CPU tensors, on the main rank ({} elsewhere). Every rank
        must call it: FSDP2 shards are gathered one parameter at a time."""
        names = {id(p): n for n, p in self.model.named_parameters()}
        out = {}
        for p in self.params:
            t = gather_full(p, keep=self.dist.is_main)
            if t is not None:
                out[names[id(p)]] = t
        return out

    def optimizer_state(self) -> dict:
        """The optimizer's state dict; under FSDP2 its sharded moments are gathered into full
        CPU tensors on the main rank, one at a time (every rank must call it)."""
        sd = self.optimizer.state_dict()
        if not self.config.fsdp:
            return sd
        state = {pid: {k: gather_full(v, keep=self.dist.is_main) if hasattr(v, "full_tensor") else v
                       for k, v in entries.items()} for pid, entries in sd["state"].items()}
        return {"state": state, "param_groups": sd["param_groups"]}

    def _load_optimizer_state(self, sd: dict) -> None:
        if self.config.fsdp:  # full moments back into this rank's shards, laid out like their parameter
            params = {pid: p for group_sd, group in zip(sd["param_groups"], self.optimizer.param_groups)
                      for pid, p in zip(group_sd["params"], group["params"])}
            for pid, entries in sd["state"].items():
                p = params[pid]
                for k, v in entries.items():
                    if hasattr(p, "device_mesh") and torch.is_tensor(v) and v.shape == p.shape:
                        entries[k] = shard_like(p, v)
        self.optimizer.load_state_dict(sd)

    def save_checkpoint(self) -> Path:
        final = ckpt_io.checkpoint_dir(self.output_dir, self.step)
        tmp = final.with_name(final.name + ".tmp")
        trainable = self.trainable_state()
        optimizer_state = self.optimizer_state()
        if self.dist.is_main:
            if tmp.exists():  # left by a crash: none of its files may pass into this checkpoint
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
        barrier(self.dist)
        ckpt_io.write_rng(tmp, self.dist.rank)
        barrier(self.dist)
        if self.dist.is_main:
            try:
                ckpt_io.write_checkpoint(tmp, final, trainable=trainable, optimizer_state=optimizer_state,
                                         step=self.step, extra={"config": self.config.to_dict(), **self.best.state(),
                                                                "world": self.dist.world,
                                                                "data": self.train_data_digest,
                                                                **({"eval_owed": True} if self.eval_owed else {})},
                                         keep=self.config.save_total_limit)
            except OSError:  # a full disk: what the half-written checkpoint took is given back
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        barrier(self.dist)
        return final

    @functools.cached_property
    def train_data_digest(self) -> dict | None:
        """The training examples' digest, which a checkpoint records (:mod:`.data_digest`); made once."""
        return data_digest(self.train_data)

    def check_resume(self, ckpt: Path, state: dict | None = None) -> None:
        """Refuse to resume ``ckpt`` (its ``trainer_state.json``: ``state``) under other settings, on
        other training examples or with another number of processes; a run calls it before it
        writes anything, so a refused resume leaves the run's files as they were."""
        state = read_json(ckpt / "trainer_state.json") if state is None else state
        ckpt_io.check_resumable(ckpt, state.get("config"), self.config.to_dict(), self.config.recorded_defaults())
        check_same_data(ckpt, state.get("data"), self.train_data_digest)
        if state.get("world", 1) != self.dist.world:
            raise ValueError(f"{ckpt} was written by {state.get('world')} processes; resume with the same number")

    def _load_checkpoint(self, ckpt: Path) -> None:
        trainable, optimizer_state, state = ckpt_io.read_checkpoint(ckpt)
        self.check_resume(ckpt, state)
        own = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, t in trainable.items():
                if name not in own:
                    raise ValueError(f"{ckpt}: parameter {name!r} is not in the model")
                _assign(own[name], t)
        self._load_optimizer_state(optimizer_state)
        self.step = state["step"]
        self.eval_owed = state.get("eval_owed", False)
        self.best.load_state(state)  # best/ may hold a later step's weights; this run redoes that step
        ckpt_io.restore_rng(ckpt, self.dist.rank, state)


def _assign(p: torch.Tensor, value: torch.Tensor) -> None:
    if hasattr(p, "device_mesh"):  # an FSDP2 DTensor: keep only this rank's shard
        p.copy_(shard_like(p, value.to(p.dtype)))
    else:
        p.copy_(value.to(device=p.device, dtype=p.dtype))
