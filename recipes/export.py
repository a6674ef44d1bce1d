"""Release export: python recipes/export.py experiment=tiny_cpu [source=sft|cpt] [out_dir=...]."""

import sys
from pathlib import Path

import hydra

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hebatron_nemo.backends.local.threads import wait_passively  # noqa: E402

wait_passively()  # before torch loads: OpenMP threads then sleep, not spin, while they wait

from hebatron_nemo.config import register_configs  # noqa: E402
from hebatron_nemo.export.hf import register_export_config  # noqa: E402

register_configs()
register_export_config()


@hydra.main(config_path="../conf", config_name="export", version_base="1.3")
def main(cfg) -> None:
    from hebatron_nemo.backends import get_backend
    from hebatron_nemo.cli import clean_errors

    with clean_errors():
        get_backend(cfg).export(cfg)


if __name__ == "__main__":
    main()
