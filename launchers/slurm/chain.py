"""Submit the whole pipeline as dependent Slurm jobs (afterok), one recipe call per job.

    python launchers/slurm/chain.py --cluster local_slurm --dry-run experiment=tiny_cpu
    python launchers/slurm/chain.py --cluster eos_pyxis --set cluster.account=my_acct \\
        --base-model /lustre/models/nemotron3-nano-30b-a3b experiment=hebatron_cpt
    python launchers/slurm/chain.py --only plan,cpt_seq128 experiment=tiny_cpu    # part of the chain

Stages: prepare -> plan -> [parity gate] -> per curriculum segment: cpt_<seg> -> export_<seg> (base_<seg>)
-> eval_<seg>; then sft -> export_chat -> eval (the whole series) -> report. The overrides go to every
stage whose config accepts them; each stage's config is composed before anything is submitted. A dry run
prints each job's sbatch command (placeholder ids) and recipe call. See docs/launchers.md.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cluster", default="local_slurm", help="a profile of conf/cluster/ (default: local_slurm)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override the launch config")
    ap.add_argument("--base-model", help="HF checkpoint folder to parity-check before training (adds the gate stage)")
    ap.add_argument("--only", help="comma-separated stage names: submit just these (dependencies among them kept)")
    ap.add_argument("--dry-run", action="store_true", help="print the jobs and their sbatch commands; submit nothing")
    ap.add_argument("--scripts", action="store_true", help="with --dry-run: print every sbatch script too")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides for the stages (e.g. experiment=tiny_cpu)")
    args = ap.parse_args()

    from hebatron_nemo.cli import clean_errors
    from hebatron_nemo.launch.chain import pipeline_stages, select, submit_chain
    from hebatron_nemo.launch.compose import _compose, compose_launch

    with clean_errors():
        cfg = compose_launch(args.cluster, args.set)
        run = _compose("cpt", list(args.overrides))  # the run's segments and folder, from the user's overrides
        segments = [s.name for s in run.curriculum.segments]
        stages = select(pipeline_stages(segments, str(run.run_dir), args.base_model),
                        args.only.split(",") if args.only else None)
        subs = submit_chain(cfg.cluster, stages, list(args.overrides), dry_run=args.dry_run, show_scripts=args.scripts)
        if not args.dry_run:
            print(f"{len(subs)} jobs: " + " ".join(f"{s.name}={s.job_id}" for s in subs))
            print(f"logs: {subs[0].stdout.parent}")


if __name__ == "__main__":
    main()
