"""The parity gate's process setup (`recipes/convert.py parity`, tests/test_mb_gpu.py) with the real
megatron-core: the model-parallel groups, then the CUDA RNG tracker seeded, in that order, as MB's own
setup does. Building Nano forks that tracker (MambaMixer); unseeded, it raises "cuda rng state
model-parallel-rng is not added". The seed itself needs CUDA (`torch.cuda.get_rng_state`), so here it
is recorded, not run: what this shows on CPU is the order and the seed, and that the recipe uses this
setup; that the tracker then forks is only checked on a GPU (tests/test_mb_gpu.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from hebatron_nemo.backends.megatron_bridge import convert

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "convert.py"


@pytest.fixture
def spies(monkeypatch):
    import torch.distributed as dist
    from megatron.core import parallel_state, tensor_parallel

    calls = []
    real_init = parallel_state.initialize_model_parallel

    def init(*a, **k):
        calls.append(("initialize_model_parallel", dist.is_initialized()))
        return real_init(*a, **k)

    monkeypatch.setattr(parallel_state, "initialize_model_parallel", init)
    def seed(seed, *a, **k):
        calls.append(("seed", seed, parallel_state.model_parallel_is_initialized()))

    monkeypatch.setattr(tensor_parallel, "model_parallel_cuda_manual_seed", seed)
    yield calls
    parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()


def test_setup_seeds_the_rng_tracker_after_the_parallel_groups(spies):
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    tracker = get_cuda_rng_tracker()
    tracker.reset()
    with pytest.raises(Exception, match="cuda rng state model-parallel-rng is not added"):
        with tracker.fork():  # what MambaMixer's __init__ does; the state the parity gate never added
            pass
    convert.init_single_gpu_parallel_state(seed=1234, backend="gloo", port=29571)
    assert spies == [("initialize_model_parallel", True), ("seed", 1234, True)]
    convert.init_single_gpu_parallel_state(seed=7, backend="gloo")  # again: groups kept, tracker reseeded
    assert spies[-1] == ("seed", 7, True) and len(spies) == 3


def test_parity_recipe_seeds_before_it_builds_the_model(spies, monkeypatch, tmp_path):
    """`recipes/convert.py parity` end to end up to the GPU work: NCCL swapped for gloo, the HF/Megatron
    comparison and the record replaced by recorders."""
    import torch.distributed as dist

    real = dist.init_process_group
    monkeypatch.setattr(dist, "init_process_group", lambda backend, **k: spies.append(("init", backend))
                        or real("gloo", **k))
    monkeypatch.setattr(convert, "logit_parity", lambda hf, **k: spies.append(("parity",)) or {"max_abs": 0.0})
    monkeypatch.setattr(convert, "write_parity_record", lambda run, hf, result: spies.append(("record",)) or "x")
    spec = importlib.util.spec_from_file_location("convert_recipe", RECIPE)
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    recipe.main(["parity", "--hf-dir", str(tmp_path), "--run-dir", str(tmp_path)])
    assert spies == [("init", "nccl"), ("initialize_model_parallel", True), ("seed", 1234, True), ("parity",),
                     ("record",)]
