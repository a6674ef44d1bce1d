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
    from hebatron_nemo.eval.series import checkpoint_models, evaluate_series

    with clean_errors():
        root = Path(cfg.evaluate.task_root)
        if cfg.evaluate.write_demo_tasks and not any(root.glob("*/test.jsonl")):
            from hebatron_nemo.eval.demo_tasks import write_demo_tasks

            write_demo_tasks(root, corpus_dir=cfg.data.raw_dir)
        run_dir = Path(cfg.run_dir)
        if cfg.evaluate.model_dir:
            models = [{"name": Path(cfg.evaluate.model_dir).name, "tokens": 0, "dir": cfg.evaluate.model_dir}]
        else:
            models = checkpoint_models(cfg, run_dir)
        series = evaluate_series(cfg, run_dir, models)
        for m in series["models"]:
            print(f"{m['name']:>14} {m['tokens']:>10,} tokens  " + "  ".join(f"{t} {s:.1f}" for t, s in sorted(m["scores"].items())))
        print(f"series: {run_dir / 'eval' / 'series.json'}, plot: {run_dir / 'eval' / 'series.png'}")


if __name__ == "__main__":
    main()
