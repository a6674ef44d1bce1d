"""`recipes/pipeline.py`: the stage graph, its fingerprints and markers, and the smoke_cpu run end to
end (the same graph as the README's demo with fewer steps), including kills in every stage."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from hebatron_nemo.errors import ConfigError
from hebatron_nemo.pipeline.markers import check_marker, clear_marker, write_marker
from hebatron_nemo.pipeline.stages import STAGE_NAMES, fingerprints, stage_table

REPO = Path(__file__).resolve().parents[1]


def _cfg(tmp_path, *overrides):
    from hebatron_nemo.config import register_configs

    register_configs()
    os.environ["HEBATRON_WORK"] = str(tmp_path)
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("pipeline", overrides=["experiment=tiny_cpu", *overrides])


def _changed(a: dict, b: dict) -> set[str]:
    return {s for s in a if a[s]["fingerprint"] != b[s]["fingerprint"]}


def test_a_change_reruns_its_stage_and_everything_below_it_only(tmp_path):
    ref = fingerprints(_cfg(tmp_path))
    assert list(ref) == list(STAGE_NAMES)
    assert _changed(ref, fingerprints(_cfg(tmp_path, "sft.lr=0.0005"))) == {"sft", "export", "evaluate", "report"}
    assert _changed(ref, fingerprints(_cfg(tmp_path, "evaluate.limit=5"))) == {"evaluate", "report"}
    # another arm: a new run folder, so every per-run stage; the shared corpora/prepare/base are reused
    assert _changed(ref, fingerprints(_cfg(tmp_path, "curriculum.order=reversed"))) == {
        "plan", "cpt", "sft", "export", "evaluate", "report"}
    assert _changed(ref, fingerprints(_cfg(tmp_path, "base.tokens=1000"))) == {
        "base", "cpt", "sft", "export", "evaluate", "report"}
    assert _changed(ref, fingerprints(_cfg(tmp_path, "data.filters.min_chars=30"))) == set(STAGE_NAMES) - {"corpora"}
    # what does not change results does not rerun anything
    assert not _changed(ref, fingerprints(_cfg(tmp_path, "logging.progress=false", "threads=1")))


def test_a_stage_that_reran_invalidates_the_stages_below_it(tmp_path):
    cfg = _cfg(tmp_path)
    sft = next(r for r in stage_table(cfg) if r["stage"] == "sft")
    out = tmp_path / "out"
    out.write_text("x")
    write_marker(Path(sft["marker"]), "sft", sft["fingerprint"], {}, [str(out)], 1.0)
    first = fingerprints(cfg)
    write_marker(Path(sft["marker"]), "sft", sft["fingerprint"], {}, [str(out)], 1.0)  # e.g. pipeline.force=[sft]
    assert _changed(first, fingerprints(cfg)) == {"export", "evaluate", "report"}


def test_marker_counts_only_with_the_same_fingerprint_and_its_outputs(tmp_path):
    out = tmp_path / "model.bin"
    out.write_text("x")
    path = tmp_path / "m" / "cpt.done.json"
    write_marker(path, "cpt", "abc", {}, [str(out)], 1.5)
    assert check_marker(path, "abc").done
    assert "inputs changed" in check_marker(path, "abd").reason
    out.unlink()
    assert "output missing" in check_marker(path, "abc").reason
    clear_marker(path)
    clear_marker(path)  # idempotent
    assert check_marker(path, "abc").reason == "no completion marker"
    with pytest.raises(RuntimeError, match="does not exist"):
        write_marker(path, "cpt", "abc", {}, [str(out)], 1.0)
    assert not path.exists()


def test_stage_selection_errors_name_the_field_and_the_missing_stage(tmp_path):
    with pytest.raises(ConfigError, match=r"pipeline.only: unknown stage\(s\) \['cpu'\]"):
        stage_table(_cfg(tmp_path, "pipeline.only=[cpu]"))
    with pytest.raises(ConfigError, match="stage cpt needs stage plan"):
        stage_table(_cfg(tmp_path, "pipeline.only=[cpt]"))
    rows = stage_table(_cfg(tmp_path, "pipeline.skip=[evaluate,report]"))
    assert [r["status"] for r in rows] == ["run"] * 8 + ["skip", "skip"]  # 8: prepare_sft before sft


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path):
    env = {**os.environ, "HEBATRON_WORK": str(tmp_path)}
    proc = subprocess.run([sys.executable, "recipes/pipeline.py", "experiment=tiny_cpu", "pipeline.dry_run=true"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in STAGE_NAMES:
        assert f"{name}" in proc.stdout
    assert not any(tmp_path.rglob("*.done.json")) and not (tmp_path / "data").exists()
    bad = subprocess.run([sys.executable, "recipes/pipeline.py", "experiment=tiny_cpu", "pipeline.force=[sfft]"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "pipeline.force: unknown stage(s) ['sfft']" in bad.stderr


# ---- end to end: experiment=smoke_cpu --------------------------------------------------------------

SMOKE = ["experiment=smoke_cpu", "logging.progress=false"]


def _pipeline(work: Path, *extra, timeout=1500):
    env = {**os.environ, "HEBATRON_WORK": str(work), "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "recipes/pipeline.py", *SMOKE, *extra], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _markers(work: Path) -> dict[str, dict]:
    return {json.loads(p.read_text())["stage"]: json.loads(p.read_text()) for p in work.rglob("*.done.json")}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    work = tmp_path_factory.mktemp("smoke")
    proc = _pipeline(work)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return work, proc.stdout


@pytest.mark.slow
def test_smoke_pipeline_runs_every_stage_and_reports(smoke):
    work, stdout = smoke
    run = work / "runs" / "smoke-easy_to_hard-anchor0.25"
    assert set(_markers(work)) == set(STAGE_NAMES)
    summary = json.loads((run / "pipeline" / "summary.json").read_text())
    assert [r["status"] for r in summary["stages"]] == ["ran"] * len(STAGE_NAMES)
    h = summary["headline"]
    assert h["he_loss"]["end"] < h["he_loss"]["start"] - 0.3  # Hebrew learned against the base
    assert h["anchor_loss"]["end"] < h["anchor_loss"]["start"] + 0.5  # English held by the anchor
    report = (run / "report.md").read_text()
    assert "## Validation against the starting model" in report and "eval/he_loss" in report
    assert "=== pipeline summary" in stdout and f"report: {run / 'report.md'}" in stdout
    # the CPT ledger realized exactly the plan, every stage produced what the next one reads
    ledger = json.loads((run / "ledger.json").read_text())
    for phase, row in ledger["phases"].items():
        assert row["samples"] == row["planned_samples"], phase
    assert (run / "sft" / "model" / "COMPLETE").exists() and (run / "hf" / "sft").is_dir()
    plan = json.loads((run / "plan.json").read_text())
    assert [ph["name"] for ph in plan["phases"]] == ["formal", "colloquial", "long_context"]
    assert {s["anchor_share_effective"] for s in plan["segments"]} == {0.25} and not plan["warnings"]
    series = json.loads((run / "eval" / "series.json").read_text())
    assert [m["name"] for m in series["models"]][0] == "base" and series["models"][-1]["name"] == "sft"
    # the prepared demo corpora: every source tokenized with held-out splits; the pairs for SFT/eval
    prepared = json.loads((work / "data" / "demo" / "prepare_summary.json").read_text())
    tokenized = {n: m for n, m in prepared.items() if m["kind"] == "source"}
    assert set(tokenized) == {"he_tanakh", "he_mishnah", "he_modern", "he_long", "en_kjv", "en_jps"}
    for name, m in tokenized.items():
        assert m["splits"]["train"]["tokens"] > 50_000, name
        assert m["splits"]["valid"]["documents"] >= 1 and m["splits"]["test"]["documents"] >= 1, name
    assert tokenized["he_tanakh"]["report"]["removed_docs"]["decontaminated"] >= 20
    hist = tokenized["he_long"]["splits"]["train"]["length_histogram"]
    long_tokens = sum(t for edge, t in zip(hist["bin_lower_edges"], hist["tokens"]) if edge >= 512)
    assert long_tokens > 0.9 * tokenized["he_long"]["splits"]["train"]["tokens"]


@pytest.mark.slow
def test_a_rerun_skips_every_completed_stage(smoke):
    work, _ = smoke
    before = _markers(work)
    t0 = time.time()
    proc = _pipeline(work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "=== stage" not in proc.stdout  # nothing ran
    assert _markers(work) == before
    assert time.time() - t0 < 120
    # a changed SFT setting reruns SFT and what follows it, nothing above
    proc = _pipeline(work, "sft.lr=0.0005", "pipeline.dry_run=true")
    status = {line.split()[0]: line.split()[1] for line in proc.stdout.splitlines()
              if line.split() and line.split()[0] in STAGE_NAMES}
    assert status == {"corpora": "done", "prepare": "done", "plan": "done", "prepare_sft": "done", "base": "done", "cpt": "done",
                      "sft": "run", "export": "run", "evaluate": "run", "report": "run"}


def _run_until_killed(work: Path, stage: str, delay: float) -> str:
    """Starts the pipeline, SIGKILLs it `delay` seconds into `stage`; returns what it printed."""
    env = {**os.environ, "HEBATRON_WORK": str(work), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "recipes/pipeline.py", *SMOKE], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    seen = []
    deadline = time.time() + 1200
    for line in proc.stdout:
        seen.append(line)
        if line.startswith(f"=== stage {stage}:"):
            time.sleep(delay)
            os.killpg(proc.pid, signal.SIGKILL)
            break
        assert time.time() < deadline, "".join(seen[-50:])
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "".join(seen[-50:])  # it was killed, not finished
    return "".join(seen)


@pytest.mark.slow
def test_killed_in_any_stage_the_rerun_finishes_without_redoing_completed_stages(smoke, tmp_path):
    reference, _ = smoke
    work = tmp_path
    finished: dict[str, str] = {}
    # kill mid-way through the stages that take time (and at once in the quick ones)
    for stage, delay in (("prepare", 8), ("plan", 0.5), ("base", 5), ("cpt", 7), ("sft", 4), ("export", 1),
                         ("evaluate", 3), ("report", 0.2)):
        out = _run_until_killed(work, stage, delay)
        markers = _markers(work)
        assert stage not in markers, f"{stage} marked complete although killed"
        for name, done in finished.items():  # completed stages were skipped, not redone
            assert markers[name]["finished"] == done, name
            assert f"=== stage {name}:" not in out, name
        finished = {n: m["finished"] for n, m in markers.items()}
    proc = _pipeline(work)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert set(_markers(work)) == set(STAGE_NAMES)
    # the interrupted run ends where the uninterrupted one did: same plan, same ledger, same weights
    run, ref = (d / "runs" / "smoke-easy_to_hard-anchor0.25" for d in (work, reference))
    # (plan fingerprints differ: they include the work folders' paths)
    phases = [[(p["name"], p["counts"], p["start_sample"], p["end_sample"]) for p in
               json.loads((d / "plan.json").read_text())["phases"]] for d in (run, ref)]
    assert phases[0] == phases[1]
    assert json.loads((run / "ledger.json").read_text())["phases"] == json.loads((ref / "ledger.json").read_text())["phases"]
    from safetensors.torch import load_file

    for model in ("model", "sft/model"):
        a = load_file(str(run / model / "training_state.safetensors"))
        b = load_file(str(ref / model / "training_state.safetensors"))
        assert a.keys() == b.keys()
        worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
        assert worst < 1e-4, (model, worst)


def _fake_run(root: Path, name: str, share: float, order: str, anchor_loss: tuple, he_loss: tuple) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "plan.json").write_text(json.dumps({"curriculum": {"name": "tiny", "order": order},
                                             "anchor": {"share": share}, "fingerprint": "f" + name,
                                             "totals": {"tokens": 1000, "curriculum_tokens": 750,
                                                        "anchor_tokens": 250, "steps": 10}}))
    recs = [{"kind": "eval", "step": s, "tokens": t, "values": {"eval/anchor_loss": a, "eval/he_loss": h}}
            for s, t, a, h in ((0, 0, anchor_loss[0], he_loss[0]), (10, 1000, anchor_loss[1], he_loss[1]))]
    (d / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in recs))
    return d


def test_report_compares_the_anchor_arms_of_the_same_curriculum(tmp_path):
    from hebatron_nemo.eval.report import eval_change, sibling_arms, write_report

    mine = _fake_run(tmp_path, "tiny-easy_to_hard-anchor0.25", 0.25, "easy_to_hard", (4.2, 4.0), (8.0, 6.0))
    none = _fake_run(tmp_path, "tiny-easy_to_hard-anchor0.0", 0.0, "easy_to_hard", (4.2, 10.3), (8.0, 5.9))
    _fake_run(tmp_path, "tiny-reversed-anchor0.0", 0.0, "reversed", (4.2, 9.0), (8.0, 6.1))  # another order
    assert sibling_arms(mine) == [none]
    change = eval_change(mine)
    assert change["he_loss"] == {"start": 8.0, "end": 6.0, "start_tokens": 0, "end_tokens": 1000}
    assert [a["run"] for a in change["arms"]] == [none.name]
    text = write_report(mine).read_text()
    assert "## Anchor arms" in text
    assert "Against the no-anchor arm: English anchor loss at the end 4.0000 here vs 10.3000 without the anchor (-6.3000)" in text


def test_schedule_outline_is_the_plans_step_arithmetic(tmp_path):
    """The chain computes phase-end iterations without the data; the plan built over data must agree."""
    from mb_fixtures import cluster_overrides, prepare_cluster_sources

    from hebatron_nemo.curriculum.plan import build_plan
    from hebatron_nemo.pipeline.stages import compose_pipeline, schedule_outline

    data = prepare_cluster_sources(tmp_path)
    for order in ("easy_to_hard", "reversed", "none"):
        cfg = compose_pipeline(["experiment=hebatron_h100x64", f"curriculum.order={order}",
                                *cluster_overrides(tmp_path, data)])
        plan = build_plan(cfg, log=lambda *a, **k: None)
        outline = schedule_outline(cfg)
        assert [(s["name"], s["start_step"], s["steps"], s["tokens"]) for s in outline] == [
            (s["name"], s["start_step"], s["batches"], s["tokens"]) for s in plan["segments"]]
        assert [(p["name"], p["end_step"]) for s in outline for p in s["phases"]] == [
            (p["name"], p["end_step"]) for p in plan["phases"]]
