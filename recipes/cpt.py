"""Continued pretraining: python recipes/cpt.py experiment=tiny_cpu [overrides]."""

import sys

import hydra

from hebatron_nemo.backends.local.threads import wait_passively

wait_passively()  # before torch loads: OpenMP threads then sleep, not spin, while they wait

from hebatron_nemo.config import register_configs  # noqa: E402

register_configs()


@hydra.main(config_path="../conf", config_name="cpt", version_base="1.3")
def main(cfg) -> None:
    from hebatron_nemo.cli import EXIT_PREEMPTED, clean_errors

    with clean_errors():
        from hebatron_nemo.backends import get_backend

        state = get_backend(cfg).cpt(cfg)
    if state.get("preempted"):
        sys.exit(EXIT_PREEMPTED)


if __name__ == "__main__":
    main()
