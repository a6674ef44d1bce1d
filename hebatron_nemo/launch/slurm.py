"""sbatch scripts from a cluster profile (`conf/cluster/*.yaml`) and a stage, and their submission.

One job runs one recipe call (`recipes/<recipe>.py <overrides>`). A training stage runs under
`torch.distributed.run` on every node (one launcher task per node, c10d rendezvous on the first
node); other stages run one process. With a container image the step runs through Pyxis
(`srun --container-image=...`); without one, on the host.

Preemption: the job asks for a warning signal to its batch shell (`--signal=B:USR1@<seconds>`) and
`--requeue`. The batch shell forwards the warning to the step; a training stage checkpoints at its next
step boundary and exits (the local backend's handler; Megatron-Bridge's `train.exit_signal_handler`),
then the shell requeues the job (`scontrol requeue`), which resumes from that checkpoint. A stage that
does not checkpoint is stopped (SIGTERM) and requeued to start over.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from hebatron_nemo.errors import ConfigError, HebatronError
from hebatron_nemo.utils.paths import REPO_ROOT

#: signals torch.distributed.run forwards to its workers (its default set plus the warning signal)
_TORCHRUN_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT")


@dataclass
class StageJob:
    """One Slurm job: `recipes/<recipe>.py <args>` (a plain recipe call)."""

    name: str  # the stage name; the Slurm job name is "heb-<name>"
    recipe: str  # recipes/<recipe>.py
    args: list[str] = field(default_factory=list)  # the recipe's command-line overrides, passed verbatim
    distributed: bool = False  # torch.distributed.run over nodes x procs_per_node (training stages)
    checkpoints_on_signal: bool | None = None  # stops cleanly on the warning signal; default: = distributed
    # the job's own resources (a training job's come from its parallelism preset); None: the cluster profile's
    nodes: int | None = None
    gpus_per_node: int | None = None
    procs_per_node: int | None = None
    array: int | None = None  # a job array of this many tasks; ARRAY_TASK in an argument is the task's index


@dataclass
class Submission:
    """What `submit` did (or, in a dry run, would do)."""

    name: str
    script: str  # the sbatch script's text
    script_path: Path
    command: list[str]  # the exact sbatch command
    job_id: str | None = None  # None in a dry run
    stdout: Path | None = None  # the job's log files (both attempts of a requeued job append to them)
    stderr: Path | None = None


#: in a job array's arguments: replaced by the task's index ($SLURM_ARRAY_TASK_ID) when the job runs
ARRAY_TASK = "${SLURM_ARRAY_TASK_ID}"


def job_name(job: StageJob) -> str:
    return f"heb-{job.name}"


def time_seconds(limit: str) -> int:
    """Seconds of a Slurm time limit (D-HH:MM:SS, D-HH:MM, D-HH, HH:MM:SS, MM:SS, MM)."""
    text = str(limit)
    if not re.fullmatch(r"\d{1,3}(-\d{1,2})?(:\d{2}){0,2}", text):
        raise ConfigError(f"time {text!r} is not a Slurm time limit (D-HH:MM:SS, HH:MM:SS, MM)")
    days, _, rest = text.rpartition("-")
    parts = [int(x) for x in rest.split(":")]
    if days:
        h, m, sec = (parts + [0, 0])[:3]
        return int(days) * 86400 + h * 3600 + m * 60 + sec
    if len(parts) == 3:
        return parts[0] * 3600 + parts[1] * 60 + parts[2]
    if len(parts) == 2:
        return parts[0] * 60 + parts[1]
    return parts[0] * 60


def _arg(a: str) -> str:
    """One argument of the step's command line: quoted, except that ARRAY_TASK expands."""
    if ARRAY_TASK in a:
        if any(c in a.replace(ARRAY_TASK, "") for c in "\"$`\\!"):
            raise ConfigError(f"argument {a!r}: only {ARRAY_TASK} may expand in a job array's arguments")
        return f'"{a}"'
    return shlex.quote(a)


def _abs(path: str) -> Path:
    return Path(path).expanduser().absolute()


def _check(cluster) -> None:
    if cluster.nodes < 1 or cluster.procs_per_node < 1:
        raise ConfigError(f"cluster {cluster.name!r}: nodes ({cluster.nodes}) and procs_per_node "
                          f"({cluster.procs_per_node}) must be at least 1")
    if cluster.gpus_per_node and cluster.procs_per_node > cluster.gpus_per_node:
        raise ConfigError(f"cluster {cluster.name!r}: procs_per_node {cluster.procs_per_node} exceeds "
                          f"gpus_per_node {cluster.gpus_per_node}")
    if not re.fullmatch(r"\d{1,3}(-\d{1,2})?(:\d{2}){0,2}", str(cluster.time)):
        raise ConfigError(f"cluster {cluster.name!r}: time {cluster.time!r} is not a Slurm time limit (D-HH:MM:SS, HH:MM:SS, MM)")
    if cluster.signal_seconds < 0 or cluster.signal_seconds > 65535:
        raise ConfigError(f"cluster {cluster.name!r}: signal_seconds must be within 0..65535 (Slurm's limit)")
    for key in cluster.env:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise ConfigError(f"cluster {cluster.name!r}: env key {key!r} is not a shell variable name")


def _container_flags(cluster) -> list[str]:
    c = cluster.container
    if not c.image:
        return []
    flags = [f"--container-image={c.image}"]
    if c.mounts:
        flags.append("--container-mounts=" + ",".join(c.mounts))
    if c.workdir:
        flags.append(f"--container-workdir={c.workdir}")
    if not c.mount_home:
        flags.append("--no-container-mount-home")
    return flags + list(c.extra_flags)


def render_sbatch(cluster, job: StageJob) -> str:
    """The batch script for `job` on `cluster` (a ClusterConfig node)."""
    _check(cluster)
    dist = job.distributed
    handles = dist if job.checkpoints_on_signal is None else job.checkpoints_on_signal
    nodes = job.nodes if job.nodes is not None else (cluster.nodes if dist else 1)
    gpus = cluster.gpus_per_node if job.gpus_per_node is None else job.gpus_per_node
    procs = cluster.procs_per_node if job.procs_per_node is None else job.procs_per_node
    log_dir = _abs(cluster.log_dir)
    name = job_name(job)
    sb = [f"--job-name={name}", f"--nodes={nodes}", "--ntasks-per-node=1"]
    if job.array:
        sb.append(f"--array=0-{int(job.array) - 1}")
    if gpus:
        sb.append(f"--gpus-per-node={gpus}")
    if cluster.cpus_per_task:
        sb.append(f"--cpus-per-task={cluster.cpus_per_task}")
    if cluster.mem is not None:
        sb.append(f"--mem={cluster.mem}")
    if cluster.exclusive:
        sb.append("--exclusive")
    sb.append(f"--time={cluster.time}")
    for key in ("account", "partition", "qos"):
        if cluster[key]:
            sb.append(f"--{key}={cluster[key]}")
    logname = "%x-%A_%a" if job.array else "%x-%j"
    sb += [f"--output={log_dir}/{logname}.out", f"--error={log_dir}/{logname}.err", "--open-mode=append"]
    if cluster.requeue:
        sb += [f"--signal=B:{cluster.signal}@{cluster.signal_seconds}", "--requeue"]
    else:
        sb.append("--no-requeue")
    sb += list(cluster.sbatch_flags)

    repo_dir = cluster.repo_dir or str(REPO_ROOT)
    step_repo = cluster.container.workdir if cluster.container.image and cluster.container.workdir else repo_dir
    recipe = f"recipes/{job.recipe}.py"
    q = shlex.quote
    srun = ["srun", "--kill-on-bad-exit=1", f"--nodes={nodes}", f"--ntasks={nodes}", "--ntasks-per-node=1"]
    if dist:
        sigs = ",".join(_TORCHRUN_SIGNALS + (f"SIG{cluster.signal}",))
        py = [cluster.python, "-m", "torch.distributed.run", '--nnodes="$SLURM_JOB_NUM_NODES"',
              f"--nproc-per-node={procs}", "--rdzv-backend=c10d",
              '--rdzv-endpoint="$MASTER_ADDR:$MASTER_PORT"', '--rdzv-id="$SLURM_JOB_ID"',
              f"--signals-to-handle={sigs}", f"--shutdown-timeout={max(cluster.signal_seconds, 30)}", recipe]
    else:
        py = [cluster.python, recipe]
    parts = [" ".join(srun)] + _container_flags(cluster) + [" ".join(py[:2 if not dist else 3])]
    if dist:
        parts += [" ".join(py[3:-1]), py[-1]]
    parts += [_arg(a) for a in job.args]
    step = " \\\n  ".join(parts)

    lines = ["#!/bin/bash",
             f"# Hebatron stage '{job.name}' on cluster profile '{cluster.name}': rendered by",
             "# hebatron_nemo/launch/slurm.py (python launchers/slurm/submit.py --help). Do not edit; re-render.",
             *[f"#SBATCH {flag}" for flag in sb],
             "set -euo pipefail",
             # with a container the step starts in container.workdir; the batch shell stays on the host
             f"cd {q(repo_dir)}" if not cluster.container.image else f"# the step runs in {cluster.container.workdir or '(the image default)'} inside the container",
             f"export HEBATRON_STOP_SIGNAL=SIG{cluster.signal}  # the training stages stop cleanly on it",
             # the checkout as the step sees it, so `python recipes/<stage>.py` imports hebatron_nemo from it
             # whether or not the package is installed in the image or venv
             f'export PYTHONPATH={q(step_repo)}"${{PYTHONPATH:+:$PYTHONPATH}}"',
             *[f"export {k}={q(str(v))}" for k, v in cluster.env.items()],
             *list(cluster.setup),
             'MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
             # a per-job port, so two jobs sharing a node never race for one rendezvous port
             f"MASTER_PORT=$(({cluster.rdzv_port} + SLURM_JOB_ID % 1000))",
             "export MASTER_ADDR MASTER_PORT",
             'echo "[hebatron] job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}) on $SLURM_JOB_NODELIST at $(date -u +%FT%TZ)"']
    if cluster.requeue:
        fwd = cluster.signal if handles else "TERM"
        what = "checkpoint at the next step boundary" if handles else "stop (this stage restarts from its start)"
        # `scancel --signal=... --full` signals the step itself too (and srun forwards its own copy):
        # the training processes create $HEBATRON_STOP_MARK when the warning reaches them, and the shell
        # forwards its copy only when it did not (backends/local/preemption.py absorbs repeats anyway)
        mark = [f'export HEBATRON_STOP_MARK={q(str(log_dir))}/".$SLURM_JOB_ID.${{SLURM_RESTART_COUNT:-0}}.warned"',
                'rm -f "$HEBATRON_STOP_MARK"'] if handles else []
        lines += ["warned=0", 'step=""', *mark,
                  "# shellcheck disable=SC2317  # run by the trap below",
                  "on_warning() {",
                  # `return 0`, not `return`: in a trap, a bare return returns the interrupted `wait`'s
                  # status (128 + signal), and under `set -e` that would end the batch shell
                  '  if [ "$warned" = 1 ]; then return 0; fi  # a repeated warning: forwarded once already',
                  "  warned=1",
                  f'  echo "[hebatron] SIG{cluster.signal}: preemption or time limit within {cluster.signal_seconds} s: {what}"',
                  # `|| true`: with --full the signal also reaches this shell's children (the sleep), and
                  # under `set -e` a child killed by it would end the batch shell before the requeue
                  *(["  sleep 2 || true  # the time a warning sent to the step directly takes to be noted there",
                     '  if [ -e "$HEBATRON_STOP_MARK" ]; then',
                     '    echo "[hebatron] the warning reached the step directly: not forwarding a second copy"',
                     "    return 0",
                     "  fi"] if handles else []),
                  f'  kill -{fwd} "$step" 2>/dev/null || true',
                  "}",
                  f"trap on_warning {cluster.signal}"]
    lines += [step + " &", "step=$!",
              # `wait` returns early when the trap runs; wait again until the step has really ended
              "rc=0",
              "while :; do",
              '  if wait "$step"; then rc=0; else rc=$?; fi',
              '  kill -0 "$step" 2>/dev/null || break',
              "done"]
    if cluster.requeue:
        lines += mark[1:] + ['if [ "$warned" = 1 ]; then',
                  f'  if [ "${{SLURM_RESTART_COUNT:-0}}" -ge {cluster.max_restarts} ]; then',
                  f'    echo "[hebatron] not requeueing: {cluster.max_restarts} restarts already"; exit 1',
                  "  fi",
                  '  echo "[hebatron] step ended (rc=$rc) after the warning: requeueing job $SLURM_JOB_ID"',
                  '  scontrol requeue "$SLURM_JOB_ID"',
                  "  exit 0",
                  "fi"]
    lines += ['echo "[hebatron] step ended rc=$rc at $(date -u +%FT%TZ)"', 'exit "$rc"']
    return "\n".join(lines) + "\n"


def megatron_bridge_exit_signal(cluster) -> dict:
    """The Megatron-Bridge `ConfigContainer` fields that make MB's own handler do what the local
    backend's does on this cluster's warning: checkpoint and exit cleanly (MB's default signal is SIGTERM)."""
    import signal

    return {"train.exit_signal_handler": bool(cluster.requeue),
            "train.exit_signal": getattr(signal, f"SIG{cluster.signal}")}


def sbatch_command(script_path: Path, after: list[str] | None = None) -> list[str]:
    cmd = ["sbatch", "--parsable"]
    if after:
        cmd.append("--dependency=afterok:" + ":".join(after))
    return cmd + [str(script_path)]


def submit(cluster, job: StageJob, after: list[str] | None = None, dry_run: bool = False, log=print) -> Submission:
    """Writes the sbatch script (temp file, then rename) and submits it unless `dry_run`.

    Returns the job id and the log paths; in a dry run prints the script and the exact command."""
    script = render_sbatch(cluster, job)
    script_dir = _abs(cluster.script_dir)
    path = script_dir / f"{job_name(job)}.sbatch"
    if dry_run:
        # a dry run writes nothing; job ids of dependencies are placeholders
        cmd = sbatch_command(path, after)
        log(f"# --- {path} ---\n{script}# --- command ---\n{shlex.join(cmd)}")
        return Submission(job.name, script, path, cmd)
    script_dir.mkdir(parents=True, exist_ok=True)
    _abs(cluster.log_dir).mkdir(parents=True, exist_ok=True)  # sbatch does not create it; the job would die silently
    tmp = path.with_suffix(".tmp")
    tmp.write_text(script, encoding="utf-8")
    tmp.replace(path)
    cmd = sbatch_command(path, after)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except FileNotFoundError as e:
        raise HebatronError("sbatch not found: run on a Slurm login node (or start launchers/slurm/local_cluster.sh)") from e
    if proc.returncode != 0:
        raise HebatronError(f"sbatch failed ({shlex.join(cmd)}): {proc.stderr.strip() or proc.stdout.strip()}")
    job_id = proc.stdout.strip().split(";")[0]
    if not job_id.isdigit():
        raise HebatronError(f"sbatch printed no job id: {proc.stdout!r}")
    log_dir = _abs(cluster.log_dir)
    stem = f"{job_name(job)}-{job_id}_0" if job.array else f"{job_name(job)}-{job_id}"  # an array: its first task
    sub = Submission(job.name, script, path, cmd, job_id, log_dir / f"{stem}.out", log_dir / f"{stem}.err")
    log(f"submitted {job.name}: job {job_id}  log {sub.stdout}")
    return sub
