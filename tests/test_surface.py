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


def surface() -> dict:

    recipes = {"prepare_data": C.PrepareConfig, "plan": C.RunConfig, "cpt": C.RunConfig, "sft": C.RunConfig,
               "install_demo_corpora": C.InstallDemoConfig, "evaluate": C.RunConfig, "export": C.ExportConfig,
               "pipeline": C.PipelineConfig, "launch": C.LaunchConfig}
    groups = {g.name: sorted(p.stem for p in g.glob("*.yaml")) for g in sorted((REPO / "conf").iterdir()) if g.is_dir()}
    return {"recipes": {name: _keys(cls) for name, cls in recipes.items()}, "config_groups": groups}


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
