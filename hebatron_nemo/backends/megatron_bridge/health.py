"""Training health on Megatron-Bridge (MB): an MB `Callback` with the local backend's router-health
lines and the early-rise stop, judged by the same rules (`hebatron_nemo.backends.health`).

Router health. megatron-core's own MoE tracking does not keep what is needed: its metrics tracker
(`moe_logging.get_moe_metrics_tracker`, behind `moe_utils.track_moe_metrics`) holds one scalar per
layer (the aux losses), and the routers' `local_tokens_per_expert` (the expert-bias update's load) is
zeroed in `finalize_model_grads`, inside the train step, before any callback runs. So the callback
hooks every `TopKRouter` of the model at `on_train_start` and adds up its routing map's tokens per
expert under the same condition megatron-core counts the bias update's load (`module.training` and
grad enabled: training forwards, and activation recomputation counted once, not evaluation). At MB's
logging interval (`logger.log_interval`) the per-layer counts since the last line are summed over all
ranks (one all-reduce of [layers, experts]; pipeline stages hold different layers, and a uniform
factor such as TP without sequence parallelism cancels in the shares), and per layer the load shares,
entropy / ln(E) and busiest-over-mean go to MB's TensorBoard and W&B writers as `router/<layer>/...`
and to `<run_dir>/mb_router.jsonl` in the records the local backend writes to metrics.jsonl (layer
names `layer<i>`, i the 0-based position in the hybrid layer stack, as the HF model numbers them).
Layers under `router.min_entropy` give a warning line and `router/layers_below_min_entropy`.
Padding tokens, if a batch had any, would be counted: the CPT windows are full sequences.

Early-rise stop. After every step, `LossRiseGuard` sees MB's reduced training loss (`loss_dict["lm
loss"]`, present on the last pipeline stage; a MAX all-reduce gives every rank the same value, so every
rank decides the same). When it fires, the callback sets `train.exit_interval` to the step being
finished: MB's `checkpoint_and_decide_exit` then saves that step (unless its interval save already did)
and leaves the loop through its own exit path (`sys.exit`). `<run_dir>/loss_guard_stop.json` records
why, and `run_cpt_mb` turns MB's exit into a failed job with the message, so a chain stops there.
"""

from __future__ import annotations

from pathlib import Path

from hebatron_nemo.backends.health import LossRiseGuard, load_stats, low_entropy_layers, low_entropy_message, phase_at

LOSS_KEY = "lm loss"  # MB's masked next-token loss reports under this name
ROUTER_LOG = "mb_router.jsonl"
STOP_FILE = "loss_guard_stop.json"


def tokens_after(plan: dict, segment: int, consumed_samples: int) -> int:
    """Training tokens when `consumed_samples` samples are done (inside segment `segment`)."""
    seg = plan["segments"][segment]
    start = sum(s["tokens"] for s in plan["segments"][:segment])
    return start + (int(consumed_samples) - seg["start_sample"]) * seg["seq_length"]


def make_health_callback(plan: dict, segment: int, run_dir: str | Path, router_cfg, guard_cfg, warmup_tokens: float,
                         log=print):
    """The MB Callback for one CPT segment job (MB imported here). `router_cfg` gives `min_entropy`,
    `guard_cfg` the `loss_guard` group; `warmup_tokens`: where the LR warmup ends."""
    import torch
    from megatron.bridge.training.callbacks import Callback

    run_dir = Path(run_dir)
    seg = plan["segments"][segment]

    def _dist() -> bool:
        return torch.distributed.is_available() and torch.distributed.is_initialized()

    def _device():
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")

    class HealthCallback(Callback):
        """Per-layer router load and entropy at the logging interval; the early-rise stop."""

        def __init__(self):
            self.guard = LossRiseGuard(guard_cfg, warmup_tokens)
            self.min_entropy = float(router_cfg.min_entropy)
            self.routers: list = []  # (table row, layer name, module)
            self.main_layers = 0
            self.handles: list = []
            self.counts = None  # [rows, experts] tokens routed since the last line (float64)
            self.phase = None
            self.stop_reason: str | None = None
            self.stop_step: int | None = None
            self.warned_empty = False

        def _writer(self) -> bool:
            return not _dist() or torch.distributed.get_rank() == 0

        # ---- router load -------------------------------------------------------------------------
        def attach(self, model_chunks, model_cfg) -> None:
            """Hooks every TopKRouter of `model_chunks`; rows are layer numbers (MTP layers after the
            main stack, as megatron-core's tracker places them)."""
            from megatron.core.transformer.moe.router import TopKRouter

            self.detach()
            self.main_layers = int(model_cfg.num_layers)
            layers = self.main_layers + int(getattr(model_cfg, "mtp_num_layers", None) or 0)
            experts = int(getattr(model_cfg, "num_moe_experts", None) or 0)
            if not experts:  # a dense model: nothing to watch
                self.counts = None
                return
            for chunk in model_chunks:
                for m in chunk.modules():
                    if not isinstance(m, TopKRouter):
                        continue
                    row = None if m.layer_number is None else \
                        m.layer_number - 1 + (self.main_layers if m.is_mtp_layer else 0)
                    if row is None or not 0 <= row < layers or m.num_experts != experts:
                        # monitoring must not end a job whose model is fine: say so and leave it out
                        log(f"router health: a router (layer_number {m.layer_number}, mtp={m.is_mtp_layer}, "
                            f"{m.num_experts} experts) does not fit the model config ({layers} layers, {experts} "
                            "experts); its load is not logged")
                        continue
                    self.routers.append((row, self._name(row), m))
                    self.handles.append(m.register_forward_hook(self._hook(row)))
            # every rank builds the same table, also ranks without MoE layers (the all-reduce needs it)
            self.counts = torch.zeros(layers, experts, dtype=torch.float64, device=_device())

        def _name(self, row: int) -> str:
            """`layer<i>` (0-based in the layer stack, as the HF model numbers its layers), `mtp<j>`."""
            return f"layer{row}" if row < self.main_layers else f"mtp{row - self.main_layers}"

        def _hook(self, row: int):
            def hook(module, inputs, outputs):
                # megatron-core counts the bias update's load under this condition (router.py,
                # `_apply_expert_bias`): evaluation forwards are left out
                if module.training and torch.is_grad_enabled():
                    routing_map = outputs[1]
                    self.counts[row] += routing_map.detach().sum(dim=0).to(self.counts.device, torch.float64)
            return hook

        def detach(self) -> None:
            for h in self.handles:
                h.remove()
            self.handles, self.routers = [], []

        def router_stats(self) -> dict[str, dict]:
            """Per layer the load statistics since the last call, summed over every rank (a collective:
            every rank calls it); the counts start over."""
            total = self.counts.clone()
            self.counts.zero_()
            if _dist():
                torch.distributed.all_reduce(total)
            total = total.cpu()
            out = {}
            for row in range(total.shape[0]):  # rows no rank routed through (dense layers) give None
                s = load_stats(total[row])
                if s is not None:
                    out[self._name(row)] = s
            return out

        def _log_router(self, context, step: int, before: int, consumed: int) -> None:
            stats = self.router_stats()
            if not stats:
                if not self.warned_empty and self._writer():
                    log("router health: no routed tokens were seen by the router hooks since the last line "
                        "(are the routers inside a captured CUDA graph?)")
                self.warned_empty = True
                return
            low = low_entropy_layers(stats, self.min_entropy)
            values = {f"router/{k}/entropy": s["entropy"] for k, s in stats.items()}
            values |= {f"router/{k}/max_over_mean": s["max_over_mean"] for k, s in stats.items()}
            values["router/layers_below_min_entropy"] = len(low)
            tb, wb = getattr(context.state, "tensorboard_logger", None), getattr(context.state, "wandb_logger", None)
            if tb is not None:
                for key, value in values.items():
                    tb.add_scalar(key, value, step)
            if wb is not None:
                wb.log(values, step)
            if not self._writer():
                return
            if low:
                log(low_entropy_message(low, stats, self.min_entropy, step))
            from hebatron_nemo.curriculum.ledger import MetricsWriter

            MetricsWriter(run_dir / ROUTER_LOG).write({
                "kind": "router", "step": step, "consumed_samples": consumed,
                "tokens": tokens_after(plan, segment, consumed), "phase": plan["phases"][phase_at(plan, before)]["name"],
                "segment": seg["name"], "values": values, "load": {k: s["load"] for k, s in stats.items()}})

        # ---- the early-rise stop -----------------------------------------------------------------
        def _global_loss(self, loss_dict) -> float | None:
            value = loss_dict.get(LOSS_KEY) if loss_dict else None
            local = float(value) if value is not None else float("-inf")
            if _dist():
                t = torch.tensor([local], dtype=torch.float64, device=_device())
                torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
                local = float(t.item())
            return None if local == float("-inf") else local

        def _guard(self, context, step: int, consumed_before: int, consumed: int) -> None:
            if not self.guard.enabled:  # no per-step all-reduce when the guard is off
                return
            phase = phase_at(plan, consumed_before)
            if phase != self.phase:  # a new phase's loss starts its own best (as on the local backend)
                self.guard.reset()
                self.phase = phase
            loss = self._global_loss(context.loss_dict)
            if loss is None or context.skipped_iter:
                return
            reason = self.guard.update(step, tokens_after(plan, segment, consumed), loss)
            if reason is None or self.stop_reason is not None:
                return
            self.stop_reason, self.stop_step = reason, step
            # MB: `exit_interval and step % exit_interval == 0` after this event -> save, then exit
            context.state.cfg.train.exit_interval = step
            if self._writer():
                from hebatron_nemo.utils.io import write_json_atomic

                write_json_atomic(run_dir / STOP_FILE, {"segment": segment, "step": step, "consumed_samples": consumed,
                                                         "tokens": tokens_after(plan, segment, consumed), "reason": reason})
                log(f"early-rise guard: {reason}; checkpointing step {step} and stopping")
            tb, wb = getattr(context.state, "tensorboard_logger", None), getattr(context.state, "wandb_logger", None)
            if tb is not None:
                tb.add_scalar("train/loss_guard_stop", 1.0, step)
            if wb is not None:
                wb.log({"train/loss_guard_stop": 1.0}, step)

        # ---- MB events ---------------------------------------------------------------------------
        def on_train_start(self, context):
            self.attach(context.model, context.state.cfg.model)

        def on_train_step_end(self, context):
            ts = context.state.train_state
            step = ts.step + 1  # MB advances step and consumed samples after this event
            before = ts.consumed_train_samples
            consumed = before + context.state.cfg.train.global_batch_size
            interval = int(context.state.cfg.logger.log_interval or 0)
            if self.counts is not None and interval and step % interval == 0:
                self._log_router(context, step, before, consumed)
            self._guard(context, step, before, consumed)

        def on_train_end(self, context):
            self.detach()

    return HealthCallback()
