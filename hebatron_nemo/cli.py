"""Shared behaviour of the `recipes/` entry points: clean errors instead of tracebacks."""

from __future__ import annotations

import contextlib
import os
import sys

from hebatron_nemo.errors import HebatronError

EXIT_BAD_INPUT = 2
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped on the cluster's warning signal after a checkpoint; run again to resume


@contextlib.contextmanager
def clean_errors():
    """Turns a HebatronError (bad config or input) into one clear line on stderr and exit code 2.

    Set HEBATRON_TRACEBACK=1 to see the traceback instead."""
    try:
        yield
    except HebatronError as e:
        if os.environ.get("HEBATRON_TRACEBACK"):
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)

