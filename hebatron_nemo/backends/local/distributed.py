"""Data parallelism over gloo (`torchrun --nproc-per-node 2 recipes/cpt.py ...`), or one process."""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist


def init() -> tuple[int, int]:
    """(rank, world size). Always a process group (gloo), even for one process: megatron-core's
    expert-bias update and dataset builders expect one."""
    if not dist.is_initialized():
        timeout = datetime.timedelta(minutes=30)
        if "RANK" in os.environ:  # torchrun / srun: env:// rendezvous
            dist.init_process_group("gloo", timeout=timeout)
        else:
            # one process: an in-memory store, no port and no RANK/MASTER_PORT written into os.environ
            # (child processes, e.g. test subprocesses or sweep arms, would inherit them and collide)
            dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)
    return dist.get_rank(), dist.get_world_size()


def all_reduce_gradients(model: torch.nn.Module) -> None:
    """Sums gradients over ranks (the loss is already normalized by the global token count)."""
    if dist.get_world_size() == 1:
        return
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset:offset + n].view_as(g))
        offset += n


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return t


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
