"""The knob table (hebatron_nemo/backends/megatron_bridge/seam.py) against Megatron-Bridge's own
dataclasses: every field a row sets exists in the ConfigContainer of MB's Nano recipe, and no composed key
of any experiment is named like a field of the sections we set without being that field's one knob."""

from __future__ import annotations

import dataclasses

import pytest
from test_knobs import EXPERIMENTS, NOT_MB, compose_experiment, leaf_keys

from hebatron_nemo.backends.megatron_bridge.seam import CPT_KNOBS, DERIVED, RECIPE_PRETRAIN, SFT_KNOBS, _recipe

SECTIONS = ("train", "validation", "checkpoint", "logger", "optimizer", "scheduler", "rng", "tokenizer")
# our config groups whose keys are not Megatron-Bridge settings at all, and why
NOT_MB_GROUPS = {
    "model": "the local backend's architecture (MB builds Nano from its recipe / the HF config)",
    "data": "the data preparation (recipes/prepare_data.py)",
    "tokenizer": "the tokenizer folder and its preparation; MB reads only tokenizer.path (a row)",
    "evaluate": "recipes/evaluate.py",
    "cluster": "Slurm",
    "pipeline": "the stage runner",
}


def _fields(obj) -> set[str]:
    return {f.name for f in dataclasses.fields(obj)}


@pytest.fixture(scope="module")
def container():
    return _recipe(RECIPE_PRETRAIN)()


@pytest.mark.parametrize("table", [CPT_KNOBS, SFT_KNOBS], ids=["cpt", "sft"])
def test_every_row_sets_a_field_megatron_bridge_has(container, table):
    missing = []
    for key, path, _ in table:
        obj = container
        *parents, leaf = path.split(".")
        for part in parents:
            obj = getattr(obj, part)
        if not dataclasses.is_dataclass(obj) or leaf not in _fields(obj):
            missing.append(f"{key} -> {path}")
    assert not missing, f"fields Megatron-Bridge {type(container).__module__} does not have: {missing}"


def test_no_composed_key_shadows_a_megatron_bridge_field(container):
    mb = {}
    for section in SECTIONS:
        for name in _fields(getattr(container, section)):
            mb.setdefault(name, f"{section}.{name}")
    for name in _fields(container.model):  # the parallel layout and the MoE settings we own
        if name.endswith("_parallel_size") or name.startswith("moe_") or name in ("seq_length", "sequence_parallel"):
            mb.setdefault(name, f"model.{name}")
    mapped = {key for rows in (CPT_KNOBS, SFT_KNOBS) for key, _, _ in rows}
    derived_from = " ".join(DERIVED.values())  # MB-only keys the seam derives a field from (with a default)
    problems = set()
    for name in EXPERIMENTS:
        for key in leaf_keys(compose_experiment(name)) - mapped - set(NOT_MB):
            leaf = key.rsplit(".", 1)[-1]
            if key.split(".")[0] not in NOT_MB_GROUPS and leaf in mb and key not in derived_from:
                problems.add(f"{key} (Megatron-Bridge's {mb[leaf]})")
    assert not problems, sorted(problems)
