"""Our Megatron-Bridge Callback on MB's Callback base class, driven through the events MB fires, with
MB's real GlobalState (the Nano recipe's ConfigContainer, TrainState, its TensorBoard writer), and
through MB's own `train()` loop (its step accounting and save decisions; the GPU train step and the
checkpoint writer replaced)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from corpus import plan_config, synthetic_prepared

from hebatron_nemo.backends.megatron_bridge.callbacks import SIDECAR, iter_dir, make_callback
from hebatron_nemo.backends.megatron_bridge.dataset_provider import ValidationWindows, validation_sets
from hebatron_nemo.backends.megatron_bridge.forward import SourceStats, make_forward_step
from hebatron_nemo.curriculum.mixture import CurriculumDataset
from hebatron_nemo.curriculum.runplan import make_plan

SEGS = [{"name": "s1", "seq_length": 32, "global_batch_size": 16}]
PHASES = [{"name": "formal", "segment": "s1", "tokens": 2000, "sources": {"he_a": 1.0}},
          {"name": "colloquial", "segment": "s1", "tokens": 1500, "sources": {"he_a": 1.0}}]


@pytest.fixture(scope="module")
def plan(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mbcb")
    synthetic_prepared(tmp / "data", {"he_a": 300, "en_x": 300}, mean_len=60)
    cfg = plan_config(tmp, ["he_a", "en_x"], PHASES, SEGS, {"share": 0.25, "sources": {"en_x": 1.0}})
    return make_plan(cfg, log=lambda *a, **k: None), tmp


def _global_state(tb_dir):
    from megatron.bridge.recipes.nemotronh import nemotron_3_nano_pretrain_config
    from megatron.bridge.training.state import GlobalState

    cfg = nemotron_3_nano_pretrain_config()
    cfg.train.global_batch_size = 16
    cfg.checkpoint.save_interval = 1000
    cfg.logger.tensorboard_dir, cfg.logger.wandb_project = str(tb_dir), None
    state = GlobalState()
    state.cfg = cfg
    return state


def _context(state, step, consumed):
    from megatron.bridge.training.callbacks import CallbackContext

    state.train_state.step, state.train_state.consumed_train_samples = step, consumed
    return CallbackContext(state=state, model=[])


def _loss_step(fwd, batch):
    out, loss_fn = fwd(None, iter([batch]), None)
    return loss_fn(out)


def test_phase_end_checkpoint_sidecar_ledger_and_eval(plan, tmp_path):
    from megatron.bridge.training.callbacks import Callback
    from megatron.bridge.training.losses import create_masked_next_token_loss_function

    p, tmp = plan
    sets = [s["name"] for s in validation_sets(p, 0)]
    stats, eval_stats = SourceStats(len(p["phases"]), len(p["source_names"])), SourceStats(len(sets), len(p["source_names"]))
    save = tmp_path / "megatron"
    cb = make_callback(p, 0, stats, tmp_path, save, eval_stats, sets)
    assert isinstance(cb, Callback)

    def base(state, data_iterator, model, return_schedule_plan=False):
        b = next(data_iterator)
        return torch.full(b["tokens"].shape, 2.0), create_masked_next_token_loss_function(b["loss_mask"], False, False)

    fwd = make_forward_step(stats, base_forward_step=base, eval_stats=eval_stats)
    ds = CurriculumDataset(p, 0, str(tmp / "cache"))
    formal_end = p["phases"][0]["end_sample"]
    # the step that ends phase 1: MB fires on_train_step_end before it advances step/consumed
    step = formal_end // 16 - 1
    batch = torch.utils.data.default_collate([ds[i] for i in range(formal_end - 16, formal_end)])
    _loss_step(fwd, batch)
    state = _global_state(tmp_path / "tb")
    ctx = _context(state, step, formal_end - 16)
    cb.on_train_step_end(ctx)
    assert ctx.state.cfg.checkpoint.save_interval == step + 1  # MB's `step % save_interval == 0` saves now
    assert cb.ledger.counts[..., 0].sum() == 16
    ctx.state.train_state.step, ctx.state.train_state.consumed_train_samples = step + 1, formal_end
    cb.on_checkpoint_save(ctx)
    assert ctx.state.cfg.checkpoint.save_interval == step + 1  # kept until the next step's event
    side = json.loads((iter_dir(save, step + 1) / SIDECAR).read_text())
    assert side["consumed_samples"] == formal_end and side["plan"]["fingerprint"] == p["fingerprint"]
    ledger = json.loads((tmp_path / "ledger.json").read_text())
    assert sum(ledger["phases"]["formal"]["samples"].values()) == 16
    # a step inside a phase does not force a save
    ctx2 = _context(state, step + 1, formal_end)
    _loss_step(fwd, torch.utils.data.default_collate([ds[i] for i in range(formal_end, formal_end + 16)]))
    cb.on_train_step_end(ctx2)
    assert ctx2.state.cfg.checkpoint.save_interval == 1000  # restored
    # evaluation: validation windows count per set, never into the training ledger
    before = cb.ledger.counts.copy()
    cb.on_eval_start(ctx2)
    v = ValidationWindows(p, 0, 48, 48)
    _loss_step(fwd, torch.utils.data.default_collate([v[i] for i in range(48)]))
    cb.on_eval_end(ctx2)
    assert (cb.ledger.counts == before).all() and not stats.paused
    line = json.loads((tmp_path / "mb_eval.jsonl").read_text().splitlines()[-1])
    assert set(line["values"]) == {f"eval/{s}" for s in sets}
    assert all(v == pytest.approx(2.0) for v in line["values"].values())  # the constant per-token loss above
    state.tensorboard_logger.flush()  # per-source train loss and per-set eval loss went to MB's writer
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = EventAccumulator(str(tmp_path / "tb")).Reload().Tags()["scalars"]
    assert "train/loss/he_a" in tags and "train/loss/en_x" in tags and "eval/en/anchor" in tags


class _RecordingCheckpointManager:
    """MB's CheckpointManager protocol: `save` records the step it would write and then fires
    on_checkpoint_save the way MB's `save_checkpoint` does after a write (writing a 30B model needs GPUs)."""

    def __init__(self):
        self.saved_steps = []

    def save(self, ctx, callback_manager):
        from megatron.bridge.training.callbacks import CallbackContext, should_fire

        self.saved_steps.append(ctx.state.train_state.step)
        if should_fire(callback_manager, "on_checkpoint_save"):
            callback_manager.fire("on_checkpoint_save", CallbackContext(state=ctx.state, model=ctx.model,
                                                                        user_state=callback_manager.user_state,
                                                                        optimizer=ctx.optimizer))

    def finalize_async_saves(self, state, blocking=False, terminate=False):
        pass


def test_mb_train_loop_saves_each_phase_end_once(plan, tmp_path, monkeypatch, gloo_model_parallel):
    """MB 0.6.0's own `train()` loop (its step/consumed-sample accounting, `checkpoint_and_decide_exit`
    and the save it adds after the last step unless `step % save_interval == 0`) runs one segment with
    our callback; only `train_step` (forward/backward, GPU) and the checkpoint writer are replaced, and
    the timers' CUDA calls (torch.cuda.synchronize, the timing printout's gather; no GPU here). Every
    phase end is saved exactly once: the last step of the segment, also a phase end, used to be saved
    twice."""
    import torch.nn as nn
    import megatron.bridge.training.train as mbt
    from megatron.bridge.training.callbacks import CallbackManager
    from megatron.core.num_microbatches_calculator import (destroy_num_microbatches_calculator,
                                                           init_num_microbatches_calculator)
    from megatron.core.process_groups_config import ProcessGroupCollection

    p, _ = plan
    seg = p["segments"][0]
    gbs = seg["global_batch"]
    state = _global_state(tmp_path / "tb")
    cfg = state.cfg
    cfg.train.train_iters = seg["start_step"] + seg["batches"]
    cfg.train.micro_batch_size, cfg.train.manual_gc = 1, False
    cfg.checkpoint.save, cfg.checkpoint.save_interval = str(tmp_path / "megatron"), 1000
    cfg.logger.skip_train_metrics_log, cfg.logger.tensorboard_dir = True, None
    cfg.model.cuda_graph_impl = "none"  # TE's graph capture: GPU only
    cfg.model.vocab_size = 131072  # MB's setup sets it from the tokenizer; the FLOP count reads it
    cfg.ddp.overlap_param_gather = False  # its forward pre-hooks live on a DDP-wrapped model
    state.train_state.do_train = True
    stats = SourceStats(len(p["phases"]), len(p["source_names"]))
    cb = make_callback(p, 0, stats, tmp_path, tmp_path / "megatron")
    manager = CallbackManager()
    manager.add(cb)
    ckpt = _RecordingCheckpointManager()
    monkeypatch.setattr(mbt, "train_step", lambda *a, **k: ({}, 0, False, False, 0, None, None, None))
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: None)
    monkeypatch.setattr(type(state.timers), "log", lambda *a, **k: None)  # its all-ranks gather is a CUDA tensor

    class _Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.config = cfg.model

    init_num_microbatches_calculator(0, None, gbs, 1, 1)
    try:
        mbt.train(lambda *a: None, [_Model()], None, None, iter(()), None, state, ckpt,
                  ProcessGroupCollection.use_mpu_process_groups(), callback_manager=manager)
    finally:
        destroy_num_microbatches_calculator()
    phase_end_steps = [ph["end_sample"] // gbs for ph in p["phases"]]
    assert state.train_state.step == cfg.train.train_iters == phase_end_steps[-1]
    assert state.train_state.consumed_train_samples == p["phases"][-1]["end_sample"]
    assert ckpt.saved_steps == phase_end_steps, ckpt.saved_steps  # once each, in order
    assert cfg.checkpoint.save_interval == cfg.train.train_iters  # left forced: MB's last-step test sees it saved
    for step in phase_end_steps:
        side = json.loads((iter_dir(tmp_path / "megatron", step) / SIDECAR).read_text())
        assert side["consumed_samples"] == step * gbs
