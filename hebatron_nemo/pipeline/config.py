"""The schema of `recipes/pipeline.py`: the run's schema (every stage reads its own part) plus the
pipeline's options and the prepare stage's."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

from hebatron_nemo.export.hf import ExportConfig


@dataclass
class PrepareStageOptions:
    """The prepare stage's own options (`recipes/prepare_data.py` has the same keys at top level)."""

    sources: List[str] = field(default_factory=list)  # restrict to these sources (default: all)
    workers: int = 1  # tokenizer threads
    batch_docs: int = 512
    overwrite: bool = False  # redo sources whose manifest already matches the inputs


@dataclass
class PipelineOptions:
    """Which stages run. A stage whose completion marker matches its inputs' fingerprint is skipped."""

    only: List[str] = field(default_factory=list)  # run just these stages (their upstream must be done)
    skip: List[str] = field(default_factory=list)  # never run these (downstream stages then need their markers)
    force: List[str] = field(default_factory=list)  # rerun these even when their marker matches ("all": every stage)
    dry_run: bool = False  # print the stage table (run / skip, and why) and stop
    use_apt: bool = True  # corpora stage: modern Hebrew from Debian's l10n packages when apt-get works
    prepare: PrepareStageOptions = field(default_factory=PrepareStageOptions)


@dataclass
class PipelineConfig(ExportConfig):
    """`recipes/pipeline.py`: corpora -> prepare -> plan -> base -> CPT -> SFT -> export -> evaluate -> report."""

    pipeline: PipelineOptions = field(default_factory=PipelineOptions)


def register_pipeline_config() -> None:
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="pipeline_schema", node=PipelineConfig)
