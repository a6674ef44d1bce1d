"""The local backend: bit-exact resume after SIGKILL, data parallel over gloo, router balancing,
checkpoints, schedule, and resume refusal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from corpus import synthetic_prepared, train_config

from hebatron_nemo.backends.local import checkpoint
from hebatron_nemo.backends.local.schedule import WSDSchedule

REPO = Path(__file__).resolve().parents[1]
SOURCES = ["he_a", "he_b", "he_long", "en_x", "en_y"]
SEGS = [{"name": "s1", "seq_length": 32, "global_batch_size": 8, "micro_batch_size": 2, "data_parallel_size": 2},
        {"name": "s2", "seq_length": 64, "global_batch_size": 4, "micro_batch_size": 1, "data_parallel_size": 2}]
PHASES = [{"name": "formal", "segment": "s1", "tokens": 1000, "sources": {"he_a": 0.7, "he_b": 0.3}},
          {"name": "colloquial", "segment": "s1", "tokens": 600, "sources": {"he_b": 1.0}},
          {"name": "long", "segment": "s2", "tokens": 700, "sources": {"he_long": 1.0}}]
ANCHOR = {"share": 0.25, "sources": {"en_x": 0.5, "en_y": 0.5}}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("train")
    synthetic_prepared(tmp / "data", {"he_a": 120, "he_b": 100, "en_x": 150, "en_y": 120}, vocab=512, mean_len=60)
    synthetic_prepared(tmp / "data", {"he_long": 60}, seed=1, vocab=512, mean_len=200)
    return tmp


DRIVER = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from corpus import train_config
    from hebatron_nemo.backends.local import cpt, router
    cfg = train_config(Path({data!r}), {sources!r}, {phases!r}, {segs!r}, {anchor!r}, **{overrides!r})
    cfg.run_dir = {run_dir!r}
    cpt.ensure_base(cfg, log=lambda *a: None)  # stage 0 first, so the kill counts CPT steps only
    if {kill_at}:
        original = router.RouterBalancer.step
        calls = [0]
        def dying(self, group=None):
            original(self, group)  # the step has happened; die before it is checkpointed
            calls[0] += 1
            if calls[0] == {kill_at}:
                os.kill(os.getpid(), signal.SIGKILL)
        router.RouterBalancer.step = dying
    cpt.run_cpt(cfg, log=lambda *a: None)
""")


def _drive(data, run_dir, kill_at=0, nproc=1, overrides=None, phases=PHASES):
    overrides = {"checkpoint.save_interval": 3, "eval.eval_interval": 4, **(overrides or {})}
    script = DRIVER.format(data=str(data), sources=SOURCES, phases=phases, segs=SEGS,
                           anchor=ANCHOR, overrides=overrides, run_dir=str(run_dir), kill_at=kill_at)
    path = Path(run_dir).parent / f"driver-{Path(run_dir).name}.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(script)
    cmd = [sys.executable, str(path)] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-port",
        str(29600 + os.getpid() % 300), str(path)]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)


def _train_records(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
            if json.loads(line)["kind"] == "train"]


def _logged(run_dir, kind):
    """(step, record less its wall-clock fields) of every `kind` record, in file order."""
    out = []
    for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r["kind"] == kind:
            out.append((r["step"], {k: v for k, v in r.items() if k not in ("time", "tokens_per_second")}))
    return out


def _same_records(reference, run):
    """Every eval and router-health record of the resumed run equals the uninterrupted run's, once each."""
    for kind in ("eval", "router", "checkpoint"):
        got, ref = _logged(run, kind), _logged(reference, kind)
        steps = [s for s, _ in got]
        assert len(steps) == len(set(steps)), f"{kind} records logged twice: {steps}"
        if kind != "checkpoint":  # a resumed run's periodic checkpoints are its own
            assert got == ref, kind


@pytest.fixture(scope="module")
def reference(data):
    run = data / "runs" / "reference"
    proc = _drive(data, run)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", [5, 11])
def test_sigkill_and_resume_is_bit_exact(data, reference, kill_at):
    """Killed mid-phase (step 5) and right after the segment boundary (step 11, the first step at
    sequence length 64), the resumed run's loss curve and final weights equal the uninterrupted run's."""
    plan = json.loads((reference / "plan.json").read_text())
    assert plan["segments"][1]["start_step"] == 10  # so step 11 is the first of the second segment
    run = data / "runs" / f"killed-{kill_at}"
    proc = _drive(data, run, kill_at=kill_at)
    assert proc.returncode == -9, proc.stderr[-3000:]
    assert not (run / "model").exists()
    proc = _drive(data, run)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ref, got = _train_records(reference), _train_records(run)
    assert [r["step"] for r in got] == list(range(1, len(ref) + 1))
    assert [r["loss"] for r in got] == [r["loss"] for r in ref]  # bit for bit
    assert [r["loss_by_source"] for r in got] == [r["loss_by_source"] for r in ref]
    # the router-health window (steps 1-10 at kill_at=5, resumed from step 3) and the evals continue too
    _same_records(reference, run)
    from safetensors.torch import load_file

    a, b = load_file(str(reference / "model" / "training_state.safetensors")), load_file(str(run / "model" / "training_state.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((run / "ledger.json").read_text())["phases"] == json.loads((reference / "ledger.json").read_text())["phases"]


@pytest.mark.slow
def test_kill_before_the_first_checkpoint_and_partial_writes(data, reference):
    """Killed at step 2 (before the first checkpoint, at step 3) and with the temp folders a write
    killed mid-way leaves: the rerun starts over, logs the step-0 eval once, and removes the leftovers."""
    run = data / "runs" / "killed-early"
    proc = _drive(data, run, kill_at=2)
    assert proc.returncode == -9, proc.stderr[-3000:]
    assert not (run / "checkpoints").exists() or not list((run / "checkpoints").glob("step-*"))
    assert [s for s, _ in _logged(run, "eval")] == [0]
    leftovers = [run / "checkpoints" / ".tmp-step-0000003-4242", run / "model.tmp-4242",
                 run / "segments" / "s1" / "model.tmp-4242"]
    for d in leftovers:
        d.mkdir(parents=True)
        (d / "model.safetensors").write_bytes(b"partial")
    proc = _drive(data, run)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [r["loss"] for r in _train_records(run)] == [r["loss"] for r in _train_records(reference)]
    _same_records(reference, run)  # the step-0 eval once, not once per attempt
    assert [p for p in leftovers if p.exists()] == []


def test_router_state_round_trips_through_a_checkpoint():
    from hebatron_nemo.backends.local.router import RouterBalancer
    from hebatron_nemo.models.nemotron_h import build_model, load_model_config

    model = build_model(load_model_config("micro"), 64, seed=0).train()
    a = RouterBalancer(model)
    model(input_ids=torch.randint(0, 64, (2, 16)), use_cache=False)
    saved = json.loads(json.dumps(a.state()))  # as trainer.json stores it
    before = a.stats(reset=False)
    a.remove()
    b = RouterBalancer(model)
    b.load_state(saved)
    assert b.stats(reset=False) == before and sum(map(sum, saved)) > 0
    with pytest.raises(ValueError, match="experts per router"):
        b.load_state([[1.0, 2.0]])
    b.load_state(None)  # a checkpoint written before the counters were saved
    assert b.stats() == {}
    b.remove()


@pytest.mark.slow
def test_two_processes_over_gloo_match_one(data, reference):
    run = data / "runs" / "dp2"
    proc = _drive(data, run, nproc=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ref, got = _train_records(reference), _train_records(run)
    assert len(got) == len(ref)
    for r, g in zip(ref, got):
        # the same global batches: the same loss tokens per source at every step ...
        assert g["loss_tokens_by_source"] == r["loss_tokens_by_source"]
        # ... and the same losses up to float summation order
        assert g["loss"] == pytest.approx(r["loss"], rel=1e-5)
    assert json.loads((run / "ledger.json").read_text())["totals"] == json.loads((reference / "ledger.json").read_text())["totals"]


@pytest.mark.slow  # the reference fixture: a training subprocess
def test_ledger_and_metrics_of_a_run(data, reference):
    ledger = json.loads((reference / "ledger.json").read_text())
    plan = json.loads((reference / "plan.json").read_text())
    for p in plan["phases"]:
        row = ledger["phases"][p["name"]]
        assert row["complete"]
        curriculum = {plan["streams"][int(s)]["source"] for s in p["counts"]}
        for src in curriculum:
            assert row["samples"][src] == row["planned_samples"][src]
        assert row["anchor_samples"] == p["anchor_samples"]
    records = [json.loads(line) for line in (reference / "metrics.jsonl").read_text().splitlines()]
    kinds = {r["kind"] for r in records}
    assert {"train", "eval", "router", "checkpoint"} <= kinds
    first_eval = next(r for r in records if r["kind"] == "eval")
    assert first_eval["step"] == 0 and "eval/anchor_loss" in first_eval["values"]  # the base model's numbers
    assert "eval/he_loss/formal" in first_eval["values"] and "eval/mc_acc/en" in first_eval["values"]
    forced = [r for r in records if r["kind"] == "checkpoint" and r["values"]["forced"]]
    assert {r["values"]["phase_end"] for r in forced} == {"formal", "colloquial", "long"}
    assert (reference / "tensorboard").exists()
    steps = sorted(int(p.name.split("-")[1]) for p in (reference / "checkpoints").glob("step-*"))
    assert {p["end_step"] for p in plan["phases"]} <= set(steps)  # phase ends are always kept


@pytest.mark.slow  # two training subprocesses
def test_resume_refuses_a_changed_completed_phase(data, reference):
    run = data / "runs" / "changed"
    proc = _drive(data, run, overrides={"max_steps": 7})  # formal (6 steps) complete, colloquial started
    assert proc.returncode == 0, proc.stderr[-3000:]
    changed = [{**PHASES[0], "sources": {"he_a": 0.2, "he_b": 0.8}}] + PHASES[1:]
    proc = _drive(data, run, phases=changed)
    assert proc.returncode != 0
    assert "cannot resume: phase 'formal' (completed" in proc.stderr


def test_damaged_checkpoint_is_skipped_and_nothing_is_unpickled(data, monkeypatch, tmp_path):
    """Two checkpoints written by checkpoint.save after real optimizer steps (no training run needed):
    the newest damaged, latest() falls back to the older one, which loads without unpickling."""
    from hebatron_nemo.models.nemotron_h import build_model
    from hebatron_nemo.backends.local.trainer import make_optimizer

    cfg = train_config(data, SOURCES, PHASES, SEGS, ANCHOR)
    run = tmp_path / "run"
    model = build_model(cfg.model, 512)
    opt = make_optimizer(model, cfg.optim)
    x = torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(0))
    for step in (3, 6):
        model(input_ids=x, labels=x, use_cache=False).loss.backward()
        opt.step()
        opt.zero_grad()
        checkpoint.save(run, step, model, opt, {"step": step}, {"phases": {}})
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    assert checkpoint.latest(run, log=lambda *a: None).name == "step-0000006"
    newest = sorted((run / "checkpoints").glob("step-*"))[-1]
    with open(newest / "optimizer.safetensors", "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01\x02")
    logs = []
    with pytest.warns(UserWarning, match="skipping damaged checkpoint"):
        found = checkpoint.latest(run, log=logs.append)
    assert found is not None and found != newest and "does not match its recorded hash" in logs[0]
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load (pickle) was called"))
    fresh = build_model(cfg.model, 512, seed=1)
    state = checkpoint.load(found, fresh, make_optimizer(fresh, cfg.optim))
    assert found.name == "step-0000003" and state["step"] == 3
    loaded = fresh.state_dict()  # step 3's weights: not the fresh init, not step 6's
    assert any(not torch.equal(loaded[k], saved[k]) for k in saved)
    assert all(torch.equal(loaded[k], v) for k, v in load_file(str(found / "model.safetensors")).items())


def test_wsd_schedule_over_tokens():
    s = WSDSchedule(1e-3, 1e-4, total_tokens=10_000, warmup_fraction=0.1, decay_fraction=0.2,
                    segment_starts=[0, 6000])
    assert s(0) == pytest.approx(1e-3 / 1000) and s(999) == pytest.approx(1e-3) and s(5000) == 1e-3
    assert s(6000) == s(5999) == 1e-3  # no re-warm at the segment boundary
    assert s(8000) == pytest.approx(1e-3) and s(9000) == pytest.approx(5.5e-4) and s(10_000) == pytest.approx(1e-4)
    rewarm = WSDSchedule(1e-3, 1e-4, 10_000, 0.1, 0.2, [0, 6000], rewarm_each_segment=True)
    assert rewarm(6000) < 1e-5 and rewarm(7000) == 1e-3


@pytest.mark.slow  # trains the micro model twice (30 steps each)
def test_router_balancing_raises_routing_entropy():
    """A router collapsed onto two of four experts (its expert bias skewed, as after a bad stretch of
    Hebrew data): with the seq aux loss and the bias update on, per-layer routing entropy recovers;
    with both at zero the collapse stays."""
    from hebatron_nemo.backends.local.router import RouterBalancer
    from hebatron_nemo.models.nemotron_h import build_model, load_model_config

    def run(coeff, rate):
        model = build_model(load_model_config("micro"), 256, seed=3)
        with torch.no_grad():
            for m in model.modules():
                if type(m).__name__ == "NemotronHTopkRouter":
                    m.e_score_correction_bias[:2] += 0.3
        rb = RouterBalancer(model, coeff, rate)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        g = torch.Generator().manual_seed(0)
        for _ in range(30):
            x = torch.randint(0, 256, (4, 32), generator=g)
            out = model(input_ids=x, labels=x, use_cache=False)
            aux = rb.aux_loss()
            assert (aux is not None) == (coeff > 0)
            (out.loss + (aux if aux is not None else 0)).backward()
            opt.step()
            opt.zero_grad()
            rb.step()
            rb.stats()  # keep only the measuring forward below in the window
        x = torch.randint(0, 256, (8, 32), generator=g)
        with torch.no_grad():  # a measuring forward in training mode (eval-mode forwards are not counted)
            model(input_ids=x, use_cache=False)
        return rb.stats()

    off, on = run(0.0, 0.0), run(0.1, 0.01)
    for layer in off:
        assert off[layer]["entropy"] == pytest.approx(0.5, abs=0.01)  # two of four experts take everything
        assert on[layer]["entropy"] > off[layer]["entropy"] + 0.3, (layer, off[layer], on[layer])
        assert on[layer]["max_over_mean"] < off[layer]["max_over_mean"]


def test_seq_aux_loss_matches_megatron_on_its_own_layout():
    """Our [batch*seq] router logits, re-laid as megatron-core's [seq, batch], give the loss its
    sequence-level formula defines: coeff * E / (k T^2) * sum_i (sum_t p)(sum_t r), averaged over sequences."""
    from megatron.core.transformer.moe.moe_utils import compute_routing_scores_for_aux_loss

    from hebatron_nemo.backends.local.router import seq_aux_loss

    g = torch.Generator().manual_seed(1)
    b, s, E, k, coeff = 3, 10, 8, 2, 0.01
    logits = torch.randn(b * s, E, generator=g)
    got = seq_aux_loss(logits, b, s, k, E, coeff)
    expected = 0.0
    for j in range(b):
        rmap, p = compute_routing_scores_for_aux_loss(logits[j * s:(j + 1) * s], k, "sigmoid")
        expected += coeff * E / (k * s * s) * float((p.sum(0) * rmap.sum(0)).sum())
    assert float(got) == pytest.approx(expected / b, rel=1e-6)


def test_early_stop_rule():
    from omegaconf import OmegaConf

    from hebatron_nemo.backends.local.evaluation import EarlyStop
    from hebatron_nemo.config import EarlyStopConfig

    cfg = OmegaConf.structured(EarlyStopConfig(enabled=True, metric="eval/he_loss", patience=2, min_rise=0.1,
                                               within_fraction=0.5))
    stop = EarlyStop(cfg, total_tokens=1000)
    assert stop.update({"eval/he_loss": 5.0}, 100) is None
    assert stop.update({"eval/he_loss": 5.2}, 200) is None  # one bad eval
    reason = stop.update({"eval/he_loss": 5.3}, 300)
    assert reason and "eval/he_loss rose above its best 5.0000" in reason
    late = EarlyStop(cfg, total_tokens=1000)
    for tokens, v in ((100, 5.0), (600, 6.0), (700, 6.0), (800, 6.0)):
        assert late.update({"eval/he_loss": v}, tokens) is None  # rises after the early window are not its business
    off = EarlyStop(OmegaConf.structured(EarlyStopConfig()), 1000)
    assert all(off.update({"eval/anchor_loss": v}, 10) is None for v in (1.0, 9.0, 9.0, 9.0))


@pytest.mark.slow  # the reference fixture: a training subprocess
def test_report_and_sweep_summary(data, reference, tmp_path):
    from hebatron_nemo.eval.report import sweep_summary, write_report

    report = write_report(reference).read_text()
    for section in ("Loss per source and phase", "Realized blend", "Validation against the starting model",
                    "Router health", "Ledger: planned vs realized samples"):
        assert f"## {section}" in report
    for png in ("report_loss_by_source.png", "report_blend.png", "report_eval.png", "report_router.png"):
        assert (reference / png).read_bytes()[:4] == b"\x89PNG"
    assert "| formal | he_a |" in report and "| eval/anchor_loss |" in report
    import shutil

    twin = tmp_path / "twin"
    twin.mkdir()
    for f in ("metrics.jsonl", "plan.json"):
        shutil.copy(reference / f, twin / f)
    sweep = sweep_summary([reference, twin], tmp_path / "sweep").read_text()
    assert sweep.count("| 0.25 | easy_to_hard |") == 2


def test_threads_follow_the_cores_the_process_may_use(monkeypatch):
    from hebatron_nemo.backends.local import threads

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert threads.available_cpus() == 4
    assert (threads.thread_count(2), threads.thread_count(8), threads.thread_count(0), threads.thread_count(None)) \
        == (2, 4, 4, 4)
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "3")  # Slurm's --cpus-per-task caps it
    assert threads.available_cpus() == 3 and threads.thread_count(8) == 3
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two torch.distributed.run workers share those cores
    assert threads.thread_count(8) == 1 and threads.thread_count(None) == 1
    monkeypatch.delenv("SLURM_CPUS_PER_TASK")
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {5})  # taskset -c 5, or a one-core cpuset
    assert threads.thread_count(2) == 1
    saved = torch.get_num_threads()
    try:
        assert threads.configure(2) == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(saved)


@pytest.mark.parametrize("recipe", ["cpt", "sft", "pipeline"])
def test_training_entry_points_make_openmp_wait_passively(recipe):
    """OpenMP reads its wait policy once, when torch loads: the entry point sets it before that."""
    code = ("import os, runpy, sys\n"
            "seen = []  # OMP_WAIT_POLICY at the moment torch is first imported\n"
            "class Watch:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'torch' and not seen:\n"
            "            seen.append(os.environ.get('OMP_WAIT_POLICY'))\n"
            "sys.meta_path.insert(0, Watch())\n"
            f"sys.argv = ['recipes/{recipe}.py', '--cfg', 'job']\n"
            "try:\n"
            f"    runpy.run_path('recipes/{recipe}.py', run_name='__main__')\n"
            "except SystemExit:\n"
            "    pass\n"
            "print('POLICY', os.environ.get('OMP_WAIT_POLICY'), seen[0] if seen else 'torch-not-imported')\n")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("POLICY")), None)
    assert line is not None, proc.stderr[-2000:]
    # set, and already set if torch loaded while the recipe started up (`--cfg job` may not load it)
    assert line.split()[1] == "PASSIVE" and line.split()[2] in ("PASSIVE", "torch-not-imported"), line
