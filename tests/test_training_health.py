"""The training-health rules both backends share (hebatron_nemo/backends/health.py): routing load
entropy and the early-rise guard, and the local trainer stopping on the guard. The Megatron-Bridge
side is driven through MB's own train loop in tests/mb_tier/test_mb_health.py."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest

from hebatron_nemo.backends.health import LossRiseGuard, load_stats, low_entropy_layers, phase_at


def _guard(enabled=True, window=2, margin=0.5, warmup=100):
    return LossRiseGuard(SimpleNamespace(enabled=enabled, window=window, margin=margin), warmup)


def test_load_stats_entropy_by_hand():
    even = load_stats([5, 5, 5, 5])
    assert even["entropy"] == pytest.approx(1.0) and even["max_over_mean"] == pytest.approx(1.0)
    one = load_stats([0, 12, 0, 0])
    assert one["entropy"] == 0.0 and one["max_over_mean"] == pytest.approx(4.0) and one["load"] == [0, 1, 0, 0]
    # shares 1/2, 1/4, 1/4, 0: entropy (1/2 ln 2 + 2 x 1/4 ln 4) / ln 4 = 0.75
    assert load_stats([2, 1, 1, 0])["entropy"] == pytest.approx(0.75)
    assert load_stats([0, 0, 0]) is None
    stats = {"layer1": load_stats([2, 1, 1, 0]), "layer3": load_stats([0, 12, 0, 0])}
    assert low_entropy_layers(stats, 0.5) == ["layer3"]
    assert low_entropy_layers(stats, 0.8) == ["layer1", "layer3"]
    assert low_entropy_layers(stats, 0.0) == []  # off


def test_local_router_stats_use_the_shared_rule():
    """The local backend's RouterBalancer reports exactly `load_stats` of its counted load."""
    import torch

    from hebatron_nemo.backends.local.router import RouterBalancer

    rb = RouterBalancer.__new__(RouterBalancer)
    rb.names, rb._window = ["layer1"], [torch.tensor([2.0, 1.0, 1.0, 0.0], dtype=torch.float64)]
    assert rb.stats() == {"layer1": load_stats([2, 1, 1, 0])}
    assert rb._window[0].sum() == 0  # reset after the line


def test_guard_ignores_the_warmup_and_stops_on_the_smoothed_rise():
    g = _guard(window=2, margin=0.5, warmup=100)
    # tokens <= 100 is the warmup: any loss, even non-finite, is ignored
    assert all(g.update(s, 50 * s, v) is None for s, v in ((1, 9.0), (2, 99.0)))
    assert g.update(3, 150, 4.0) is None  # window not full yet
    assert g.update(4, 200, 3.0) is None  # mean 3.5 = best
    assert g.update(5, 250, 3.8) is None  # mean 3.4: new best
    assert g.update(6, 300, 3.9) is None  # mean 3.85: +0.45, within the margin
    reason = g.update(7, 350, 4.0)  # mean 3.95: +0.55 > 0.5
    assert reason and "rose to 3.9500 at step 7" in reason and "best 3.4000 (step 5)" in reason
    assert "loss_guard.margin=0.5" in reason


def test_guard_resets_at_a_phase_start_and_can_be_off():
    g = _guard(window=1, margin=0.5, warmup=0)
    assert g.update(1, 10, 2.0) is None
    g.reset()  # the next phase: its harder data may sit higher without anything being wrong
    assert g.update(2, 20, 3.0) is None and g.update(3, 30, 3.4) is None
    assert g.update(4, 40, 3.6) is not None  # 3.6 > 3.0 + 0.5
    off = _guard(enabled=False)
    assert all(off.update(s, 1000 * s, v) is None for s, v in enumerate((1.0, 9.0, 9.0, math.nan)))
    assert _guard(window=1, warmup=0).update(1, 10, math.nan).startswith("training loss is nan")
    with pytest.raises(ValueError, match="margin > 0"):
        _guard(margin=0.0)


def test_phase_at():
    plan = {"phases": [{"end_sample": 10}, {"end_sample": 30}]}
    assert [phase_at(plan, c) for c in (0, 9, 10, 29, 30)] == [0, 0, 1, 1, 1]


def test_local_trainer_stops_on_the_guard_with_a_forced_checkpoint(tmp_path):
    """The local trainer with lr = 0 (the model never changes, so each step's loss is its batch's):
    with window 1 it must stop at the first step after the warmup whose loss is more than the margin
    above the lowest loss since the warmup, found here from the run's own train records, and
    checkpoint that step."""
    from corpus import synthetic_prepared, train_config

    from hebatron_nemo.backends.local.cpt import _plan_and_caches
    from hebatron_nemo.backends.local.trainer import train
    from hebatron_nemo.models.nemotron_h import build_model

    synthetic_prepared(tmp_path / "data", {"he_a": 120, "en_x": 120}, vocab=512, mean_len=60)
    segs = [{"name": "s1", "seq_length": 32, "global_batch_size": 8, "micro_batch_size": 4, "data_parallel_size": 1}]
    phases = [{"name": "formal", "segment": "s1", "tokens": 3000, "sources": {"he_a": 1.0}}]
    margin = 0.01
    cfg = train_config(tmp_path, ["he_a", "en_x"], phases, segs, {"share": 0.25, "sources": {"en_x": 1.0}},
                       **{"optim.lr": 0.0, "optim.min_lr": 0.0, "optim.warmup_fraction": 0.15, "eval.eval_interval": 0,
                          "checkpoint.save_interval": 0, "router.log_every": 0, "loss_guard.enabled": True,
                          "loss_guard.window": 1, "loss_guard.margin": margin})
    cfg.run_dir = str(tmp_path / "run")
    plan = _plan_and_caches(cfg, log=lambda *a: None)
    model = build_model(cfg.model, plan["tokenizer"]["vocab_size"], seed=cfg.seed)
    lines = []
    state = train(cfg, plan, model, tmp_path / "run", log=lines.append)
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train_recs = [r for r in records if r["kind"] == "train"]
    warmup = 0.15 * plan["totals"]["tokens"]
    best, expected = math.inf, None
    for r in train_recs:  # the rule by hand
        if r["tokens"] <= warmup:
            continue
        if r["loss"] > best + margin:
            expected = r["step"]
            break
        best = min(best, r["loss"])
    assert expected is not None, "the run never rose: the test data no longer exercises the guard"
    assert expected < plan["totals"]["steps"]
    assert state["step"] == expected and train_recs[-1]["step"] == expected
    assert state["stop_reason"].startswith("the training loss (mean of the last 1 steps) rose")
    ckpts = [r for r in records if r["kind"] == "checkpoint"]
    assert [(r["step"], r["values"]["forced"]) for r in ckpts] == [(expected, True)]
    assert any(x.startswith("early stop: the training loss") for x in lines)


def test_report_plots_the_megatron_bridge_router_log(tmp_path):
    """A run folder with only mb_router.jsonl (an MB run): the report's router panel reads it, and a
    step logged again by a resumed job counts once (its last record)."""
    from hebatron_nemo.eval.report import write_report

    def rec(step, e1, e3):
        return {"kind": "router", "step": step, "consumed_samples": 16 * step, "tokens": 512 * step, "phase": "formal",
                "segment": "s1", "time": 0.0, "load": {},
                "values": {"router/layer1/entropy": e1, "router/layer3/entropy": e3,
                           "router/layers_below_min_entropy": int(e3 < 0.5)}}

    rows = [rec(10, 0.99, 0.9), rec(20, 0.98, 0.2), rec(20, 0.97, 0.6), rec(30, 0.96, 0.55)]
    (tmp_path / "mb_router.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = write_report(tmp_path).read_text()
    assert "## Router health" in report and (tmp_path / "report_router.png").read_bytes()[:4] == b"\x89PNG"
    assert "Lowest routing entropy at step 30: layer3 0.550, layer1 0.960." in report
    assert "below router.min_entropy" not in report  # step 20's collapsed record was logged again as 0.6
