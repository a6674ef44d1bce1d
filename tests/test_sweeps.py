"""Ablation sweeps as Hydra multiruns: the curriculum-order arms run (basic launcher) and end in a
written comparison; the anchor-share arms all get whole anchor counts; on the local Slurm the same
multirun goes through hydra-submitit-launcher."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from stage_conf import stage_args, write_stage_conf

REPO = Path(__file__).resolve().parents[1]


def _env(extra_path: str | None = None) -> dict:
    env = dict(os.environ, HYDRA_FULL_ERROR="1")
    if extra_path:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (extra_path, env.get("PYTHONPATH")) if p)
    return env


def _arms(sweep: Path) -> list[dict]:
    return [json.loads(line) for line in (sweep / "arms.jsonl").read_text().splitlines()]


def _budget(run_dir: str) -> dict:
    plan = json.loads((Path(run_dir) / "plan.json").read_text())
    return {s["key"]: s["samples_needed"] for s in plan["streams"]}


def _check_order_sweep(sweep: Path) -> None:
    arms = _arms(sweep)
    assert len(arms) == 3
    orders = [json.loads((Path(a["run_dir"]) / "plan.json").read_text())["curriculum"]["order"] for a in arms]
    assert sorted(orders) == ["easy_to_hard", "reversed", "shuffled"]
    first = [[p["name"] for p in json.loads((Path(a["run_dir"]) / "plan.json").read_text())["phases"]] for a in arms]
    assert first[orders.index("reversed")] == first[orders.index("easy_to_hard")][::-1]
    budgets = [_budget(a["run_dir"]) for a in arms]
    assert budgets[0] == budgets[1] == budgets[2]  # budget-identical: the same samples per source and stream
    table = (sweep / "summary" / "sweep.md").read_text()
    for order in ("easy_to_hard", "reversed", "shuffled"):
        assert f"| 0.25 | {order} |" in table
    rows = json.loads((sweep / "summary" / "sweep.json").read_text())
    assert all(r["anchor_loss"] > 0 and r["he_loss"] > 0 for r in rows)
    assert (sweep / "summary" / "sweep.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_curriculum_order_multirun_writes_the_comparison(tmp_path):
    conf = write_stage_conf(tmp_path, steps_per_phase=3)
    work = tmp_path / "work"
    proc = subprocess.run([sys.executable, "recipes/cpt.py", "-m", "experiment=ablation_curriculum_order",
                           *stage_args(conf, work)], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    sweep = work / "sweeps" / "curriculum_order"
    _check_order_sweep(sweep)
    assert "sweep summary:" in proc.stdout


@pytest.mark.slow  # a four-arm multirun of the plan recipe in a subprocess
def test_anchor_share_arms_have_whole_anchor_counts(tmp_path):
    """The four arms of ablation_anchor_share plan without rounding on a global batch of 20."""
    conf = write_stage_conf(tmp_path, steps_per_phase=2, global_batch=20)
    work = tmp_path / "work"
    args = [f"hydra.searchpath=[file://{conf}]", "data=synth", "curriculum=synth", f"paths.work={work}",
            "build_caches=false"]
    proc = subprocess.run([sys.executable, "recipes/plan.py", "-m", "experiment=ablation_anchor_share", *args],
                          cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    arms = _arms(work / "sweeps" / "anchor_share")
    per_batch = {}
    for arm in arms:
        plan = json.loads((Path(arm["run_dir"]) / "plan.json").read_text())
        per_batch[plan["anchor"]["share"]] = plan["phases"][0]["anchor_samples"] / plan["phases"][0]["batches"]
    assert per_batch == {0.0: 0, 0.1: 2, 0.25: 5, 0.4: 8}


@pytest.mark.slow
@pytest.mark.slurm
def test_curriculum_order_multirun_on_slurm_through_submitit(tmp_path, slurm_cluster):
    launch_tier = subprocess.run([str(REPO / "scripts" / "env.sh"), "launch"], capture_output=True, text=True,
                                 check=True).stdout.strip()
    conf = write_stage_conf(tmp_path, steps_per_phase=3)
    work = tmp_path / "work"
    proc = subprocess.run([sys.executable, "recipes/cpt.py", "-m", "experiment=ablation_curriculum_order",
                           "hydra/launcher=submitit_local_slurm", *stage_args(conf, work)], cwd=REPO,
                          env=_env(launch_tier), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    sweep = work / "sweeps" / "curriculum_order"
    _check_order_sweep(sweep)
    assert list((sweep / ".submitit").glob("*/*_submission.sh"))  # the arms went through sbatch


@pytest.mark.slow  # two multiruns of the pipeline recipe in subprocesses
def test_a_cluster_ablation_arm_is_a_whole_megatron_bridge_chain(tmp_path):
    """On a cluster each arm of `recipes/pipeline.py -m ... cluster=<profile>` is its own chain: its
    training jobs span the preset's nodes under torch.distributed.run (8 processes per node), not the
    one task per node hydra-submitit-launcher would start; a real (not dry) multirun refuses to submit
    the shared prepare stage from every arm at once."""
    from hebatron_nemo.launch.chain import stage_job, ChainJob
    from hebatron_nemo.launch.compose import compose_launch
    from hebatron_nemo.launch.slurm import render_sbatch

    env = {**_env(), "HEBATRON_WORK": str(tmp_path)}
    cmd = [sys.executable, "recipes/pipeline.py", "-m", "experiment=hebatron_h100x64", "cluster=eos_pyxis",
           "anchor.share=0.1,0.25"]
    proc = subprocess.run(cmd + ["pipeline.dry_run=true"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cluster = compose_launch("eos_pyxis", [f"paths.work={tmp_path}"]).cluster
    for share in ("0.1", "0.25"):
        chain = json.loads((tmp_path / "runs" / f"hebatron-easy_to_hard-anchor{share}" / "chain.json").read_text())
        jobs = {j["name"]: j for j in chain["jobs"]}
        cpt = jobs["cpt_seq8k"]
        assert f"anchor.share={share}" in cpt["argv"] and (cpt["nodes"], cpt["gpus_per_node"]) == (8, 8)
        script = render_sbatch(cluster, stage_job(ChainJob(**{k: v for k, v in cpt.items()})))
        assert "#SBATCH --nodes=8" in script and "#SBATCH --ntasks-per-node=1" in script
        assert '-m torch.distributed.run \\\n  --nnodes="$SLURM_JOB_NUM_NODES" --nproc-per-node=8' in script
        assert "recipes/pipeline.py \\\n  experiment=hebatron_h100x64" in script
    real = subprocess.run(cmd + ["cluster.account=acct"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert real.returncode == 2 and "shared stage(s) ['prepare', 'prepare_sft']" in real.stderr, real.stderr[-2000:]
    assert not (tmp_path / "slurm").exists()  # nothing was written or submitted
