"""Shared fixtures and test tiers.

Hypothesis profiles: `dev` (default) and `ci` (bounded examples so CI's time stays predictable);
`.ci/run` sets HYPOTHESIS_PROFILE=ci.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("dev", max_examples=60, deadline=None)
settings.register_profile("ci", max_examples=40, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

# tests/mb_tier runs in its own process (tests/test_mb_tier.py), where a transformer_engine stub is
# installed; it must never be collected into this one.
collect_ignore = [] if os.environ.get("HEBATRON_MB_TIER_CHILD") else ["mb_tier"]

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
