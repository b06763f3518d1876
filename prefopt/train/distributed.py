"""torchrun support: process-group set-up, DDP/FSDP2 wrapping, small collectives.

Launched with ``torchrun --nproc_per_node N``, the same loop runs on every rank: data is
sharded per rank, gradients are averaged by PyTorch's own DDP (or sharded by FSDP2's
``fully_shard``), and only rank 0 logs and saves. Without torchrun everything here is a no-op.
"""
from __future__ import annotations

import gc
import logging
import os
import sys
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import NoReturn

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def local_device(device: torch.device) -> torch.device:
    """This process's device. Under torchrun a bare ``cuda`` means ``cuda:LOCAL_RANK``: each rank
    gets its own GPU (all on GPU 0, NCCL refuses the duplicate or one card holds every copy)."""
    if device.type == "cuda" and device.index is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group torchrun describes (gloo on CPU, nccl on CUDA, each rank on
    :func:`local_device`)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(local_device(device))
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def shutdown_distributed() -> bool:
    """Leave the process group (if one is up); returns whether there was one to leave.

    Garbage is collected first, so that models and optimizers dropped in reference cycles (DDP's
    reducer holds the group) are freed while the interpreter is whole, not in its teardown.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return False
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()
    return True


def exit_worker(code: int = 0) -> NoReturn:
    """End a torchrun worker whose group is closed: flush the streams, then ``os._exit(code)``.

    With torch 2.13 on CPU (gloo), a finished job whose group was destroyed can still abort in
    the interpreter's own teardown, after the atexit handlers ("terminate called without an
    active exception", SIGABRT), and torchrun then reports the whole job as failed. A 12-line
    DDP script with no prefopt in it does the same on a loaded 2-core machine; see
    docs/training.md. Skipping that teardown avoids it. Everything prefopt writes is closed
    by then (checkpoints and results are renamed into place, metrics are appended line by line).
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def run_worker(job: Callable[[], object]) -> object:
    """Run ``job``, then leave the process group; a torchrun worker then exits 0 via :func:`exit_worker`.

    Outside torchrun this only runs ``job`` and returns its result. If ``job`` raises, the
    exception propagates at once, with no barrier: the other ranks may be waiting in a
    collective this rank will never join, and torchrun stops them when this process fails.
    """
    result = job()
    if shutdown_distributed():
        exit_worker(0)
    return result


def all_reduce_sum(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """``x`` summed over the ranks (a new tensor on ``x``'s device; ``x`` itself outside torchrun)."""
    if info.enabled:
        y = x.to(collective_device(x), copy=True)
        dist.all_reduce(y, op=dist.ReduceOp.SUM)
        x = y.to(x.device)
    return x


def collective_device(x: torch.Tensor) -> torch.device:
    """Where the process group can reduce ``x``: NCCL takes CUDA tensors only ("No backend type
    associated with device type cpu"), so the loop's counts and metrics, made on the CPU, go
    through this rank's GPU; gloo takes them where they are."""
    if x.device.type == "cpu" and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return x.device


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def shards_as_it_moves(info: DistInfo, fsdp: bool) -> bool:
    """Whether :func:`wrap_model` moves the model to the device itself, a block at a time as FSDP2
    shards it (so no rank ever holds the whole model there): the trainer leaves it where it loaded."""
    return fsdp and info.enabled


def receives_weights(info: DistInfo, fsdp: bool) -> bool:
    """Whether this process loads no weights of its own: an FSDP2 rank other than 0, whose model
    is built empty (on the meta device) and filled with its share of rank 0's by
    :func:`wrap_model`, so the node's CPU memory holds one copy of the weights, not one a rank."""
    return shards_as_it_moves(info, fsdp) and not info.is_main


def wrap_model(model: torch.nn.Module, info: DistInfo, *, fsdp: bool, device: torch.device | None = None,
               ) -> torch.nn.Module:
    """DDP (the default) or FSDP2 ``fully_shard`` on each block, then the root, over a mesh of
    ``device``'s type (FSDP2's default mesh is CUDA's wherever there is a GPU, even for a run on
    the CPU). ``fully_shard`` moves each block's weights to the device and keeps this rank's share
    there, so a model still on the CPU arrives sharded (:func:`shards_as_it_moves`): a rank's GPU
    holds its share of the weights and at most one whole block, never the whole model. Then every rank
    takes rank 0's weights, a tensor at a time (:func:`receives_weights`: the others hold none
    of their own; and where each loaded its own, all start from the same)."""
    if not info.enabled:
        return model
    if fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        device = device if device is not None else next(model.parameters()).device
        full = model.state_dict() if info.is_main else {}  # (the CPU tensors, kept until sent)
        mesh = init_device_mesh(device.type, (info.world,))
        for block in model.model.layers:
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
        if any(p.is_meta for p in model.parameters()):  # storage for this rank's shards (RoPE's buffers kept)
            buffers = {name: b.clone() for name, b in model.named_buffers()}
            model.to_empty(device=device)
            for name, b in model.named_buffers():
                b.copy_(buffers[name])
        set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    device_ids = [info.local_rank] if next(model.parameters()).is_cuda else None
    return DDP(model, device_ids=device_ids)


def head_operands(wrapped: torch.nn.Module, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(hidden', weight)`` for the fused log-prob kernels (``Transformer.head``: the lm_head weight
    ``(V, D)``, both widened where an adapter sits on the lm_head) of a prefopt causal LM, bare or
    inside ``wrap_model``'s DDP."""
    return getattr(wrapped, "module", wrapped).head(hidden)


def no_sync(wrapped: torch.nn.Module, last_micro_step: bool):
    """Skip DDP's gradient all-reduce on all but the last micro-step of an accumulation."""
    if not last_micro_step and hasattr(wrapped, "no_sync"):
        return wrapped.no_sync()
    return nullcontext()


def gather_full(p: torch.Tensor, keep: bool = True) -> torch.Tensor | None:
    """A parameter (or optimizer moment) as a plain full CPU tensor, gathering FSDP2 DTensors
    (a collective: every rank calls it); ``keep=False`` takes part in the gather and returns None."""
    t = p.detach()
    if hasattr(t, "full_tensor"):
        t = t.full_tensor()
    return t.cpu().clone() if keep else None


def shard_like(p: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``value`` (full) laid out as FSDP2 DTensor ``p`` is: this rank keeps only its shard."""
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(value.to(p.device), p.device_mesh, p.placements)
