"""Release export: python recipes/export.py experiment=tiny_cpu [source=sft|cpt] [out_dir=...]."""

import hydra

from hebatron_nemo.backends.local.threads import wait_passively

wait_passively()  # before torch loads: OpenMP threads then sleep, not spin, while they wait

from hebatron_nemo.config import register_configs  # noqa: E402

register_configs()


@hydra.main(config_path="../conf", config_name="export", version_base="1.3")
def main(cfg) -> None:
    from hebatron_nemo.backends import get_backend
    from hebatron_nemo.cli import clean_errors

    with clean_errors():
        get_backend(cfg).export(cfg)


if __name__ == "__main__":
    main()
