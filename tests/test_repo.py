"""The repository's promises about environments: loose package requirements that never name the
container's frameworks, lock files that pin what versions.yaml says, and a working compat layer."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
VERSIONS = yaml.safe_load((REPO / "versions.yaml").read_text())


def _lock(name: str) -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements" / f"{name}.lock").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            pkg, _, version = line.partition("==")
            assert version, f"{name}.lock: {line!r} is not an exact pin"
            pins[re.sub(r"[-_.]+", "-", pkg).lower()] = version
    return pins


def test_package_requirements_are_lower_bounds_without_container_frameworks():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    forbidden = {re.sub(r"[-_.]+", "-", n).lower() for n in VERSIONS["never_install"]}
    specs = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        specs += extra
    for spec in specs:
        name = re.split(r"[<>=!~\[; ]", spec, maxsplit=1)[0]
        assert re.sub(r"[-_.]+", "-", name).lower() not in forbidden, spec
        assert "==" not in spec and "<" not in spec, f"{spec}: exact versions belong in the lock files"


def test_locks_pin_what_versions_yaml_records():
    cpu, compat = _lock("cpu"), _lock("compat")
    env = VERSIONS["cpu_env"]
    assert cpu["torch"] == env["torch"]
    assert cpu["megatron-core"] == env["megatron_core"] == VERSIONS["pypi_nearest"]["megatron_core"]
    assert cpu["megatron-core"].startswith(str(VERSIONS["container"]["megatron_core"]))
    assert cpu["transformers"] == env["transformers"]
    assert compat["transformers"] == VERSIONS["container"]["transformers"] == VERSIONS["compat_layer"]["transformers"]
    assert compat["tokenizers"] == VERSIONS["compat_layer"]["tokenizers"]
    assert tuple(map(int, compat["tokenizers"].split(".")[:2])) < (0, 23)
    for forbidden in ("megatron-bridge", "transformer-engine", "apex", "mamba-ssm"):
        assert forbidden not in cpu


def test_running_environment_matches_the_lock():
    import megatron.core
    import torch
    import transformers

    env = VERSIONS["cpu_env"]
    assert sys.version.startswith(env["python"])
    assert torch.__version__.split("+")[0] == env["torch"]
    assert megatron.core.__version__ == env["megatron_core"]
    assert transformers.__version__ == env["transformers"]


@pytest.mark.slow  # a subprocess importing transformers 5.12.1 (test_export's probe also loads it, in the fast tier)
def test_compat_layer_gives_the_container_transformers():
    compat = os.environ.get("HEBATRON_COMPAT_DIR")
    if not compat:
        pytest.skip("HEBATRON_COMPAT_DIR is not set (make test sets it)")
    code = ("import transformers, tokenizers; from transformers import NemotronHForCausalLM; "
            "print(transformers.__version__, tokenizers.__version__)")
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": compat},
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == [VERSIONS["compat_layer"]["transformers"], VERSIONS["compat_layer"]["tokenizers"]]


def _readme_commands() -> dict[str, str]:
    """{make target: README line} for the `make ...` lines of the README's "Two commands" block."""
    readme = (REPO / "README.md").read_text()
    block = readme.split("## Two commands", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    return {line.split()[1]: line for line in block.splitlines() if line.startswith("make ")}


def test_readme_commands_are_make_targets_that_do_what_it_says():
    """`make demo` runs the tiny_cpu pipeline; `make test` runs the whole CPU suite (no marker but gpu
    excluded), `make test-fast` the same less the slow tests (make -n: what make would run)."""
    commands = _readme_commands()
    assert set(commands) == {"demo", "test"}, commands
    plans = {}
    # as a user types them: not the variables of a make that runs this test (make test-fast does)
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "PYTEST_ARGS", "ARGS")}
    for target in ("demo", "test", "test-fast"):
        proc = subprocess.run(["make", "-n", "--no-print-directory", target], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        plans[target] = proc.stdout.splitlines()[-1]
    assert "recipes/pipeline.py experiment=tiny_cpu" in plans["demo"]
    assert plans["test"].split("-m pytest", 1)[1].split() == ["-m", '"not', 'gpu"']
    assert plans["test-fast"].split("-m pytest", 1)[1].split() == ["-m", '"not', "gpu", "and", "not", 'slow"']


FAKE_TOOL = """#!/usr/bin/env bash
echo "$(basename "$0") $*" >> "$CI_LOG"
name=$(basename "$0"); target=""
for a in "$@"; do case $a in -*) ;; *) target=$a; break;; esac; done
[ "$name" = make ] && [ "$target" = test-fast ] && sleep 1
var=$(printf 'RC_%s_%s' "$name" "$target" | tr -c 'A-Za-z0-9_' '_'); exit "${!var:-0}"
"""


def _run_ci(tmp_path, **rcs):
    """.ci/run in a scratch copy of the repository's layout whose tools (make, apt-get, the local Slurm
    script, the CPU env's python) only record their arguments and exit with RC_<tool>_<first non-option
    argument> (default 0)."""
    root = tmp_path / "repo"
    (root / ".ci").mkdir(parents=True)
    shutil.copy(REPO / ".ci" / "run", root / ".ci" / "run")
    bindir, env_dir = tmp_path / "bin", tmp_path / "env-cpu" / "bin"
    tools = {bindir / "make": FAKE_TOOL, bindir / "apt-get": FAKE_TOOL, env_dir / "python": FAKE_TOOL,
             root / "launchers" / "slurm" / "local_cluster.sh": FAKE_TOOL,
             root / "scripts" / "env.sh": f"#!/usr/bin/env bash\necho {tmp_path}/env-$1\n"}
    for path, text in tools.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(0o755)
    log = tmp_path / "calls.log"
    log.write_text("")
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}", "CI_LOG": str(log), "TMPDIR": str(tmp_path),
           **{f"RC_{k}": str(v) for k, v in rcs.items()}}
    proc = subprocess.run([str(root / ".ci" / "run")], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    return proc, log.read_text().splitlines()


def test_ci_runs_the_fast_tier_timed_then_the_readme_test_command(tmp_path):
    proc, calls = _run_ci(tmp_path, python_pytest=5)  # the GPU tier selects nothing without CUDA: fine
    assert proc.returncode == 0, proc.stdout + proc.stderr
    made = [c for c in calls if c.startswith("make ")]
    assert made == ["make env", "make test-fast PYTEST_ARGS=-q --durations=15",
                    "make test PYTEST_ARGS=-q --durations=15"]
    assert f"make {made[2].split()[1]}" == _readme_commands()["test"].split("#")[0].strip()  # README's command
    assert "python -m pytest -q -m gpu" in calls and "local_cluster.sh start" in calls
    wall = re.search(r"CI: make test-fast wall time: (\d+)s \(target: under 180s", proc.stdout)
    assert wall and 1 <= int(wall.group(1)) < 60, proc.stdout
    summary = proc.stdout.split("::: CI wall time per stage", 1)[1]
    assert re.search(r"test-fast +\d+s +rc=0", summary) and "make test-fast wall time:" in summary


@pytest.mark.parametrize("rcs, says", [
    ({"make_test": 5}, "CI: make test collected no tests"),
    ({"make_test_fast": 5}, "CI: make test-fast collected no tests"),
    ({"make_test": 1}, r"tests +\d+s +rc=1"),
    ({"make_test_fast": 1}, r"test-fast +\d+s +rc=1"),
    ({"python_pytest": 1}, r"gpu-tier +\d+s +rc=1"),
])
def test_ci_fails_when_a_tier_fails_or_collects_nothing(tmp_path, rcs, says):
    proc, calls = _run_ci(tmp_path, **{"python_pytest": 5, **rcs})
    assert proc.returncode == 1 and re.search(says, proc.stdout), proc.stdout
    assert "make test PYTEST_ARGS=-q --durations=15" in calls  # a failing fast tier still runs the whole suite


def test_ci_runs_no_tests_without_environments(tmp_path):
    proc, calls = _run_ci(tmp_path, make_env=2)
    assert proc.returncode == 1 and [c for c in calls if c.startswith("make ")] == ["make env"]
