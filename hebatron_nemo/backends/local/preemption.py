"""Stop cleanly on the cluster's warning signal: checkpoint at the next step boundary, then exit.

Slurm sends the warning (`--signal=B:USR1@<seconds>`) before a time limit or a preemption; the batch
script forwards it to the training processes and requeues the job once they have exited, and the
requeued job resumes from the checkpoint. The signal is only noted in the handler; the decision is
taken at a step boundary and agreed over all data-parallel ranks (one tiny all-reduce), so every rank
stops after the same step even when the signal reaches them on either side of a boundary.

The warning can arrive more than once: `scancel --signal=USR1 --full` signals the step's processes
directly, and also the batch shell and `srun`, which forward their copies. A repeated warning changes
nothing here (the handler only notes it). torch.distributed.run, however, answers a second handled
signal, while it waits for its workers to stop on the first, by sending them SIGTERM (its default
death signal) and SIGKILL after `--shutdown-timeout`. So once the warning has been noted, SIGTERM is
deferred too: the step in progress finishes, the checkpoint is written, and the process exits as it
would have on the warning alone. A SIGTERM without an earlier warning keeps its usual meaning (the
previous handler runs: by default the process ends at once).

`HEBATRON_STOP_MARK`, when set (the rendered sbatch script sets it), names a file the handler creates
on the first warning, so the batch shell can see that the warning reached the step already and does
not forward one more copy.
"""

from __future__ import annotations

import os
import signal
import threading

import torch

from hebatron_nemo.backends.local import distributed

#: the signal to stop on; the rendered sbatch script sets it from the cluster profile
STOP_SIGNAL_ENV = "HEBATRON_STOP_SIGNAL"
#: a file created when the warning arrives (the batch shell reads it; see the module docstring)
STOP_MARK_ENV = "HEBATRON_STOP_MARK"


class StopOnSignal:
    """Installs a handler for the warning signal (SIGUSR1 unless HEBATRON_STOP_SIGNAL says otherwise)
    and, while it is installed, defers SIGTERM once the warning has been noted."""

    def __init__(self):
        name = os.environ.get(STOP_SIGNAL_ENV, "SIGUSR1")
        self.signal = getattr(signal, name if name.startswith("SIG") else f"SIG{name}")
        self.received = False
        self.warnings = 0  # how many copies of the warning arrived
        self.deferred_terms = 0  # SIGTERMs that arrived after the warning (deferred to the checkpoint)
        self._previous = None
        self._previous_term = None
        if threading.current_thread() is threading.main_thread():  # Python allows handlers only there
            self._previous = signal.signal(self.signal, self._note)
            if self.signal != signal.SIGTERM:
                self._previous_term = signal.signal(signal.SIGTERM, self._term)

    def _note(self, signum, frame) -> None:
        self.warnings += 1
        if self.received:
            return  # a repeated warning: the stop is already under way
        self.received = True
        mark = os.environ.get(STOP_MARK_ENV)
        if mark:
            try:
                with open(mark, "a", encoding="utf-8") as f:
                    f.write(f"{os.getpid()}\n")
            except OSError:
                pass  # the shell then forwards its copy too, which the handlers above absorb

    def _term(self, signum, frame) -> None:
        if self.received:
            # torch.distributed.run's answer to a repeated warning: finish the step, checkpoint, exit
            self.deferred_terms += 1
            return
        previous = self._previous_term
        if callable(previous):
            previous(signum, frame)
            return
        # no warning came first: SIGTERM means stop now, as it did without this handler
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)

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
        if self._previous_term is not None:
            signal.signal(signal.SIGTERM, self._previous_term)
            self._previous_term = None
