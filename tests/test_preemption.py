"""The local backend's clean stop, without Slurm: SIGUSR1 (what the sbatch script forwards on Slurm's
warning) checkpoints at the next step boundary and exits 75; the rerun resumes and ends bit for bit where
the uninterrupted run ends (CPT and SFT). Likewise a CPT split into one job per segment (stop_after_segment)."""

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
    proc = subprocess.run(_cmd(cpt["args"], run, "stop_after_segment=s1"), cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    plan = json.loads((run / "plan.json").read_text())
    assert max(r["step"] for r in _records(run)) == plan["segments"][1]["start_step"]
    assert (run / "segments" / "s1" / "model" / "COMPLETE").exists() and not (run / "model").exists()
    bad = subprocess.run(_cmd(cpt["args"], run, "stop_after_segment=s9"), cwd=REPO, capture_output=True, text=True,
                         timeout=600)
    assert bad.returncode == 2 and "stop_after_segment='s9': the plan's segments are ['s1', 's2']" in bad.stderr
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
