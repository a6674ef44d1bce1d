"""Supervised fine-tuning: the Nemotron-3 chat template with assistant-only loss masks (`template`), SFT
registries read as validated conversations (`sources`), one prepared SFT dataset for both backends
(`prepare`), and the local backend's tokenized examples and length-bucketed batches (`data`)."""
