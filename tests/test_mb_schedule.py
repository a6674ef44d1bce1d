"""The plan's LR curve over tokens, run through megatron-core's real OptimizerParamScheduler with the
fields the Megatron-Bridge seam emits: segment 1, save the scheduler state, load it into segment 2's
scheduler (as MB does on `checkpoint.load` with override_opt_param_scheduler), and compare LR against
tokens with the plan at every step: equal to 1e-9, no jump at the boundary."""

from __future__ import annotations

import copy

import pytest
import torch
from omegaconf import OmegaConf

from corpus import plan_config, synthetic_prepared

from hebatron_nemo.backends.megatron_bridge.schedule import plan_schedule, scheduler_fields
from hebatron_nemo.curriculum.plan import build_plan
from hebatron_nemo.errors import ConfigError

SOURCES = ["he_a", "he_long", "en_x"]
SEGS = [{"name": "s1", "seq_length": 32, "global_batch_size": 16}, {"name": "s2", "seq_length": 256, "global_batch_size": 4}]
PHASES = [{"name": "formal", "segment": "s1", "tokens": 30000, "sources": {"he_a": 1.0}},
          {"name": "long", "segment": "s2", "tokens": 12000, "sources": {"he_long": 1.0}}]
ANCHOR = {"share": 0.25, "sources": {"en_x": 1.0}}


@pytest.fixture(scope="module")
def plan(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sched")
    synthetic_prepared(tmp / "data", {"he_a": 400, "en_x": 400}, mean_len=60)
    synthetic_prepared(tmp / "data", {"he_long": 100}, seed=1, mean_len=400)
    return build_plan(plan_config(tmp, SOURCES, PHASES, SEGS, ANCHOR), log=lambda *a, **k: None)


def optim(**kw):
    base = {"lr": 3e-4, "min_lr": 3e-5, "warmup_fraction": 0.05, "decay_fraction": 0.2, "rewarm_each_segment": False,
            "weight_decay": 0.1, "adam_beta1": 0.9, "adam_beta2": 0.95, "adam_eps": 1e-8, "clip_grad": 1.0}
    return OmegaConf.create({**base, **kw})


def mcore_scheduler(fields: dict, train_samples: int):
    """megatron-core's scheduler built from the emitted fields the way MB's
    `_calculate_scheduler_steps` + `_get_scheduler` map sample-based fields (train_samples set)."""
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    o, s = fields["optimizer"], fields["scheduler"]
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=o["lr"])
    return OptimizerParamScheduler(
        opt, init_lr=s["lr_warmup_init"], max_lr=o["lr"], min_lr=o["min_lr"],
        lr_warmup_steps=s["lr_warmup_samples"], lr_decay_steps=s["lr_decay_samples"],
        lr_decay_style=s["lr_decay_style"], start_wd=s["start_weight_decay"], end_wd=s["end_weight_decay"],
        wd_incr_steps=train_samples, wd_incr_style=s["weight_decay_incr_style"],
        use_checkpoint_opt_param_scheduler=s["use_checkpoint_opt_param_scheduler"],
        override_opt_param_scheduler=s["override_opt_param_scheduler"],
        wsd_decay_steps=s["lr_wsd_decay_samples"], lr_wsd_decay_style=s["lr_wsd_decay_style"]), opt


def run_segments(plan, opt_cfg):
    """(tokens, lr used, plan lr) for every step of every segment, with a state save/load between."""
    rows, state = [], None
    tokens = 0
    for k, seg in enumerate(plan["segments"]):
        end = seg["start_sample"] + seg["num_samples"]
        sched, opt = mcore_scheduler(scheduler_fields(plan, opt_cfg, k), end)
        if state is not None:
            sched.load_state_dict(copy.deepcopy(state))  # num_steps = the samples consumed so far
        else:
            sched.step(0)
        assert sched.num_steps == seg["start_sample"]
        for _ in range(seg["batches"]):
            lr_used = opt.param_groups[0]["lr"]
            rows.append((tokens, lr_used, plan_schedule(plan, opt_cfg)(tokens), k))
            assert opt.param_groups[0]["weight_decay"] == pytest.approx(opt_cfg.weight_decay)
            tokens += seg["global_batch"] * seg["seq_length"]
            sched.step(seg["global_batch"])  # MB: increment = global batch size in samples
        state = sched.state_dict()
    return rows


@pytest.mark.parametrize("kw", [{}, {"warmup_fraction": 0.0}, {"decay_fraction": 0.0}, {"decay_fraction": 0.5},
                                {"warmup_fraction": 0.2, "decay_fraction": 0.05}])
def test_lr_over_tokens_matches_the_plan_across_segments(plan, kw):
    opt_cfg = optim(**kw)
    rows = run_segments(plan, opt_cfg)
    assert len(rows) == plan["totals"]["steps"]
    worst = max(abs(used - want) for _, used, want, _ in rows)
    assert worst <= 1e-9, worst
    # no jump at the segment boundary: the first LR of segment 2 continues segment 1's curve
    b = next(i for i, r in enumerate(rows) if r[3] == 1)
    assert rows[b][1] == pytest.approx(plan_schedule(plan, opt_cfg)(rows[b][0]), abs=1e-12)
    if kw.get("decay_fraction", 0.2) >= 0.2:
        assert rows[-1][1] < rows[b - 1][1]  # the decay happened inside the last segment


def test_schedule_errors_name_the_field(plan):
    with pytest.raises(ConfigError, match="optim.rewarm_each_segment"):
        scheduler_fields(plan, optim(rewarm_each_segment=True), 0)
    with pytest.raises(ConfigError, match="optim.warmup_fraction"):
        scheduler_fields(plan, optim(warmup_fraction=0.9, decay_fraction=0.05), 0)
