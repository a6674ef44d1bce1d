"""The image and the shell scripts: docker/Dockerfile builds on the pinned NeMo tag, installs this
package and its extras with --no-deps and never a framework the container provides; the container check
finds missing requirements; launchers/docker/run.sh renders a complete `docker run`; shellcheck passes."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from hebatron_nemo import __version__
from hebatron_nemo.launch.container import _instructions, dockerfile_problems, missing_requirements

REPO = Path(__file__).resolve().parents[1]
VERSIONS = yaml.safe_load((REPO / "versions.yaml").read_text())
DOCKERFILE = REPO / "docker" / "Dockerfile"


def test_dockerfile_installs_no_framework_and_only_with_no_deps():
    assert dockerfile_problems(DOCKERFILE, VERSIONS["never_install"], REPO) == []


def test_dockerfile_base_and_label_follow_the_pins():
    ins = _instructions(DOCKERFILE.read_text())
    args = dict(a.split("=", 1) for _, w, a in ins if w == "ARG" and "=" in a)
    assert args["NEMO_IMAGE"] == VERSIONS["container"]["image"]
    assert [a for _, w, a in ins if w == "FROM"] == ["${NEMO_IMAGE}"]
    assert args["HEBATRON_VERSION"] == __version__
    label = next(a for _, w, a in ins if w == "LABEL")
    assert 'org.opencontainers.image.version="${HEBATRON_VERSION}"' in label


@pytest.mark.parametrize("bad, why", [
    ("RUN pip install --no-deps torch==2.9.0", "installs 'torch'"),
    ("RUN python -m pip install --no-deps megatron_core", "installs 'megatron_core'"),
    ("RUN pip install datasketch", "without --no-deps"),
    ("RUN uv pip install --no-deps transformer-engine[pytorch]", "installs 'transformer-engine'"),
    ("COPY extras.txt /opt/x.txt\nRUN pip install --no-deps -r /opt/x.txt", "extras.txt"),
    ("RUN conda install -y numpy", "conda install"),
])
def test_the_dockerfile_check_catches_framework_installs(tmp_path, bad, why):
    (tmp_path / "extras.txt").write_text("datasketch==2.0.0\nMegatron-Bridge==0.6.0  # no\n")
    df = tmp_path / "Dockerfile"
    df.write_text(f"FROM {VERSIONS['container']['image']}\nWORKDIR /opt/hebatron\n{bad}\n")
    problems = dockerfile_problems(df, VERSIONS["never_install"], tmp_path)
    assert problems and why in problems[0] and f"{df}:" in problems[0]


def test_container_check_reports_missing_requirements():
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert missing_requirements(deps) == []  # the CPU environment stands in for the container here
    assert missing_requirements(deps + ["surely-not-installed-pkg>=1"]) == ["surely-not-installed-pkg>=1"]
    extras = (REPO / "docker" / "requirements-extras.txt").read_text()
    pins = [line.split("#")[0].strip() for line in extras.splitlines() if line.split("#")[0].strip()]
    assert pins and all(re.fullmatch(r"[A-Za-z0-9_.-]+==[0-9][^ ]*", p) for p in pins), pins


def test_docker_run_renders_a_complete_command(tmp_path):
    env = dict(os.environ, HEBATRON_WORK=str(tmp_path / "work"))
    env.pop("HEBATRON_IMAGE", None)
    out = subprocess.run([str(REPO / "launchers" / "docker" / "run.sh"), "--dry-run", "--mount", "/data:/data",
                          "torchrun", "--nproc-per-node", "8", "recipes/cpt.py", "experiment=tiny_cpu"],
                         env=env, capture_output=True, text=True, check=True).stdout
    for part in ("docker run --rm", "--gpus all", "--ipc=host", "--ulimit memlock=-1", f"--user {os.getuid()}:",
                 f"-v {tmp_path}/work:{tmp_path}/work", "-v /data:/data", f"hebatron-nemo:{__version__} torchrun"):
        assert part in out, (part, out)
    bad = subprocess.run([str(REPO / "launchers" / "docker" / "run.sh"), "--bogus"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown option --bogus" in bad.stderr


def _shell_scripts() -> list[Path]:
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split()
    out = []
    for f in files:
        p = REPO / f
        if not p.is_file():
            continue
        if p.suffix == ".sh":
            out.append(p)
            continue
        with open(p, "rb") as fh:
            head = fh.readline()
        if re.match(rb"#!.*\b(ba|da|)sh\b", head):
            out.append(p)
    return out


def test_shellcheck_passes_on_every_shell_script():
    if shutil.which("shellcheck") is None:
        if os.environ.get("HEBATRON_REQUIRE_SHELLCHECK"):
            pytest.fail("HEBATRON_REQUIRE_SHELLCHECK is set but shellcheck is not installed (apt-get install shellcheck)")
        pytest.skip("shellcheck not installed (apt-get install shellcheck); CI sets HEBATRON_REQUIRE_SHELLCHECK=1")
    scripts = _shell_scripts()
    names = {p.relative_to(REPO).as_posix() for p in scripts}
    assert {".ci/run", "launchers/slurm/local_cluster.sh", "launchers/docker/run.sh", "scripts/env.sh"} <= names
    proc = subprocess.run(["shellcheck", "--severity=info", *map(str, scripts)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:]
