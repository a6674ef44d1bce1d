"""The CPT data plan, before training: python recipes/plan.py experiment=tiny_cpu [overrides]."""

import hydra

from hebatron_nemo.config import register_configs

register_configs()


@hydra.main(config_path="../conf", config_name="plan", version_base="1.3")
def main(cfg) -> None:
    from hebatron_nemo.cli import clean_errors
    from hebatron_nemo.curriculum.runplan import make_plan

    with clean_errors():
        make_plan(cfg)


if __name__ == "__main__":
    main()
