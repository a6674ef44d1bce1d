"""Our curriculum dataset as a Megatron-Bridge dataset provider.

Megatron-Bridge (MB) routes a `dataset` config that is a `DatasetProvider` (and not a
`GPTDatasetConfig` subclass, which goes to the stock builder) to `build_datasets(context)`. With
`dataloader_type="single"`, MB's `MegatronPretrainingSampler` walks global sample indices from the
checkpoint's consumed-sample count, and `CurriculumDataset` is a pure function of that index: resume
needs no other state.

`build_curriculum_datasets` is MB-free (tested on CPU); `provider_class()` imports MB lazily.
"""

from __future__ import annotations

from hebatron_nemo.curriculum.ledger import load_plan
from hebatron_nemo.curriculum.mixture import CurriculumDataset, ensure_caches
from hebatron_nemo.errors import ConfigError


def build_curriculum_datasets(plan_path: str, segment: int, cache_dir: str | None, train_samples: int,
                              valid_samples: int = 0, test_samples: int = 0):
    """(train, valid, test) for one segment. MB's requested train samples must equal the segment's
    planned end, `start_sample + num_samples` (MB counts samples from the start of the whole run, and
    segment k resumes from the previous segment's checkpoint): anything else means the run config and
    the plan disagree, and training would stop early or index past the plan."""
    plan = load_plan(plan_path)
    if not 0 <= segment < len(plan["segments"]):
        raise ConfigError(f"segment {segment} is not in the plan (it has {len(plan['segments'])})")
    seg = plan["segments"][segment]
    end = seg["start_sample"] + seg["num_samples"]
    if train_samples != end:
        raise ConfigError(
            f"Megatron-Bridge requested {train_samples:,} train samples, but segment {seg['name']!r} of plan "
            f"{plan['fingerprint']} covers global samples [{seg['start_sample']:,}, {end:,}) ({seg['num_samples']:,} "
            f"planned samples, {seg['batches']:,} steps of {seg['global_batch']}): set train.train_samples={end:,}")
    cache_dir = cache_dir or plan.get("cache_dir")
    ensure_caches(plan, cache_dir)
    return CurriculumDataset(plan, segment, cache_dir), None, None


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

        def __post_init__(self):
            if self.dataloader_type is None:
                self.dataloader_type = "single"
            if self.dataloader_type != "single":
                raise ConfigError(f"dataloader_type must be 'single' for the curriculum dataset (got "
                                  f"{self.dataloader_type!r}): 'cyclic' reshuffles and destroys the curriculum order")

        def build_datasets(self, context):
            return build_curriculum_datasets(self.plan_path, self.segment, self.cache_dir, context.train_samples,
                                             context.valid_samples, context.test_samples)

    return HebatronCurriculumDatasetProvider
