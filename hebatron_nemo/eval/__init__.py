"""Evaluation: task schemas and validated task files (``tasks``), the scoring rules lm-eval lacks
(``scorers``), the tasks as lm-evaluation-harness YAMLs (``lmeval``), scoring through lm-eval and the
labelled averages (``harness``), the long-context task's generator (``long_context``), the checkpoint series (``series``) and the run report (``report``).

Submodules are imported on use: ``tasks`` and ``scorers`` need neither torch nor transformers.
"""
