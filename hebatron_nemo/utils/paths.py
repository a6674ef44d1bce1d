"""Where the checkout is: recipes are run as `python recipes/<stage>.py` from it, and `conf/` lives in it."""

from __future__ import annotations

import os
from pathlib import Path

#: the repository root (the folder holding `hebatron_nemo/`, `recipes/` and `conf/`)
REPO_ROOT = Path(__file__).resolve().parents[2]


def child_env(env: dict | None = None) -> dict:
    """`env` (default: this process's environment) with this checkout first on PYTHONPATH, for a child
    `python recipes/<stage>.py`: it imports the same hebatron_nemo as its parent, whichever checkout
    the shared environment's editable install points at."""
    env = dict(os.environ if env is None else env)
    rest = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and Path(p).resolve() != REPO_ROOT]
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *rest])
    return env
