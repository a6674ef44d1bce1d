"""The training-health callback (backends/megatron_bridge/health.py) inside Megatron-Bridge 0.6.0's own
`train()` loop (its step and sample accounting, callback events, `checkpoint_and_decide_exit` and exit
path), with megatron-core's real `TopKRouter` modules routing tokens of a known load. Replaced, as in
test_mb_callbacks.py: `train_step` (forward/backward of a 30B model, GPU), the checkpoint writer, the
timers' CUDA calls; and each router's `gating` (it moves the gate weight to the GPU before a matmul)."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

from corpus import plan_config, synthetic_prepared

from hebatron_nemo.curriculum.runplan import make_plan

SEGS = [{"name": "s1", "seq_length": 32, "global_batch_size": 16}]
PHASES = [{"name": "formal", "segment": "s1", "tokens": 12000, "sources": {"he_a": 1.0}}]
EXPERTS, TOPK, TOKENS = 128, 6, 128  # Nemotron-3 Nano's router: 128 experts, top-6


@pytest.fixture(scope="module")
def plan(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mbhealth")
    synthetic_prepared(tmp / "data", {"he_a": 300, "en_x": 300}, mean_len=60)
    cfg = plan_config(tmp, ["he_a", "en_x"], PHASES, SEGS, {"share": 0.25, "sources": {"en_x": 1.0}})
    return make_plan(cfg, log=lambda *a, **k: None)


class _RecordingCheckpointManager:
    """MB's CheckpointManager protocol; `save` records the step it would write (a 30B write needs GPUs)."""

    def __init__(self):
        self.saved_steps = []

    def save(self, ctx, callback_manager):
        self.saved_steps.append(ctx.state.train_state.step)

    def finalize_async_saves(self, state, blocking=False, terminate=False):
        pass


def _state(tmp_path, train_iters: int, log_interval: int):
    """MB's GlobalState over the Nano recipe's ConfigContainer, set up for `train()` on CPU."""
    from megatron.bridge.recipes.nemotronh import nemotron_3_nano_pretrain_config
    from megatron.bridge.training.state import GlobalState

    cfg = nemotron_3_nano_pretrain_config()
    cfg.train.global_batch_size, cfg.train.micro_batch_size, cfg.train.manual_gc = 16, 1, False
    cfg.train.train_iters = train_iters
    cfg.checkpoint.save, cfg.checkpoint.save_interval = str(tmp_path / "megatron"), 1000
    cfg.logger.skip_train_metrics_log, cfg.logger.log_interval = True, log_interval
    cfg.logger.tensorboard_dir, cfg.logger.wandb_project = str(tmp_path / "tb"), None
    cfg.model.cuda_graph_impl = "none"  # TE's graph capture: GPU only
    cfg.model.vocab_size = 131072  # MB's setup sets it from the tokenizer; the FLOP count reads it
    cfg.ddp.overlap_param_gather = False  # its forward pre-hooks live on a DDP-wrapped model
    state = GlobalState()
    state.cfg = cfg
    state.train_state.do_train = True
    return state


def _run_train(state, model, train_step, monkeypatch, callbacks, wrap=None):
    """MB's `train()` with our callbacks; returns the checkpoint recorder and the SystemExit, if any.
    `wrap(run)`, when given, runs the loop (as run_cpt_mb runs pretrain)."""
    import megatron.bridge.training.train as mbt
    from megatron.bridge.training.callbacks import CallbackManager
    from megatron.core.num_microbatches_calculator import (destroy_num_microbatches_calculator,
                                                           init_num_microbatches_calculator)
    from megatron.core.process_groups_config import ProcessGroupCollection

    manager = CallbackManager()
    for cb in callbacks:
        manager.add(cb)
    ckpt = _RecordingCheckpointManager()
    monkeypatch.setattr(mbt, "train_step", train_step)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: None)
    monkeypatch.setattr(type(state.timers), "log", lambda *a, **k: None)  # its all-ranks gather is a CUDA tensor
    init_num_microbatches_calculator(0, None, state.cfg.train.global_batch_size, 1, 1)
    exited = None
    def run():
        mbt.train(lambda *a: None, [model], None, None, iter(()), None, state, ckpt,
                  ProcessGroupCollection.use_mpu_process_groups(), callback_manager=manager)

    try:
        (wrap or (lambda f: f()))(run)
    except SystemExit as e:
        exited = e
    finally:
        destroy_num_microbatches_calculator()
    return ckpt, exited


def _routers(state, layer_numbers):
    """megatron-core TopKRouters with the Nano recipe's routing (sigmoid scores, top-6 of 128, the
    sequence aux loss), gate = identity, so a token's hidden state is its logits."""
    import torch.nn as nn
    from megatron.core.process_groups_config import ProcessGroupCollection
    from megatron.core.transformer.moe.router import TopKRouter
    from megatron.core.transformer.transformer_config import TransformerConfig

    tcfg = TransformerConfig(num_layers=state.cfg.model.num_layers, hidden_size=EXPERTS, num_attention_heads=1,
                             num_moe_experts=EXPERTS, moe_router_topk=TOPK, moe_router_score_function="sigmoid",
                             moe_router_load_balancing_type="seq_aux_loss", moe_aux_loss_coeff=1e-4,
                             use_cpu_initialization=True, add_bias_linear=False)
    out = nn.ModuleDict()
    for n in layer_numbers:
        r = TopKRouter(tcfg, pg_collection=ProcessGroupCollection.use_mpu_process_groups())
        r.set_layer_number(n)
        with torch.no_grad():
            r.weight.copy_(torch.eye(EXPERTS))
        r.gating = (lambda m: lambda x: x.float() @ m.weight.t())(r)  # the GPU-only part, on CPU
        out[str(n)] = r
    return out


def _tokens(expert_sets: list[list[int]]) -> torch.Tensor:
    """Hidden states [seq, batch=1, hidden] whose top-6 routing is `expert_sets[t]` for token t."""
    x = torch.full((len(expert_sets), 1, EXPERTS), -4.0)
    for t, experts in enumerate(expert_sets):
        x[t, 0, experts] = 4.0
    return x.requires_grad_()


# three layers of known load (768 routed slots each):
EVEN = [[(TOPK * t + j) % EXPERTS for j in range(TOPK)] for t in range(TOKENS)]  # 6 tokens per expert
COLLAPSED = [list(range(TOPK))] * TOKENS  # every token to experts 0-5
MIXED = [list(range(TOPK)) if t < 96 else list(range(TOPK, 2 * TOPK)) for t in range(TOKENS)]
# by hand: entropy / ln(128) of the shares
HAND = {"even": 1.0,  # 128 shares of 1/128
        "collapsed": math.log(6) / math.log(128),  # 6 shares of 1/6: 0.3693
        "mixed": (0.75 * math.log(8) + 0.25 * math.log(24)) / math.log(128)}  # 6 x 1/8, 6 x 1/24: 0.4852


def test_router_entropy_per_layer_and_collapse_warning(plan, tmp_path, monkeypatch, gloo_model_parallel):
    """Layer numbers 2, 4, 6 (rows `layer1`, `layer3`, `layer5`) route EVEN, COLLAPSED, MIXED tokens on
    every training step; each step also routes skewed tokens through layer1 in evaluation mode and under
    no_grad, which must not count. At the logging interval (2) the logged entropies equal the
    hand-computed values in TensorBoard and in mb_router.jsonl, and only the collapsed layer is below
    router.min_entropy=0.45: one warning line per logged step and router/layers_below_min_entropy = 1."""
    import torch.nn as nn
    from megatron.bridge.training.callbacks import Callback

    from hebatron_nemo.backends.megatron_bridge.health import ROUTER_LOG, make_health_callback

    state = _state(tmp_path, train_iters=4, log_interval=2)
    routers = _routers(state, [2, 4, 6])

    class _Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.config = state.cfg.model
            self.routers = routers

    model = _Model()
    model.train()

    def train_step(*a, **k):
        for n, tokens in (("2", EVEN), ("4", COLLAPSED), ("6", MIXED)):
            probs, _ = routers[n](_tokens(tokens))
            probs.sum().backward()  # the aux loss's autograd path runs as in training
        with torch.no_grad():
            routers["2"](_tokens(COLLAPSED))  # activation-free forward: not training load
        routers["2"].eval()
        routers["2"](_tokens(COLLAPSED))  # evaluation forward: not training load
        routers["2"].train()
        return {"lm loss": torch.tensor(2.0)}, 0, False, False, 0, None, None, None

    lines = []
    cb = make_health_callback(plan, 0, tmp_path, SimpleNamespace(min_entropy=0.45),
                              SimpleNamespace(enabled=False, window=1, margin=1.0), 0, log=lines.append)
    assert isinstance(cb, Callback)
    _, exited = _run_train(state, model, train_step, monkeypatch, [cb])
    assert exited is None and state.train_state.step == 4
    assert not cb.handles  # on_train_end removed the hooks

    records = [json.loads(x) for x in (tmp_path / ROUTER_LOG).read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4]
    assert [r["consumed_samples"] for r in records] == [32, 64]
    for r in records:
        assert r["kind"] == "router" and r["segment"] == "s1" and r["phase"] == "formal"
        assert r["tokens"] == r["consumed_samples"] * 32
        assert r["values"]["router/layer1/entropy"] == pytest.approx(HAND["even"], abs=1e-12)
        assert r["values"]["router/layer3/entropy"] == pytest.approx(HAND["collapsed"], abs=1e-12)
        assert r["values"]["router/layer5/entropy"] == pytest.approx(HAND["mixed"], abs=1e-12)
        assert r["values"]["router/layer3/max_over_mean"] == pytest.approx(EXPERTS / TOPK)
        assert r["values"]["router/layers_below_min_entropy"] == 1
        assert set(r["load"]) == {"layer1", "layer3", "layer5"}  # the routers' layers only
        assert r["load"]["layer3"][:7] == [round(1 / 6, 5)] * 6 + [0.0]
    warnings = [x for x in lines if x.startswith("WARNING router collapse")]
    assert len(warnings) == 2 and "layer3 0.369" in warnings[0] and "layer1" not in warnings[0]

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    state.tensorboard_logger.flush()
    acc = EventAccumulator(str(tmp_path / "tb")).Reload()
    for layer, key in (("layer1", "even"), ("layer3", "collapsed"), ("layer5", "mixed")):
        events = acc.Scalars(f"router/{layer}/entropy")
        assert [e.step for e in events] == [2, 4]
        assert all(e.value == pytest.approx(HAND[key], rel=1e-6) for e in events)  # TB stores float32
    assert [e.value for e in acc.Scalars("router/layers_below_min_entropy")] == [1.0, 1.0]

    from hebatron_nemo.eval.report import write_report  # the run report plots the MB records

    report = write_report(tmp_path).read_text()
    assert "## Router health" in report and (tmp_path / "report_router.png").read_bytes()[:4] == b"\x89PNG"
    assert "Lowest routing entropy at step 4: layer3 0.369, layer5 0.485, layer1 1.000." in report
    assert "below router.min_entropy at 2 of 2 logged steps (first at step 2)" in report


def test_min_entropy_zero_warns_nothing(plan, tmp_path, monkeypatch, gloo_model_parallel):
    """router.min_entropy = 0 turns the warning off; the entropies are still logged. A router whose layer
    number lies outside the model config is left out with a line, and the job goes on."""
    import torch.nn as nn

    from hebatron_nemo.backends.megatron_bridge.health import ROUTER_LOG, make_health_callback

    state = _state(tmp_path, train_iters=2, log_interval=1)
    routers = _routers(state, [4, 999])
    model = nn.Module()
    model.config, model.routers = state.cfg.model, routers

    def train_step(*a, **k):
        routers["4"](_tokens(COLLAPSED))
        return {"lm loss": torch.tensor(2.0)}, 0, False, False, 0, None, None, None

    lines = []
    cb = make_health_callback(plan, 0, tmp_path, SimpleNamespace(min_entropy=0.0),
                              SimpleNamespace(enabled=False, window=1, margin=1.0), 0, log=lines.append)
    _run_train(state, model, train_step, monkeypatch, [cb])
    records = [json.loads(x) for x in (tmp_path / ROUTER_LOG).read_text().splitlines()]
    assert [r["values"]["router/layers_below_min_entropy"] for r in records] == [0, 0]
    assert records[0]["values"]["router/layer3/entropy"] == pytest.approx(HAND["collapsed"])
    assert not [x for x in lines if "WARNING" in x]
    assert set(records[0]["load"]) == {"layer3"}
    assert [x for x in lines if "layer_number 999" in x and "its load is not logged" in x]


# the scripted training loss, one value per step (step 1 first); steps 1-4 are the warmup
LOSSES = [9.0, 9.5, 10.0, 11.0,  # warmup: rising, and ignored
          4.0, 3.9, 3.8,  # window full at step 7: mean 3.9 = best
          3.6, 3.7, 3.9,  # means 3.7667, 3.7 (the best, step 9), 3.7333
          4.2,  # mean (3.7 + 3.9 + 4.2) / 3 = 3.9333: +0.2333 over the best, within the margin 0.25
          4.3,  # mean (3.9 + 4.2 + 4.3) / 3 = 4.1333: +0.4333 over the best -> stop at step 12
          4.4, 4.5, 4.6]
STOP_STEP = 12


def test_early_rise_guard_stops_at_the_right_step_with_a_checkpoint(plan, tmp_path, monkeypatch, gloo_model_parallel):
    """LOSSES through MB's loop with loss_guard(window=3, margin=0.25) and a warmup of 4 steps' tokens:
    the rising loss of the warmup does not stop the run; the window mean crosses best + margin at step
    12 (by hand above), and MB's own exit path saves step 12 and leaves the loop there; run_cpt_mb's
    wrapper turns MB's sys.exit(0) into a failed exit with the guard's message."""
    import torch.nn as nn

    from hebatron_nemo.backends.megatron_bridge.health import STOP_FILE, make_health_callback
    from hebatron_nemo.backends.megatron_bridge.run import fail_on_guard_stop

    state = _state(tmp_path, train_iters=len(LOSSES), log_interval=100)
    model = nn.Module()
    model.config = state.cfg.model
    seen = []

    def train_step(*a, **k):
        step = state.train_state.step + 1
        seen.append(step)
        return {"lm loss": torch.tensor(LOSSES[step - 1])}, 0, False, False, 0, None, None, None

    lines = []
    warmup_tokens = 4 * 16 * 32  # 4 steps of 16 x 32 tokens
    cb = make_health_callback(plan, 0, tmp_path, SimpleNamespace(min_entropy=0.5),
                              SimpleNamespace(enabled=True, window=3, margin=0.25), warmup_tokens, log=lines.append)
    ckpt, exited = _run_train(state, model, train_step, monkeypatch, [cb],
                              wrap=lambda run: fail_on_guard_stop(run, cb, tmp_path))
    # MB leaves with sys.exit(0) after an exit_interval stop; the job fails with the guard's message
    assert exited is not None and isinstance(exited.code, str)
    assert exited.code.startswith(f"stopped by the early-rise guard (loss_guard) at step {STOP_STEP}: the training")
    assert seen == list(range(1, STOP_STEP + 1)) and state.train_state.step == STOP_STEP
    assert ckpt.saved_steps == [STOP_STEP]  # MB saved the stopping step before exiting
    assert cb.stop_step == STOP_STEP and "rose to 4.1333" in cb.stop_reason and "best 3.7000 (step 9)" in cb.stop_reason
    stop = json.loads((tmp_path / STOP_FILE).read_text())
    assert stop["step"] == STOP_STEP and stop["consumed_samples"] == STOP_STEP * 16
    assert any(x.startswith("early-rise guard:") for x in lines)


def test_early_rise_guard_off_runs_to_the_end(plan, tmp_path, monkeypatch, gloo_model_parallel):
    """The same losses with loss_guard.enabled=false: MB runs every step and saves only at the end."""
    import torch.nn as nn

    from hebatron_nemo.backends.megatron_bridge.health import make_health_callback
    from hebatron_nemo.backends.megatron_bridge.run import fail_on_guard_stop

    state = _state(tmp_path, train_iters=len(LOSSES), log_interval=100)
    model = nn.Module()
    model.config = state.cfg.model

    def train_step(*a, **k):
        return {"lm loss": torch.tensor(LOSSES[state.train_state.step])}, 0, False, False, 0, None, None, None

    cb = make_health_callback(plan, 0, tmp_path, SimpleNamespace(min_entropy=0.5),
                              SimpleNamespace(enabled=False, window=3, margin=0.25), 0)
    ckpt, exited = _run_train(state, model, train_step, monkeypatch, [cb],
                              wrap=lambda run: fail_on_guard_stop(run, cb, tmp_path))
    assert exited is None and state.train_state.step == len(LOSSES) and ckpt.saved_steps == [len(LOSSES)]
    assert cb.stop_reason is None
