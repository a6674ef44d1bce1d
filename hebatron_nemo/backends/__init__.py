"""Training backends behind one interface: `local` (CPU, PyTorch) and `megatron_bridge` (cluster).

The recipes call `get_backend(cfg).cpt(cfg)` (and `sft`, `export`, `slurm_job`) and never test
`cfg.backend` themselves (tests/test_backends.py walks recipes/ and launchers/ for such a test).
Each implementation imports its training code inside its methods: Megatron-Bridge installs only in
the NeMo container, and the local backend's torch import is not needed to submit a Slurm job.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Protocol

from hebatron_nemo.errors import ConfigError


class Backend(Protocol):
    """What a recipe or launcher may ask of a backend."""

    name: str

    def cpt(self, cfg) -> dict:
        """Continued pretraining as the config says; returns the run's state ({"preempted": True} when
        it stopped on the preemption signal and the job should exit with EXIT_PREEMPTED)."""

    def sft(self, cfg) -> dict:
        """Supervised fine-tuning; returns the run's state like `cpt`."""

    def export(self, cfg) -> dict:
        """The release export of an HF model folder (recipes/export.py); returns its manifest."""

    def slurm_job(self, job, cluster, run, sets: list[str]):
        """The Slurm job of one training recipe call (`launchers/slurm/submit.py`), adjusted to what the
        backend needs (nodes and GPUs), or refused before anything is written."""


def _export(cfg) -> dict:
    from hebatron_nemo.export.hf import run_export

    return run_export(cfg)


class LocalBackend:
    """CPU / gloo training on transformers' NemotronH (hebatron_nemo/backends/local/)."""

    name = "local"

    def cpt(self, cfg) -> dict:
        from hebatron_nemo.backends.local.cpt import run_cpt

        return run_cpt(cfg)

    def sft(self, cfg) -> dict:
        from hebatron_nemo.backends.local.sft import run_sft

        return run_sft(cfg)

    def export(self, cfg) -> dict:
        return _export(cfg)

    def slurm_job(self, job, cluster, run, sets: list[str]):
        return job  # the cluster profile's nodes x procs_per_node, as rendered


class MegatronBridgeBackend:
    """Megatron-Bridge in the NeMo container (hebatron_nemo/backends/megatron_bridge/). Megatron-Bridge
    handles the preemption signal itself (train.exit_signal_handler), so its state is empty."""

    name = "megatron_bridge"

    def cpt(self, cfg) -> dict:
        from hebatron_nemo.backends.megatron_bridge.run import run_cpt_mb

        run_cpt_mb(cfg)
        return {}

    def sft(self, cfg) -> dict:
        from hebatron_nemo.backends.megatron_bridge.run import run_sft_mb

        run_sft_mb(cfg)
        return {}

    def export(self, cfg) -> dict:
        # the Megatron -> HF step is recipes/convert.py; this exports the HF folder it wrote
        return _export(cfg)

    def slurm_job(self, job, cluster, run, sets: list[str]):
        """A training job takes its nodes and GPUs from the parallelism preset; an explicit
        `--set cluster.nodes=N` that disagrees, a cluster whose nodes have another GPU count, or a time
        limit x restarts shorter than the expected wall time is refused before anything is written.
        A dry run (`megatron_bridge.dry_run=true`) needs no GPU and keeps the profile's job."""
        if run.megatron_bridge.dry_run:
            return job
        from hebatron_nemo.backends.megatron_bridge.checks import raise_if
        from hebatron_nemo.launch.chain import train_problems

        par = run.parallelism
        explicit = [int(kv.split("=", 1)[1]) for kv in sets if kv.split("=", 1)[0] == "cluster.nodes"]
        nodes = explicit[-1] if explicit else int(par.nodes)
        problems, _ = train_problems(cluster, run, job.recipe, nodes, int(par.gpus_per_node))
        raise_if(problems, f"{job.recipe} on cluster {cluster.name!r}")
        return replace(job, nodes=nodes, gpus_per_node=int(par.gpus_per_node), procs_per_node=int(par.gpus_per_node))


BACKENDS = {"local": LocalBackend, "megatron_bridge": MegatronBridgeBackend}


def get_backend(cfg) -> Backend:
    """The backend `cfg.backend` names (a config with no `backend` key: local)."""
    name = str(getattr(cfg, "backend", None) or "local") if not isinstance(cfg, str) else cfg
    if name not in BACKENDS:
        raise ConfigError(f"backend={name!r} is not one of {sorted(BACKENDS)}")
    return BACKENDS[name]()
