"""The Megatron-Bridge backend (`backend=megatron_bridge`, NeMo container, H100 clusters).

Megatron-Bridge is imported lazily, only inside functions of this package: it does not install on CPU
machines (see docs/environments.md; its CPU test tier is tests/mb_tier/). Modules:

- `seam`: composed config + plan -> MB `ConfigContainer` (the one seam); `schedule`: the plan's LR over
  tokens as per-segment MB scheduler fields; `checks`: world-size arithmetic and checks before GPU time.
- `dataset_provider`: our curriculum dataset and per-phase validation sets as an MB dataset provider.
- `forward`, `callbacks`: per-source loss and the ledger, phase-end checkpoints, plan sidecars, resume check.
- `sft_data`: the prepared SFT dataset linked into the run's data folder for MB's `GPTSFTDatasetConfig`; `convert`: HF <-> Megatron and the logit parity gate.
- `run`: the CPT segment job, the SFT job, their dry runs (docs/megatron_bridge.md).
"""
