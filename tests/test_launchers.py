"""sbatch rendering (golden files for the Pyxis profile), the submit and chain dry runs, clean errors
for bad cluster settings, and the pipeline chain's stages and dependencies."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hebatron_nemo.errors import ConfigError
from hebatron_nemo.launch.chain import chain_jobs, pipeline_stages, select
from hebatron_nemo.launch.compose import compose_launch
from hebatron_nemo.launch.slurm import StageJob, megatron_bridge_exit_signal, render_sbatch

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests" / "data" / "golden"
PYXIS_SETS = ["paths.work=/lustre/hebatron/work", "cluster.account=llm_acct"]


def _golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("HEBATRON_UPDATE_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert text == path.read_text(), f"{name} changed; review, then refresh with HEBATRON_UPDATE_GOLDEN=1"


@pytest.fixture(scope="module")
def pyxis():
    return compose_launch("eos_pyxis", PYXIS_SETS).cluster


def test_pyxis_training_job_matches_golden(pyxis):
    text = render_sbatch(pyxis, StageJob("cpt", "cpt", ["experiment=tiny_cpu", "anchor.share=0.1"], distributed=True))
    _golden("eos_pyxis_cpt.sbatch", text)
    assert "#SBATCH --nodes=8" in text and "#SBATCH --gpus-per-node=8" in text and "#SBATCH --account=llm_acct" in text
    assert "--container-image=nvcr.io/nvidia/nemo:26.08" in text and "--no-container-mount-home" in text
    assert '--nnodes="$SLURM_JOB_NUM_NODES" --nproc-per-node=8 --rdzv-backend=c10d' in text
    assert "#SBATCH --signal=B:USR1@300" in text and "#SBATCH --requeue" in text
    assert "export NCCL_IB_TIMEOUT=22" in text


def test_pyxis_single_process_job_matches_golden(pyxis):
    text = render_sbatch(pyxis, StageJob("plan", "plan", ["experiment=tiny_cpu", "build_caches=true"]))
    _golden("eos_pyxis_plan.sbatch", text)
    assert "#SBATCH --nodes=1" in text and "torch.distributed.run" not in text
    assert 'kill -TERM "$step"' in text  # a stage without checkpoints is stopped and restarted from its start


def test_local_profile_renders_without_container_flags(tmp_path):
    cluster = compose_launch("local_slurm", [f"paths.work={tmp_path}", "cluster.python=/usr/bin/python3"]).cluster
    text = render_sbatch(cluster, StageJob("cpt", "cpt", ["experiment=tiny_cpu"], distributed=True))
    assert "--container" not in text and f"cd {REPO}" in text
    assert "/usr/bin/python3 -m torch.distributed.run" in text and "--nproc-per-node=2" in text
    assert f"#SBATCH --output={tmp_path}/slurm/logs/%x-%j.out" in text
    assert "--gpus-per-node" not in text
    assert subprocess.run(["bash", "-n"], input=text, text=True).returncode == 0
    if shutil.which("shellcheck"):
        proc = subprocess.run(["shellcheck", "-s", "bash", "-"], input=text, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout


@pytest.mark.parametrize("sets, message", [
    (["cluster.time=4 hours"], "is not a Slurm time limit"),
    (["cluster.procs_per_node=16"], "procs_per_node 16 exceeds gpus_per_node 8"),
    (["cluster.nodez=2"], "cluster.nodez"),
    (["+cluster.env.BAD-KEY=1"], "is not a shell variable name"),
])
def test_bad_cluster_settings_fail_before_anything_is_written(sets, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        cluster = compose_launch("eos_pyxis", PYXIS_SETS + sets).cluster
        render_sbatch(cluster, StageJob("cpt", "cpt", [], distributed=True))


def test_megatron_bridge_gets_the_same_warning_signal(pyxis):
    import signal

    assert megatron_bridge_exit_signal(pyxis) == {"train.exit_signal_handler": True, "train.exit_signal": signal.SIGUSR1}


def test_submit_dry_run_prints_script_and_command_and_writes_nothing(tmp_path):
    proc = subprocess.run([sys.executable, "launchers/slurm/submit.py", "--cluster", "eos_pyxis", "--set",
                           f"paths.work={tmp_path}", "--dry-run", "cpt", "experiment=tiny_cpu"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"# --- {tmp_path}/slurm/scripts/heb-cpt.sbatch ---" in proc.stdout
    assert f"sbatch --parsable {tmp_path}/slurm/scripts/heb-cpt.sbatch" in proc.stdout
    assert "--container-image=" in proc.stdout and not (tmp_path / "slurm").exists()
    bad = subprocess.run([sys.executable, "launchers/slurm/submit.py", "--dry-run", "cpt", "curriculum.ordr=reversed"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.startswith("error: conf/cpt.yaml") and "curriculum.ordr" in bad.stderr


def test_pipeline_chain_order_and_dependencies():
    stages = pipeline_stages(["seq128", "seq512"], "/w/runs/x", base_model="/models/base")
    names = [s.name for s in stages]
    assert names == ["prepare", "plan", "parity_gate", "cpt_seq128", "export_seq128", "eval_seq128", "cpt_seq512",
                     "export_seq512", "eval_seq512", "sft", "export_chat", "eval", "report"]
    for k, s in enumerate(stages):  # topological: every dependency is submitted earlier
        assert all(names.index(a) < k for a in s.after), s
    by = {s.name: s for s in stages}
    assert by["cpt_seq128"].after == ["plan", "parity_gate"] and by["cpt_seq128"].args == ["stop_after_segment=seq128"]
    assert by["cpt_seq512"].after == ["cpt_seq128"] and by["cpt_seq512"].args == []  # the last segment runs to the end
    assert by["export_seq128"].args == ["source_dir=${run_dir}/segments/seq128/model",
                                        "out_dir=${run_dir}/hf/base_seq128"]
    assert by["sft"].after == ["cpt_seq512"] and by["sft"].distributed and by["cpt_seq512"].distributed
    assert by["report"].args == ["/w/runs/x"] and by["report"].after == ["eval"]
    assert [s.name for s in pipeline_stages(["s"], "/r")][:3] == ["prepare", "plan", "cpt_s"]  # no gate without a base
    sub = select(stages, ["plan", "cpt_seq128", "export_seq128"])
    assert [(s.name, s.after) for s in sub] == [("plan", []), ("cpt_seq128", ["plan"]), ("export_seq128", ["cpt_seq128"])]
    with pytest.raises(ConfigError, match="unknown stage"):
        select(stages, ["cpt_8k"])


def test_chain_passes_each_recipe_only_the_overrides_it_accepts():
    stages = pipeline_stages(["seq128", "seq512"], "/w/runs/x")
    jobs = {s.name: j for s, j in chain_jobs(stages, ["experiment=tiny_cpu", "model=micro", "data=demo"], check=False)}
    assert jobs["prepare"].args == ["data=demo"]  # prepare has no experiment or model group
    # every run stage composes the one RunConfig schema, so it takes every run override
    assert jobs["plan"].args == ["experiment=tiny_cpu", "model=micro", "data=demo", "build_caches=true"]
    assert jobs["cpt_seq128"].args == ["experiment=tiny_cpu", "model=micro", "data=demo", "stop_after_segment=seq128"]
    assert "model=micro" in jobs["export_chat"].args and jobs["report"].args == ["/w/runs/x"]


def test_chain_dry_run_prints_every_job_with_afterok(tmp_path):
    proc = subprocess.run([sys.executable, "launchers/slurm/chain.py", "--set", f"paths.work={tmp_path}", "--dry-run",
                           "experiment=tiny_cpu"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert f"sbatch --parsable {tmp_path}/slurm/scripts/heb-prepare.sbatch" in lines[0]
    assert any("'--dependency=afterok:<cpt_seq128>' " in line and "heb-cpt_seq512.sbatch" in line for line in lines)
    assert any("'--dependency=afterok:<export_chat>:<eval_seq512>'" in line for line in lines)
    assert "report.py " in lines[-1] and not (tmp_path / "slurm").exists()
