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
        if "RANK" not in os.environ:
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 2000))
            os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
        dist.init_process_group("gloo", timeout=datetime.timedelta(minutes=30))
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
