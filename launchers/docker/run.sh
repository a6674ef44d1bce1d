#!/usr/bin/env bash
# Single-node runs in the Hebatron image (docker/Dockerfile): all GPUs, host IPC (PyTorch's shared
# memory between data-loader workers and ranks), unlimited locked memory, the work folder mounted at the
# same path, and your user id, so what the run writes is yours.
#
#   launchers/docker/run.sh [--dry-run] [--image IMAGE] [--mount HOST:CONTAINER]... COMMAND [ARGS...]
#   launchers/docker/run.sh torchrun --nproc-per-node 8 recipes/cpt.py experiment=tiny_cpu
#   launchers/docker/run.sh --mount /data/corpora:/data/corpora python recipes/prepare_data.py data=demo
#
# Environment: HEBATRON_IMAGE (default hebatron-nemo:<package version>), HEBATRON_WORK (default ./work),
# HEBATRON_GPUS (docker --gpus value, default all; "none" for CPU), WANDB_MODE (default offline).
set -euo pipefail

here=$(cd "$(dirname "$0")/../.." && pwd)
version=$(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$here/hebatron_nemo/__init__.py")
image=${HEBATRON_IMAGE:-hebatron-nemo:$version}
work=${HEBATRON_WORK:-$PWD/work}
gpus=${HEBATRON_GPUS:-all}
dry_run=0
mounts=()

usage() { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry_run=1; shift ;;
    --image) image=$2; shift 2 ;;
    --mount) mounts+=(-v "$2"); shift 2 ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    -*) echo "run.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) break ;;
  esac
done
[ $# -gt 0 ] || { usage >&2; exit 2; }

case "$work" in /*) ;; *) work=$PWD/$work ;; esac
cmd=(docker run --rm --init)
[ "$gpus" = none ] || cmd+=(--gpus "$gpus")
cmd+=(--ipc=host --ulimit memlock=-1 --ulimit stack=67108864
      --user "$(id -u):$(id -g)" -e HOME=/tmp
      -v "$work:$work" -e HEBATRON_WORK="$work"
      -e WANDB_MODE="${WANDB_MODE:-offline}" -e HF_HUB_OFFLINE=1 -e TRANSFORMERS_OFFLINE=1
      "${mounts[@]}" -w /opt/hebatron "$image" "$@")

if [ "$dry_run" = 1 ]; then
  printf '%q ' "${cmd[@]}"; echo
  exit 0
fi
mkdir -p "$work"
exec "${cmd[@]}"
