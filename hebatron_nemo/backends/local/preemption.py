"""Stop cleanly on the cluster's warning signal: checkpoint at the next step boundary, then exit.

Slurm sends the warning (`--signal=B:USR1@<seconds>`) before a time limit or a preemption; the batch
script forwards it to the training processes and requeues the job once they have exited, and the
requeued job resumes from the checkpoint. The signal is only noted in the handler; the decision is
taken at a step boundary and agreed over all data-parallel ranks (one tiny all-reduce), so every rank
stops after the same step even when the signal reaches them on either side of a boundary.
"""

from __future__ import annotations

import os
import signal
import threading

import torch

from hebatron_nemo.backends.local import distributed

#: the signal to stop on; the rendered sbatch script sets it from the cluster profile
STOP_SIGNAL_ENV = "HEBATRON_STOP_SIGNAL"


class StopOnSignal:
    """Installs a handler for the warning signal (SIGUSR1 unless HEBATRON_STOP_SIGNAL says otherwise)."""

    def __init__(self):
        name = os.environ.get(STOP_SIGNAL_ENV, "SIGUSR1")
        self.signal = getattr(signal, name if name.startswith("SIG") else f"SIG{name}")
        self.received = False
        self._previous = None
        if threading.current_thread() is threading.main_thread():  # Python allows handlers only there
            self._previous = signal.signal(self.signal, self._note)

    def _note(self, signum, frame) -> None:
        self.received = True

    @property
    def name(self) -> str:
        return signal.Signals(self.signal).name

    def requested(self) -> bool:
        """True on every rank when any rank has received the signal (a collective when world > 1)."""
        flag = torch.tensor([1.0 if self.received else 0.0], dtype=torch.float64)
        distributed.all_reduce_sum(flag)
        return bool(flag.item() > 0)

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(self.signal, self._previous)
            self._previous = None
