"""Evaluate one model, or a run's checkpoint series, on the Hebrew suite and the English pack.

    python recipes/evaluate.py experiment=tiny_cpu                       # base, phase ends, final, SFT
    python recipes/evaluate.py experiment=tiny_cpu evaluate.model_dir=work/runs/x/sft/model
"""

import sys
from pathlib import Path

import hydra

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hebatron_nemo.config import register_configs  # noqa: E402

register_configs()


@hydra.main(config_path="../conf", config_name="evaluate", version_base="1.3")
def main(cfg) -> None:
    from hebatron_nemo.cli import clean_errors
    from hebatron_nemo.eval.series import run_evaluate

    with clean_errors():
        run_evaluate(cfg)


if __name__ == "__main__":
    main()
