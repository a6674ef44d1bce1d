"""Evaluation: task schemas and validated task files (``tasks``), scoring rules (``scorers``), an
engine that scores an HF model folder (``engine``), and the same
tasks as lm-evaluation-harness YAMLs (``lmeval``).

Submodules are imported on use: ``tasks`` and ``scorers`` need neither torch nor transformers.
"""
