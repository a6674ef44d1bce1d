#!/usr/bin/env bash
# Editable install of a checkout into an environment (`make env` runs it every time; a few seconds):
#   scripts/install_editable.sh <python> <checkout>
# `python recipes/<stage>.py` then imports hebatron_nemo from that checkout without PYTHONPATH. The
# environments are shared by every checkout, so this points the shared one at the last checkout that
# ran it; the Makefile and .ci/run also put their own checkout first on PYTHONPATH.
set -euo pipefail
py=${1:?usage: install_editable.sh <python> <checkout>}
repo=$(cd "${2:?usage: install_editable.sh <python> <checkout>}" && pwd)
# already this checkout: nothing to do
if ( cd / && env -u PYTHONPATH "$py" -c 'import hebatron_nemo, pathlib, sys; sys.exit(pathlib.Path(hebatron_nemo.__file__).resolve().parents[1] != pathlib.Path(sys.argv[1]).resolve())' "$repo" ) 2>/dev/null; then
  echo "hebatron_nemo: installed (editable) from $repo"
  exit 0
fi
"$py" -m pip install --quiet --no-deps --no-build-isolation --disable-pip-version-check -e "$repo"
echo "hebatron_nemo: installed (editable) from $repo"
