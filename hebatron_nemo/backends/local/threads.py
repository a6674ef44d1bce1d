"""CPU threads of the local backend: as many as the cores this process may use, waiting passively.

Two things made CPU jobs sharing a machine cost several times their CPU time alone:

- thread counts taken from the machine (torch's default is every core), not from the cores the process
  may run on (its CPU affinity: Slurm's `--cpus-per-task`, `taskset`, a container's cpuset) nor from
  the number of processes sharing them (torch.distributed.run's `LOCAL_WORLD_SIZE`);
- OpenMP worker threads that spin while they wait for work (libgomp's default active wait), burning
  cores another job could use.

`wait_passively()` sets `OMP_WAIT_POLICY=PASSIVE` (unless set already). OpenMP reads it once, when
torch loads it, so the entry points (recipes/*.py) call it before anything imports torch.
`configure(requested)` then sets torch's intra-op threads to `thread_count(requested)`.
"""

from __future__ import annotations

import os
import sys


def available_cpus() -> int:
    """The cores this process may run on: its CPU affinity, capped by SLURM_CPUS_PER_TASK when set."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # no affinity call on this platform
        n = os.cpu_count() or 1
    slurm = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if slurm.isdigit() and int(slurm) > 0:
        n = min(n, int(slurm))
    return max(1, n)


def thread_count(requested: int | None = None, local_processes: int | None = None) -> int:
    """torch intra-op threads for one process: `requested` (the config's `threads`; 0 or None = as many
    as fit), never more than this process's share of the cores it may use (`available_cpus()` divided
    among the `local_processes` on this node, default torch.distributed.run's LOCAL_WORLD_SIZE or 1)."""
    if local_processes is None:
        local = os.environ.get("LOCAL_WORLD_SIZE", "1")
        local_processes = int(local) if local.isdigit() and int(local) > 0 else 1
    share = max(1, available_cpus() // max(1, local_processes))
    if requested is None or int(requested) <= 0:
        return share
    return max(1, min(int(requested), share))


def wait_passively() -> None:
    """OpenMP threads sleep instead of spinning while they wait (see the module docstring). Effective
    only before torch is imported; an explicit OMP_WAIT_POLICY in the environment is kept."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if "torch" in sys.modules:
        import warnings

        warnings.warn("wait_passively() after torch was imported: OpenMP keeps the wait policy it started with",
                      stacklevel=2)


def configure(requested: int | None = None) -> int:
    """Sets torch's intra-op threads to `thread_count(requested)` and returns it."""
    import torch

    n = thread_count(requested)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n
