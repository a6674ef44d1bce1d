"""sbatch rendering (golden files for the Pyxis profile), the submit and chain dry runs, clean errors
for bad cluster settings, and the run's stage graph rendered as a chain of Slurm jobs (chain.json)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hebatron_nemo.errors import ConfigError
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


@pytest.mark.parametrize("recipe, experiment, nodes", [("sft", "hebatron_sft_h100x16", 2),
                                                        ("cpt", "hebatron_cpt_8k_h100x64", 8)])
def test_submit_renders_the_presets_nodes_not_the_profiles(tmp_path, recipe, experiment, nodes):
    # eos_pyxis says 8 nodes; hebatron_sft_h100x16's preset (h100_16gpu) is 2 nodes x 8 GPUs
    proc = subprocess.run([sys.executable, "launchers/slurm/submit.py", "--cluster", "eos_pyxis", "--set",
                           f"paths.work={tmp_path}", "--dry-run", recipe, f"experiment={experiment}"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert f"#SBATCH --nodes={nodes}\n" in proc.stdout and "--nproc-per-node=8" in proc.stdout
    bad = subprocess.run([sys.executable, "launchers/slurm/submit.py", "--cluster", "eos_pyxis", "--set",
                          f"paths.work={tmp_path}", "--set", f"cluster.nodes={nodes * 2}", "--dry-run", recipe,
                          f"experiment={experiment}"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "is not the preset's world size" in bad.stderr, bad.stderr


def _env_keys(path: Path) -> set[str]:
    import yaml

    return set((yaml.safe_load(path.read_text()) or {}).get("env") or {})


def test_no_cluster_profile_sets_a_variable_a_parallelism_preset_sets():
    """MB applies the ConfigContainer's env_vars (the preset's) with setdefault: a profile's export of the
    same variable would silently win (eos_pyxis's CUDA_DEVICE_MAX_CONNECTIONS=1 over the presets' 32)."""
    preset_keys = {p.name: _env_keys(p) for p in (REPO / "conf" / "parallelism").glob("*.yaml")}
    assert any(preset_keys.values())
    for profile in (REPO / "conf" / "cluster").glob("*.yaml"):
        for preset, keys in preset_keys.items():
            both = _env_keys(profile) & keys
            assert not both, f"conf/cluster/{profile.name} and conf/parallelism/{preset} both set {sorted(both)}"


def _pipeline(tmp_path, *overrides, timeout=300):
    env = {**os.environ, "HEBATRON_WORK": str(tmp_path)}
    return subprocess.run([sys.executable, "recipes/pipeline.py", *overrides], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _graph(tmp_path, *overrides):
    from hebatron_nemo.pipeline.stages import Graph, compose_pipeline

    os.environ["HEBATRON_WORK"] = str(tmp_path)
    cfg = compose_pipeline(list(overrides))
    return Graph(cfg, list(overrides))


CLUSTER_RUN = ["experiment=hebatron_h100x64", "cluster=eos_pyxis"]


@pytest.fixture(scope="module")
def cluster_chain(tmp_path_factory):
    """The done-when command, on this machine: no GPU, no prepared data, no base model."""
    tmp = tmp_path_factory.mktemp("cluster_chain")
    proc = _pipeline(tmp, *CLUSTER_RUN, "pipeline.dry_run=true")
    assert proc.returncode == 0, proc.stderr[-3000:]
    path = tmp / "runs" / "hebatron-easy_to_hard-anchor0.25" / "chain.json"
    return {"tmp": tmp, "stdout": proc.stdout, "chain": json.loads(path.read_text()),
            "graph": _graph(tmp, *CLUSTER_RUN)}


def test_cluster_run_dry_run_writes_chain_json_with_every_job(cluster_chain):
    chain = cluster_chain["chain"]
    jobs = {j["name"]: j for j in chain["jobs"]}
    assert list(jobs) == ["prepare", "plan", "parity", "cpt_seq8k", "export_formal", "eval_formal",
                          "export_colloquial", "eval_colloquial", "cpt_seq64k", "export_long_context",
                          "eval_long_context", "prepare_sft", "sft", "export_chat", "eval_chat", "report"]
    names = list(jobs)
    for k, j in enumerate(chain["jobs"]):  # topological: every dependency is submitted earlier
        assert set(j) >= {"name", "argv", "overrides", "nodes", "gpus_per_node", "time", "after", "marker"}
        assert all(names.index(a) < k for a in j["after"]), j
        assert j["argv"][:2] == ["recipes/pipeline.py", "experiment=hebatron_h100x64"]
        assert f"pipeline.only=[{j['stage']}]" in j["argv"] and not any(a.startswith("cluster") for a in j["argv"])
    # prepare is one CPU job running the datatrove graph on its node (64 tasks per source, 64 at once)
    assert jobs["prepare"]["array"] is None and jobs["prepare"]["after"] == [] and jobs["prepare"]["gpus_per_node"] == 0
    assert jobs["prepare"]["notes"] == ["prepare: 64 task(s) per source, 64 at once on one node"]
    assert jobs["prepare"]["marker"].endswith("/pipeline/prepare-hebatron.done.json")
    assert jobs["plan"]["gpus_per_node"] == 0 and jobs["plan"]["after"] == ["prepare"]
    assert jobs["cpt_seq8k"]["after"] == ["plan", "parity"] and jobs["cpt_seq64k"]["after"] == ["cpt_seq8k"]
    assert "segment=seq8k" in jobs["cpt_seq8k"]["overrides"]
    assert "segment=seq64k" in jobs["cpt_seq64k"]["overrides"]
    assert jobs["sft"]["after"] == ["export_long_context", "prepare_sft"] and jobs["report"]["after"] == ["eval_chat"]
    # the SFT registry is prepared once by a CPU job composed like the SFT job (its sft_data), never by the ranks
    assert jobs["prepare_sft"]["gpus_per_node"] == 0 and jobs["prepare_sft"]["after"] == []
    assert "experiment=hebatron_sft_h100x16" in jobs["prepare_sft"]["overrides"]
    assert chain["cluster"] == "eos_pyxis" and chain["dry_run"] is True
    # the gate is the parity record backends/megatron_bridge/checks.py requires of segment 0
    from hebatron_nemo.backends.megatron_bridge.convert import PARITY_RECORD

    graph = cluster_chain["graph"]
    run_dir = str(graph.cfg.run_dir)
    assert jobs["parity"]["recipe"] == (f"recipes/convert.py parity --hf-dir {graph.cfg.megatron_bridge.hf_model_dir} "
                                        f"--run-dir {run_dir}") and graph.cfg.megatron_bridge.require_parity
    assert graph.by_name["parity"].keys[0] == "megatron_bridge.hf_model_dir" and PARITY_RECORD == "parity.json"
    # prepare composes the run's registry and tokenizer (the experiment's data=hebatron, not the default)
    prep = graph.cfg_of(graph.by_name["prepare"])
    assert prep.data.name == "hebatron" and prep.tokenizer.name == "nemotron3_nano"
    assert "sbatch --parsable '--dependency=afterok:<plan>:<parity>'" in cluster_chain["stdout"]
    assert not (cluster_chain["tmp"] / "slurm").exists()  # a dry run writes no script


def test_training_jobs_take_the_presets_world_size(cluster_chain):
    import yaml

    jobs = {j["name"]: j for j in cluster_chain["chain"]["jobs"]}
    graph = cluster_chain["graph"]
    for name, preset in [("cpt_seq8k", "h100_64gpu"), ("cpt_seq64k", "h100_64gpu_64k_cp8"), ("sft", "h100_16gpu")]:
        cfg = graph.cfg_of(graph.by_name[name])
        assert cfg.parallelism.name == preset
        p = yaml.safe_load((REPO / "conf" / "parallelism" / f"{preset}.yaml").read_text())
        j = jobs[name]
        assert (j["nodes"], j["gpus_per_node"], j["procs_per_node"]) == (p["nodes"], p["gpus_per_node"], p["gpus_per_node"])
        assert j["distributed"] and j["kind"] == "train"
    assert graph.cfg_of(graph.by_name["cpt_seq64k"]).segment == "seq64k"
    # the 8K segment at 4k tokens/s/GPU on 64 GPUs: ~114 h, within eos_pyxis's 4 h x (40 + 1)
    assert 110 < jobs["cpt_seq8k"]["expected_hours"] < 118 and jobs["cpt_seq8k"]["budget_hours"] == 164


def test_exports_read_the_checkpoints_the_cpt_jobs_write(cluster_chain):
    """Each phase end's export reads `<the CPT job's megatron_bridge.save_dir>/iter_<the phase's last step>`:
    MB saves there (checkpoint.save = save_dir, iteration = steps since the run began)."""
    from hebatron_nemo.pipeline.stages import schedule_outline

    graph = cluster_chain["graph"]
    jobs = {j["name"]: j for j in cluster_chain["chain"]["jobs"]}
    outline = schedule_outline(graph.cfg)
    assert [[p["name"] for p in s["phases"]] for s in outline] == [["formal", "colloquial"], ["long_context"]]
    for seg in outline:
        cpt = graph.cfg_of(graph.by_name[f"cpt_{seg['name']}"])
        for ph in seg["phases"]:
            export = graph.by_name[f"export_{ph['name']}"]
            assert export.upstream == (f"cpt_{seg['name']}",)
            ecfg = graph.cfg_of(export)
            assert ecfg.megatron_bridge.save_dir == cpt.megatron_bridge.save_dir
            # the seam hands MB checkpoint.save = megatron_bridge.save_dir; MB names iterations iter_%07d
            want = f"{cpt.megatron_bridge.save_dir}/iter_{ph['end_step']:07d}"
            assert f"--megatron-dir {want} " in jobs[export.name]["recipe"]
            assert jobs[f"eval_{ph['name']}"]["overrides"] == [
                f"evaluate.model_dir={graph.cfg.run_dir}/hf/base_{ph['name']}"]
    assert outline[0]["end_step"] == 10029 and outline[1]["end_step"] == 10029 + 2594


def test_sft_job_composes_the_sft_experiment(cluster_chain, tmp_path):
    from hebatron_nemo.pipeline.stages import compose_pipeline

    graph = cluster_chain["graph"]
    sft = graph.cfg_of(graph.by_name["sft"])
    own = compose_pipeline(["experiment=hebatron_sft_h100x16"])
    from omegaconf import OmegaConf

    for key in ("parallelism", "megatron_bridge", "optim", "run_dir"):
        assert OmegaConf.to_container(OmegaConf.select(sft, key), resolve=True) == \
            OmegaConf.to_container(OmegaConf.select(own, key), resolve=True) if key != "run_dir" else sft.run_dir == own.run_dir
    want = OmegaConf.to_container(own.sft, resolve=True)
    got = OmegaConf.to_container(sft.sft, resolve=True)
    assert got.pop("init_from") == f"{graph.cfg.run_dir}/hf/base_long_context"  # the last CPT export
    want.pop("init_from")
    assert got == want and sft.megatron_bridge.save_dir.endswith("/sft/megatron")
    export_chat = graph.cfg_of(graph.by_name["export_chat"])
    assert export_chat.megatron_bridge.save_dir == sft.megatron_bridge.save_dir  # reads what SFT writes


@pytest.mark.parametrize("sets, message", [  # a pipeline subprocess each: one in the fast tier
    (["cluster.max_restarts=20"], "exceeds cluster.time=04:00:00 x (cluster.max_restarts=20 + 1) = 84 h"),
    pytest.param(["compute.tokens_per_second_per_gpu=2000"], "compute.tokens_per_second_per_gpu=2000",
                 marks=pytest.mark.slow),
    pytest.param(["cluster.gpus_per_node=4"], "cluster.gpus_per_node=4", marks=pytest.mark.slow),
])
def test_a_chain_that_cannot_finish_is_refused_before_submission(tmp_path, sets, message):
    proc = _pipeline(tmp_path, *CLUSTER_RUN, "pipeline.dry_run=true", *sets)
    assert proc.returncode == 2 and "nothing submitted" in proc.stderr and message in proc.stderr, proc.stderr[-2000:]
    assert not list(tmp_path.rglob("chain.json"))


@pytest.mark.slow  # composes the whole cluster chain four times (~15 CPU seconds)
def test_resubmitting_leaves_out_what_is_done(tmp_path):
    """Markers are checked when the chain is rendered: done stages are not submitted, their dependents
    no longer wait for them; a stage below one that runs again is submitted again."""
    from hebatron_nemo.launch.chain import render_chain
    from hebatron_nemo.launch.compose import _resolved_cluster
    from hebatron_nemo.pipeline.markers import write_marker
    from hebatron_nemo.pipeline.stages import stage_table

    graph = _graph(tmp_path, *CLUSTER_RUN, "cluster.max_restarts=40")
    cluster = _resolved_cluster(graph.cfg)
    first, _ = render_chain(graph, cluster)
    assert first[0].name == "prepare"
    out = tmp_path / "done.txt"
    out.write_text("x")
    for stage in ("prepare", "plan", "parity"):  # in order, as the jobs write them
        row = next(r for r in stage_table(graph) if r["stage"] == stage)
        write_marker(Path(row["marker"]), stage, row["fingerprint"], row["inputs"], [str(out)], 1.0)
    graph = _graph(tmp_path, *CLUSTER_RUN, "cluster.max_restarts=40")
    again, rows = render_chain(graph, cluster)
    assert [j.name for j in again][:2] == ["cpt_seq8k", "export_formal"] and again[0].after == []
    assert {r["stage"] for r in rows if r["status"] == "done"} == {"prepare", "plan", "parity"}
    # the plan reran (new run id in its marker): everything below it is submitted again, after it
    row = next(r for r in stage_table(graph) if r["stage"] == "plan")
    write_marker(Path(row["marker"]), "plan", row["fingerprint"], row["inputs"], [str(out)], 1.0)
    graph = _graph(tmp_path, *CLUSTER_RUN, "cluster.max_restarts=40")
    rerun, _ = render_chain(graph, cluster)
    assert rerun[0].name == "cpt_seq8k" and len(rerun) == len(first) - 3  # all but prepare, plan, parity


def test_local_backend_renders_the_same_graph_it_runs(tmp_path):
    from hebatron_nemo.pipeline.stages import STAGE_NAMES

    proc = _pipeline(tmp_path, "experiment=tiny_cpu", "cluster=local_slurm", "pipeline.dry_run=true")
    assert proc.returncode == 0, proc.stderr[-3000:]
    chain = json.loads((tmp_path / "runs" / "tiny-easy_to_hard-anchor0.25" / "chain.json").read_text())
    assert [j["name"] for j in chain["jobs"]] == list(STAGE_NAMES)
    assert all(j["kind"] == "cpu" and j["nodes"] == 1 for j in chain["jobs"])
    by = {j["name"]: j for j in chain["jobs"]}
    assert by["cpt"]["after"] == ["plan", "base"] and by["report"]["after"] == ["evaluate", "cpt"]
    # launchers/slurm/chain.py is the same call
    legacy = subprocess.run([sys.executable, "launchers/slurm/chain.py", "--dry-run", "experiment=tiny_cpu"], cwd=REPO,
                            env={**os.environ, "HEBATRON_WORK": str(tmp_path)}, capture_output=True, text=True,
                            timeout=300)
    assert legacy.returncode == 0 and f"chain for cluster local_slurm: {len(STAGE_NAMES)} job(s)" in legacy.stdout, legacy.stderr


def test_array_job_renders_the_task_index_unquoted(tmp_path):
    from hebatron_nemo.launch.slurm import ARRAY_TASK

    cluster = compose_launch("local_slurm", [f"paths.work={tmp_path}"]).cluster
    text = render_sbatch(cluster, StageJob("prepare_shards", "pipeline", ["experiment=x", f"pipeline.shard={ARRAY_TASK}/4"],
                                           array=4))
    assert "#SBATCH --array=0-3" in text and '"pipeline.shard=${SLURM_ARRAY_TASK_ID}/4"' in text
    assert f"#SBATCH --output={tmp_path}/slurm/logs/%x-%A_%a.out" in text
    assert subprocess.run(["bash", "-n"], input=text, text=True).returncode == 0
    with pytest.raises(ConfigError, match="may expand"):
        render_sbatch(cluster, StageJob("x", "pipeline", [f"a=$(rm -rf /){ARRAY_TASK}"], array=2))


@pytest.mark.slow  # a pipeline subprocess and the chain composed again (the fast tier keeps the cluster run's)
def test_gpu_smoke_is_the_same_chain_on_one_node(tmp_path):
    """experiment=hebatron_gpu_smoke composes and renders on CPU: the cluster chain's stages, every job
    on one node, the long segment with CP 2, the scaled-down model in the MB overrides."""
    proc = _pipeline(tmp_path, "experiment=hebatron_gpu_smoke", "cluster=eos_pyxis", "pipeline.dry_run=true")
    assert proc.returncode == 0, proc.stderr[-3000:]
    chain = json.loads((tmp_path / "runs" / "gpu_smoke-easy_to_hard-anchor0.25" / "chain.json").read_text())
    jobs = {j["name"]: j for j in chain["jobs"]}
    assert [j["stage"] for j in chain["jobs"] if j["kind"] == "train"] == ["cpt_short", "cpt_long", "sft"]
    assert {"parity", "export_formal", "export_colloquial", "export_long_context", "export_chat"} <= set(jobs)
    assert all(j["nodes"] == 1 for j in chain["jobs"]) and jobs["cpt_short"]["gpus_per_node"] == 8
    assert jobs["cpt_short"]["expected_hours"] < 0.1
    graph = _graph(tmp_path, "experiment=hebatron_gpu_smoke", "cluster=eos_pyxis")
    short, long = (graph.cfg_of(graph.by_name[n]) for n in ("cpt_short", "cpt_long"))
    assert (short.parallelism.context_parallel_size, long.parallelism.context_parallel_size) == (1, 2)
    assert long.segment == "long"
    assert "model.num_layers=7" in list(short.megatron_bridge.overrides)
    assert "model.num_moe_experts=8" in list(long.megatron_bridge.overrides)
