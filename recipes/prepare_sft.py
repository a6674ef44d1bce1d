"""SFT data preparation: python recipes/prepare_sft.py sft_data=<registry> [dry_run=true] [overrides]."""

import hydra

from hebatron_nemo.config import register_configs

register_configs()


@hydra.main(config_path="../conf", config_name="prepare_sft", version_base="1.3")
def main(cfg) -> None:
    from hebatron_nemo.cli import clean_errors
    from hebatron_nemo.sft.prepare import dry_run, prepare_sft

    with clean_errors():
        if cfg.dry_run:
            dry_run(cfg)
            return
        prepare_sft(cfg, overwrite=bool(cfg.overwrite))


if __name__ == "__main__":
    main()
