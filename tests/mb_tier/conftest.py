"""The Megatron-Bridge tier: runs in its own process (tests/test_mb_tier.py starts it) with
PYTHONPATH = the MB tier dir (requirements/mb.lock) : the compat layer (transformers 5.12.1) in front of
the CPU env. Only here, `transformer_engine` is a stub: MB imports it at module level, and TE exists
only as CUDA builds. The stub answers every attribute with an inert class, so nothing that needs TE's
kernels can run (nothing here does: these tests build configs, route datasets, sample indices and run
schedulers). MB must import: a missing tier fails, it never skips."""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
import types

import pytest

TE_STUB_VERSION = "2.14.0"  # what megatron-core's version gates read; the NeMo 26.04+ containers ship >= this


class _Inert(type):
    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Inert(name, (object,), {})


class _StubLoader(importlib.abc.Loader):
    def create_module(self, spec):
        m = types.ModuleType(spec.name)
        m.__path__ = []

        def getattr_(name):
            if name.startswith("__"):
                raise AttributeError(name)
            return _Inert(name, (object,), {})

        m.__getattr__ = getattr_
        if spec.name == "transformer_engine":
            m.__version__ = TE_STUB_VERSION
        return m

    def exec_module(self, module):
        pass


class _StubFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "transformer_engine" or name.startswith("transformer_engine."):
            return importlib.machinery.ModuleSpec(name, _StubLoader(), is_package=True)
        return None


if not os.environ.get("HEBATRON_MB_TIER_CHILD"):
    raise RuntimeError("tests/mb_tier runs in its own process: run tests/test_mb_tier.py (make test)")
sys.meta_path.insert(0, _StubFinder())

import megatron.bridge  # noqa: E402,F401  - fails the tier (not skips) when MB is not installed


@pytest.fixture
def gloo_model_parallel():
    """A world of one on gloo with megatron-core's parallel groups (all sizes 1), torn down after."""
    import torch.distributed as dist
    from megatron.core import parallel_state

    started = not dist.is_initialized()
    if started:
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29561")
        dist.init_process_group("gloo", rank=0, world_size=1)
    from megatron.core.transformer.moe.moe_logging import destroy_moe_metrics_tracker

    parallel_state.initialize_model_parallel()
    yield
    destroy_moe_metrics_tracker()  # the routers' aux losses recorded into megatron-core's global tracker
    parallel_state.destroy_model_parallel()
    if started:
        dist.destroy_process_group()
