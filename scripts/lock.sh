#!/usr/bin/env bash
# Regenerates requirements/cpu.lock: resolve requirements/cpu.in in a scratch Python 3.12 venv and
# freeze it. Review the diff; the new lock hash gives a new environment on the next `make env`.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON312:-}
if [ -z "$py" ]; then  # the first pyenv 3.12 (glob order)
  for c in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12*/bin/python; do [ -x "$c" ] && { py=$c; break; }; done
fi
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
"$py" -m venv "$scratch/venv"
"$scratch/venv/bin/python" -m pip install -q --upgrade pip
"$scratch/venv/bin/python" -m pip install -q -r "$here/requirements/cpu.in"
{
  echo "# Exact versions of the main CPU environment (Python 3.12). Generated from requirements/cpu.in by"
  echo "# \`make lock\` (pip freeze of a fresh environment). The environment lives outside the clone,"
  echo "# keyed by this file's hash: ~/.cache/hebatron/envs/cpu-<hash>."
  "$scratch/venv/bin/python" -m pip freeze --exclude-editable
} > "$here/requirements/cpu.lock"
echo "wrote requirements/cpu.lock"
