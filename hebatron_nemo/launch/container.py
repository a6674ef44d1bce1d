"""The container check the image build ends with: every requirement of this package is importable
from what the base image ships plus docker/requirements-extras.txt, and the frameworks are the base
image's own (their versions are printed, never installed here).

    python -m hebatron_nemo.launch.container
"""

from __future__ import annotations

import re
import shlex
import sys
from importlib import metadata
from pathlib import Path, PurePosixPath

FRAMEWORKS = ("torch", "megatron-core", "megatron-bridge", "transformer-engine", "transformers")


def _name(spec: str) -> str:
    return re.split(r"[<>=!~\[; ]", spec, maxsplit=1)[0]


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _instructions(text: str) -> list[tuple[int, str, str]]:
    """(line number, INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, buf, start = [], "", 0
    for no, line in enumerate(text.splitlines(), 1):
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if not buf:
            start = no
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.strip().partition(" ")
        out.append((start, word.upper(), rest.strip()))
        buf = ""
    return out


def _requirement_names(path: Path) -> list[str]:
    names = []
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            names.append(_name(line))
    return names


def dockerfile_problems(dockerfile: Path, forbidden: list[str], repo: Path) -> list[str]:
    """What in a Dockerfile would install (or replace) a framework the base image provides: a `pip`,
    `uv pip` or `conda` install of a `forbidden` package (also inside a requirements file it COPYs in),
    any pip install without --no-deps (which could pull one in), or a conda install at all.
    Each problem names the file and line."""
    banned = {_norm(n) for n in forbidden}
    problems: list[str] = []
    copies: dict[str, Path] = {}  # container path -> repo file, for `-r` files copied in
    workdir = PurePosixPath("/")
    for no, word, args in _instructions(Path(dockerfile).read_text()):
        where = f"{dockerfile}:{no}"
        if word == "WORKDIR":
            workdir = workdir / args
        elif word == "COPY" and "--from" not in args:
            parts = shlex.split(args)
            srcs, dst = parts[:-1], parts[-1]
            for src in srcs:
                many = len(srcs) > 1 or dst.endswith("/")
                target = PurePosixPath(dst) / PurePosixPath(src).name if many else PurePosixPath(dst)
                copies[str(workdir / target)] = repo / src
        elif word == "RUN":
            for cmd in re.split(r"&&|\|\||;", args):
                tokens = shlex.split(cmd)
                if not tokens:
                    continue
                if tokens[0] in ("conda", "mamba", "micromamba") and "install" in tokens:
                    problems.append(f"{where}: conda install can replace the base image's frameworks")
                    continue
                try:
                    i = next(k for k in range(len(tokens) - 1) if tokens[k] == "pip" or tokens[k].startswith("pip3")
                             or tokens[k].endswith("/pip")) + 1
                except StopIteration:
                    continue
                if i >= len(tokens) or tokens[i] != "install":
                    continue
                rest = tokens[i + 1:]
                if "--no-deps" not in rest:
                    problems.append(f"{where}: pip install without --no-deps may pull in or upgrade a framework")
                names, k = [], 0
                while k < len(rest):
                    tok = rest[k]
                    if tok in ("-r", "--requirement", "-c", "--constraint") and k + 1 < len(rest):
                        src = copies.get(str(workdir / rest[k + 1])) or copies.get(rest[k + 1])
                        if src is None or not src.is_file():
                            problems.append(f"{where}: {rest[k + 1]}: requirements file not found among the COPYs")
                        else:
                            names += [(n, f"{src}") for n in _requirement_names(src)]
                        k += 2
                        continue
                    if not tok.startswith("-") and tok not in (".", "./"):
                        names.append((_name(tok), where))
                    k += 1
                for name, src in names:
                    if _norm(name) in banned:
                        problems.append(f"{where}: installs {name!r} ({src}), which the base image provides")
    return problems


def missing_requirements(specs: list[str] | None = None, dist: str = "hebatron-nemo") -> list[str]:
    """The requirements (default: the installed package's own, extras excluded) that are not installed."""
    missing = []
    for spec in specs if specs is not None else (metadata.requires(dist) or []):
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
