"""The container check the image build ends with: every requirement of this package is importable
from what the base image ships plus docker/requirements-extras.txt, and the frameworks are the base
image's own (their versions are printed, never installed here).

    python -m hebatron_nemo.launch.container
"""

from __future__ import annotations

import re
import sys
from importlib import metadata

FRAMEWORKS = ("torch", "megatron-core", "megatron-bridge", "transformer-engine", "transformers")


def _name(spec: str) -> str:
    return re.split(r"[<>=!~\[; ]", spec, maxsplit=1)[0]


def missing_requirements(dist: str = "hebatron-nemo") -> list[str]:
    """The package's (non-extra) requirements that are not installed."""
    missing = []
    for spec in metadata.requires(dist) or []:
        if "extra ==" in spec:
            continue
        try:
            metadata.version(_name(spec))
        except metadata.PackageNotFoundError:
            missing.append(spec)
    return missing


def main() -> None:
    for fw in FRAMEWORKS:
        try:
            print(f"{fw}: {metadata.version(fw)}")
        except metadata.PackageNotFoundError:
            print(f"{fw}: not installed")
    missing = missing_requirements()
    if missing:
        print("error: missing requirements (add them to docker/requirements-extras.txt, pinned): " + ", ".join(missing),
              file=sys.stderr)
        sys.exit(1)
    print(f"hebatron-nemo {metadata.version('hebatron-nemo')}: all requirements present")


if __name__ == "__main__":
    main()
