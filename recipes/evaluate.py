"""Evaluate one model, or a run's checkpoint series, on the Hebrew suite and the English pack, through
lm-evaluation-harness (`lm_eval.simple_evaluate`) on the task YAMLs written from `conf/eval_tasks`.

    python recipes/evaluate.py experiment=tiny_cpu                       # base, phase ends, final, SFT
    python recipes/evaluate.py experiment=tiny_cpu evaluate.model_dir=work/runs/x/hf/sft
    python recipes/evaluate.py ... evaluate.backend=vllm evaluate.tensor_parallel_size=8   # a GPU node

`evaluate.backend=hf` (default, CPU): lm-eval's HF model around the loaded export; log-likelihoods in
batches (right padding is harmless), generation with batch size 1 (lm-eval left-pads generation
batches, and left padding would flow through the Mamba layers' state). `vllm`: lm-eval's vLLM model
(installed on GPU nodes only). Per model: `<run_dir>/eval/<model>/results.json` (lm-eval's results),
`<task>.samples.jsonl` and `summary.json`; the series in `<run_dir>/eval/series.json`/`.png`.

Every model is loaded with the export's strict loader (hebatron_nemo.export.hf.load_exported): a
release-format folder whose weight keys are exactly the model's and whose weight files match the
sha256s of its manifest (recipes/export.py writes it; the series is exported under
<run_dir>/eval/models/). Anything else stops with one line naming the folder and the problem.
"""

import hydra

from hebatron_nemo.backends.local.threads import wait_passively

wait_passively()  # before torch loads: OpenMP threads then sleep, not spin, while they wait

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
