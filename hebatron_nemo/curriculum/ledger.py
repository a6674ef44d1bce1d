"""Contracts between the plan and the training loops: the ledger, metrics lines, and the resume check.

- `Ledger`: realized samples and loss tokens per phase and source, counted from what the loss saw
  (rows of a batch and their `loss_mask`), next to the plan's figures; `ledger.json` (schema
  `hebatron_nemo/schemas/ledger.schema.json`). Its counts are a dense array so data-parallel ranks
  can sum them with one all-reduce.
- `MetricsWriter`: appends `metrics.jsonl` lines that match `metrics.schema.json`.
- `check_resume`: refuses to continue a run whose started or completed phases changed.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from hebatron_nemo.curriculum.schemas import validate
from hebatron_nemo.utils.io import read_json, write_json_atomic
from hebatron_nemo.errors import ConfigError

LEDGER_SCHEMA_VERSION = 1


def _anchor_slot_counts(seg: dict, n: int) -> dict[int, int]:
    """Anchor stream -> samples among the segment's first `n` anchor slots: slot j reads the
    segment's pattern (chairman order, as in mixture.SegmentIndex) at j mod period."""
    from hebatron_nemo.curriculum.apportion import chairman_order

    pattern = seg["anchor_pattern"]
    if not pattern or n <= 0:
        return {}
    pids = [int(sid) for sid in pattern]
    counts = np.array([pattern[str(sid)] for sid in pids], dtype=np.int64)
    order, _ = chairman_order(counts)
    full, rest = divmod(n, int(seg["anchor_period"]))
    tail = np.bincount(np.asarray(order[:rest], dtype=np.int64), minlength=len(pids))
    return {sid: full * int(c) + int(t) for sid, c, t in zip(pids, counts, tail)}


def planned_samples(plan: dict) -> dict[str, dict[str, int]]:
    """phase name -> source -> planned samples, exactly: the curriculum's counts, and the anchor
    slots that fall inside the phase's batches."""
    out: dict[str, dict[str, int]] = {}
    for p in plan["phases"]:
        seg = plan["segments"][p["segment"]]
        row: dict[str, int] = {}
        for sid, n in p["counts"].items():
            src = plan["streams"][int(sid)]["source"]
            row[src] = row.get(src, 0) + n
        first_batch = (p["start_sample"] - seg["start_sample"]) // seg["global_batch"]
        a = seg["anchor_per_batch"]
        lo, hi = _anchor_slot_counts(seg, first_batch * a), _anchor_slot_counts(seg, (first_batch + p["batches"]) * a)
        for sid, n in hi.items():
            if n - lo.get(sid, 0):
                src = plan["streams"][sid]["source"]
                row[src] = row.get(src, 0) + n - lo.get(sid, 0)
        out[p["name"]] = row
    return out


class Ledger:
    """Counts [phase, source] samples and loss tokens from the batches the training loop consumed."""

    def __init__(self, plan: dict):
        self.plan = plan
        self.phases = [p["name"] for p in plan["phases"]]  # indexed by phase_id = order_index
        self.sources = list(plan["source_names"])
        self.counts = np.zeros((len(self.phases), len(self.sources), 3), dtype=np.int64)  # samples, loss tokens, anchor

    def update(self, source_id, phase_id, is_anchor, loss_mask) -> None:
        """Adds one (micro-)batch: tensors or arrays of shape [b] (ids, flags) and [b, seq] (loss_mask)."""
        src = np.asarray(_np(source_id), dtype=np.int64).reshape(-1)
        ph = np.asarray(_np(phase_id), dtype=np.int64).reshape(-1)
        anc = np.asarray(_np(is_anchor), dtype=bool).reshape(-1)
        tokens = (np.asarray(_np(loss_mask)).reshape(len(src), -1) > 0).sum(axis=1)
        np.add.at(self.counts[:, :, 0], (ph, src), 1)
        np.add.at(self.counts[:, :, 1], (ph, src), tokens)
        np.add.at(self.counts[:, :, 2], (ph, src), anc.astype(np.int64))

    def to_dict(self, consumed_samples: int) -> dict:
        planned = planned_samples(self.plan)
        phases = {}
        for i, p in enumerate(self.plan["phases"]):
            c = self.counts[i]
            phases[p["name"]] = {
                "samples": {s: int(c[j, 0]) for j, s in enumerate(self.sources) if c[j, 0]},
                "loss_tokens": {s: int(c[j, 1]) for j, s in enumerate(self.sources) if c[j, 0]},
                "anchor_samples": int(c[:, 2].sum()),
                "anchor_by_source": {s: int(c[j, 2]) for j, s in enumerate(self.sources) if c[j, 2]},
                "planned_samples": planned[p["name"]],
                "complete": consumed_samples >= p["end_sample"],
            }
        tot = self.counts.sum(axis=0)
        return {"schema_version": LEDGER_SCHEMA_VERSION, "plan_fingerprint": self.plan["fingerprint"],
                "consumed_samples": int(consumed_samples), "phases": phases,
                "totals": {"samples": {s: int(tot[j, 0]) for j, s in enumerate(self.sources) if tot[j, 0]},
                           "loss_tokens": {s: int(tot[j, 1]) for j, s in enumerate(self.sources) if tot[j, 0]}}}

    def save(self, path: str | Path, consumed_samples: int) -> dict:
        d = self.to_dict(consumed_samples)
        validate(d, "ledger")
        write_json_atomic(path, d)
        return d

    def load_state(self, d: dict) -> None:
        """Restores counts from a saved ledger (a resumed run keeps counting where it stopped).
        Phases are matched by name, so a resume with changed future phases keeps the history."""
        for name, row in d["phases"].items():
            if name not in self.phases:
                continue
            i = self.phases.index(name)
            for s, n in row["samples"].items():
                j = self.sources.index(s)
                self.counts[i, j] = (n, row["loss_tokens"].get(s, 0), row["anchor_by_source"].get(s, 0))


def _np(x):
    return x.detach().cpu().numpy() if hasattr(x, "detach") else x


class MetricsWriter:
    """Appends metrics lines (flushed each write, so a killed run keeps what it logged)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict) -> None:
        record = {"time": time.time(), **record}
        validate(record, "metrics")
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())


def resume_summary(plan: dict) -> dict:
    """What a checkpoint records of its plan for `check_resume` (both backends keep the same fields)."""
    keys = ("name", "start_sample", "end_sample", "transition_start_sample", "fingerprint")
    return {"fingerprint": plan["fingerprint"],
            "phases": [{k: p[k] for k in keys if k in p} for p in plan["phases"]]}


def check_saved_run(run_dir: str | Path, plan: dict, allow_future_changes: bool, log=print) -> list[str]:
    """`check_resume` of `plan` against the newest intact local-backend checkpoint under `run_dir` (none:
    nothing to check). Called before plan.json is written, so a refused resume leaves the run's plan,
    checkpoints and ledger as they were."""
    from hebatron_nemo.backends.local import checkpoint

    ckpt = checkpoint.latest(Path(run_dir), log)
    if ckpt is None:
        return []
    saved = json.loads((ckpt / "trainer.json").read_text())
    return check_resume(saved["plan"], plan, int(saved["consumed_samples"]), allow_future_changes)


def _depends_from(phase: dict) -> int:
    """The first global sample index whose sample depends on `phase` (its transition window's start;
    its first sample without transitions, and in plans written before the field existed)."""
    return int(phase.get("transition_start_sample", phase["start_sample"]))


def check_resume(saved_plan: dict, new_plan: dict, consumed_samples: int, allow_future_changes: bool = False) -> list[str]:
    """Raises ConfigError when a run cannot continue under `new_plan`; returns notes otherwise.

    A phase has started once a consumed sample depends on it: its first sample, or with transitions the
    first sample of the window before its start, in the saved or the new plan. A started phase must keep
    its fingerprint (its data, mixture weights, counts, position, anchor and transitions are history).
    A sample depends only on the phases that have started by then (a phase's order is built from its
    own counts and what came before), so an accepted resume reads the same samples below
    `consumed_samples` as the saved plan. Changes to phases that have not started are refused too,
    unless `allow_future_changes` (config: `checkpoint.allow_future_changes`) is set."""
    if saved_plan["fingerprint"] == new_plan["fingerprint"]:
        return []
    new_by_name = {p["name"]: p for p in new_plan["phases"]}
    notes = []
    for p in saved_plan["phases"]:
        q = new_by_name.get(p["name"])
        start = min(_depends_from(p), _depends_from(q) if q is not None else _depends_from(p))
        if start >= consumed_samples:
            continue
        state = ("completed" if consumed_samples >= p["end_sample"] else "in progress"
                 if consumed_samples > p["start_sample"] else "in its transition window")
        if q is None:
            raise ConfigError(f"cannot resume: phase {p['name']!r} ({state}, samples [{p['start_sample']:,}, "
                              f"{p['end_sample']:,})) is missing from the new plan")
        if q["fingerprint"] != p["fingerprint"]:
            raise ConfigError(f"cannot resume: phase {p['name']!r} ({state}, samples [{p['start_sample']:,}, "
                              f"{p['end_sample']:,})) changed: its data, mixture weights, budget, position or "
                              f"transitions differ (fingerprint {p['fingerprint']} -> {q['fingerprint']}). Restore "
                              "its config, or start a new run")
    old_by_name = {p["name"]: p for p in saved_plan["phases"]}
    started = {n for n, p in old_by_name.items() if _depends_from(p) < consumed_samples}
    for q in new_plan["phases"]:  # a phase new to the plan whose window reaches into the history
        if q["name"] not in old_by_name and _depends_from(q) < consumed_samples:
            raise ConfigError(f"cannot resume: phase {q['name']!r} is new, but the samples before {consumed_samples:,} "
                              f"(already trained) would depend on it (it starts at sample "
                              f"{_depends_from(q):,}). Restore the config, or start a new run")
    future = [q["name"] for q in new_plan["phases"]
              if q["name"] not in started and old_by_name.get(q["name"], {}).get("fingerprint") != q["fingerprint"]]
    future += [n for n in old_by_name if n not in new_by_name]
    future = future or ["(segment layout or anchor)"]
    if not allow_future_changes:
        raise ConfigError(f"cannot resume: the plan changed (fingerprint {saved_plan['fingerprint']} -> "
                          f"{new_plan['fingerprint']}) in phases that have not started ({', '.join(future)}). "
                          "Set checkpoint.allow_future_changes=true to accept changes to future phases")
    notes.append(f"resuming at sample {consumed_samples:,} with changed future phases: {', '.join(future)}")
    return notes


def load_plan(path: str | Path) -> dict:
    plan = read_json(path)
    if plan is None:
        raise ConfigError(f"no plan at {path}: run `python recipes/plan.py experiment=...` first")
    validate(plan, "plan")
    return plan
