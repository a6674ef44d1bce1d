"""The run's stage graph (hebatron_nemo/pipeline/stages.py) as dependent Slurm jobs (`--dependency=afterok`).

    python recipes/pipeline.py experiment=hebatron_h100x64 cluster=eos_pyxis pipeline.dry_run=true

This module lists no stages: it renders the graph. Every job is `recipes/pipeline.py <the run's
overrides> pipeline.only=[<stage>]`, which composes that stage's config (the run's overrides plus the
stage's own: its segment, its parallelism preset, its experiment), runs it in-process and writes the
stage's completion marker, exactly as the local run does. So a resubmitted chain leaves out every
stage whose marker matches (markers are checked when the chain is rendered), and a requeued job
reruns its stage, which resumes from its last checkpoint.

A job's resources follow its kind: `cpu` (one process on one node, no GPU), `gpu` (one process on one
GPU node: the parity gate, the HF exports, evaluations) and `train` (torch.distributed.run over the
nodes x gpus_per_node of the stage's parallelism preset). Before anything is submitted, every job is
checked: a training job's preset must fit the cluster's nodes (gpus_per_node equal), and its expected
wall time (plan tokens / (compute.tokens_per_second_per_gpu x GPUs)) must fit within
cluster.time x (cluster.max_restarts + 1). The jobs are written to `<run_dir>/chain.json`.

A job with `megatron_bridge.dry_run=true` composes and validates its Megatron-Bridge config without a
GPU: such jobs render as one process on one node, so a whole chain can be exercised on a CPU-only Slurm.
"""

from __future__ import annotations

import shlex
from dataclasses import asdict, dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from hebatron_nemo.utils.io import write_json_atomic
from hebatron_nemo.errors import ConfigError
from hebatron_nemo.launch.slurm import StageJob, Submission, submit, time_seconds

CHAIN_FILE = "chain.json"


@dataclass
class ChainJob:
    """One Slurm job of the chain, as chain.json records it."""

    name: str  # the Slurm job name is heb-<name>
    stage: str  # the graph's stage it runs
    kind: str  # cpu | gpu | train
    argv: list[str]  # the recipe call, relative to the repository
    overrides: list[str]  # the stage's own overrides (composed over the run's by the job)
    nodes: int
    gpus_per_node: int
    procs_per_node: int  # torch.distributed.run processes per node (1: a plain process)
    time: str
    after: list[str]  # job names this one waits for (afterok)
    marker: str | None  # the completion marker the job writes (None: a shard task; the merge job writes it)
    recipe: str = ""  # the same work as a stand-alone command, for reading
    array: int | None = None
    expected_hours: float | None = None  # a training job: plan tokens at compute.tokens_per_second_per_gpu
    budget_hours: float | None = None  # cluster.time x (cluster.max_restarts + 1)
    distributed: bool = False  # under torch.distributed.run on every node
    job_id: str | None = None
    notes: list[str] = field(default_factory=list)


def train_tokens(cfg, stage_name: str) -> tuple[int | None, str]:
    """Tokens one training job processes (and where the number comes from)."""
    from hebatron_nemo.backends.megatron_bridge import checks
    from hebatron_nemo.pipeline.stages import schedule_outline

    if stage_name == "sft":
        mb = cfg.megatron_bridge
        if mb.sft_train_iters is None:
            return None, "megatron_bridge.sft_train_iters is unset (epochs over the packed data)"
        return (int(mb.sft_train_iters) * int(cfg.sft.global_batch_size) * int(cfg.sft_data.max_length),
                f"megatron_bridge.sft_train_iters {mb.sft_train_iters} x sft.global_batch_size "
                f"{cfg.sft.global_batch_size} x sft_data.max_length {cfg.sft_data.max_length}")
    outline = schedule_outline(cfg)
    seg = outline[checks.segment_index(cfg, outline)]
    return seg["tokens"], (f"segment {seg['name']}: {seg['steps']:,} steps x {seg['global_batch']} x "
                           f"{seg['seq_length']:,} tokens")


def train_problems(cluster, cfg, stage_name: str, nodes: int, gpus_per_node: int) -> tuple[list[str], dict]:
    """A training job's resources against its preset and the cluster, and its wall time against the
    profile's time limit and restarts."""
    from hebatron_nemo.backends.megatron_bridge import checks
    from hebatron_nemo.pipeline.stages import schedule_outline

    par = cfg.parallelism
    p: list[str] = []
    where = f"stage {stage_name} (parallelism={par.name})"
    world = int(par.nodes) * int(par.gpus_per_node)
    if nodes * gpus_per_node != world:
        p.append(f"{where}: the job's nodes x gpus_per_node = {nodes} x {gpus_per_node} = {nodes * gpus_per_node} is "
                 f"not the preset's world size parallelism.nodes x parallelism.gpus_per_node = {par.nodes} x "
                 f"{par.gpus_per_node} = {world}. Fix: leave the job's nodes to the preset, or choose another preset")
    if int(cluster.gpus_per_node) != int(par.gpus_per_node):
        p.append(f"{where}: parallelism.gpus_per_node={par.gpus_per_node} but cluster {cluster.name!r} has "
                 f"cluster.gpus_per_node={cluster.gpus_per_node}: the world size would not be the preset's "
                 f"{world}. Fix: a preset for this hardware, or another cluster profile")
    segments = [] if stage_name == "sft" else schedule_outline(cfg)
    job_segment = None if stage_name == "sft" else checks.segment_index(cfg, segments)
    p += [f"{where}: {x}" for x in checks.parallelism_problems(par, int(cfg.model.n_routed_experts), segments,
                                                              job_segment)]
    info: dict = {}
    tokens, what = train_tokens(cfg, stage_name)
    if tokens is not None:
        tps = float(cfg.compute.tokens_per_second_per_gpu)
        expected = tokens / (tps * world)
        budget = time_seconds(cluster.time) * (int(cluster.max_restarts) + 1)
        info = {"expected_hours": round(expected / 3600, 1), "budget_hours": round(budget / 3600, 1)}
        if expected > budget:
            p.append(f"{where}: expected wall time {expected / 3600:.0f} h ({what} = {tokens:,} tokens at "
                     f"compute.tokens_per_second_per_gpu={tps:g} on {world} GPUs) exceeds cluster.time="
                     f"{cluster.time} x (cluster.max_restarts={cluster.max_restarts} + 1) = {budget / 3600:.0f} h: "
                     "the job would run out of requeues before it finishes. Fix: raise cluster.max_restarts or "
                     "cluster.time, or correct compute.tokens_per_second_per_gpu")
    return p, info


def render_chain(graph, cluster) -> tuple[list[ChainJob], list[dict]]:
    """The jobs of the stages that are not done (and of every stage below one that runs), in
    submission order, each after the jobs of its upstream stages; raises one ConfigError listing every
    problem before anything is submitted. Returns (jobs, the stage table)."""
    from hebatron_nemo.pipeline.stages import stage_table

    rows = {r["stage"]: r for r in stage_table(graph)}
    base = ["recipes/pipeline.py", *graph.overrides]
    last_job: dict[str, str] = {}  # stage -> the job its dependents wait for
    jobs: list[ChainJob] = []
    problems: list[str] = []
    for st in graph.stages:
        row = rows[st.name]
        waits = [last_job[u] for u in st.upstream if u in last_job]
        if row["status"] in ("skip", "n/a") or (row["status"] == "done" and not waits):
            continue
        cfg = graph.cfg_of(st)
        dry = bool(OmegaConf.select(cfg, "megatron_bridge.dry_run", default=False)) and cfg.backend != "local"
        argv = base + [f"pipeline.only=[{st.name}]"]
        job = dict(stage=st.name, kind=st.kind, overrides=list(st.overrides), time=str(cluster.time),
                   marker=row.get("marker"), recipe=st.recipe, nodes=1, gpus_per_node=0, procs_per_node=1)
        if st.kind == "gpu" and not dry:
            job["gpus_per_node"] = int(cluster.gpus_per_node)
        elif st.kind == "train" and not dry:
            par = cfg.parallelism
            job.update(nodes=int(par.nodes), gpus_per_node=int(par.gpus_per_node), procs_per_node=int(par.gpus_per_node),
                       distributed=True)
            p, info = train_problems(cluster, cfg, st.name, job["nodes"], job["gpus_per_node"])
            problems += p
            job.update(info)
        elif st.kind == "train":
            job["notes"] = ["megatron_bridge.dry_run: composes and validates the config in one process, no GPU"]
        if st.name == "prepare":
            # one CPU job running prepare's whole stage graph on the node's cores (datatrove's local
            # executor, pipeline.prepare.workers at once); a corpus beyond one node is prepared first
            # with `recipes/prepare_data.py cluster=<profile>` (a Slurm array per stage), which this
            # chain then finds done
            job["notes"] = [f"prepare: {cfg.pipeline.prepare.tasks} task(s) per source, "
                            f"{cfg.pipeline.prepare.workers} at once on one node"]
        jobs.append(ChainJob(name=st.name, argv=argv, after=waits, **job))
        last_job[st.name] = st.name
    if problems:
        raise ConfigError(f"the chain for cluster {cluster.name!r}: {len(problems)} problem(s), nothing submitted:\n  - "
                          + "\n  - ".join(problems))
    return jobs, list(rows.values())


def stage_job(job: ChainJob) -> StageJob:
    return StageJob(job.name, "pipeline", job.argv[1:], distributed=job.distributed,
                    checkpoints_on_signal=job.kind == "train", nodes=job.nodes, gpus_per_node=job.gpus_per_node,
                    procs_per_node=job.procs_per_node, array=job.array)


def write_chain(path: Path, cluster_name: str, jobs: list[ChainJob], done: list[str], dry_run: bool) -> Path:
    write_json_atomic(path, {"cluster": cluster_name, "dry_run": dry_run, "done": done,
                             "jobs": [asdict(j) for j in jobs]})
    return path


def run_chain(graph, log=print, arm: bool = False) -> dict:
    """Renders the graph for `cfg.cluster`, writes `<run_dir>/chain.json`, and submits the jobs in order
    (afterok on their upstream jobs) unless `pipeline.dry_run`, which prints them instead.

    `arm`: one arm of a multirun (`recipes/pipeline.py -m ... cluster=<profile>`): each arm is its own
    chain of whole jobs (its training jobs under torch.distributed.run on every node of its preset).
    The arms share the stages scoped `shared` (prepare), so an arm refuses to submit one of them: run
    it once first (`pipeline.only=[prepare]`), or two arms would write the same data at once."""
    from hebatron_nemo.launch.compose import _resolved_cluster

    cfg = graph.cfg
    cluster = _resolved_cluster(cfg)
    dry = bool(cfg.pipeline.dry_run)
    jobs, rows = render_chain(graph, cluster)
    shared = sorted({j.stage for j in jobs if graph.by_name[j.stage].scope == "shared"})
    if arm and shared and not dry:
        raise ConfigError(f"this multirun arm would submit the shared stage(s) {shared}, which every arm would "
                          "submit at once. Fix: run them once first (the same command without -m and the swept "
                          f"values, with pipeline.only=[{','.join(shared)}]), then the multirun")
    done = [r["stage"] for r in rows if r["status"] == "done" and r["stage"] not in {j.stage for j in jobs}]
    path = Path(str(cfg.run_dir)) / CHAIN_FILE
    log(f"chain for cluster {cluster.name}: {len(jobs)} job(s); done already (not submitted): {', '.join(done) or '-'}")
    ids: dict[str, str] = {}
    for j in jobs:
        sub: Submission = submit(cluster, stage_job(j), after=[ids[a] for a in j.after], dry_run=dry,
                                 log=(lambda *a: None) if dry else log)
        ids[j.name] = sub.job_id or f"<{j.name}>"
        j.job_id = sub.job_id
        res = f"{j.nodes}x{j.gpus_per_node}gpu" + (f" array {j.array}" if j.array else "")
        hours = f" ~{j.expected_hours}h of {j.budget_hours}h" if j.expected_hours is not None else ""
        log(f"{j.name:>18}  {res:<14} after {','.join(j.after) or '-':<22}{hours}\n{'':>20}{shlex.join(sub.command)}\n"
            f"{'':>20}{shlex.join(j.argv)}" + (f"   # {' '.join(j.overrides)}" if j.overrides else ""))
    write_chain(path, cluster.name, jobs, done, dry)
    log(f"chain: {path}")
    return {"chain": str(path), "jobs": [asdict(j) for j in jobs], "done": done, "dry_run": dry}
