"""Atomic, pickle-free checkpoints of the local backend.

A checkpoint is a folder `step-<n>` written as `.tmp-step-<n>-<pid>` and renamed when complete:
`model.safetensors` (weights and the routers' expert-bias buffers), `optimizer.safetensors` (AdamW
moments), `rng.safetensors` (torch RNG), `trainer.json` (step, consumed samples, tokens, schedule,
optimizer scalars, python/numpy RNG, plan fingerprint), `ledger.json`, and `COMPLETE` last, holding
the sha256 of every file. Loading never unpickles: safetensors and JSON only. A folder whose
`COMPLETE` is missing or whose hashes do not match is skipped with a warning.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from hebatron_nemo.utils.hashing import sha256_file

FILES = ("model.safetensors", "optimizer.safetensors", "rng.safetensors", "trainer.json", "ledger.json")


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    sd = optimizer.state_dict()
    tensors, scalars = {}, {"param_groups": sd["param_groups"], "state": {}}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v) and v.dim() > 0:
                tensors[f"{idx}.{k}"] = v.contiguous()
            else:
                scalars["state"].setdefault(str(idx), {})[k] = v.item() if torch.is_tensor(v) else v
    return tensors, scalars


def _restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict, scalars: dict) -> None:
    state: dict = {}
    for key, v in tensors.items():
        idx, k = key.split(".", 1)
        state.setdefault(int(idx), {})[k] = v
    for idx, st in scalars["state"].items():
        for k, v in st.items():
            # AdamW keeps `step` as a 0-dim float tensor; restore the same type for bit-exact updates
            state.setdefault(int(idx), {})[k] = torch.tensor(float(v)) if k == "step" else v
    optimizer.load_state_dict({"state": state, "param_groups": scalars["param_groups"]})


def save(run_dir: Path, step: int, model, optimizer, trainer_state: dict, ledger: dict, forced: bool = False) -> Path:
    """Writes checkpoint `step-<step>` atomically and returns its path."""
    ckpt_root = Path(run_dir) / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"step-{step:07d}"
    tmp = ckpt_root / f".tmp-step-{step:07d}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(tmp / "model.safetensors"))
    opt_tensors, opt_scalars = _optimizer_tensors(optimizer)
    save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
    save_file({"torch": torch.get_rng_state()}, str(tmp / "rng.safetensors"))
    np_state = np.random.get_state()
    state = {**trainer_state, "optimizer": opt_scalars, "forced": forced,
             "python_rng": repr(random.getstate()),
             "numpy_rng": [np_state[0], np_state[1].tolist(), *np_state[2:]]}
    (tmp / "trainer.json").write_text(json.dumps(state, indent=1, default=str))
    (tmp / "ledger.json").write_text(json.dumps(ledger, indent=1))
    (tmp / "COMPLETE").write_text(json.dumps({f: sha256_file(tmp / f) for f in FILES}, indent=1))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def verify(path: Path) -> str | None:
    """None when the checkpoint is complete and intact, else the reason it is not."""
    marker = path / "COMPLETE"
    if not marker.exists():
        return "no COMPLETE marker (interrupted while writing)"
    try:
        hashes = json.loads(marker.read_text())
    except json.JSONDecodeError:
        return "unreadable COMPLETE marker"
    for f in FILES:
        if not (path / f).exists():
            return f"{f} is missing"
        if sha256_file(path / f) != hashes.get(f):
            return f"{f} does not match its recorded hash"
    return None


def latest(run_dir: Path, log=print) -> Path | None:
    """The newest complete checkpoint; damaged ones are skipped with a warning."""
    root = Path(run_dir) / "checkpoints"
    if not root.exists():
        return None
    for path in sorted(root.glob("step-*"), reverse=True):
        problem = verify(path)
        if problem is None:
            return path
        warnings.warn(f"skipping damaged checkpoint {path}: {problem}")
        log(f"warning: skipping damaged checkpoint {path}: {problem}")
    return None


def load(path: Path, model, optimizer) -> dict:
    """Restores model, optimizer and RNG states in place; returns trainer.json."""
    model.load_state_dict(load_file(str(path / "model.safetensors")), strict=True)
    state = json.loads((path / "trainer.json").read_text())
    _restore_optimizer(optimizer, load_file(str(path / "optimizer.safetensors")), state["optimizer"])
    torch.set_rng_state(load_file(str(path / "rng.safetensors"))["torch"])
    import ast

    random.setstate(ast.literal_eval(state["python_rng"]))  # a literal tuple of ints, not a pickle
    n = state["numpy_rng"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), *n[2:]))
    state["ledger"] = json.loads((path / "ledger.json").read_text())
    return state


def clean_partial(run_dir: Path, log=print) -> list[str]:
    """Deletes what killed writes left in the run folder: checkpoint temp folders
    (`checkpoints/.tmp-step-*`) and model-export temp folders (`model.tmp-*`, also under `segments/*/`).
    Call it at the start of a run, before anything of this run writes (the names carry the writer's
    pid, but a requeued job can be given the same pid). Returns the deleted paths."""
    run_dir = Path(run_dir)
    found = sorted((run_dir / "checkpoints").glob(".tmp-step-*")) + sorted(run_dir.glob("model.tmp-*")) \
        + sorted(run_dir.glob("segments/*/model.tmp-*"))
    for path in found:
        shutil.rmtree(path, ignore_errors=True)
        log(f"removed {path} (left by an interrupted write)")
    return [str(p) for p in found]


def prune(run_dir: Path, keep_last: int) -> None:
    """Deletes old periodic checkpoints; forced ones (phase and segment ends) stay."""
    root = Path(run_dir) / "checkpoints"
    periodic = []
    for path in sorted(root.glob("step-*")):
        try:
            forced = json.loads((path / "trainer.json").read_text()).get("forced", False)
        except (OSError, json.JSONDecodeError):
            continue
        if not forced:
            periodic.append(path)
    for path in periodic[:-keep_last] if keep_last > 0 else periodic:
        shutil.rmtree(path, ignore_errors=True)
