"""The whole method in one command: python recipes/pipeline.py experiment=tiny_cpu [overrides].

corpora -> prepare -> plan -> base -> cpt -> sft -> export -> evaluate -> report, skipping stages whose
completion markers match their inputs (see hebatron_nemo/pipeline/stages.py). With a cluster profile
the same graph becomes dependent Slurm jobs, each running one stage of it:

    python recipes/pipeline.py experiment=hebatron_h100x64 cluster=eos_pyxis pipeline.dry_run=true
"""

import sys

import hydra

from hebatron_nemo.backends.local.threads import wait_passively

wait_passively()  # before torch loads: OpenMP threads then sleep, not spin, while they wait

from hebatron_nemo.config import register_configs  # noqa: E402

register_configs()


@hydra.main(config_path="../conf", config_name="pipeline", version_base="1.3")
def main(cfg) -> None:
    from hydra.core.hydra_config import HydraConfig

    from hebatron_nemo.cli import EXIT_PREEMPTED, clean_errors
    from hebatron_nemo.pipeline.stages import StagePreempted, run_pipeline

    with clean_errors():
        try:
            # the command line: stages with their own overrides (a segment, a preset) compose from it
            hc = HydraConfig.get()
            run_pipeline(cfg, overrides=list(hc.overrides.task), arm=hc.mode is not None and hc.mode.name == "MULTIRUN")
        except StagePreempted as stopped:
            print(f"pipeline: stage {stopped} stopped on the preemption warning; rerun (requeue) to resume it")
            sys.exit(EXIT_PREEMPTED)


if __name__ == "__main__":
    main()
