"""One name per knob: the Megatron-Bridge seam's knob table (our key -> ConfigContainer field) against the
composed config of every experiment. Two keys that set one MB field, a key named like an MB field that
the table does not map, or a table row whose key no longer exists, fail here. The fields themselves are
checked against Megatron-Bridge's own dataclasses in tests/mb_tier/test_mb_knobs.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, ListConfig, OmegaConf

from hebatron_nemo.backends.megatron_bridge.seam import CPT_KNOBS, DERIVED, FIXED, SFT_KNOBS, sft_overrides

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted(p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml"))
TABLES = {"cpt": CPT_KNOBS, "sft": SFT_KNOBS}
# composed keys named like a mapped MB field that are not MB knobs, and why
NOT_MB = {
    "base.seq_length": "stage 0's base model (the CPU demo's): Megatron-Bridge starts from an HF checkpoint",
    "base.global_batch_size": "stage 0's base model",
    "base.micro_batch_size": "stage 0's base model",
    "base.lr": "stage 0's base model",
    "base.min_lr": "stage 0's base model",
    "eval.seq_length": "the local backend's in-loop eval length (MB evaluates at the segment's length)",
    "curriculum.seed": "the sample order of every data stream (the plan's), not the training RNG",
    "sft_data.seed": "the SFT mixture's choice and order (prepare_sft), not the training RNG",
    "data.near_dedup.seed": "MinHash permutations of the data preparation",
    "chat_template": "recipes/export.py: the chat template file written into the exported HF folder",
    "max_steps": "the local backend's cap for tests (MB's steps follow from the plan)",
}


def compose_experiment(name: str):
    """The experiment composed with conf/pipeline.yaml: the schema that holds every stage's keys."""
    from hebatron_nemo.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name="pipeline", overrides=[f"experiment={name}", "paths.work=/tmp/knobs"])


MAPPINGS = {"data.sources", "sft_data.sources", "anchor.sources", "base.sources", "parallelism.env",
            "pipeline.stage_overrides", "curriculum.segment_doc_shares", "model.extra", "cluster.env"}


def leaf_keys(node, prefix: str = "") -> set[str]:
    """Dotted keys of the leaves; list items become `<list>.<field>`, registry entries `<dict>.*.<field>`."""
    out: set[str] = set()
    if prefix.rstrip(".") in MAPPINGS:  # a mapping whose keys are names, not config fields: one knob
        out.add(prefix.rstrip("."))
    elif isinstance(node, DictConfig):
        for k in node.keys():
            child = node._get_node(k)
            out |= leaf_keys(child, f"{prefix}{k}.")
    elif isinstance(node, ListConfig) and len(node) and isinstance(node._get_node(0), DictConfig):
        for item in node:
            out |= leaf_keys(item, prefix)
    else:
        out.add(prefix.rstrip("."))
    return out


def knob_problems(keys: set[str], tables: dict) -> list[str]:
    """Why `keys` (a composed config's) do not give one name per MB field under `tables`."""
    problems = []
    mapped = {key for rows in tables.values() for key, _, _ in rows}
    for recipe, rows in tables.items():
        seen: dict[str, str] = {}
        for key, field, _ in rows:
            if field in seen:
                problems.append(f"{recipe}: {seen[field]} and {key} both set ConfigContainer {field}")
            seen[field] = key
            if key not in keys and not key.startswith("curriculum.segments."):
                problems.append(f"{recipe}: the table maps {key}, which the config does not have")
            if key.startswith("curriculum.segments.") and key not in keys:
                problems.append(f"{recipe}: the table maps {key}, which curriculum.segments does not have")
            overlap = [d for d in DERIVED if d == field]
            if overlap and field != "checkpoint.pretrained_checkpoint":  # derived for CPT, a knob for SFT
                problems.append(f"{recipe}: {field} is both derived ({DERIVED[overlap[0]]}) and set by {key}")
    mb_names = {field.rsplit(".", 1)[-1]: field for rows in tables.values() for _, field, _ in rows}
    for key in sorted(keys - mapped - set(NOT_MB)):
        leaf = key.rsplit(".", 1)[-1]
        if leaf in mb_names:
            problems.append(f"{key} is named like Megatron-Bridge's {mb_names[leaf]} but the knob table does not "
                            f"map it: one knob for that field (docs/config_migration.md)")
    return problems


@pytest.fixture(scope="module")
def composed():
    return {name: compose_experiment(name) for name in EXPERIMENTS}


def test_every_experiment_has_one_name_per_mb_field(composed):
    assert len(composed) >= 9
    for name, cfg in composed.items():
        assert knob_problems(leaf_keys(cfg), TABLES) == [], name


@pytest.mark.parametrize("extra, needle", [
    ({"megatron_bridge.save_interval"}, r"megatron_bridge.save_interval is named like Megatron-Bridge's "
                                        r"checkpoint.save_interval"),
    ({"logging.eval_interval"}, r"logging.eval_interval is named like Megatron-Bridge's validation.eval_interval"),
])
def test_a_second_key_for_one_mb_field_is_refused(composed, extra, needle):
    problems = knob_problems(leaf_keys(composed["tiny_cpu"]) | extra, TABLES)
    assert any(__import__("re").search(needle, p) for p in problems), problems


def test_two_rows_for_one_field_and_stale_rows_are_refused(composed):
    keys = leaf_keys(composed["tiny_cpu"])
    dup = {"cpt": CPT_KNOBS + (("megatron_bridge.eval_iters", "validation.eval_interval", int),)}
    assert any("eval.eval_interval and megatron_bridge.eval_iters both set ConfigContainer validation.eval_interval"
               in p for p in knob_problems(keys, dup))
    stale = {"cpt": CPT_KNOBS + (("checkpoint.every_steps", "checkpoint.save_interval", int),)}
    problems = knob_problems(keys, stale)
    assert any("the table maps checkpoint.every_steps, which the config does not have" in p for p in problems)


def flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k != "env_vars":
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def seam_uses_the_table(fields: dict, cfg, rows, seg: dict | None = None) -> list[str]:
    """Every row's field holds its key's value; every other field is derived or fixed."""
    from hebatron_nemo.backends.megatron_bridge.seam import knob_value

    problems = []
    f = flat(fields)
    for key, field, cast in rows:
        value = knob_value(cfg, key, seg)
        want = None if value is None else cast(value)
        if field == "model.cp_comm_type" and int(cfg.parallelism.context_parallel_size) == 1:
            want = None
        if field == "logger.wandb_project" and not cfg.logging.wandb:
            want = None
        if f.get(field, "<unset>") != want:
            problems.append(f"{field}={f.get(field, '<unset>')!r}, {key}={want!r}")
    table = {field for _, field, _ in rows}
    for field in f:
        known = field in table or field in FIXED or field in DERIVED or field.split(".")[0] + ".*" in DERIVED
        if not known:
            problems.append(f"{field}: set by the seam, but neither a knob, derived nor fixed")
    return problems


def test_the_sft_seam_builds_its_fields_from_the_table(composed, tmp_path):
    cfg = composed["hebatron_sft_h100x16"]
    assert seam_uses_the_table(sft_overrides(cfg, tmp_path), cfg, SFT_KNOBS) == []
    moved = OmegaConf.merge(cfg, {"sft": {"eval_interval": 7}, "checkpoint": {"save_interval": 9},
                                  "sft_data": {"max_length": 2048}})
    f = flat(sft_overrides(moved, tmp_path))
    assert (f["validation.eval_interval"], f["checkpoint.save_interval"], f["model.seq_length"]) == (7, 9, 2048)


def test_a_cluster_segments_data_parallel_size_comes_from_its_preset(composed):
    """conf/curriculum/hebatron.yaml writes no DP: each segment's is its preset's world / (TP x PP x CP)."""
    from hebatron_nemo.pipeline.stages import schedule_outline

    cfg = composed["hebatron_cpt_8k_h100x64"]
    assert [s.data_parallel_size for s in cfg.curriculum.segments] == [None, None]
    assert [s["data_parallel_size"] for s in schedule_outline(cfg)] == [64, 8]
    other = OmegaConf.merge(cfg, {"megatron_bridge": {"segment_parallelism": ["h100_16gpu", "h100_64gpu_64k_cp8"]}})
    assert [s["data_parallel_size"] for s in schedule_outline(other)] == [16, 8]
    assert [s["data_parallel_size"] for s in schedule_outline(composed["tiny_cpu"])] == [2, 2]  # written: local
