"""Runs the Megatron-Bridge tier (tests/mb_tier/) in its own process on the real Megatron-Bridge
(`scripts/env.sh mb`, requirements/mb.lock) with a transformer_engine stub that exists only there.
The tier is part of `make test`; when it is not installed this test fails, it does not skip."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def _tier_dirs() -> tuple[str, str]:
    mb, compat = os.environ.get("HEBATRON_MB_DIR", ""), os.environ.get("HEBATRON_COMPAT_DIR", "")
    if not (mb and (Path(mb) / ".complete").exists() and (Path(mb) / "megatron" / "bridge").is_dir()):
        pytest.fail(f"the Megatron-Bridge tier is not installed (HEBATRON_MB_DIR={mb!r}): build it with "
                    "`scripts/env.sh mb` (make env does) and run the tests with `make test`")
    if not (compat and Path(compat).is_dir()):
        pytest.fail(f"the compat layer is missing (HEBATRON_COMPAT_DIR={compat!r}): run `make test`")
    return mb, compat


def test_mb_tier_pins_the_container_version():
    mb, _ = _tier_dirs()
    versions = yaml.safe_load((REPO / "versions.yaml").read_text())
    installed = [p.name for p in Path(mb).glob("megatron_bridge-*.dist-info")]
    assert installed == [f"megatron_bridge-{versions['pypi_nearest']['megatron_bridge']}.dist-info"]
    lock = {}
    for line in (REPO / "requirements/mb.lock").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"mb.lock: {line!r} is not an exact pin"
            lock[name.lower().replace("_", "-")] = version
    assert lock["megatron-bridge"] == versions["container"]["megatron_bridge"] == versions["mb_tier"]["megatron_bridge"]
    for name in versions["never_install"]:  # the tier adds MB's config path, never a second torch/mcore/TE
        if name != "megatron-bridge":
            assert name.replace("_", "-") not in lock, name


@pytest.mark.slow  # a second process that imports Megatron-Bridge (~30 s on 2 cores)
def test_mb_tier():
    mb, compat = _tier_dirs()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([mb, compat, str(REPO), str(REPO / "tests")]), "HEBATRON_MB_TIER_CHILD": "1",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "--disable-warnings", "--tb=short", "tests/mb_tier"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=1500)
    tail = (r.stdout + r.stderr)[-6000:]
    print(tail)
    assert r.returncode == 0, tail
    assert " passed" in r.stdout and " skipped" not in r.stdout, tail
