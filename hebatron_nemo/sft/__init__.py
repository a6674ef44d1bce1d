"""Supervised fine-tuning: the Nemotron-3 chat template with assistant-only loss masks, and the bilingual
chat data (translation conversations from aligned pairs, English anchor conversations, their mixture
measured in loss tokens, length-bucketed batches without packing)."""
