"""Completion markers: a small JSON file a stage writes after its outputs are complete.

A marker records the stage's input fingerprint (its config subtrees, its upstream stages'
fingerprints and the content it reads), the outputs it produced, and its wall time. A stage counts as
done only when its marker's fingerprint equals the one computed now from the config *and* every
recorded output still exists; anything else reruns it (stages resume their own partial work:
prepare per source, CPT and SFT from their last complete checkpoint, evaluation per model).

The pipeline's skip logic and a requeued Slurm job read the same markers.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from hebatron_nemo.utils.io import read_json, write_json_atomic

MARKER_VERSION = 1


@dataclass
class MarkerCheck:
    """Whether a stage is complete for the current inputs, and if not, why (for the plan table)."""

    done: bool
    reason: str
    marker: dict | None = None


def marker_path(markers_dir: Path, stage: str) -> Path:
    return Path(markers_dir) / f"{stage}.done.json"


def check_marker(path: Path, fingerprint: str) -> MarkerCheck:
    """Done when the marker exists, matches `fingerprint`, and its outputs still exist."""
    marker = read_json(path)
    if marker is None:
        return MarkerCheck(False, "no completion marker")
    if marker.get("fingerprint") != fingerprint:
        return MarkerCheck(False, f"inputs changed (marker {marker.get('fingerprint')}, now {fingerprint})", marker)
    missing = [p for p in marker.get("outputs", []) if not Path(p).exists()]
    if missing:
        return MarkerCheck(False, f"output missing: {missing[0]}", marker)
    return MarkerCheck(True, f"done {marker.get('finished', '?')} in {marker.get('wall_s', 0):.0f}s", marker)


def clear_marker(path: Path) -> None:
    """Removed before a stage (re)runs, so an interrupted rerun never leaves an old marker that looks
    complete next to new, partial outputs."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def write_marker(path: Path, stage: str, fingerprint: str, inputs: dict, outputs: list[str], wall_s: float,
                 summary: dict | None = None) -> dict:
    marker = {"version": MARKER_VERSION, "stage": stage, "fingerprint": fingerprint, "inputs": inputs,
              "outputs": [str(p) for p in outputs], "wall_s": round(wall_s, 3),
              "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": socket.gethostname(),
              "run_id": uuid.uuid4().hex,  # what stages below read: changes whenever this stage reruns
              "summary": summary or {}}
    for p in marker["outputs"]:
        if not Path(p).exists():
            raise RuntimeError(f"stage {stage} finished but its output {p} does not exist")
    write_json_atomic(path, marker)
    return marker


def read_markers(markers_dir: Path) -> dict[str, dict]:
    out = {}
    for p in sorted(Path(markers_dir).glob("*.done.json")):
        try:
            out[p.name[: -len(".done.json")]] = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
    return out
