"""Submit one recipe call as a Slurm batch job, rendered from a cluster profile (conf/cluster/*.yaml).

    python launchers/slurm/submit.py --cluster local_slurm --dry-run cpt experiment=tiny_cpu
    python launchers/slurm/submit.py --cluster eos_pyxis --set cluster.account=my_acct \\
        --set cluster.nodes=16 cpt experiment=tiny_cpu anchor=none

The stage's overrides are checked by composing its config before anything is written or submitted.
Training stages (cpt, sft) run under torch.distributed.run on cluster.nodes x cluster.procs_per_node
(with backend=megatron_bridge: the parallelism preset's nodes x gpus_per_node, its wall time checked
against cluster.time x (cluster.max_restarts + 1)); the others as one process. A dry run prints the sbatch script and the exact sbatch command; a real
submission prints the job id and the log paths. Preemption, requeue and the profiles: docs/launchers.md.
"""

import argparse

DISTRIBUTED = ("cpt", "sft")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cluster", default="local_slurm", help="a profile of conf/cluster/ (default: local_slurm)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override the launch config, e.g. cluster.nodes=4 or paths.work=/lustre/me/work")
    ap.add_argument("--after", action="append", default=[], metavar="JOBID", help="start after these jobs succeed (afterok)")
    ap.add_argument("--name", help="stage name (job name heb-<name>; default: the recipe)")
    ap.add_argument("--dry-run", action="store_true", help="print the script and the sbatch command; write and submit nothing")
    ap.add_argument("recipe", help="recipes/<recipe>.py: prepare_data, plan, cpt, sft, evaluate, export, report, ...")
    ap.add_argument("overrides", nargs=argparse.REMAINDER, help="the recipe's own overrides, passed verbatim")
    args = ap.parse_args()

    from hebatron_nemo.backends import get_backend
    from hebatron_nemo.cli import clean_errors
    from hebatron_nemo.launch.compose import check_stage, compose_launch
    from hebatron_nemo.launch.slurm import StageJob, submit

    with clean_errors():
        cfg = compose_launch(args.cluster, args.set)
        run = check_stage(args.recipe, args.overrides)
        job = StageJob(args.name or args.recipe, args.recipe, list(args.overrides), distributed=args.recipe in DISTRIBUTED)
        if args.recipe in DISTRIBUTED and run is not None:
            job = get_backend(run).slurm_job(job, cfg.cluster, run, args.set)
        sub = submit(cfg.cluster, job, after=args.after, dry_run=args.dry_run)
        if sub.job_id:
            print(f"job_id={sub.job_id}\nstdout={sub.stdout}\nstderr={sub.stderr}\nscript={sub.script_path}")


if __name__ == "__main__":
    main()
