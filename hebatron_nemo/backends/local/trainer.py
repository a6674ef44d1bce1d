"""The local training loop: a plan's segments on transformers' Nemotron-H, one global batch per step.

Per step: the rank's micro-batches of the global batch (Megatron's pretraining-sampler layout: micro
step m, rank r reads indices start + m*mb*dp + r*mb ...), a token-mean loss over the whole global
batch's loss tokens (so 1 or 2 processes compute the same update), the router's sequence-level aux
loss, a gradient all-reduce, clipping, AdamW at the WSD learning rate for the tokens seen so far, and
the expert-bias update. Then metrics, the ledger, the in-loop eval, and checkpoints (forced at every
phase and segment end). Resume continues from the latest complete checkpoint bit for bit.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from hebatron_nemo.backends.health import LossRiseGuard, low_entropy_layers, low_entropy_message, phase_at
from hebatron_nemo.backends.local import checkpoint, distributed, threads
from hebatron_nemo.backends.local.evaluation import EarlyStop, InLoopEval, token_losses
from hebatron_nemo.backends.local.preemption import StopOnSignal
from hebatron_nemo.backends.local.router import RouterBalancer
from hebatron_nemo.backends.local.schedule import WSDSchedule
from hebatron_nemo.curriculum.ledger import Ledger, MetricsWriter, check_resume
from hebatron_nemo.curriculum.mixture import CurriculumDataset
from hebatron_nemo.errors import ConfigError

BATCH_KEYS = ("tokens", "labels", "loss_mask", "source_id", "phase_id", "is_anchor", "index")


def collate(items: list[dict]) -> dict:
    return {k: torch.stack([it[k] for it in items]) for k in BATCH_KEYS}


def make_optimizer(model, optim_cfg) -> torch.optim.Optimizer:
    """AdamW; no weight decay on vectors (norms, biases, the routers' expert bias is a buffer anyway)."""
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": optim_cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=optim_cfg.lr,
                             betas=(optim_cfg.adam_beta1, optim_cfg.adam_beta2), eps=optim_cfg.adam_eps, foreach=False)


class RunLogger:
    """metrics.jsonl (the schema'd record), TensorBoard (x = tokens) and wandb (offline by default)."""

    def __init__(self, run_dir: Path, logging_cfg, enabled: bool, resume_step: int | None, config: dict):
        """resume_step: the step of the checkpoint the run resumes from, or None for a run that starts
        from its beginning (no checkpoint)."""
        self.enabled = enabled
        self.metrics = MetricsWriter(run_dir / "metrics.jsonl")
        self.tb = self.wandb = None
        if not enabled:
            return
        path = run_dir / "metrics.jsonl"
        if path.exists():
            # records after the checkpoint we resume from will be logged again; a run without a
            # checkpoint logs everything again, its step-0 eval included, so nothing is kept
            keep = [] if resume_step is None else [
                line for line in path.read_text(encoding="utf-8").splitlines()
                if json.loads(line).get("step", 0) <= resume_step]
            tmp = path.with_suffix(".tmp")
            tmp.write_text("".join(line + "\n" for line in keep), encoding="utf-8")
            tmp.replace(path)
        if logging_cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tensorboard"), purge_step=resume_step + 1 if resume_step else None)
        if logging_cfg.wandb:
            import os
            import uuid

            os.environ.setdefault("WANDB_MODE", "offline")
            os.environ.setdefault("WANDB_SILENT", "true")
            import wandb

            id_file = run_dir / "wandb_id"
            run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:8]
            id_file.write_text(run_id)
            self.wandb = wandb.init(project=logging_cfg.wandb_project, dir=str(run_dir), id=run_id, resume="allow",
                                    config=config, name=run_dir.name)

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        self.metrics.write(record)
        flat = {}
        for key in ("loss", "lr", "grad_norm", "tokens_per_second"):
            if key in record:
                flat[f"{record['kind']}/{key}"] = record[key]
        for src, v in record.get("loss_by_source", {}).items():
            flat[f"train/loss/{src}"] = v
        for k, v in record.get("values", {}).items():
            if isinstance(v, (int, float)):
                flat[k] = v
        if self.tb:
            for k, v in flat.items():
                self.tb.add_scalar(k, v, global_step=record["tokens"])
        if self.wandb:
            self.wandb.log({**flat, "tokens": record["tokens"]}, step=record["step"])

    def close(self) -> None:
        if self.tb:
            self.tb.close()
        if self.wandb:
            self.wandb.finish()


def _plan_summary(plan: dict) -> dict:
    from hebatron_nemo.curriculum.ledger import resume_summary

    return resume_summary(plan)


def train(cfg, plan: dict, model, run_dir: Path, log=print, lr: float | None = None, min_lr: float | None = None) -> dict:
    """Runs (or resumes) the plan's steps on `model`; returns the final trainer state."""
    rank, world = distributed.init()
    threads.configure(cfg.threads)  # the cores this process may use, at most cfg.threads
    stop_seg = cfg.get("segment")
    stop_seg_end = None
    if stop_seg:  # checked before anything is loaded or run
        ends = {s["name"]: s["start_sample"] + s["num_samples"] for s in plan["segments"]}
        if stop_seg not in ends:
            raise ConfigError(f"segment={stop_seg!r}: the plan's segments are {sorted(ends)}")
        stop_seg_end = ends[stop_seg]
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    optim_cfg = cfg.optim
    optimizer = make_optimizer(model, optim_cfg)
    seg_token_starts = [sum(s["tokens"] for s in plan["segments"][:k]) for k in range(len(plan["segments"]))]
    schedule = WSDSchedule(lr if lr is not None else optim_cfg.lr, min_lr if min_lr is not None else optim_cfg.min_lr,
                           plan["totals"]["tokens"], optim_cfg.warmup_fraction, optim_cfg.decay_fraction,
                           seg_token_starts, optim_cfg.rewarm_each_segment)
    router = RouterBalancer(model, cfg.router.seq_aux_loss_coeff, cfg.router.bias_update_rate)
    ledger = Ledger(plan)
    state = {"step": 0, "consumed_samples": 0, "tokens": 0}
    if rank == 0:  # what killed writes left behind (no other process writes this run's checkpoints)
        checkpoint.clean_partial(run_dir, log)
    distributed.barrier()
    ckpt = checkpoint.latest(run_dir, log) if cfg.checkpoint.resume else None
    if ckpt is not None:
        saved = checkpoint.load(ckpt, model, optimizer)
        for note in check_resume(saved["plan"], plan, saved["consumed_samples"], cfg.checkpoint.allow_future_changes):
            log(note)
        if rank == 0:  # the saved ledger is the global sum; other ranks count from zero again
            ledger.load_state(saved["ledger"])
        router.load_state(saved.get("router_window"))  # the router-health window continues where it was
        state = {k: saved[k] for k in ("step", "consumed_samples", "tokens")}
        log(f"resumed from {ckpt.name}: step {state['step']}, {state['consumed_samples']:,} samples, "
            f"{state['tokens']:,} tokens")
    total_samples = plan["totals"]["samples"]
    if state["consumed_samples"] >= total_samples:
        log("the plan is already complete")
        return state
    evaluator = InLoopEval(plan, cfg.data, cfg.eval, seed=cfg.seed)
    early = EarlyStop(cfg.eval.early_stop, plan["totals"]["tokens"])
    guard = LossRiseGuard(cfg.loss_guard, schedule.warmup)
    guard_phase = None
    logger = RunLogger(run_dir, cfg.logging, rank == 0, state["step"] if ckpt is not None else None,
                       {"plan": plan["fingerprint"]})
    phase_ends = {p["end_sample"]: p["name"] for p in plan["phases"]}
    seg_ends = {s["start_sample"] + s["num_samples"]: s["name"] for s in plan["segments"]}
    names = plan["source_names"]
    datasets: dict[int, CurriculumDataset] = {}
    progress = _progress(cfg.logging.progress and rank == 0, plan["totals"]["steps"], state["step"])
    if state["step"] == 0:  # the starting model's numbers: every later eval compares against them
        logger.log({"kind": "eval", "step": 0, "consumed_samples": 0, "tokens": 0, "phase": plan["phases"][0]["name"],
                    "segment": plan["segments"][0]["name"], "values": evaluator.run(model)})
    t_last = time.time()
    stop_reason = None
    preempted = False
    stopper = StopOnSignal()
    try:
        while state["consumed_samples"] < total_samples:
            if cfg.max_steps is not None and state["step"] >= cfg.max_steps:
                stop_reason = f"max_steps={cfg.max_steps}"
                break
            if stop_seg_end is not None and state["consumed_samples"] >= stop_seg_end:
                stop_reason = f"segment={stop_seg}"  # its end was checkpointed (forced)
                break
            c = state["consumed_samples"]
            k = next(i for i, s in enumerate(plan["segments"]) if s["start_sample"] <= c < s["start_sample"] + s["num_samples"])
            seg = plan["segments"][k]
            if k not in datasets:
                datasets[k] = CurriculumDataset(plan, k, plan.get("cache_dir") or str(cfg.cache_dir))
            ds = datasets[k]
            B, mb = seg["global_batch"], seg["micro_batch"]
            if B % (mb * world):
                raise ConfigError(f"segment {seg['name']!r}: global batch {B} does not split into micro-batches of "
                                  f"{mb} over {world} processes")
            accum = B // (mb * world)
            micro = [collate([ds[c + m * mb * world + rank * mb + j] for j in range(mb)]) for m in range(accum)]
            local_tokens = torch.tensor(float(sum(float(b["loss_mask"].sum()) for b in micro)), dtype=torch.float64)
            total_tokens = float(distributed.all_reduce_sum(local_tokens.clone()))
            lr_now = schedule(state["tokens"])
            for group in optimizer.param_groups:
                group["lr"] = lr_now
            optimizer.zero_grad(set_to_none=True)
            src_stats = torch.zeros(len(names), 2, dtype=torch.float64)  # loss sum, tokens
            aux_total = 0.0
            for b in micro:
                tl = token_losses(model, b["tokens"], b["labels"])
                mask = b["loss_mask"].to(tl.dtype)
                loss = (tl * mask).sum() / max(total_tokens, 1.0)
                aux = router.aux_loss()
                if aux is not None:
                    loss = loss + aux / (accum * world)
                    aux_total += float(aux.detach()) / accum
                loss.backward()
                with torch.no_grad():
                    per_row = (tl.detach() * mask).sum(dim=1).double()
                    src_stats[:, 0].index_add_(0, b["source_id"], per_row)
                    src_stats[:, 1].index_add_(0, b["source_id"], mask.sum(dim=1).double())
                ledger.update(b["source_id"], b["phase_id"], b["is_anchor"], b["loss_mask"])
            distributed.all_reduce_gradients(model)
            params = [p for p in model.parameters() if p.grad is not None]
            if optim_cfg.clip_grad > 0:
                grad_norm = float(torch.nn.utils.clip_grad_norm_(params, optim_cfg.clip_grad, foreach=False))
            else:
                grad_norm = float(torch.norm(torch.stack([p.grad.norm() for p in params])))
            optimizer.step()
            router.step()
            distributed.all_reduce_sum(src_stats)
            state["step"] += 1
            state["consumed_samples"] = c + B
            state["tokens"] += B * seg["seq_length"]
            phase = plan["phases"][int(micro[0]["phase_id"][0])]
            now = time.time()
            record = {"kind": "train", "step": state["step"], "consumed_samples": state["consumed_samples"],
                      "tokens": state["tokens"], "phase": phase["name"], "segment": seg["name"], "lr": lr_now,
                      "loss": float(src_stats[:, 0].sum() / src_stats[:, 1].sum().clamp(min=1)),
                      "loss_by_source": {names[i]: float(src_stats[i, 0] / src_stats[i, 1])
                                         for i in range(len(names)) if src_stats[i, 1] > 0},
                      "loss_tokens_by_source": {names[i]: int(src_stats[i, 1]) for i in range(len(names)) if src_stats[i, 1] > 0},
                      "grad_norm": grad_norm, "aux_loss": aux_total,
                      "tokens_per_second": B * seg["seq_length"] / max(now - t_last, 1e-9)}
            t_last = now
            if state["step"] % cfg.logging.log_interval == 0:
                logger.log(record)
            if cfg.router.log_every and state["step"] % cfg.router.log_every == 0:
                rstats = router.stats()
                low = low_entropy_layers(rstats, cfg.router.min_entropy)
                if low and rank == 0:
                    log(low_entropy_message(low, rstats, cfg.router.min_entropy, state["step"]))
                logger.log({**_where(record), "kind": "router",
                            "values": {f"router/{layer}/entropy": s["entropy"] for layer, s in rstats.items()}
                            | {f"router/{layer}/max_over_mean": s["max_over_mean"] for layer, s in rstats.items()}
                            | {"router/layers_below_min_entropy": len(low)},
                            "load": {layer: s["load"] for layer, s in rstats.items()}})
            if phase_at(plan, c) != guard_phase:  # a new phase's loss starts its own best
                guard.reset()
                guard_phase = phase_at(plan, c)
            # with a re-warm per segment, the warmup counts from the segment's first token
            warm_from = seg_token_starts[k] if optim_cfg.rewarm_each_segment else 0
            stop_reason = guard.update(state["step"], state["tokens"] - warm_from, record["loss"])
            at_phase_end = state["consumed_samples"] in phase_ends
            at_seg_end = state["consumed_samples"] in seg_ends
            if (cfg.eval.eval_interval and state["step"] % cfg.eval.eval_interval == 0) or at_phase_end:
                values = evaluator.run(model)
                logger.log({**_where(record), "kind": "eval", "values": values})
                stop_reason = stop_reason or early.update(values, state["tokens"])
            forced = at_phase_end or at_seg_end or stop_reason is not None
            saved = forced or bool(cfg.checkpoint.save_interval and state["step"] % cfg.checkpoint.save_interval == 0)
            if stopper.requested() and state["consumed_samples"] < total_samples:
                # the cluster's warning (preemption or time limit): checkpoint this step and stop
                preempted = True
                stop_reason = f"{stopper.name}: checkpointed at step {state['step']}; run again to resume"
                if not saved:
                    _save(run_dir, model, optimizer, state, ledger, plan, rank, False, cfg, router)
                    if rank == 0:
                        logger.log({**_where(record), "kind": "checkpoint",
                                    "values": {"forced": False, "phase_end": "", "segment_end": ""}})
            if saved:
                _save(run_dir, model, optimizer, state, ledger, plan, rank, forced, cfg, router)
                if rank == 0:
                    logger.log({**_where(record), "kind": "checkpoint",
                                "values": {"forced": forced, "phase_end": phase_ends.get(state["consumed_samples"], ""),
                                           "segment_end": seg_ends.get(state["consumed_samples"], "")}})
            if progress:
                progress.update(progress.task_ids[0], completed=state["step"],
                                description=f"{seg['name']}/{phase['name']} loss {record['loss']:.3f}")
            if stop_reason:
                log(f"stopped: {stop_reason}" if preempted else f"early stop: {stop_reason}")
                if preempted and (stopper.warnings > 1 or stopper.deferred_terms):
                    log(f"  ({stopper.name} arrived {stopper.warnings}x and SIGTERM {stopper.deferred_terms}x after it; "
                        "the repeats were absorbed until the checkpoint was written)")
                break
    finally:
        stopper.restore()
        if progress:
            progress.stop()
        logger.close()
        router.remove()
    global_ledger = _global_ledger(ledger)  # a collective: every rank takes part
    if rank == 0:
        state["ledger"] = global_ledger.save(run_dir / "ledger.json", state["consumed_samples"])
    state["stop_reason"] = stop_reason
    state["preempted"] = preempted
    return state


def _where(record: dict) -> dict:
    return {k: record[k] for k in ("step", "consumed_samples", "tokens", "phase", "segment")}


def _global_ledger(ledger: Ledger) -> Ledger:
    """A copy whose counts are summed over data-parallel ranks."""
    g = Ledger(ledger.plan)
    t = torch.from_numpy(ledger.counts.copy())
    distributed.all_reduce_sum(t)
    g.counts = t.numpy()
    return g


def _save(run_dir, model, optimizer, state, ledger, plan, rank, forced, cfg, router) -> None:
    global_ledger = _global_ledger(ledger)
    if rank == 0:
        trainer_state = {**{k: state[k] for k in ("step", "consumed_samples", "tokens")}, "plan": _plan_summary(plan),
                         "router_window": router.state()}
        checkpoint.save(run_dir, state["step"], model, optimizer, trainer_state,
                        global_ledger.to_dict(state["consumed_samples"]), forced=forced)
        checkpoint.prune(run_dir, cfg.checkpoint.keep_last)
        global_ledger.save(run_dir / "ledger.json", state["consumed_samples"])
    distributed.barrier()


def _progress(enabled: bool, total: int, done: int):
    if not enabled:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    p = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("steps"),
                 TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
    p.add_task("training", total=total, completed=done)
    p.start()
    return p


__all__ = ["train", "collate", "make_optimizer", "token_losses"]
