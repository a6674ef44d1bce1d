"""The frozen public override surface: every config key a user can set, and the experiment names.

A change here is a change to the command-line interface users script against: review it, then
refresh the snapshot with `HEBATRON_UPDATE_SURFACE=1 make test PYTEST_ARGS="tests/test_surface.py"`."""

from __future__ import annotations

import dataclasses
import json
import os
import typing
from pathlib import Path

from hebatron_nemo import config as C

SNAPSHOT = Path(__file__).parent / "data" / "config_surface.json"
REPO = Path(__file__).resolve().parents[1]


def _keys(cls, prefix="") -> list[str]:
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        t = hints[f.name]
        name = prefix + f.name
        if dataclasses.is_dataclass(t):
            out += _keys(t, name + ".")
        else:
            out.append(name)
            args = typing.get_args(t)
            for a in args:  # Dict[str, SourceConfig], List[PhaseConfig]: the element's keys
                if dataclasses.is_dataclass(a):
                    out += _keys(a, name + ".*.")
    return out


def config_groups(conf: Path) -> dict[str, list[str]]:
    """{group path: its options} for every folder under `conf` that holds options, nested groups included
    (`hydra/launcher`: the names `hydra/launcher=...` selects)."""
    return {d.relative_to(conf).as_posix(): sorted(p.stem for p in d.glob("*.yaml"))
            for d in sorted(conf.rglob("*")) if d.is_dir() and any(d.glob("*.yaml"))}


def surface(conf: Path = REPO / "conf") -> dict:
    recipes = {"prepare_data": C.PrepareConfig, "plan": C.RunConfig, "cpt": C.RunConfig, "sft": C.RunConfig,
               "prepare_sft": C.PrepareSFTConfig, "install_demo_corpora": C.InstallDemoConfig,
               "evaluate": C.RunConfig, "export": C.ExportConfig, "pipeline": C.PipelineConfig, "launch": C.LaunchConfig}
    return {"recipes": {name: _keys(cls) for name, cls in recipes.items()}, "config_groups": config_groups(conf)}


def test_override_surface_is_frozen():
    current = surface()
    if os.environ.get("HEBATRON_UPDATE_SURFACE"):
        SNAPSHOT.write_text(json.dumps(current, indent=1, sort_keys=True) + "\n")
    saved = json.loads(SNAPSHOT.read_text())
    for recipe, keys in current["recipes"].items():
        added = sorted(set(keys) - set(saved["recipes"].get(recipe, [])))
        removed = sorted(set(saved["recipes"].get(recipe, [])) - set(keys))
        assert not added and not removed, f"{recipe}: added {added}, removed {removed} (see this file's docstring)"
    assert current["config_groups"] == saved["config_groups"]


def test_every_hydra_recipe_is_in_the_surface():
    hydra_recipes = {p.stem for p in (REPO / "recipes").glob("*.py") if "@hydra.main(" in p.read_text()}
    assert hydra_recipes and hydra_recipes <= set(surface()["recipes"]), hydra_recipes - set(surface()["recipes"])


def test_launcher_and_nested_group_names_are_part_of_the_surface(tmp_path):
    """Renaming an option of a nested group (conf/hydra/launcher/*.yaml, chosen with
    hydra/launcher=NAME) changes the surface, so the frozen snapshot catches it."""
    import shutil

    saved = json.loads(SNAPSHOT.read_text())["config_groups"]
    assert saved.get("hydra/launcher"), "the snapshot does not record the hydra launchers"
    conf = tmp_path / "conf"
    shutil.copytree(REPO / "conf", conf)
    assert config_groups(conf) == config_groups(REPO / "conf")
    first = conf / "hydra" / "launcher" / f"{saved['hydra/launcher'][0]}.yaml"
    first.rename(first.with_name("renamed.yaml"))
    assert config_groups(conf)["hydra/launcher"] != saved["hydra/launcher"]
