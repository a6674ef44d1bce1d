"""The run's stage graph as dependent Slurm jobs: a shorthand for recipes/pipeline.py with a cluster.

    python launchers/slurm/chain.py --cluster eos_pyxis --dry-run experiment=hebatron_h100x64
    = python recipes/pipeline.py experiment=hebatron_h100x64 cluster=eos_pyxis pipeline.dry_run=true

    python launchers/slurm/chain.py --cluster eos_pyxis --set cluster.account=my_acct experiment=hebatron_h100x64
    python launchers/slurm/chain.py --cluster local_slurm --only plan,cpt experiment=tiny_cpu   # part of the chain

The graph is hebatron_nemo/pipeline/stages.py's (the only list of stages); hebatron_nemo/launch/chain.py
renders it. Each job runs `recipes/pipeline.py <overrides> pipeline.only=[<stage>]` and writes the stage's
completion marker, so a resubmitted chain leaves out what is done. The jobs go to <run_dir>/chain.json.
See docs/launchers.md.
"""

import argparse
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def pipeline_argv(args) -> list[str]:
    """The recipes/pipeline.py call these arguments mean."""
    argv = [str(REPO / "recipes" / "pipeline.py"), *args.overrides, f"cluster={args.cluster}"]
    for kv in args.set:
        key = kv.split("=", 1)[0]
        argv.append(kv if key.startswith(("cluster.", "paths.", "+cluster.")) else f"cluster.{kv}")
    if args.only:
        argv.append(f"pipeline.only=[{args.only}]")
    if args.dry_run:
        argv.append("pipeline.dry_run=true")
    return argv


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cluster", default="local_slurm", help="a profile of conf/cluster/ (default: local_slurm)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override the cluster profile or paths (cluster.account=..., paths.work=...)")
    ap.add_argument("--only", help="comma-separated stage names: submit just these (their upstream must be done)")
    ap.add_argument("--dry-run", action="store_true", help="print the jobs, write chain.json; submit nothing")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides of the run (e.g. experiment=hebatron_h100x64)")
    args = ap.parse_args()
    argv = pipeline_argv(args)
    os.execv(sys.executable, [sys.executable, *argv])


if __name__ == "__main__":
    main()
