"""The schema of `recipes/pipeline.py`: the run's schema (every stage reads its own part) plus the
pipeline's options and the prepare stage's."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

from hebatron_nemo.config import ClusterConfig
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
    dry_run: bool = False  # print the stage table (run / skip, and why) and stop; with a cluster: the jobs, and chain.json
    use_apt: bool = True  # corpora stage: modern Hebrew from Debian's l10n packages when apt-get works
    prepare: PrepareStageOptions = field(default_factory=PrepareStageOptions)
    # On a cluster (`cluster=<profile>`): the graph as dependent Slurm jobs (hebatron_nemo/pipeline/chain.py)
    prepare_shards: int = 1  # prepare as a Slurm job array of this many shards (shard=i/N) plus a merge job
    shard: Optional[str] = None  # set by the chain on the array's tasks: "i/N", this task's shard only (no marker)
    merge_only: bool = False  # set by the chain on the merge job: merge the N shards, then write the marker
    stage_overrides: Dict[str, List[str]] = field(default_factory=dict)  # stage -> Hydra overrides of its job (its own preset, its own experiment)


@dataclass
class PipelineConfig(ExportConfig):
    """`recipes/pipeline.py`: corpora -> prepare -> plan -> base -> CPT -> SFT -> export -> evaluate -> report."""

    pipeline: PipelineOptions = field(default_factory=PipelineOptions)
    cluster: Optional[ClusterConfig] = None  # `cluster=<profile>` (conf/cluster/): render the graph as Slurm jobs


def register_pipeline_config() -> None:
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="pipeline_schema", node=PipelineConfig)
