"""DPO and its relatives on the shared loop (KTO too: its unpaired examples are pairs of a
completion and a mismatched one, ``prefopt.data.feedback``).

Chosen and rejected go through the policy in one forward pass. Where a pair's chosen and
rejected share their prompt (the usual case), it is one packed row, ``[prompt | chosen |
rejected]``, so the prompt runs once, forward and backward (``shared_prompt.py``;
``share_prompt=False`` turns this off); otherwise the two sequences are stacked ``(2B, T)``.
The reference log-probs come from one of three places:

- ``"adapter"``: the same model with its LoRA adapters disabled (the default with LoRA);
- ``"model"``: a separate frozen model (``ref_model=``);
- ``"cache"``: an on-disk :class:`~prefopt.refcache.RefCache` (``ref_cache=``, the cache or
  its folder), filled once by a no-grad pass; training then runs no reference forward at all.
"""
from __future__ import annotations

import os
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import f_divergence
from ..data.feedback import FeedbackExample, label_counts
from ..data.preference import PairExample, pair_collate
from ..data.sft import IGNORE, WINDOWS_ARE_SFT
from ..hints import did_you_mean
from ..kernels import fused_preference_loss
from ..ld_dpo import check_ld_alpha, ld_weights
from ..lora import (
    QUANTIZED_DORA_MERGE,
    disable_adapter,
    layer_text,
    lora_layers,
    parse_layers,
)
from ..lora_files import read_adapter_config
from ..lora_stack import same_layers
from ..losses import LOSSES, PAIRWISE, REFERENCE_FREE, UNPAIRED, base_losses, known_loss, loss_terms
from ..model import eval_mode
from ..model.generate import MIN_SHARED
from .config import TrainConfig, opt
from .distributed import all_reduce_sum, barrier, head_operands, shards_as_it_moves, wrap_model
from .loop import Batch, Trainer
from .out_of_memory import explained, moved, reraised, torch_words, weights_advice
from .reference import reference_cache_for
from .shared_prompt import pack_pairs, pack_pairs_after, pair_hidden, pair_logp_sums, pairs_start

REF_MODES = ("adapter", "model", "cache", "none")


def variant_errors(loss: str, ld_alpha: float | None, divergence: str, f_alpha: float, wpo: bool = False
                   ) -> list[str]:
    """What is wrong with LD-DPO's ``ld_alpha``, f-DPO's ``divergence`` (``f_alpha``) and WPO
    (``wpo``) for ``loss`` (the divergence judged only for a registered pair loss): DPOConfig's
    check, and compare's before its run claims a folder."""
    errors = []
    checks = [lambda: check_ld_alpha(ld_alpha)]
    if loss in LOSSES and loss not in UNPAIRED:  # an unpaired loss: refused below, by its kind
        checks.append(lambda: f_divergence.check(loss_terms(loss), divergence, f_alpha,
                                                 reference_free=loss in REFERENCE_FREE))
    for check in checks:
        try:
            check()
        except ValueError as e:
            errors.append(str(e))
    if loss in UNPAIRED and divergence != "reverse_kl":
        errors.append(f"f_divergence is for pair losses, not {loss} ({loss} keeps the reverse KL)")
    if loss in UNPAIRED and ld_alpha is not None:
        errors.append(f"ld_alpha is for pair losses, not {loss}: it weighs a pair's answers past the shorter one's "
                      f"length; {loss} has no pairs")
    if wpo and loss in UNPAIRED:
        errors.append(f"wpo is for pair losses, not {loss}: it weighs each pair by how likely the policy finds both "
                      f"answers; {loss} has no pairs")
    elif wpo and loss in LOSSES and loss not in PAIRWISE:
        errors.append(f"wpo weighs each pair's loss on its own; {loss!r} is not a per-pair loss (aot and "
                      "aot_unpaired sort the batch, which would misalign the weights, as TRL says)")
    return errors


def _device_of(module: torch.nn.Module) -> torch.device | None:
    """Where ``module``'s weights are (its first parameter's device), None where it has none."""
    return next((p.device for p in module.parameters()), None)


@dataclass
class DPOConfig(TrainConfig):
    loss: str = opt("sigmoid", f"preference loss: {', '.join(sorted(LOSSES))}, or a weighted sum of them as TRL "
                               "mixes them, e.g. 0.8*sigmoid+0.2*bco_pair+sft (docs/dpo.md)")
    beta: float = opt(0.1, "DPO beta: how far the policy may move from the reference")
    label_smoothing: float = opt(0.0, "cDPO / robust / aot: the assumed share of flipped labels, in [0, 0.5); "
                                      "exo_pair: its target's epsilon (> 0)")
    rpo_alpha: float = opt(1.0, "rpo: weight of the chosen answers' NLL")
    simpo_gamma: float = opt(0.5, "simpo: target reward margin")
    orpo_lambda: float = opt(0.1, "orpo: weight of the odds-ratio term")
    discopop_tau: float = opt(0.05, "discopop: temperature of the logistic/exponential blend")
    f_divergence: str = opt("reverse_kl", "f-DPO: the divergence to the reference, reverse_kl (DPO), forward_kl, "
                                          "js_divergence or alpha_divergence (losses on the reward difference only)")
    f_alpha: float = opt(0.5, "alpha_divergence: its alpha")
    ld_alpha: float | None = opt(None, "LD-DPO: weight of the longer answer's tokens past the shorter one's length, "
                                       "in [0, 1] (policy and reference; 1 is DPO); default: off")
    wpo: bool = opt(False, "WPO: weigh each pair's loss by how likely the policy finds its two answers (TRL's "
                           "use_weighting), so off-policy pairs count less; one more lm_head forward per step")
    kto_desirable_weight: float = opt(1.0, "kto, apo_zero_unpaired: weight of the desirable completions' losses")
    kto_undesirable_weight: float = opt(1.0, "kto, apo_zero_unpaired: weight of the undesirable completions' losses")
    ref: str | None = opt(None, "a frozen reference model (folder, alias or hub id); default: the model "
                                "with its adapter disabled")
    ref_cache: str | None = opt(None, "folder of the on-disk reference log-prob cache (filled once, reused)")
    sft_adapter: str | None = opt(None, "DPO after SFT: merge this adapter into the model and reference first; "
                                        "final/ then holds both updates")
    share_prompt: bool = opt(True, "one packed row per pair, so each prompt runs once")
    share_start: bool = opt(False, "with share_prompt: a micro-batch's pairs in one row after the prompt start every "
                                   "pair of the data has (a system prompt, the task's instructions), run once; the "
                                   "reference cache is filled the same way (LoRA dropout then draws one mask for it)")
    pack: bool = opt(False, "SFT's (DPO packs each pair's prompt and answers: share_prompt)")
    lr: float = opt(5e-5, "peak learning rate (AdamW)")

    KIND = "DPO"

    def kind_errors(self) -> list[str]:
        errors = []
        try:
            known_loss(self.loss)  # a mixture ("0.8*sigmoid+0.2*bco_pair+sft") is registered here
        except ValueError as e:
            errors.append(str(e))
        else:
            if self.loss not in LOSSES:
                errors.append(f"loss must be one of {base_losses()}, or a weighted sum of them such as "
                              f"0.8*sigmoid+0.2*bco_pair+sft (got {self.loss!r}{did_you_mean(self.loss, LOSSES)})")
        if self.beta <= 0:
            errors.append("beta must be > 0")
        if self.text_windows:
            errors.append(WINDOWS_ARE_SFT)
        if self.pack:
            errors.append("pack is SFT's; DPO already runs each pair's prompt once in one packed row (share_prompt)")
        if self.share_start and not self.share_prompt:
            errors.append("share_start lays each pair after the shared start with its prompt run once: it needs "
                          "share_prompt")
        if not 0 <= self.label_smoothing < 0.5:
            errors.append("label_smoothing must be in [0, 0.5)")
        if "exo_pair" in loss_terms(self.loss) and self.label_smoothing <= 0:
            errors.append("exo_pair needs label_smoothing > 0 (the EXO paper recommends 1e-3)")
        errors += variant_errors(self.loss, self.ld_alpha, self.f_divergence, self.f_alpha, self.wpo)
        if self.discopop_tau <= 0:
            errors.append("discopop_tau must be > 0")
        for name in ("rpo_alpha", "orpo_lambda"):  # weights of a likelihood term: negative would push it down
            if getattr(self, name) < 0:
                errors.append(f"{name} must be >= 0 (got {getattr(self, name)})")
        if min(self.kto_desirable_weight, self.kto_undesirable_weight) <= 0:
            errors.append("kto_desirable_weight and kto_undesirable_weight must be > 0")
        if self.ref_cache and Path(self.ref_cache).exists() and not Path(self.ref_cache).is_dir():
            errors.append(f"ref_cache: {self.ref_cache} is a file; the cache is a folder (e.g. OUTPUT_DIR/ref_cache)")
        if not self.lora and self.ref is None and self.ref_cache is None and self.loss not in REFERENCE_FREE:
            errors.append("full fine-tuning needs a reference: give ref (a frozen model) or ref_cache")
        sft = None
        if self.sft_adapter and Path(self.sft_adapter).exists():  # (compare's DPO stage names it before SFT saves it)
            try:
                sft = read_adapter_config(self.sft_adapter)
            except (OSError, ValueError) as e:  # a run's folder for its final/, a model: said before any work
                errors.append(f"sft_adapter: {e}")
        sft = sft if self.lora else None
        if self.quantize and sft is not None and sft.dora:  # before any training
            errors.append(f"sft_adapter: {self.sft_adapter}: {QUANTIZED_DORA_MERGE}")
        try:
            layers = parse_layers(self.lora_layers)
        except ValueError:
            layers = sft = None  # (the training config's own checks name it)
        if sft is not None:  # saved as one adapter with the SFT one: the same layers (lora_stack.same_layers)
            try:
                same_layers([sft.layers, layers])
            except ValueError as e:
                errors.append(f"lora_layers: {e} (the SFT adapter {self.sft_adapter} covers "
                              f"{layer_text(sft.layers)})")
        return errors

    @property
    def run_kind(self) -> str:
        return "kto" if self.loss in UNPAIRED else "dpo"  # unpaired feedback: KTO's data, metrics and report

    def loss_kwargs(self) -> dict:
        """Every loss's hyper-parameters (each loss reads its own; a mixture's terms theirs)."""
        kw = {"beta": self.beta, "label_smoothing": self.label_smoothing, "rpo_alpha": self.rpo_alpha,
              "gamma": self.simpo_gamma, "discopop_tau": self.discopop_tau, "lambda_": self.orpo_lambda,
              "f_divergence": self.f_divergence, "f_alpha": self.f_alpha}
        if self.loss in UNPAIRED:
            kw = {"beta": self.beta, "desirable_weight": self.kto_desirable_weight,
                  "undesirable_weight": self.kto_undesirable_weight}
        return kw


class DPOTrainer(Trainer):
    """Preference optimisation (DPO, IPO, hinge, robust, RPO, SimPO, ORPO, TRL's others in
    :mod:`prefopt.losses_extra`; KTO on unpaired
    feedback, from :func:`prefopt.data.load_feedback`) on the shared loop.

    Example::

        from prefopt import DPOTrainer, apply_lora, load_model, load_tokenizer, save_adapter
        from prefopt.data import load_preferences
        from prefopt.train.dpo import DPOConfig

        cfg = DPOConfig(model="smollm2-135m", data="pairs.jsonl", output_dir="runs/dpo", beta=0.1, max_steps=100)
        tok = load_tokenizer(cfg.model)
        model = apply_lora(load_model(cfg.model), r=cfg.lora_r, alpha=cfg.lora_alpha)
        # after SFT: load_model(cfg.model, adapter="runs/sft/final", merge=True); save_adapter
        # then writes the SFT and DPO updates together, one adapter on the base model
        pairs, report = load_preferences(cfg.data, tok, max_length=cfg.max_length)
        DPOTrainer(model, cfg, pairs, pad_id=tok.pad_token_id,         # reference: adapters disabled,
                   ref_cache="runs/dpo/ref_cache").train()             # its log-probs cached on disk
        save_adapter(model, "runs/dpo/final", base_model=cfg.model)     # PEFT layout; or run_dpo(cfg)

    Metrics use TRL's names: ``rewards/chosen``, ``rewards/rejected``, ``rewards/accuracies``,
    ``rewards/margins``, ``logps/chosen``, ``logps/rejected``; KTO's: ``kl``, ``kto/accuracies``,
    ``logps/completion`` (:func:`kto_metrics`); with each step's number of ``pairs`` (KTO:
    ``examples``), all processes'.
    """

    noun = "pairs"
    counts_items = True
    item_type = PairExample
    item_source = "prefopt.data.load_preferences(path or list of dicts, tok)"
    config_type = DPOConfig

    def __init__(self, model, config: DPOConfig, train_data: Sequence[PairExample], eval_data=None, *, pad_id: int,
                 ref_model: torch.nn.Module | None = None, ref_cache=None, **kw):
        self.pad_id = pad_id
        self.ref_model = ref_model
        self.ref_forwards = 0  # reference forward passes made (0 with a cache)
        self.fill_seconds = 0.0  # the reference cache's fill here, where one ran
        self.check_config(config)  # (read before the loop checks it)
        if config.run_kind == "kto":  # unpaired examples, each beside its mismatched completion
            self.noun, self.item_type = "examples", FeedbackExample
            self.item_source = "prefopt.data.load_feedback(path or list of dicts, tok) (a pair counts as two)"
        super().__init__(model, config, train_data, eval_data, **kw)  # callbacks, tokenizer, evaluators
        # share_start: the prompt start of every pair, training's and evaluation's (one for the whole data, so a
        # pair's hidden states are the same in any batch: the reference cache's fill and training's micro-batches)
        self.start = pairs_start(self.train_data + self.eval_data) if config.share_start else 0
        if ref_model is not None and shards_as_it_moves(self.dist, config.fsdp) and config.loss not in REFERENCE_FREE:
            # sharded now, as the policy is: a rank other than 0 built it empty, and the cache's fingerprint
            # below reads its weights (gathered from every rank's shard)
            ref_model = self.ref_model = self._placed(ref_model)
        if isinstance(ref_cache, (str, os.PathLike)):  # a folder: opened for this reference, once
            # the data are checked and the output folder claimed (hashing the weights takes a while)
            ref_cache = reference_cache_for(config, self.model, ref_model, root=ref_cache, start=self.start)
        self.ref_cache = ref_cache
        if config.loss in REFERENCE_FREE:
            self.ref_mode = "none"
        elif ref_cache is not None:
            self.ref_mode = "cache"
        elif ref_model is not None:
            self.ref_mode = "model"
            self.ref_model = self._placed(ref_model)
        elif any(True for _ in lora_layers(model)):  # LoRALinear or the experts'
            self.ref_mode = "adapter"
        else:
            raise ValueError("no reference: pass ref_model or ref_cache, or train a LoRA adapter")
        if self.ref_mode == "cache":
            t0 = time.perf_counter()
            if explained(self, lambda: self.fill_cache(self.train_data + self.eval_data), "filling the reference cache"):
                self.fill_seconds = time.perf_counter() - t0

    def before_training(self) -> dict[str, float]:
        """The seconds the reference cache's fill took, where this trainer filled any of it."""
        return {"reference_fill_seconds": round(self.fill_seconds, 1)} if self.fill_seconds else {}

    def plan(self) -> str:
        """The loop's line, and with ``share_start`` the start the pairs share (or why none)."""
        if not self.config.share_start:
            return super().plan()
        if self.start:
            return f"{super().plan()}; the {self.start} prompt tokens every pair begins with run once a micro-batch"
        return (f"{super().plan()}; share_start: no prompt start of {MIN_SHARED}+ tokens that every pair shares "
                "(or a pair's chosen and rejected prompts differ): each pair runs in a row of its own")

    def pair_batch(self, pairs) -> Batch:
        return pair_batch(pairs, self.config, self.pad_id, self.start)

    def collate(self, pairs):
        batch = self.pair_batch(pairs)
        if self.ref_mode == "cache":
            batch["ref_chosen"], batch["ref_rejected"] = self.ref_cache.get([p.key for p in pairs])
        if self.config.run_kind == "kto":
            batch["desirable"] = torch.tensor([p.desirable for p in pairs])
        return batch

    def _mean_over_ranks(self, x: torch.Tensor) -> torch.Tensor:
        return all_reduce_sum(x, self.dist) / self.dist.world

    def units(self, batch: Batch) -> int:
        return batch["labels"].shape[0] // 2

    @contextmanager
    def _reference(self):
        """The reference model: the frozen copy, or the policy in eval mode with its adapters off."""
        if self.ref_mode == "model":
            yield self.ref_model
            return
        with eval_mode(self.model), disable_adapter(self.model):  # no adapter dropout in the reference
            yield self.model

    def _placed(self, ref: torch.nn.Module) -> torch.nn.Module:
        """The reference model ``ref``, frozen, on this trainer's device: under ``--fsdp`` sharded as
        the policy is (each rank holds its share; a rank that built it empty receives rank 0's
        weights), else moved whole. Weights that do not fit there are said as such (``OutOfMemory``)."""
        ref = ref.eval().requires_grad_(False)
        if not shards_as_it_moves(self.dist, self.config.fsdp):
            return moved(self, ref, "reference model")
        from torch.distributed.fsdp import FSDPModule  # (FSDP2's runs only: torch.distributed, 2.6+)

        if isinstance(ref, FSDPModule):  # (sharded already)
            return ref
        return reraised(lambda: wrap_model(ref, self.dist, fsdp=True, device=self.device),
                        lambda e: weights_advice(self, ref, torch_words(e), "reference model"))

    @torch.no_grad()
    def reference_logps(self, batch: Batch) -> torch.Tensor:
        """Sequence log-prob sums ``(2B,)`` under the reference. A sharded reference model keeps
        only its shares after it (FSDP2 leaves the root's weights, the embedding and the head,
        whole after a forward, for a backward that a reference never runs)."""
        self.ref_forwards += 1
        with self._reference() as ref:
            sums = pair_logp_sums(ref, batch, self.config.ld_alpha)
        if ref is self.ref_model and hasattr(ref, "reshard"):
            ref.reshard()
        return sums

    def fill_cache(self, pairs: Sequence[PairExample]) -> int:
        """Compute the reference log-probs of every pair the cache lacks. Under torchrun every rank
        computes a share of each round of pairs and the values are summed across ranks (each rank
        fills its own positions); rank 0 writes them, and the others read the cache after. So the
        fill runs on every GPU, no rank waits in a barrier for all of it (a process group's timeout
        is 30 min), and an FSDP-sharded model, whose forward gathers its weights from every rank,
        runs it on all ranks together (rank 0 alone waited for the others there forever)."""
        self.ref_mode = "model" if self.ref_model is not None else "adapter"
        stacked = 2 * self.config.batch_size  # pairs at once in the stacked layout

        def local(chunk):  # the batch layout and precision the policy will run in (bf16 on CUDA)
            batch = self.pair_batch(chunk)
            if "gather" not in batch and len(chunk) > stacked:
                # not packed (some pair shares no prompt): two full rows a pair, so at most
                # twice a step's pairs at once, not the four times meant for packed rows
                parts = [local(chunk[i:i + stacked]) for i in range(0, len(chunk), stacked)]
                return torch.cat([c for c, _ in parts]), torch.cat([r for _, r in parts])
            b = {k: v.to(self.device) for k, v in batch.items()}
            with self._autocast():
                sums = self.reference_logps(b).float().cpu()
            return sums[:len(chunk)], sums[len(chunk):]

        def shared(chunk):  # a round: at most `stacked` pairs a rank, so one forward on each, packed or not
            rank, world = self.dist.rank, self.dist.world
            mine = chunk[rank::world]
            c, r = local(mine or chunk[-1:])  # (a rank with none runs one all the same: FSDP's forward is collective)
            sums = torch.zeros(len(chunk), 2)
            if mine:
                sums[rank::world] = torch.stack([c, r], 1)
            sums = all_reduce_sum(sums, self.dist)  # each position has one rank's value, the others add 0
            return sums[:, 0], sums[:, 1]

        cache = self.ref_cache
        before, todo = len(cache), len(cache.missing([p.key for p in pairs]))
        if self.dist.enabled:
            self._same_cache_everywhere(todo)  # (a collective: every rank has read the cache before rank 0 writes)
        home = None  # where a reference model moved here for the fill came from (the CPU, as run_dpo loads it)
        if self.ref_model is not None and todo:  # (a full cache needs no reference on the device)
            home = None if shards_as_it_moves(self.dist, self.config.fsdp) else _device_of(self.ref_model)
            self.ref_model = self._placed(self.ref_model)
            compute, per_chunk = shared, stacked * self.dist.world
        else:  # twice a step's pairs per chunk; four times when each prompt runs once (about half the tokens)
            compute, per_chunk = local, self.config.batch_size * (4 if self.config.share_prompt else 2)
        # SIGTERM or Ctrl-C stop the fill where they land (nothing is trained yet), after the batches done are written
        n = self._stopped_at_once(
            lambda: cache.fill(pairs, compute, batch_size=per_chunk, show_progress=self.config.progress and
                               self.dist.is_main, unit=self.noun.rstrip("s"), write=self.dist.is_main),
            lambda: f"while computing the reference log-probs: those of {len(cache) - before} of the {todo} "
                    f"{self.noun} are kept in {cache.root}; run it again and it computes only the other "
                    f"{todo - (len(cache) - before)}")
        self.ref_mode = "cache"
        self.ref_forwards = 0
        if home is not None and home != self.device:  # training reads the cache: the device's memory is the policy's
            self.ref_model.to(home)
        barrier(self.dist)
        if not self.dist.is_main:
            cache.reload()  # rank 0 has written it
        return n

    def _same_cache_everywhere(self, missing: int) -> None:
        """Under torchrun the ranks fill the cache in step, so they must all see it the same (one
        folder every node reads): else a clear error on every rank, not a fill that waits forever."""
        total, squares = all_reduce_sum(torch.tensor([missing, missing * missing], dtype=torch.float64),
                                        self.dist).tolist()
        if squares * self.dist.world != total * total:  # not every rank's count equal
            raise ValueError(f"the {self.dist.world} processes see different reference caches in "
                             f"{self.ref_cache.root} (rank {self.dist.rank}: {missing} {self.noun} not cached): "
                             "every rank must read the same folder, on a filesystem all nodes share")

    def loss_sum(self, model, batch):
        B = self.units(batch)
        if self.ref_mode == "cache":
            ref_c, ref_r = batch["ref_chosen"], batch["ref_rejected"]
        elif self.ref_mode == "none":
            ref_c = ref_r = None
        else:
            ref = self.reference_logps(batch)
            ref_c, ref_r = ref[:B], ref[B:]
        # KTO: z0 over the ranks' batches, as TRL takes it (training's micro-batches are the same on every rank; an
        # eval shard may have one batch more, so there each rank keeps its own)
        across = self.config.run_kind == "kto" and model.training and self.dist.enabled
        return preference_loss_sum(model, batch, self.config, ref_c, ref_r, self._mean_over_ranks if across else None)


def pair_batch(pairs, config: DPOConfig, pad_id: int, start: int = 0) -> Batch:
    """A micro-batch of pairs as training lays it out: packed rows (each prompt once) where every
    pair shares its prompt and ``share_prompt`` is on, all in one row after the data's shared
    prompt start of ``start`` tokens with ``share_start``; else the chosen and rejected sequences
    stacked."""
    packed = None
    if start:
        packed = pack_pairs_after(pairs, start)
    if packed is None and config.share_prompt:
        packed = pack_pairs(pairs, pad_id)
    return packed if packed is not None else pair_collate(pairs, pad_id)


def preference_loss_sum(model, batch: Batch, config: DPOConfig, ref_c, ref_r, reference_mean=None):
    """A micro-batch's summed preference loss and metrics, the lm_head fused with the loss
    (``ref_c``/``ref_r``: the reference's sequence log-probs, None for a reference-free loss;
    ``reference_mean``: KTO's mean of z0 across ranks)."""
    hidden, labels = pair_hidden(model, batch)
    kw = config.loss_kwargs()
    if reference_mean is not None:
        kw["reference_mean"] = reference_mean
    ld = config.ld_alpha
    out, lp = fused_preference_loss(*head_operands(model, hidden), labels, ref_c, ref_r,
                                    config.loss, ignore_index=IGNORE, reduction="sum",
                                    desirable=batch.get("desirable"), wpo=config.wpo,
                                    token_weights=None if ld is None else ld_weights(labels, ld, IGNORE), **kw)
    if config.run_kind == "kto":
        return out.losses, kto_metrics(lp, out.reference_point)
    c, r = out.chosen_rewards, out.rejected_rewards
    metrics = {
        "rewards/chosen": c.sum(), "rewards/rejected": r.sum(), "rewards/accuracies": (c > r).float().sum(),
        "rewards/margins": (c - r).sum(), "logps/chosen": lp.chosen.detach().sum(),
        "logps/rejected": lp.rejected.detach().sum(),
    }
    if lp.pair_weights is not None:  # WPO: the mean weight, what the step's loss was scaled by
        metrics["wpo/weights"] = lp.pair_weights.sum()
    return out.losses, metrics


def kto_metrics(lp, z0: torch.Tensor) -> dict[str, torch.Tensor]:
    """A KTO batch's metrics, summed over its examples (the loop divides by their number):
    ``kl``, the reference point z0 (TRL's name; the loss's own, ``LossOutput.reference_point``);
    ``kto/accuracies``, the examples whose log-ratio lies on their label's side of it (above for a
    desirable completion, below for an undesirable one: what the loss pushes for);
    ``logps/completion``, the completions' log-probs."""
    ratio = (lp.chosen - lp.ref_chosen).detach()
    right = torch.where(lp.desirable.bool(), ratio > z0, ratio < z0)
    return {"kl": z0 * len(ratio), "kto/accuracies": right.float().sum(), "logps/completion": lp.chosen.detach().sum()}


KTO_BALANCE = (1.0, 4 / 3)  # the KTO paper's range for w_D n_D / (w_U n_U)


def kto_balance_line(examples: Sequence[FeedbackExample], config: DPOConfig) -> str:
    """How many training examples are desirable and undesirable, and whether the weights balance
    them as the KTO paper advises (``w_D n_D / (w_U n_U)`` in [1, 4/3]); else the weights that would."""
    good, bad = label_counts(examples)
    w_d, w_u = config.kto_desirable_weight, config.kto_undesirable_weight
    counts = f"{UNPAIRED[config.loss]} on {good} desirable and {bad} undesirable examples"
    if not good or not bad:
        return (f"{counts}: with only {'desirable' if good else 'undesirable'} ones, each moves against "
                f"{'the reference point' if config.loss == 'kto' else 'the reference'} alone")
    ratio = w_d * good / (w_u * bad)
    lo, hi = KTO_BALANCE
    if lo <= ratio <= hi:
        return f"{counts}; weighted desirable:undesirable {ratio:.2f}, in the KTO paper's [1, 1.33]"
    return (f"{counts}; weighted desirable:undesirable {ratio:.2f}, outside the KTO paper's [1, 1.33]: "
            f"kto_desirable_weight in [{lo * w_u * bad / good:.2f}, {hi * w_u * bad / good:.2f}] or "
            f"kto_undesirable_weight in [{w_d * good / (hi * bad):.2f}, {w_d * good / (lo * bad):.2f}] would be")
