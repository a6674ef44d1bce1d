"""The local backend's clean stop, without Slurm: SIGUSR1 (what the sbatch script forwards on Slurm's
warning) checkpoints at the next step boundary and exits 75; the rerun resumes and ends bit for bit where
the uninterrupted run ends (CPT and SFT). Likewise a CPT split into one job per segment (`segment=<name>`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from stage_conf import stage_args, write_stage_conf

from hebatron_nemo.cli import EXIT_PREEMPTED
from test_sft_train import setup as sft_setup  # noqa: F401  (the SFT tests' corpus and config, a fixture)

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _records(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    return [r for r in map(json.loads, path.read_text().splitlines()) if r["kind"] == "train"]


def _cmd(args: list[str], run: Path, *extra: str) -> list[str]:
    return [sys.executable, "recipes/cpt.py", *args, f"run_dir={run}", *extra]


def _weights(run: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run / "model" / "training_state.safetensors"))


def _same_end(a: Path, b: Path, ledger: bool = True) -> None:
    ra, rb = _records(a), _records(b)
    assert [r["step"] for r in rb] == [r["step"] for r in ra]
    assert [r["loss"] for r in rb] == [r["loss"] for r in ra]
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    if ledger:
        assert json.loads((a / "ledger.json").read_text())["phases"] == json.loads((b / "ledger.json").read_text())["phases"]


@pytest.fixture(scope="module")
def cpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("preempt")
    conf = write_stage_conf(root, steps_per_phase=12, long_steps=4)
    args = stage_args(conf, root / "work")
    ref = root / "runs" / "reference"
    proc = subprocess.run(_cmd(args, ref), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"root": root, "args": args, "ref": ref}


def test_sigusr1_checkpoints_exits_75_and_the_rerun_matches(cpt):
    run = cpt["root"] / "runs" / "signalled"
    proc = subprocess.Popen(_cmd(cpt["args"], run), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while not any(r["step"] >= 3 for r in _records(run)):
        assert proc.poll() is None and time.time() - t0 < 300
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGUSR1)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == EXIT_PREEMPTED, err[-3000:]
    stopped = max(r["step"] for r in _records(run))
    assert stopped < 28 and f"stopped: SIGUSR1: checkpointed at step {stopped}" in out
    assert (run / "checkpoints" / f"step-{stopped:07d}").is_dir() and not (run / "model").exists()
    proc = subprocess.run(_cmd(cpt["args"], run), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resumed from step-{stopped:07d}" in proc.stdout
    _same_end(cpt["ref"], run)


def test_one_job_per_segment_matches_one_job(cpt):
    run = cpt["root"] / "runs" / "segmented"
    proc = subprocess.run(_cmd(cpt["args"], run, "segment=s1"), cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    plan = json.loads((run / "plan.json").read_text())
    assert max(r["step"] for r in _records(run)) == plan["segments"][1]["start_step"]
    assert (run / "segments" / "s1" / "model" / "COMPLETE").exists() and not (run / "model").exists()
    bad = subprocess.run(_cmd(cpt["args"], run, "segment=s9"), cwd=REPO, capture_output=True, text=True,
                         timeout=600)
    assert bad.returncode == 2 and "segment='s9': the plan's segments are ['s1', 's2']" in bad.stderr
    proc = subprocess.run(_cmd(cpt["args"], run), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _same_end(cpt["ref"], run)


def test_sft_stops_on_the_signal_and_resumes_bit_exact(sft_setup, tmp_path, monkeypatch):
    import copy

    from hebatron_nemo.backends.local import router
    from hebatron_nemo.backends.local.sft import run_sft

    _, base = sft_setup
    ref, run = copy.deepcopy(base), copy.deepcopy(base)
    ref.sft.run_dir, run.sft.run_dir = str(tmp_path / "ref"), str(tmp_path / "run")
    ref.logging.wandb = run.logging.wandb = False
    full = run_sft(ref, log=lambda *a: None)
    original, calls = router.RouterBalancer.step, [0]

    def warned(self, group=None):  # Slurm's warning arrives during step 3
        original(self, group)
        calls[0] += 1
        if calls[0] == 3:
            os.kill(os.getpid(), signal.SIGUSR1)

    monkeypatch.setattr(router.RouterBalancer, "step", warned)
    stopped = run_sft(run, log=lambda *a: None)
    assert stopped["preempted"] and stopped["step"] == 3 < full["step"]
    assert (tmp_path / "run" / "checkpoints" / "step-0000003").is_dir() and not (tmp_path / "run" / "model").exists()
    monkeypatch.setattr(router.RouterBalancer, "step", original)
    done = run_sft(run, log=lambda *a: None)
    assert done["step"] == full["step"] and done["counts"] == full["counts"]
    _same_end(tmp_path / "ref", tmp_path / "run", ledger=False)


def _wait_for_step(run: Path, proc, step: int) -> None:
    t0 = time.time()
    while not any(r["step"] >= step for r in _records(run)):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() - t0 < 300
        time.sleep(0.02)


def test_a_doubled_warning_under_torchrun_still_checkpoints(cpt):
    """torch.distributed.run with the warning among its handled signals (as the sbatch script runs it) gets
    the warning twice, 20 ms apart (Slurm's `scancel --signal=USR1 --full`: once directly, once forwarded).
    It forwards the first to its worker; the second makes it send SIGTERM to the worker, which is then
    mid-step or checkpointing. The worker must still finish the step, write the checkpoint and exit."""
    run = cpt["root"] / "runs" / "doubled"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=1", "--master-port",
           str(29900 + os.getpid() % 90), "--signals-to-handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1",
           "--shutdown-timeout=120", "recipes/cpt.py", *cpt["args"], f"run_dir={run}"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HEBATRON_STOP_SIGNAL": "SIGUSR1"})
    _wait_for_step(run, proc, 3)
    os.kill(proc.pid, signal.SIGUSR1)
    time.sleep(0.02)
    os.kill(proc.pid, signal.SIGUSR1)
    out, err = proc.communicate(timeout=300)
    log = out + err
    assert "stopped: SIGUSR1: checkpointed at step" in log, log[-4000:]
    stopped = max(r["step"] for r in _records(run))
    assert f"checkpointed at step {stopped}" in log and "SIGTERM 1x after it" in log, log[-4000:]
    assert (run / "checkpoints" / f"step-{stopped:07d}").is_dir() and not (run / "model").exists()
    proc = subprocess.run(_cmd(cpt["args"], run), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resumed from step-{stopped:07d}" in proc.stdout
    _same_end(cpt["ref"], run)


def test_sigterm_without_a_warning_still_ends_the_process(cpt):
    """The deferral applies only after the warning: a plain SIGTERM stops the run at once, as before."""
    run = cpt["root"] / "runs" / "terminated"
    proc = subprocess.Popen(_cmd(cpt["args"], run), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_step(run, proc, 2)
    os.kill(proc.pid, signal.SIGTERM)
    proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGTERM


@pytest.mark.slurm
def test_scancel_full_warning_on_slurm_checkpoints_and_resumes(slurm_cluster, tmp_path):
    """`scancel --signal=USR1 --full` on the local Slurm: the warning reaches the batch shell, srun and the
    step's processes (torch.distributed.run and its two workers) directly. The job must checkpoint,
    requeue itself and resume from that checkpoint (not start over), ending at the plan's last step."""
    from test_slurm import job_info, train_records, wait_for

    from hebatron_nemo.launch.compose import compose_launch
    from hebatron_nemo.launch.slurm import StageJob, submit

    conf = write_stage_conf(tmp_path, steps_per_phase=30)
    work = tmp_path / "work"
    cluster = compose_launch("local_slurm", [f"paths.work={work}", f"cluster.python={sys.executable}"]).cluster
    run = tmp_path / "runs" / "full"
    sub = submit(cluster, StageJob("cpt-full", "cpt", stage_args(conf, work) + [f"run_dir={run}"], distributed=True),
                 log=lambda *a: None)
    t0 = time.time()
    while not ((run / "metrics.jsonl").exists() and any(r["step"] >= 3 for r in train_records(run))):
        assert time.time() - t0 < 300, "the job never reached step 3"
        assert job_info(sub.job_id)["JobState"] in {"PENDING", "RUNNING"}
        time.sleep(0.2)
    subprocess.run(["scancel", "--full", f"--signal={cluster.signal}", sub.job_id], check=True)
    t0 = time.time()
    while int(job_info(sub.job_id).get("Restarts", 0)) < 1:
        assert time.time() - t0 < 120, f"job {sub.job_id} was not requeued: {job_info(sub.job_id)['JobState']}"
        time.sleep(0.3)
    info = wait_for(sub.job_id, {"COMPLETED"}, log=sub.stdout)
    assert info["Restarts"] == "1"
    log = sub.stdout.read_text() + sub.stderr.read_text()
    assert "stopped: SIGUSR1: checkpointed at step" in log, log[-4000:]
    stopped = int(log.split("stopped: SIGUSR1: checkpointed at step ")[1].split(";")[0])
    assert 3 <= stopped < 60 and f"resumed from step-{stopped:07d}" in log
    assert "the warning reached the step directly: not forwarding" in log and "HEBATRON_STOP_MARK" in sub.script
    assert [r["step"] for r in train_records(run)] == list(range(1, 61))
    assert (run / "model" / "COMPLETE").exists()
