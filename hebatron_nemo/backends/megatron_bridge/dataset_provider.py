"""Our curriculum dataset as a Megatron-Bridge dataset provider.

Megatron-Bridge (MB) routes a `dataset` config that is a `DatasetProvider` (and not a
`GPTDatasetConfig` subclass, which goes to the stock builder) to `build_datasets(context)`. With
`dataloader_type="single"`, MB's `MegatronPretrainingSampler` walks global sample indices from the
checkpoint's consumed-sample count, and `CurriculumDataset` is a pure function of that index: resume
needs no other state.

The validation dataset (`ValidationWindows`) holds one set per phase of the segment (Hebrew held-out
documents of that phase's sources) and one English anchor set, tagged with `eval_set` so the forward
step reports each set's loss separately. MB walks validation with the same single-pass sampler, so
the dataset repeats one period of `eval_iters x global_batch` windows: every evaluation sees the same
windows and the curves compare across evaluations.

`build_curriculum_datasets` is MB-free (tested on CPU); `provider_class()` imports MB lazily.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hebatron_nemo.curriculum.ledger import load_plan
from hebatron_nemo.curriculum.mixture import CurriculumDataset, ensure_caches
from hebatron_nemo.errors import ConfigError


VALID_LENGTH = 1 << 40  # the validation dataset's length: periodic, so only an upper bound on indices


def validation_sets(plan: dict, segment: int) -> list[dict]:
    """[{name, sources, phase_id, is_anchor}]: `he/<phase>` for each phase of the segment (its curriculum
    sources), then `en/anchor` (the segment's anchor sources), in this order (eval_set = position)."""
    out = []
    for p in plan["phases"]:
        if p["segment"] != segment:
            continue
        srcs = sorted({plan["streams"][int(sid)]["source"] for sid in p.get("blend_counts", p["counts"])})
        out.append({"name": f"he/{p['name']}", "sources": srcs, "phase_id": p["order_index"], "is_anchor": False})
    anchor = sorted({st["source"] for st in plan["streams"] if st["role"] == "anchor" and st["segment"] == segment})
    if anchor:
        last = max(p["order_index"] for p in plan["phases"] if p["segment"] == segment)
        out.append({"name": "en/anchor", "sources": anchor, "phase_id": last, "is_anchor": True})
    return out


def _valid_prefix(plan: dict, source: str) -> str:
    from hebatron_nemo.utils.io import read_json

    from hebatron_nemo.data.registry import plan_data_path, split_prefix

    source_dir = Path(plan_data_path(plan, plan["sources"][source]["prefix"])).parent
    manifest = read_json(source_dir / "manifest.json")
    split = (manifest or {}).get("splits", {}).get("valid")
    if not split or not split.get("documents"):
        raise ConfigError(f"source {source!r} has no held-out `valid` split ({source_dir}/manifest.json): "
                          "prepare it with data.sources.<name>.holdout.valid > 0")
    return split_prefix(source_dir, split["prefix"])


def _windows(prefix: str, seq: int, n: int, source: str) -> np.ndarray:
    """n windows of seq+1 tokens from the split's documents in order (EODs kept), reading only as many
    documents as needed; fewer documents than n windows repeat the windows there are."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    ds = IndexedDataset(prefix)
    need, parts, have = n * seq + 1, [], 0
    for i in range(len(ds)):
        doc = np.asarray(ds[i], dtype=np.int64)
        parts.append(doc)
        have += len(doc)
        if have >= need:
            break
    stream = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    k = (len(stream) - 1) // seq
    if k < 1:
        raise ConfigError(f"source {source!r}: its valid split ({prefix}) holds {len(stream):,} tokens, fewer than one "
                          f"{seq:,}-token validation window. Fix: hold out more documents (holdout.valid)")
    w = np.stack([stream[i * seq:i * seq + seq + 1] for i in range(min(k, n))])
    return w[np.arange(n) % len(w)]


class ValidationWindows:
    """One segment's validation samples: `period` windows split evenly between the sets, repeated to
    `length`; index i is window i mod period, so every run of `period` consecutive indices (one
    evaluation) holds each window once, wherever it starts."""

    def __init__(self, plan: dict, segment: int, length: int, period: int):
        from hebatron_nemo.curriculum.apportion import largest_remainder

        self.sets = validation_sets(plan, segment)
        if not self.sets:
            raise ConfigError(f"segment {segment} has no phase to validate")
        seq = plan["segments"][segment]["seq_length"]
        self.length, self.period = int(length), int(period)
        names = list(plan["source_names"])
        per_set = largest_remainder({s["name"]: 1.0 for s in self.sets}, self.period)
        rows, meta = [], []
        for k, st in enumerate(self.sets):
            per_source = largest_remainder({src: 1.0 for src in st["sources"]}, per_set[st["name"]])
            for src, n in per_source.items():
                if n == 0:
                    continue
                rows.append(_windows(_valid_prefix(plan, src), seq, n, src))
                meta += [(k, names.index(src), st["phase_id"], st["is_anchor"])] * n
        self.windows = np.concatenate(rows).astype(np.int32)
        self.meta = np.asarray(meta, dtype=np.int64)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict:
        import torch

        j = int(i) % self.period
        w = torch.from_numpy(self.windows[j].astype(np.int64))
        k, src, phase, anchor = (int(x) for x in self.meta[j])
        seq = len(w) - 1
        return {"tokens": w[:-1], "labels": w[1:], "loss_mask": torch.ones(seq, dtype=torch.float32),
                "position_ids": torch.arange(seq, dtype=torch.long), "source_id": torch.tensor(src),
                "phase_id": torch.tensor(phase), "is_anchor": torch.tensor(bool(anchor)),
                "eval_set": torch.tensor(k)}


def build_curriculum_datasets(plan_path: str, segment: int, cache_dir: str | None, train_samples: int,
                              valid_samples: int = 0, test_samples: int = 0, valid_period: int = 0,
                              data_root: str | None = None):
    """(train, valid, test) for one segment. MB's requested train samples must be the segment job's
    `(start_step + batches) x global_batch` (MB trains `train_samples // global_batch` steps counted
    from step 0 of the run, and segment k resumes the previous segment's checkpoint): anything else
    means the run config and the plan disagree, and training would stop early or run past the plan.
    The train dataset is indexed by global sample; its length is the segment's end sample.
    `data_root` (the run's `data.output_dir`) is where the plan's data paths are read from; None: the
    folder the plan was made against."""
    from hebatron_nemo.data.registry import with_data_root

    plan = with_data_root(load_plan(plan_path), data_root)
    if not 0 <= segment < len(plan["segments"]):
        raise ConfigError(f"segment {segment} is not in the plan (it has {len(plan['segments'])})")
    seg = plan["segments"][segment]
    end = seg["start_sample"] + seg["num_samples"]
    end_step = seg["start_step"] + seg["batches"]
    expected = end_step * seg["global_batch"]
    if train_samples != expected:
        raise ConfigError(
            f"Megatron-Bridge requested {train_samples:,} train samples, but segment {seg['name']!r} of plan "
            f"{plan['fingerprint']} ends at step {end_step:,} ({seg['batches']:,} steps of {seg['global_batch']} from "
            f"step {seg['start_step']:,}; global samples [{seg['start_sample']:,}, {end:,})): set "
            f"train.train_samples={expected:,} (steps x this segment's global batch)")
    cache_dir = cache_dir or plan.get("cache_dir")
    ensure_caches(plan, cache_dir)
    valid = None
    if valid_samples and valid_period:
        # MB resumes the validation sampler at the checkpoint's consumed validation samples, counted in
        # earlier segments' batch sizes: a periodic set with room to spare never runs out, and any
        # `period` consecutive indices are the same windows
        valid = ValidationWindows(plan, segment, max(int(valid_samples), VALID_LENGTH), valid_period)
    return CurriculumDataset(plan, segment, cache_dir), valid, None


def provider_class():
    """The MB `DatasetProvider` subclass (MB imported here, lazily)."""
    from dataclasses import dataclass

    from megatron.bridge.data.base import DatasetProvider

    @dataclass(kw_only=True)
    class HebatronCurriculumDatasetProvider(DatasetProvider):
        """Hebatron's curriculum + anchor mixture for one run segment of a plan."""

        plan_path: str
        segment: int = 0
        cache_dir: str | None = None
        data_root: str | None = None  # the run's data.output_dir: the plan's data paths are relative to it
        valid_period: int = 0  # validation windows per evaluation (eval_iters x global batch); 0: no validation

        def __post_init__(self):
            if self.dataloader_type is None:
                self.dataloader_type = "single"
            if self.dataloader_type != "single":
                raise ConfigError(f"dataloader_type must be 'single' for the curriculum dataset (got "
                                  f"{self.dataloader_type!r}): 'cyclic' reshuffles and destroys the curriculum order")

        def build_datasets(self, context):
            return build_curriculum_datasets(self.plan_path, self.segment, self.cache_dir, context.train_samples,
                                             context.valid_samples, context.test_samples, self.valid_period,
                                             self.data_root)

    return HebatronCurriculumDatasetProvider
