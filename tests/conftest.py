"""Shared fixtures and test tiers.

Hypothesis profiles: `dev` (default) and `ci` (bounded examples so CI's time stays predictable);
`.ci/run` and `make test-fast` set HYPOTHESIS_PROFILE=ci.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("dev", max_examples=60, deadline=None)
settings.register_profile("ci", max_examples=40, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

# tests/mb_tier runs in its own process (tests/test_mb_tier.py), where a transformer_engine stub is
# installed; it must never be collected into this one.
collect_ignore = [] if os.environ.get("HEBATRON_MB_TIER_CHILD") else ["mb_tier"]

# child processes (`python recipes/<stage>.py`, `python -c ...`) import hebatron_nemo and the test
# helpers from this checkout, whichever checkout the shared environment's editable install points at
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ["PYTHONPATH"] = os.pathsep.join(
    [_REPO, os.path.join(_REPO, "tests")] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
                                              if p and p not in (_REPO, os.path.join(_REPO, "tests"))])

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def pytest_addoption(parser):
    parser.addoption("--cpu-durations", type=int, default=None, metavar="N",
                     help="list the N tests that used the most CPU time (this process's and its finished "
                          "subprocesses', setup and teardown included; 0 = all): on a shared machine wall "
                          "times swell with the load, CPU times much less")


_CPU_TIMES: dict[str, float] = {}


def _cpu_seconds() -> float:
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    if item.config.getoption("--cpu-durations") is None:
        yield
        return
    start = _cpu_seconds()
    yield
    _CPU_TIMES[item.nodeid] = _cpu_seconds() - start


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    n = config.getoption("--cpu-durations")
    if n is None or not _CPU_TIMES:
        return
    ranked = sorted(_CPU_TIMES.items(), key=lambda kv: -kv[1])
    terminalreporter.write_sep("=", f"CPU seconds per test (total {sum(_CPU_TIMES.values()):.1f} s over "
                                    f"{len(_CPU_TIMES)} tests; a module fixture counts in its first test)")
    for nodeid, seconds in ranked[:n] if n else ranked:
        terminalreporter.write_line(f"{seconds:8.2f}s  {nodeid}")


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A real single-node Slurm (slurmctld + slurmd + munge on localhost, launchers/slurm/local_cluster.sh).

    Reuses a running one when HEBATRON_SLURM_DIR names it (.ci/run starts one); otherwise starts its own
    in a temp folder and stops it at the end. Without slurm-wlm/munge or root the tests skip, unless
    HEBATRON_REQUIRE_SLURM=1 (CI), where they fail."""
    import shutil
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "launchers" / "slurm" / "local_cluster.sh"
    missing = [b for b in ("slurmctld", "slurmd", "munged", "sbatch") if shutil.which(b) is None]
    problem = (f"{', '.join(missing)} not installed (launchers/slurm/local_cluster.sh install)" if missing
               else "local Slurm needs root" if os.geteuid() != 0 else None)
    if problem:
        if os.environ.get("HEBATRON_REQUIRE_SLURM"):
            pytest.fail(f"HEBATRON_REQUIRE_SLURM is set but {problem}")
        pytest.skip(f"{problem}; set HEBATRON_REQUIRE_SLURM=1 to make this a failure")
    env = dict(os.environ)
    own = not (env.get("HEBATRON_SLURM_DIR") and Path(env["HEBATRON_SLURM_DIR"], "slurmctld.pid").exists())
    if own:
        env["HEBATRON_SLURM_DIR"] = str(tmp_path_factory.mktemp("slurm"))
        env["HEBATRON_SLURM_PORT"] = str(17000 + 2 * (os.getpid() % 1000))
    proc = subprocess.run([str(script), "start"], env=env, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        pytest.fail(f"local Slurm did not start: {proc.stdout}{proc.stderr}")
    conf = str(Path(env["HEBATRON_SLURM_DIR"]) / "slurm.conf")
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = conf
    yield {"conf": conf, "dir": env["HEBATRON_SLURM_DIR"]}
    if previous is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = previous
    if own:
        subprocess.run([str(script), "stop"], env=env, capture_output=True, text=True, timeout=120)
