"""The repository's promises about environments: loose package requirements that never name the
container's frameworks, lock files that pin what versions.yaml says, and a working compat layer."""

from __future__ import annotations

import os
import re
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


def test_ci_calls_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    assert "make test" in readme and "make demo" in readme
    assert "make test" in ci
