#!/usr/bin/env bash
# Builds (once) and prints the paths of the project's environments, kept outside the clone and keyed by
# the hash of their lock files, so every clone and every CI run on a machine reuses them.
#
#   scripts/env.sh cpu      -> prints the main CPU venv (Python 3.12, requirements/cpu.lock)
#   scripts/env.sh compat   -> prints the compatibility layer dir (requirements/compat.lock, for PYTHONPATH)
#   scripts/env.sh launch   -> prints the launch tier dir (requirements/launch.lock: hydra-submitit-launcher, for PYTHONPATH)
#   scripts/env.sh mb       -> prints the Megatron-Bridge test tier dir (requirements/mb.lock, for PYTHONPATH
#                              in front of the compat layer; see tests/mb_tier/)
#
# Environment: HEBATRON_ENV_ROOT (default ~/.cache/hebatron/envs), PYTHON312 (a Python 3.12 interpreter).
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
root=${HEBATRON_ENV_ROOT:-$HOME/.cache/hebatron/envs}
kind=${1:-cpu}
mkdir -p "$root"

lock_hash() { sha256sum "$here/requirements/$1.lock" | cut -c1-12; }

find_python312() {
  local candidates=("${PYTHON312:-}" "$(command -v python3.12 || true)")
  local pyenv_root=${PYENV_ROOT:-$HOME/.pyenv}
  for d in "$pyenv_root"/versions/3.12*/bin/python; do candidates+=("$d"); done
  for c in "${candidates[@]}"; do
    if [ -n "$c" ] && [ -x "$c" ] && "$c" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' 2>/dev/null; then
      echo "$c"; return 0
    fi
  done
  echo "error: Python 3.12 not found (the NeMo container's version; megatron-core 0.19 needs it)." >&2
  echo "       Install it (e.g. 'pyenv install 3.12') or set PYTHON312=/path/to/python3.12." >&2
  return 1
}

build_cpu() {
  local venv
  venv="$root/cpu-$(lock_hash cpu)"
  if [ -f "$venv/.complete" ]; then echo "$venv"; return 0; fi
  exec 9>"$venv.lock"; flock 9          # one builder at a time; the others wait and reuse
  if [ -f "$venv/.complete" ]; then echo "$venv"; return 0; fi
  rm -rf "$venv"                        # an interrupted earlier build: start over
  local py; py=$(find_python312)
  echo "building the CPU environment in $venv (one time; the CUDA build of torch is ~4.7 GB) ..." >&2
  "$py" -m venv "$venv" >&2
  "$venv/bin/python" -m pip install -q --upgrade pip >&2
  # torch first and alone: PyPI's wheel for 3.12 is large, and nothing later may replace it.
  "$venv/bin/python" -m pip install -q "$(grep -E '^torch==' "$here/requirements/cpu.lock")" >&2
  "$venv/bin/python" -m pip install -q -r "$here/requirements/cpu.lock" >&2
  touch "$venv/.complete"
  echo "$venv"
}

build_target() {  # build_target NAME: requirements/NAME.lock installed --no-deps into a relocatable folder
  local name=$1 dir venv
  dir="$root/$name-$(lock_hash "$name")"
  if [ -f "$dir/.complete" ]; then echo "$dir"; return 0; fi
  venv=$(build_cpu)
  exec 8>"$dir.lock"; flock 8
  if [ -f "$dir/.complete" ]; then echo "$dir"; return 0; fi
  rm -rf "$dir" "$dir.tmp"
  "$venv/bin/python" -m pip install -q --no-deps --require-hashes --target "$dir.tmp" -r "$here/requirements/$name.lock" >&2
  touch "$dir.tmp/.complete"
  mv "$dir.tmp" "$dir"
  echo "$dir"
}

build_compat() {
  local dir
  dir="$root/compat-$(lock_hash compat)"
  if [ -f "$dir/.complete" ]; then echo "$dir"; return 0; fi
  local venv; venv=$(build_cpu)
  exec 8>"$dir.lock"; flock 8
  if [ -f "$dir/.complete" ]; then echo "$dir"; return 0; fi
  rm -rf "$dir" "$dir.tmp"
  "$venv/bin/python" -m pip install -q --no-deps --target "$dir.tmp" -r "$here/requirements/compat.lock" >&2
  touch "$dir.tmp/.complete"
  mv "$dir.tmp" "$dir"                  # a --target folder is relocatable, so build aside and rename
  echo "$dir"
}

build_mb() {
  local dir
  dir="$root/mb-$(lock_hash mb)"
  if [ -f "$dir/.complete" ]; then echo "$dir"; return 0; fi
  local venv; venv=$(build_cpu)
  build_compat >/dev/null
  exec 7>"$dir.lock"; flock 7
  if [ -f "$dir/.complete" ]; then echo "$dir"; return 0; fi
  rm -rf "$dir" "$dir.tmp"
  # one pip call: packages sharing the `megatron` namespace (bridge, energon) must land in one --target
  "$venv/bin/python" -m pip install -q --no-deps --target "$dir.tmp" -r "$here/requirements/mb.lock" >&2
  touch "$dir.tmp/.complete"
  mv "$dir.tmp" "$dir"
  echo "$dir"
}

case "$kind" in
  cpu) build_cpu ;;
  compat) build_compat ;;
  launch) build_target launch ;;
  mb) build_mb ;;
  *) echo "usage: $0 cpu|compat|launch|mb" >&2; exit 2 ;;
esac
