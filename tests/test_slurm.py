"""Launchers on a real Slurm: the rendered sbatch of a tiny CPT (torch.distributed.run, 2 processes over
gloo) runs to completion; a job warned as Slurm warns before a preemption checkpoints, requeues
itself, resumes and ends in the same state as the uninterrupted run; and the cluster run's whole chain (experiment=hebatron_h100x64) runs as dependent jobs, its GPU jobs as Megatron-Bridge dry runs."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import os

from stage_conf import stage_args, write_stage_conf

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


# A transformer_engine stand-in for the dry-run jobs: MB imports TE at module level and TE exists only as
# CUDA builds. Every attribute is an inert class, so nothing needing TE's kernels can run (a dry run
# only composes configs). The same idea as tests/mb_tier/conftest.py, installed through sitecustomize
# because a Slurm job is a fresh interpreter.
TE_STUB = """
import importlib.abc, importlib.machinery, sys, types

class _Inert(type):
    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Inert(name, (object,), {})

class _Loader(importlib.abc.Loader):
    def create_module(self, spec):
        m = types.ModuleType(spec.name)
        m.__path__ = []
        def attr(name):
            if name.startswith("__"):
                raise AttributeError(name)
            return _Inert(name, (object,), {})
        m.__getattr__ = attr
        if spec.name == "transformer_engine":
            m.__version__ = "2.14.0"
        return m
    def exec_module(self, module):
        pass

class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "transformer_engine" or name.startswith("transformer_engine."):
            return importlib.machinery.ModuleSpec(name, _Loader(), is_package=True)
        return None

sys.meta_path.insert(0, _Finder())
"""


def _cluster_corpora(root: Path) -> tuple[Path, Path]:
    """Raw JSONL corpora under the cluster registry's source names (conf/data/hebatron.yaml), and a
    byte-level BPE tokenizer of them (the Nemotron tokenizer is not here)."""
    from corpus import ENGLISH, HEBREW, make_docs, write_jsonl

    from hebatron_nemo.data.tokenizer import train_byte_level_bpe

    raw = root / "raw"
    for k, (name, sents, n, lo, hi) in enumerate([("he_formal", HEBREW, 120, 2, 6), ("he_colloquial", HEBREW, 80, 2, 6),
                                                  ("he_long", HEBREW, 24, 600, 800), ("en_anchor", ENGLISH, 160, 50, 70)]):
        write_jsonl(raw / name / "part0.jsonl", make_docs(sents, n, seed=k, min_sent=lo, max_sent=hi, prefix=name))
    tok = root / "tok"
    train_byte_level_bpe(HEBREW + ENGLISH, str(tok), 600, 1, {"test": 1})
    return raw, tok


def _cluster_sft_corpora(root: Path) -> Path:
    """Small files under the SFT registry's source paths (conf/sft_data/hebatron.yaml): chats, instruction
    and reasoning Parquet, translation pairs, English anchor chats."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from corpus import ENGLISH, HEBREW, write_jsonl

    raw, n = root / "sft_raw", 30
    he = [f"{HEBREW[i % len(HEBREW)]} {i}" for i in range(n)]
    en = [f"{ENGLISH[i % len(ENGLISH)]} {i}" for i in range(n)]
    write_jsonl(raw / "he_chat" / "part0.jsonl", [
        {"messages": [{"role": "user", "content": f"שאלה {he[i]}"}, {"role": "assistant", "content": he[(i + 1) % n]}]}
        for i in range(n)])
    (raw / "he_instruction").mkdir(parents=True)
    pq.write_table(pa.table({"prompt": [f"הוראה {t}" for t in he], "response": en}),
                   raw / "he_instruction" / "part0.parquet")
    (raw / "he_reasoning").mkdir(parents=True)
    pq.write_table(pa.table({"prompt": [f"חשב {t}" for t in he], "response": he[::-1], "reasoning": en[::-1]}),
                   raw / "he_reasoning" / "part0.parquet")
    write_jsonl(raw / "he_en_pairs" / "part0.jsonl", [{"he": h, "en": e} for h, e in zip(he, en)])
    write_jsonl(raw / "en_chat" / "part0.jsonl", [
        {"messages": [{"role": "user", "content": f"Repeat: {e}"}, {"role": "assistant", "content": e}]} for e in en])
    return raw


def _mb_child_env(root: Path) -> dict:
    """The environment a dry-run job needs to import the real Megatron-Bridge (as tests/test_mb_tier.py
    runs its child): the MB tier and the compat layer on PYTHONPATH, and the TE stand-in."""
    mb, compat = os.environ.get("HEBATRON_MB_DIR", ""), os.environ.get("HEBATRON_COMPAT_DIR", "")
    if not (mb and (Path(mb) / "megatron" / "bridge").is_dir() and compat):
        pytest.fail(f"the Megatron-Bridge tier is not installed (HEBATRON_MB_DIR={mb!r}); run the tests with make test")
    site = root / "te_stub"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(TE_STUB)
    return {"PYTHONPATH": os.pathsep.join([str(site), mb, compat, str(Path(__file__).resolve().parents[1])])}


def _chain(args: list[str], env: dict) -> subprocess.CompletedProcess:
    repo = Path(__file__).resolve().parents[1]
    return subprocess.run([sys.executable, "recipes/pipeline.py", *args], cwd=repo, capture_output=True, text=True,
                          timeout=600, env=env)


def test_the_cluster_chain_runs_on_slurm_and_a_resubmission_submits_nothing(slurm_cluster, tmp_path):
    """experiment=hebatron_h100x64 on the local Slurm: prepare (one job: the datatrove graph, 2 tasks per source) and plan run
    for real on CPU; every GPU job runs with megatron_bridge.dry_run=true, the CPT jobs composing the real
    Megatron-Bridge ConfigContainer of their segment; then the same command submits nothing."""
    raw, tok = _cluster_corpora(tmp_path)
    sft_raw = _cluster_sft_corpora(tmp_path)
    work = tmp_path / "work"
    child = _mb_child_env(tmp_path)
    args = ["experiment=hebatron_h100x64", "cluster=local_slurm", f"cluster.python={sys.executable}",
            f"+cluster.env.PYTHONPATH={child['PYTHONPATH']}", f"paths.work={work}", f"data.raw_dir={raw}",
            f"sft_data.raw_dir={sft_raw}", "sft_data.total=40",
            f"tokenizer.path={tok}", "megatron_bridge.dry_run=true", "pipeline.prepare.tasks=2",
            "curriculum.max_epochs=1000000000", "build_caches=false", "data.near_dedup.enabled=false",
            "data.decontamination.enabled=false", "sft_data.decontamination.enabled=false",
            f"megatron_bridge.hf_model_dir={tmp_path / 'no_base_model'}"]
    env = {**os.environ, "HEBATRON_WORK": str(work)}
    proc = _chain(args, env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = work / "runs" / "hebatron-easy_to_hard-anchor0.25"
    chain = json.loads((run / "chain.json").read_text())
    jobs = {j["name"]: j for j in chain["jobs"]}
    assert list(jobs)[:2] == ["prepare", "plan"] and jobs["prepare"]["array"] is None
    assert all(j["job_id"] for j in chain["jobs"]) and not chain["dry_run"]
    assert job_info(jobs["plan"]["job_id"])["Dependency"] in (f"afterok:{jobs['prepare']['job_id']}(unfulfilled)",
                                                             "(null)")
    logs = work / "slurm" / "logs"
    for name, j in jobs.items():
        log = logs / (f"heb-{name}-{j['job_id']}_0.out" if j["array"] else f"heb-{name}-{j['job_id']}.out")
        wait_for(j["job_id"], {"COMPLETED"}, timeout=900, log=log)
    for name, j in jobs.items():
        if j["marker"]:
            assert json.loads(Path(j["marker"]).read_text())["stage"] == name
    # the CPU jobs ran for real: the graph's 2 tasks per source merged, the plan over them
    manifest = json.loads((work / "data" / "hebatron" / "he_formal" / "manifest.json").read_text())
    assert manifest["kind"] == "source" and manifest["tasks"] == 2
    # the SFT registry was prepared once, by its own CPU job, composed like the SFT job (sft_data=hebatron)
    [prepared_dir] = (work / "sft_data").glob("hebatron-*")
    prepared = json.loads((prepared_dir / "manifest.json").read_text())
    assert prepared["samples"] == 40
    plan = json.loads((run / "plan.json").read_text())
    assert [s["name"] for s in plan["segments"]] == ["seq8k", "seq64k"]
    # the GPU jobs composed the real Megatron-Bridge config of their segment, without a GPU
    for name, seg in (("cpt_seq8k", 0), ("cpt_seq64k", 1)):
        text = (run / "pipeline" / "dry_run" / f"{name}.txt").read_text()
        assert f"Megatron-Bridge CPT, segment {seg}" in text and "# resolved ConfigContainer" in text, text[-2000:]
    assert "context_parallel_size: 8" in (run / "pipeline" / "dry_run" / "cpt_seq64k.txt").read_text()
    assert "Megatron-Bridge SFT: parallelism=h100_16gpu" in (run / "pipeline" / "dry_run" / "sft.txt").read_text()
    # resubmitting the chain submits nothing: every stage's marker matches
    again = _chain(args, env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "chain for cluster local_slurm: 0 job(s)" in again.stdout
    assert json.loads((run / "chain.json").read_text())["jobs"] == []


def _prepare_on_slurm(args: list[str], env: dict) -> tuple[subprocess.CompletedProcess, dict[str, str]]:
    """recipes/prepare_data.py with cluster=local_slurm; returns the process and {stage: job id}."""
    import re

    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "recipes/prepare_data.py", *args], cwd=repo, capture_output=True,
                          text=True, timeout=300, env=env)
    jobs = dict(re.findall(r"^\s+(\w+)\s+\d+ task\(s\): \d+ submitted as job (\d+)", proc.stdout, re.M))
    return proc, jobs


def _wait_array(job_id: str, timeout: float = 600) -> None:
    """Every task of a job array finished (squeue lists none), and none of them failed."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        out = subprocess.run(["squeue", "-h", "-j", job_id], capture_output=True, text=True).stdout
        if not out.strip():
            break
        time.sleep(1)
    else:
        pytest.fail(f"job array {job_id} still queued after {timeout}s")
    states = subprocess.run(["sacct", "-n", "-X", "-j", job_id, "-o", "State"], capture_output=True, text=True)
    if states.returncode == 0 and states.stdout.strip():  # sacct needs accounting: without it, trust the markers
        assert set(states.stdout.split()) <= {"COMPLETED"}, states.stdout


def test_prepare_runs_as_slurm_job_arrays_and_a_resubmission_skips_finished_tasks(slurm_cluster, tmp_path):
    """`prepare_data.py cluster=local_slurm`: each stage of the datatrove graph is a job array after the
    previous one; the manifests appear when the merge array ends. Resubmitting after a task is lost
    submits that task (and what depends on it) only; resubmitting a finished run submits nothing."""
    from corpus import ENGLISH, HEBREW, make_docs, write_jsonl

    raw = tmp_path / "raw"
    write_jsonl(raw / "he.jsonl", make_docs(HEBREW, 60, seed=1, prefix="he"))
    write_jsonl(raw / "en.jsonl", make_docs(ENGLISH, 40, seed=2, prefix="en"))
    reg = tmp_path / "conf" / "data"
    reg.mkdir(parents=True)
    (reg / "tiny.yaml").write_text(textwrap.dedent(f"""
        defaults: [data_schema]
        name: tiny
        raw_dir: {raw}
        output_dir: {tmp_path / "out"}
        decontamination: {{eval_tasks: []}}
        sources:
          he_a: {{language: he, register: formal, path: he.jsonl, id_field: id, licence: test}}
          en_a: {{language: en, register: anchor, role: anchor, path: en.jsonl, id_field: id, licence: test}}
    """))
    args = ["data=tiny", f"hydra.searchpath=[file://{reg.parent}]", "tasks=2", "workers=2",
            "cluster=local_slurm", f"tokenizer.path={tmp_path / 'tok'}", "tokenizer.train.enabled=true",
            "tokenizer.train.vocab_size=400", "tokenizer.train.min_frequency=1", f"paths.work={tmp_path}"]
    env = {**os.environ, "HEBATRON_WORK": str(tmp_path), "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    proc, jobs = _prepare_on_slurm(args, env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert list(jobs) == ["clean", "buckets", "cluster", "tokenize", "merge"], proc.stdout
    assert job_info(jobs["buckets"])["Dependency"].startswith(f"afterok:{jobs['clean']}") or \
        job_info(jobs["buckets"])["Dependency"] == "(null)"
    _wait_array(jobs["merge"])
    manifests = {n: json.loads((tmp_path / "out" / n / "manifest.json").read_text()) for n in ("he_a", "en_a")}
    assert all(m["tasks"] == 2 and m["report"]["seen_docs"] for m in manifests.values())
    # lose one task of the clean stage: the resubmission runs it, and the stages after it, again
    [work] = (tmp_path / "out" / ".prepare").iterdir()
    (work / "logs" / "clean" / "completions" / "00003").unlink()
    for n in manifests:
        (tmp_path / "out" / n / "manifest.json").unlink()
    proc, jobs = _prepare_on_slurm(args, env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "clean        4 task(s): 1 submitted" in proc.stdout, proc.stdout
    _wait_array(jobs["merge"])
    again = {n: json.loads((tmp_path / "out" / n / "manifest.json").read_text()) for n in manifests}
    assert {n: m["splits"] for n, m in again.items()} == {n: m["splits"] for n, m in manifests.items()}
    # a finished run: nothing to submit
    proc, jobs = _prepare_on_slurm(args, env)
    assert proc.returncode == 0 and not jobs and proc.stdout.count("up to date") == 2, proc.stdout
