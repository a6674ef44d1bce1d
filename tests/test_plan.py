"""The plan: arithmetic, bad plans rejected with clear errors, outputs, ledger, resume check, and the
Megatron-Bridge provider's side of the seam."""

from __future__ import annotations

import json

import numpy as np
import pytest

from corpus import plan_config, synthetic_prepared

from hebatron_nemo.backends.megatron_bridge.dataset_provider import build_curriculum_datasets
from hebatron_nemo.curriculum.ledger import Ledger, MetricsWriter, check_resume, load_plan
from hebatron_nemo.curriculum.mixture import CurriculumDataset
from hebatron_nemo.curriculum.plan import build_plan
from hebatron_nemo.curriculum.runplan import make_plan
from hebatron_nemo.curriculum.schemas import validate
from hebatron_nemo.errors import ConfigError, HebatronError

SOURCES = ["he_a", "he_b", "he_long", "en_x", "en_y"]
SEGS = [{"name": "s1", "seq_length": 32, "global_batch_size": 16, "micro_batch_size": 2, "data_parallel_size": 2},
        {"name": "s2", "seq_length": 128, "global_batch_size": 8}]
PHASES = [{"name": "formal", "segment": "s1", "tokens": 20000, "sources": {"he_a": 0.7, "he_b": 0.3}},
          {"name": "colloquial", "segment": "s1", "tokens": 8000, "sources": {"he_b": 1.0}},
          {"name": "long", "segment": "s2", "tokens": 10000, "sources": {"he_long": 1.0}}]
ANCHOR = {"share": 0.25, "sources": {"en_x": 0.5, "en_y": 0.5}}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("plan")
    synthetic_prepared(tmp / "data", {"he_a": 300, "he_b": 250, "en_x": 300, "en_y": 300}, mean_len=60)
    synthetic_prepared(tmp / "data", {"he_long": 120}, seed=1, mean_len=400)
    return tmp


def _quiet(*_a, **_k):
    pass


def _cfg(data, phases=PHASES, segments=SEGS, anchor=ANCHOR, **cur):
    return plan_config(data, SOURCES, phases, segments, anchor, **cur)


def _plan(data, **kw):
    return build_plan(_cfg(data, **kw), log=_quiet)


def test_budget_arithmetic(data):
    plan = _plan(data)
    s1, s2 = plan["segments"]
    assert (s1["anchor_per_batch"], s1["curriculum_per_batch"]) == (4, 12)
    formal, colloquial, long = plan["phases"]
    assert formal["batches"] == -(-20000 // (32 * 12))  # ceil(tokens / seq / curriculum samples per batch)
    assert formal["curriculum_tokens"] >= 20000 > formal["curriculum_tokens"] - 32 * 12
    assert colloquial["start_step"] == formal["end_step"] and colloquial["start_sample"] == formal["end_sample"]
    assert s2["start_sample"] == s1["num_samples"] == (formal["batches"] + colloquial["batches"]) * 16
    assert long["start_step"] == s1["batches"] and s2["anchor_per_batch"] == 2
    assert sum(formal["counts"].values()) == formal["batches"] * 12
    assert plan["totals"]["tokens"] == s1["num_samples"] * 32 + s2["num_samples"] * 128
    assert plan["totals"]["anchor_tokens"] == sum(p["anchor_tokens"] for p in plan["phases"])
    assert plan["totals"]["gpu_hours"] == pytest.approx(plan["totals"]["tokens"] / 4000 / 3600)
    # he_b is used by two phases of one segment: one stream, one cursor
    he_b = [s for s in plan["streams"] if s["source"] == "he_b"]
    assert len(he_b) == 1 and he_b[0]["samples_needed"] == sum(
        n for p in plan["phases"] for sid, n in p["counts"].items() if int(sid) == he_b[0]["id"])
    # the anchor sources serve both segments from disjoint halves of their documents
    en_x = [s for s in plan["streams"] if s["source"] == "en_x"]
    assert [s["doc_range"] for s in en_x] == [[0.0, 0.5], [0.5, 1.0]]
    validate(plan, "plan")


@pytest.mark.parametrize("change, message", [
    ({"phases": [{**PHASES[0], "sources": {"he_a": -1.0, "he_b": 1.0}}] + PHASES[1:]}, r"he_a: weight must be finite and >= 0"),
    ({"phases": [{**PHASES[0], "sources": {"he_a": float("nan")}}] + PHASES[1:]}, r"he_a: weight must be finite"),
    ({"phases": [{**PHASES[0], "sources": {"he_a": 0.0, "he_b": 0.0}}] + PHASES[1:]}, r"formal\)\.sources: all weights are zero"),
    ({"phases": [{**PHASES[0], "sources": {}}] + PHASES[1:]}, r"formal\)\.sources: no sources"),
    ({"phases": [{**PHASES[0], "tokens": 0}] + PHASES[1:]}, r"formal\)\.tokens must be a positive token budget"),
    ({"phases": [{**PHASES[0], "tokens": -5}] + PHASES[1:]}, r"formal\)\.tokens must be a positive"),
    ({"anchor": {"share": 1.0, "sources": {"en_x": 1}}}, r"anchor.share must be in \[0, 1\)"),
    ({"anchor": {"share": -0.1, "sources": {"en_x": 1}}}, r"anchor.share must be in \[0, 1\)"),
    ({"anchor": {"share": 0.1, "sources": {"en_x": 1}}}, r"effective share of 0\.1250.*allow_rounding"),
    ({"phases": [{**PHASES[0], "sources": {"he_zz": 1}}] + PHASES[1:]}, r"unknown source 'he_zz'.*he_a"),
    ({"segments": [{**SEGS[0], "global_batch_size": 18}, SEGS[1]]}, r"global_batch_size 18 is not divisible by data_parallel_size x micro_batch_size = 2 x 2"),
    ({"phases": [{**PHASES[0], "segment": "s9"}] + PHASES[1:]}, r"segment 's9' is not a segment"),
    ({"phases": [PHASES[2], PHASES[0], PHASES[1]]}, r"segment by segment"),
    ({"phases": [{**PHASES[0], "select": {"he_a": {"signal": "compression_ratio", "quantile": [0.5, 0.2]}}}] + PHASES[1:]},
     r"quantile must be \[lo, hi\]"),
    ({"phases": [{**PHASES[0], "select": {"he_a": {"signal": "vibes", "quantile": [0, 0.5]}}}] + PHASES[1:]},
     r"'vibes' is not a signal of source 'he_a'"),
    ({"phases": [{**PHASES[0], "tokens": 5e6}] + PHASES[1:]}, r"infeasible plan:(.|\n)*stream he_a@s1 needs .* epochs of its 300 documents .* curriculum.max_epochs=4"),
    ({"phases": PHASES[:2] + [{**PHASES[2], "sources": {"en_x": 1.0}}]}, r"source 'en_x' is used in segment 1 by overlapping streams"),
])
def test_bad_plans_fail_at_plan_time(data, change, message):
    kw = {"phases": PHASES, "segments": SEGS, "anchor": ANCHOR}
    kw.update(change)
    with pytest.raises(ConfigError, match=message):
        _plan(data, **kw)


def test_rounding_tolerance_can_be_waived_and_unprepared_sources_are_named(data):
    plan = _plan(data, anchor={"share": 0.1, "sources": {"en_x": 1}, "allow_rounding": True})
    assert plan["segments"][0]["anchor_share_effective"] == 0.125
    with pytest.raises(ConfigError, match=r"source 'he_new' is not prepared.*prepare_data.py data=synthetic sources=\[he_new\]"):
        build_plan(plan_config(data, SOURCES + ["he_new"], [{**PHASES[0], "sources": {"he_new": 1}}], SEGS[:1], None),
                   log=_quiet)


def test_long_context_warning(data):
    short_docs = [PHASES[0], PHASES[1], {**PHASES[2], "sources": {"he_a": 1.0}}]
    plan = _plan(data, phases=short_docs, anchor=None)
    assert any("phase 'long'" in w and "documents longer than" in w for w in plan["warnings"])
    assert not _plan(data)["warnings"]  # he_long's documents are long


def test_make_plan_writes_schema_valid_outputs_and_caches(data, tmp_path, capsys):
    cfg = _cfg(data)
    cfg.run_dir, cfg.cache_dir = str(tmp_path / "run"), str(tmp_path / "cache")
    plan = make_plan(cfg, log=_quiet)
    out = capsys.readouterr().out
    for text in ("formal", "colloquial", "long", "0.2500 -> 0.2500", "GPU-hours"):
        assert text in out
    saved = load_plan(tmp_path / "run" / "plan.json")
    assert saved["fingerprint"] == plan["fingerprint"]
    png = (tmp_path / "run" / "plan.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert set(saved["caches"]) == {s["key"] for s in saved["streams"]}
    for c in saved["caches"].values():
        assert c["files"] and all(len(h) == 20 for h in c["files"].values())
    broken = dict(saved)
    del broken["segments"]
    with pytest.raises(HebatronError, match="plan.json does not match its schema"):
        validate(broken, "plan")


def test_ledger_counts_what_the_loss_saw(data, tmp_path):
    plan = _plan(data)
    from hebatron_nemo.curriculum.mixture import build_caches

    plan["caches"] = build_caches(plan, str(tmp_path / "cache"))
    ledger = Ledger(plan)
    seg = plan["segments"][0]
    ds = CurriculumDataset(plan, 0, str(tmp_path / "cache"))
    import torch

    expected_tokens = 0
    for b in range(seg["batches"]):
        items = [ds[g] for g in range(b * 16, (b + 1) * 16)]
        batch = {k: torch.stack([it[k] for it in items]) for k in ("source_id", "phase_id", "is_anchor", "loss_mask")}
        batch["loss_mask"][0, :5] = 0  # padding the loss never saw is not counted
        expected_tokens += int(batch["loss_mask"].sum())
        ledger.update(batch["source_id"], batch["phase_id"], batch["is_anchor"], batch["loss_mask"])
    d = ledger.save(tmp_path / "ledger.json", consumed_samples=seg["num_samples"])
    formal, colloquial = d["phases"]["formal"], d["phases"]["colloquial"]
    assert formal["complete"] and colloquial["complete"] and not d["phases"]["long"]["complete"]
    for name in ("formal", "colloquial"):
        row = d["phases"][name]
        for src in ("he_a", "he_b"):
            assert row["samples"].get(src, 0) == row["planned_samples"].get(src, 0)
        assert row["anchor_samples"] == plan["phases"][[p["name"] for p in plan["phases"]].index(name)]["anchor_samples"]
    assert sum(d["totals"]["loss_tokens"].values()) == expected_tokens
    again = Ledger(plan)
    again.load_state(json.loads((tmp_path / "ledger.json").read_text()))
    np.testing.assert_array_equal(again.counts, ledger.counts)
    w = MetricsWriter(tmp_path / "metrics.jsonl")
    w.write({"kind": "train", "step": 1, "consumed_samples": 16, "tokens": 512, "phase": "formal", "segment": "s1",
             "loss": 3.2, "loss_by_source": {"he_a": 3.1}})
    with pytest.raises(HebatronError, match="metrics.json does not match"):
        w.write({"kind": "train", "step": -1, "consumed_samples": 0, "tokens": 0, "phase": "x", "segment": "s1"})
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 1


def test_resume_refuses_changed_history(data):
    old = _plan(data)
    end_formal = old["phases"][0]["end_sample"]
    same = _plan(data)
    assert check_resume(old, same, end_formal) == []
    past = _plan(data, phases=[{**PHASES[0], "sources": {"he_a": 0.5, "he_b": 0.5}}] + PHASES[1:])
    with pytest.raises(ConfigError, match=r"phase 'formal' \(completed, samples \[0, .*changed"):
        check_resume(old, past, end_formal + 16)
    with pytest.raises(ConfigError, match=r"phase 'formal' \(in progress"):
        check_resume(old, past, 16)
    future = _plan(data, phases=PHASES[:2] + [{**PHASES[2], "tokens": 12000}])
    with pytest.raises(ConfigError, match=r"have not started \(long\).*Set checkpoint\.allow_future_changes=true"):
        check_resume(old, future, end_formal)
    assert "long" in check_resume(old, future, end_formal, allow_future_changes=True)[0]
    # the same future change, once the long phase has started, is history
    with pytest.raises(ConfigError, match="phase 'long'"):
        check_resume(old, future, old["phases"][2]["start_sample"] + 8, allow_future_changes=True)


def test_provider_requires_the_segments_planned_samples(data, tmp_path):
    cfg = _cfg(data)
    cfg.run_dir, cfg.cache_dir = str(tmp_path / "run"), str(tmp_path / "cache")
    plan = make_plan(cfg, log=_quiet)
    path = str(tmp_path / "run" / "plan.json")
    s1, s2 = plan["segments"]
    with pytest.raises(ConfigError, match=rf"set train.train_samples={s1['num_samples']:,}"):
        build_curriculum_datasets(path, 0, None, train_samples=s1["num_samples"] + 1)
    with pytest.raises(ConfigError, match=r"ends at step"):  # the global end sample is not MB's count
        build_curriculum_datasets(path, 1, None, train_samples=s2["start_sample"] + s2["num_samples"])
    # MB trains train_samples // global_batch steps from step 0 of the run
    mb_samples = (s2["start_step"] + s2["batches"]) * s2["global_batch"]
    train, valid, test = build_curriculum_datasets(path, 1, None, train_samples=mb_samples)
    assert len(train) == s2["start_sample"] + s2["num_samples"] and valid is None and test is None
    with pytest.raises(IndexError):
        train[s2["start_sample"] - 1]  # segment 2 never serves segment 1's indices
    assert int(train[s2["start_sample"]]["phase_id"]) == 2


def test_refused_resume_leaves_plan_json_alone(data, tmp_path):
    """The local backend checks a resume against the newest checkpoint before it writes plan.json: a refused
    resume keeps the plan its checkpoints and ledger trained, and the refusal names the real config key."""
    import torch

    from corpus import train_config

    from hebatron_nemo.backends.local import checkpoint, cpt
    from hebatron_nemo.backends.local.trainer import _plan_summary

    def cfg_for(phases, **ckpt):
        cfg = train_config(data, SOURCES, phases, SEGS, ANCHOR)
        cfg.run_dir, cfg.cache_dir = str(tmp_path / "run"), str(tmp_path / "cache")
        for k, v in ckpt.items():
            cfg.checkpoint[k] = v
        return cfg

    plan = cpt._plan_and_caches(cfg_for(PHASES), log=_quiet)
    path = tmp_path / "run" / "plan.json"
    written = path.read_bytes()
    model = torch.nn.Linear(2, 2)
    consumed = plan["phases"][0]["start_sample"] + 2 * 16  # two steps into 'formal'
    checkpoint.save(tmp_path / "run", 2, model, torch.optim.AdamW(model.parameters()),
                    {"step": 2, "consumed_samples": consumed, "tokens": consumed * 32, "plan": _plan_summary(plan)}, {})
    past = [{**PHASES[0], "sources": {"he_a": 0.5, "he_b": 0.5}}] + PHASES[1:]
    with pytest.raises(ConfigError, match=r"phase 'formal' \(in progress"):
        cpt._plan_and_caches(cfg_for(past), log=_quiet)
    assert path.read_bytes() == written
    future = PHASES[:2] + [{**PHASES[2], "tokens": 12000}]
    with pytest.raises(ConfigError, match=r"Set checkpoint\.allow_future_changes=true") as e:
        cpt._plan_and_caches(cfg_for(future), log=_quiet)
    assert "resume.allow_future_changes" not in str(e.value)
    assert path.read_bytes() == written
    with pytest.raises(ConfigError, match=r"phase 'formal' \(in progress"):  # the pipeline's plan stage too
        make_plan(cfg_for(past), log=_quiet)
    assert path.read_bytes() == written
    accepted = cpt._plan_and_caches(cfg_for(future, allow_future_changes=True), log=_quiet)
    assert json.loads(path.read_text())["fingerprint"] == accepted["fingerprint"] != plan["fingerprint"]


def test_local_backend_writes_plan_json_through_the_plan_stages_writer(data, tmp_path, monkeypatch):
    """One writer of plan.json: the local CPT's plan is schema-checked before it is written and plotted
    next to it, exactly as `recipes/plan.py` does; an invalid plan never reaches the run folder."""
    from corpus import train_config

    from hebatron_nemo.backends.local import cpt

    cfg = train_config(data, SOURCES, PHASES, SEGS, ANCHOR)
    cfg.run_dir, cfg.cache_dir = str(tmp_path / "run"), str(tmp_path / "cache")
    plan = cpt._plan_and_caches(cfg, log=_quiet)
    assert load_plan(tmp_path / "run" / "plan.json")["fingerprint"] == plan["fingerprint"]
    assert (tmp_path / "run" / "plan.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    def broken_plan(*a, **k):
        p = build_plan(*a, **k)
        del p["segments"]
        return p

    monkeypatch.setattr(cpt, "build_plan", broken_plan)
    cfg.run_dir = str(tmp_path / "run2")
    with pytest.raises(HebatronError, match="plan.json does not match its schema"):
        cpt._plan_and_caches(cfg, log=_quiet)
    assert not (tmp_path / "run2" / "plan.json").exists()
