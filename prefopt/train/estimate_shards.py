"""The memory estimate under ``--fsdp``: one process's share, from FSDP2 itself on the estimate's
fake tensors over a stand-in group of processes.

``torch.distributed``'s "fake" backend answers every collective at once without moving data, so
``fully_shard`` lays the fake model out as each of ``world`` processes holds it (its share of
every weight, the gradients reduced into shares) and its forward and backward gather and free
each block's whole weights as a real run does. FSDP2 frees a gathered block, and makes room for
it again, by resizing its storage in place (``_fsdp_param.free_storage``/``alloc_storage``),
which no op reports: :func:`storage_followed` tells the estimate's tracker of each resize. On a
CPU (gloo, two processes; tests/train/test_memory_estimate.py, 2026-12-05) each rank's weights
and moments came out to the byte, and the estimate 0.956-1.001 of its step's peak (within 0.01%
of the lowest real peak: the real one varies run to run by about a gathered block, as gloo's
threads free it; with two micro-batches a step the lowest of eight real peaks to 5 KB, the others
1 to 4 blocks' worth above it, 0.857-1.000 in all); NCCL's own buffers on a GPU are not counted.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch


def local(t: torch.Tensor) -> torch.Tensor:
    """What this process holds of ``t``: a sharded (``DTensor``) weight's own share, else ``t``."""
    return t.to_local() if hasattr(t, "to_local") else t


def local_bytes(t: torch.Tensor) -> int:
    """The bytes of :func:`local` ``(t)``."""
    t = local(t)
    return t.numel() * t.element_size()


@contextmanager
def fake_group(world: int) -> Iterator:
    """A stand-in group of ``world`` processes, this one rank 0, for the time of the block; its
    device mesh (made before any fake tensor: the mesh reads real ranks)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.testing._internal.distributed.fake_pg import FakeStore  # registers the "fake" backend

    if dist.is_initialized():
        raise ValueError("the memory estimate under --fsdp stands in for the processes itself: run it as one "
                         "process (WORLD_SIZE=N prefopt ... --estimate-memory), not inside a distributed run")
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world)
    try:
        yield init_device_mesh("cpu", (world,))
    finally:
        dist.destroy_process_group()


def shard(model: torch.nn.Module, mesh) -> None:
    """``fully_shard`` on each block, then the root, as ``distributed.wrap_model`` does."""
    from torch.distributed.fsdp import fully_shard

    for block in model.model.layers:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)


@contextmanager
def storage_followed(resized: Callable[[int], None]) -> Iterator[None]:
    """``resized(bytes)`` told of every storage FSDP2 grows (positive) or frees (negative) in place
    while the block runs."""
    from torch.distributed.fsdp._fully_shard import _fsdp_param, _fsdp_param_group

    alloc, free = _fsdp_param.alloc_storage, _fsdp_param.free_storage

    def grown(tensor: torch.Tensor) -> None:
        before = tensor.untyped_storage().nbytes()
        alloc(tensor)
        resized(tensor.untyped_storage().nbytes() - before)

    def freed(tensor: torch.Tensor) -> None:
        before = tensor.untyped_storage().nbytes()
        free(tensor)
        resized(tensor.untyped_storage().nbytes() - before)

    _fsdp_param.alloc_storage = _fsdp_param_group.alloc_storage = grown
    _fsdp_param.free_storage = freed
    try:
        yield
    finally:
        _fsdp_param.alloc_storage = _fsdp_param_group.alloc_storage = alloc
        _fsdp_param.free_storage = free
