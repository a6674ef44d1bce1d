"""Launchers on a real Slurm: the rendered sbatch of a tiny CPT (torch.distributed.run, 2 processes over
gloo) runs to completion; a job warned as Slurm warns before a preemption checkpoints, requeues
itself, resumes and ends in the same state as the uninterrupted run; and a short chain (plan -> CPT
segment 1 -> export of that segment's model) runs as afterok-dependent jobs."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import os

from stage_conf import flat_stage_args, stage_args, write_stage_conf

from hebatron_nemo.launch.compose import compose_launch
from hebatron_nemo.launch.slurm import StageJob, submit

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
STEPS_PER_PHASE = 30  # 60 steps of ~0.15 s: long enough to warn the job mid-run


def job_info(job_id: str) -> dict:
    out = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True, check=True).stdout
    return dict(kv.split("=", 1) for kv in out.split() if "=" in kv)


def wait_for(job_id: str, states: set[str], timeout: float = 300, log: Path | None = None) -> dict:
    t0 = time.time()
    while time.time() - t0 < timeout:
        info = job_info(job_id)
        if info["JobState"] in states:
            return info
        if info["JobState"] in {"FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"}:
            break
        time.sleep(0.5)
    text = log.read_text()[-4000:] if log and log.exists() else ""
    err = log.with_suffix(".err").read_text()[-4000:] if log and log.with_suffix(".err").exists() else ""
    pytest.fail(f"job {job_id} is {info['JobState']} (wanted {states}):\n{text}\n{err}")


def train_records(run: Path) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "train"]


@pytest.fixture(scope="module")
def stage(slurm_cluster, tmp_path_factory):
    root = tmp_path_factory.mktemp("slurm_stage")
    conf = write_stage_conf(root, steps_per_phase=STEPS_PER_PHASE)
    work = root / "work"
    cfg = compose_launch("local_slurm", [f"paths.work={work}", f"cluster.python={sys.executable}"])
    return {"root": root, "args": stage_args(conf, work), "cluster": cfg.cluster}


@pytest.fixture(scope="module")
def reference(stage):
    run = stage["root"] / "runs" / "reference"
    job = StageJob("cpt-reference", "cpt", stage["args"] + [f"run_dir={run}"], distributed=True)
    sub = submit(stage["cluster"], job, log=lambda *a: None)
    info = wait_for(sub.job_id, {"COMPLETED"}, log=sub.stdout)
    return {"run": run, "sub": sub, "info": info}


def test_rendered_sbatch_runs_a_two_process_cpt(reference):
    run, sub = reference["run"], reference["sub"]
    assert reference["info"]["ExitCode"] == "0:0" and reference["info"]["Restarts"] == "0"
    assert sub.stdout.name == f"heb-cpt-reference-{sub.job_id}.out" and sub.stdout.exists()
    log = sub.stdout.read_text() + sub.stderr.read_text()
    assert "--nproc-per-node=2" in sub.script and "#SBATCH --requeue" in sub.script
    assert "CPT done: 60 steps" in log and "step ended rc=0" in log
    assert (run / "model" / "COMPLETE").exists()
    assert [r["step"] for r in train_records(run)] == list(range(1, 2 * STEPS_PER_PHASE + 1))
    ledger = json.loads((run / "ledger.json").read_text())
    assert all(row["complete"] for row in ledger["phases"].values())
    # two data-parallel workers under torch.distributed.run (torch prefixes each worker's log lines)
    assert "[rank0]:" in log and "[rank1]:" in log and "[rank2]:" not in log


def test_warned_job_checkpoints_requeues_and_resumes(stage, reference):
    run = stage["root"] / "runs" / "preempted"
    job = StageJob("cpt-preempted", "cpt", stage["args"] + [f"run_dir={run}"], distributed=True)
    sub = submit(stage["cluster"], job, log=lambda *a: None)
    t0 = time.time()
    while not ((run / "metrics.jsonl").exists() and any(r["step"] >= 3 for r in train_records(run))):
        assert time.time() - t0 < 300, "the job never reached step 3"
        assert job_info(sub.job_id)["JobState"] in {"PENDING", "RUNNING"}
        time.sleep(0.2)
    # what --signal=B:USR1@<seconds> does before the time limit or a preemption
    subprocess.run(["scancel", "--batch", f"--signal={stage['cluster'].signal}", sub.job_id], check=True)
    t0 = time.time()
    while int(job_info(sub.job_id).get("Restarts", 0)) < 1:
        assert time.time() - t0 < 120, f"job {sub.job_id} was not requeued: {job_info(sub.job_id)['JobState']}"
        time.sleep(0.3)
    stopped_at = max(r["step"] for r in train_records(run))
    assert 3 <= stopped_at < 2 * STEPS_PER_PHASE, "the warning arrived after the run had finished"
    assert not (run / "model").exists()
    # the requeued job starts again once its old credential has expired (cred_expire=10 on the local cluster)
    info = wait_for(sub.job_id, {"COMPLETED"}, log=sub.stdout)
    assert info["Restarts"] == "1"
    log = sub.stdout.read_text() + sub.stderr.read_text()
    assert "SIGUSR1: preemption or time limit" in log and "requeueing job" in log
    assert f"stopped: SIGUSR1: checkpointed at step {stopped_at}" in log
    assert f"resumed from step-{stopped_at:07d}" in log
    ref, got = train_records(reference["run"]), train_records(run)
    assert [r["step"] for r in got] == [r["step"] for r in ref]
    assert [r["loss"] for r in got] == [r["loss"] for r in ref]  # bit for bit through the restart
    from safetensors.torch import load_file

    a = load_file(str(reference["run"] / "model" / "training_state.safetensors"))
    b = load_file(str(run / "model" / "training_state.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((run / "ledger.json").read_text())["phases"] == json.loads((reference["run"] / "ledger.json").read_text())["phases"]


def test_a_short_chain_runs_as_dependent_jobs(slurm_cluster, tmp_path):
    conf = write_stage_conf(tmp_path, steps_per_phase=3, long_steps=3)
    work = tmp_path / "work"
    cmd = [sys.executable, "launchers/slurm/chain.py", "--set", f"paths.work={work}", "--set",
           f"cluster.python={sys.executable}", "--only", "plan,cpt_s1,export_s1", *flat_stage_args(conf, work)]
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr[-3000:]
    ids = dict(kv.split("=") for kv in proc.stdout.split("jobs: ", 1)[1].splitlines()[0].split())
    assert list(ids) == ["plan", "cpt_s1", "export_s1"]
    assert job_info(ids["cpt_s1"])["Dependency"] in (f"afterok:{ids['plan']}(unfulfilled)", "(null)")
    logs = work / "slurm" / "logs"
    for name in ("plan", "cpt_s1", "export_s1"):
        wait_for(ids[name], {"COMPLETED"}, log=logs / f"heb-{name}-{ids[name]}.out")
    run = work / "runs" / "synth-easy_to_hard-anchor0.25"
    plan = json.loads((run / "plan.json").read_text())
    s1_end = plan["segments"][0]["num_samples"] // plan["segments"][0]["global_batch"]
    assert max(r["step"] for r in train_records(run)) == s1_end  # stopped at the end of segment s1
    assert (run / "segments" / "s1" / "model" / "COMPLETE").exists() and not (run / "model").exists()
    assert (run / "hf" / "base_s1" / "config.json").exists()
    assert "segment s1 done" in (logs / f"heb-cpt_s1-{ids['cpt_s1']}.out").read_text()
