"""What a Megatron-Bridge CPT job adds to MB's loop: per-source loss and the ledger, a checkpoint at
every phase end, the plan fingerprint beside every checkpoint, and the resume check before training.

- `check_resume_before_pretrain` reads the sidecar of the checkpoint MB will load and refuses a run
  whose started phases changed (`curriculum.ledger.check_resume`, the local backend's rule) or whose
  consumed samples are not inside the job's segment. Run it before `pretrain()`.
- `HebatronCallback` (an MB `Callback`, built by `make_callback`; MB imported lazily):
  on_train_step_end reduces `SourceStats` over DP x CP, adds them to the `Ledger`, logs
  `train/loss/<source>` to MB's TensorBoard/W&B writers, and when the step ends a phase, lowers
  `checkpoint.save_interval` to that step so MB's own save path runs at the phase end (MB decides
  saves after this event: `train_state.step + 1` is the step about to be saved) until the next
  step's event restores it (so MB's end-of-training save sees the last step as saved);
  on_checkpoint_save writes the sidecar and ledger; on_eval_start/end pause the counting.
"""

from __future__ import annotations

from pathlib import Path

from hebatron_nemo.curriculum.ledger import Ledger, check_resume
from hebatron_nemo.utils.io import read_json, write_json_atomic
from hebatron_nemo.errors import ConfigError

SIDECAR = "hebatron_plan.json"


def plan_summary(plan: dict) -> dict:
    """What a checkpoint records of its plan (the same fields the local backend's checkpoints keep)."""
    from hebatron_nemo.curriculum.ledger import resume_summary

    return resume_summary(plan)


def iter_dir(ckpt_root: str | Path, iteration: int) -> Path:
    return Path(ckpt_root) / f"iter_{int(iteration):07d}"


def latest_iteration(ckpt_root: str | Path) -> int | None:
    f = Path(ckpt_root) / "latest_checkpointed_iteration.txt"
    if not f.exists():
        return None
    text = f.read_text().strip()
    return int(text) if text.isdigit() else None


def write_sidecar(ckpt_root: str | Path, iteration: int, plan: dict, segment: int, consumed_samples: int,
                  ledger: dict | None = None) -> Path:
    path = iter_dir(ckpt_root, iteration) / SIDECAR
    write_json_atomic(path, {"plan": plan_summary(plan), "segment": segment, "iteration": int(iteration),
                             "consumed_samples": int(consumed_samples), "ledger": ledger})
    return path


def check_resume_before_pretrain(load_dir: str | Path, plan: dict, segment: int, allow_future_changes: bool = False,
                                 log=print) -> int:
    """Consumed samples of the checkpoint MB will load (0 when there is none); raises ConfigError when
    the run cannot continue under `plan` as segment `segment`."""
    seg = plan["segments"][segment]
    start, end = seg["start_sample"], seg["start_sample"] + seg["num_samples"]
    it = latest_iteration(load_dir)
    if it is None:
        if segment > 0:
            raise ConfigError(f"segment {segment} ({seg['name']}) continues a checkpoint, but {load_dir} has none "
                              "(latest_checkpointed_iteration.txt). Fix: run the previous segment first, or set "
                              "megatron_bridge.load_dir")
        return 0
    side = read_json(iter_dir(load_dir, it) / SIDECAR)
    if side is None:
        raise ConfigError(f"checkpoint {iter_dir(load_dir, it)} has no {SIDECAR}: it was not written by this "
                          "backend, so the plan it trained cannot be checked. Fix: start from an HF folder "
                          "(megatron_bridge.hf_model_dir) or a checkpoint of this recipe")
    consumed = int(side["consumed_samples"])
    for note in check_resume(side["plan"], plan, consumed, allow_future_changes):
        log(note)
    if consumed < start:
        raise ConfigError(f"the checkpoint at {load_dir} (iteration {it}) consumed {consumed:,} samples, but segment "
                          f"{segment} ({seg['name']}) starts at sample {start:,}: segment {segment - 1} is not "
                          "finished. Fix: finish it (same command with "
                          f"segment={plan['segments'][segment - 1]['name']})")
    if consumed >= end:
        raise ConfigError(f"the checkpoint at {load_dir} (iteration {it}) already consumed {consumed:,} samples, the "
                          f"end of segment {segment} ({seg['name']}, {end:,}). Fix: run the next segment")
    log(f"resume check: iteration {it}, {consumed:,} samples consumed, plan {plan['fingerprint']} consistent")
    return consumed


def eval_losses(counts, set_names: list[str]) -> dict[str, float]:
    """`eval/<set>` = loss-token-weighted mean loss of each validation set, from reduced eval counts
    [set, source, (samples, tokens, anchor, loss sum)]; sets with no tokens are left out."""
    out = {}
    for k, name in enumerate(set_names):
        tokens = float(counts[k, :, 1].sum())
        if tokens > 0:
            out[f"eval/{name}"] = float(counts[k, :, 3].sum()) / tokens
    return out


def make_callback(plan: dict, segment: int, stats, run_dir: str | Path, save_dir: str | Path, eval_stats=None,
                  set_names: list[str] | None = None):
    """The MB Callback for one CPT segment job (MB imported here)."""
    from megatron.bridge.training.callbacks import Callback

    class HebatronCallback(Callback):
        """Per-source stats and ledger, forced phase-end checkpoints, plan sidecars."""

        def __init__(self):
            self.ledger = Ledger(plan)
            self.names = list(plan["source_names"])
            self.phase_ends = {p["end_sample"]: p["name"] for p in plan["phases"]}
            self.saved_interval = None
            ledger_path = Path(run_dir) / "ledger.json"
            prior = read_json(ledger_path)
            if prior is not None and prior.get("plan_fingerprint") == plan["fingerprint"]:
                self.ledger.load_state(prior)

        def _writer(self) -> bool:
            import torch

            return not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0

        def on_eval_start(self, context):
            stats.paused = True

        def on_eval_end(self, context):
            stats.paused = False
            if eval_stats is None:
                return
            from megatron.core import parallel_state

            group = parallel_state.get_data_parallel_group(with_context_parallel=True) \
                if parallel_state.model_parallel_is_initialized() else None
            values = eval_losses(eval_stats.reduce(group).numpy(), list(set_names or []))
            step = context.state.train_state.step
            tb, wb = getattr(context.state, "tensorboard_logger", None), getattr(context.state, "wandb_logger", None)
            for key, value in values.items():
                if tb is not None:
                    tb.add_scalar(key, value, step)
            if wb is not None and values:
                wb.log(values, step)
            if self._writer() and values:
                import json

                with open(Path(run_dir) / "mb_eval.jsonl", "a", encoding="utf-8") as f:
                    f.write(json.dumps({"step": step, "segment": segment,
                                        "consumed_samples": context.state.train_state.consumed_train_samples,
                                        "values": values}) + "\n")

        def on_test_start(self, context):
            stats.paused = True

        def on_test_end(self, context):
            stats.paused = False

        def on_train_step_end(self, context):
            from megatron.core import parallel_state

            cp = context.state.cfg.checkpoint
            if self.saved_interval is not None:  # the previous step forced a phase-end save: undo it now
                cp.save_interval, self.saved_interval = self.saved_interval, None

            group = parallel_state.get_data_parallel_group(with_context_parallel=True) \
                if parallel_state.model_parallel_is_initialized() else None
            counts = stats.reduce(group).numpy()
            # only the last pipeline stage computed losses; its counts are the ones that mean anything
            last = not parallel_state.model_parallel_is_initialized() or parallel_state.is_pipeline_last_stage()
            if last:
                self.ledger.counts[:, :, 0] += counts[:, :, 0].round().astype("int64")
                self.ledger.counts[:, :, 1] += counts[:, :, 1].round().astype("int64")
                self.ledger.counts[:, :, 2] += counts[:, :, 2].round().astype("int64")
                per_source = counts.sum(axis=0)
                step = context.state.train_state.step + 1
                for j, name in enumerate(self.names):
                    if per_source[j, 1] > 0:
                        value = float(per_source[j, 3] / per_source[j, 1])
                        for writer in (getattr(context.state, "tensorboard_logger", None),):
                            if writer is not None:
                                writer.add_scalar(f"train/loss/{name}", value, step)
                        wb = getattr(context.state, "wandb_logger", None)
                        if wb is not None:
                            wb.log({f"train/loss/{name}": value, f"train/loss_tokens/{name}": float(per_source[j, 1])},
                                   step)
            after = context.state.train_state.consumed_train_samples + context.state.cfg.train.global_batch_size
            if after in self.phase_ends:
                self.saved_interval = cp.save_interval
                cp.save_interval = context.state.train_state.step + 1  # MB's save test: step % interval == 0

        def on_checkpoint_save(self, context):
            # the forced interval stays until the next step's on_train_step_end: MB's loop, after its last
            # step, saves again unless `step % save_interval == 0`, so restoring it here made the last
            # step of a segment (always a phase end) write its checkpoint twice
            if not self._writer():
                return
            ts = context.state.train_state
            ledger = self.ledger.save(Path(run_dir) / "ledger.json", ts.consumed_train_samples)
            write_sidecar(save_dir, ts.step, plan, segment, ts.consumed_train_samples, ledger)

    return HebatronCallback()
