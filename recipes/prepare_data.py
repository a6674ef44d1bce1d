"""Prepare corpora: normalize, filter, dedup, decontaminate, score, tokenize into Megatron datasets.

    python recipes/prepare_data.py data=demo                      # every source of the registry
    python recipes/prepare_data.py data=demo sources=[he_tanakh]  # one source
    python recipes/prepare_data.py data=demo dry_run=true         # validate inputs, write nothing
    python recipes/prepare_data.py data=mine tasks=64 workers=64   # 64 tasks per source, 64 at once
    python recipes/prepare_data.py data=mine tasks=512 cluster=<profile>  # each stage a Slurm job array
"""

import hydra

from hebatron_nemo.config import register_configs

register_configs()


@hydra.main(config_path="../conf", config_name="prepare", version_base="1.3")
def main(cfg) -> None:
    from hebatron_nemo.cli import clean_errors
    from hebatron_nemo.data.prepare import prepare
    from hebatron_nemo.data.summary import print_prepare_summary

    with clean_errors():
        manifests = prepare(cfg)
        if not cfg.dry_run and "submitted" not in manifests and "stopped_after" not in manifests:
            print_prepare_summary(cfg, manifests)


if __name__ == "__main__":
    main()
