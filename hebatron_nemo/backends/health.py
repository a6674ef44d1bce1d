"""Training-health rules shared by both backends (the local trainer and the Megatron-Bridge callbacks),
so a run is judged the same way whichever backend trains it.

- `load_stats`: per MoE layer, the share of routed token slots each expert received, the entropy of
  that distribution divided by ln(E) (1.0 = perfectly even, 0.0 = every token to one expert) and the
  busiest expert's load over the mean. The Hebatron team found an expert collapse in deep layers on
  Hebrew by looking at exactly this; `low_entropy_layers` names the layers under `router.min_entropy`.
- `LossRiseGuard`: the early-rise stop. After the learning-rate warmup, the training loss smoothed over
  a window of steps is compared with the best smoothed value seen so far in the current phase; when it
  rises more than `loss_guard.margin` above it, the run stops (each backend checkpoints first).
"""

from __future__ import annotations

import math
from collections import deque


def load_stats(counts) -> dict | None:
    """`counts`: tokens routed to each expert of one layer (any 1-D sequence or tensor of E numbers).
    Returns {"load": shares rounded to 5 digits, "entropy": normalized entropy, "max_over_mean": float},
    or None when nothing was routed."""
    values = [float(x) for x in (counts.tolist() if hasattr(counts, "tolist") else counts)]
    total = sum(values)
    if total <= 0 or len(values) < 2:
        return None
    frac = [v / total for v in values]
    entropy = -sum(p * math.log(p) for p in frac if p > 0) / math.log(len(frac))
    return {"load": [round(p, 5) for p in frac], "entropy": entropy, "max_over_mean": max(frac) * len(frac)}


def low_entropy_layers(stats: dict[str, dict], min_entropy: float) -> list[str]:
    """The layers of `stats` (layer -> `load_stats` dict) whose entropy is below `min_entropy`
    (0 turns the warning off)."""
    if not min_entropy:
        return []
    return [layer for layer, s in stats.items() if s["entropy"] < min_entropy]


def low_entropy_message(layers: list[str], stats: dict[str, dict], min_entropy: float, step: int) -> str:
    shown = ", ".join(f"{k} {stats[k]['entropy']:.3f} (busiest expert {stats[k]['max_over_mean']:.1f}x the mean)"
                      for k in layers)
    return (f"WARNING router collapse at step {step}: routing entropy below router.min_entropy={min_entropy} in "
            f"{len(layers)} MoE layer(s): {shown}. Raise router.seq_aux_loss_coeff or router.bias_update_rate, or "
            "go back to an earlier checkpoint")


class LossRiseGuard:
    """The early-rise rule. `cfg` has `enabled`, `window` (steps averaged) and `margin` (in loss units,
    nats per token); `warmup_tokens`: training tokens of the LR warmup; steps up to there are ignored.

    `update(step, tokens, loss)` after every training step returns None, or the reason to stop.
    `reset()` at a phase start: a new phase's data may have a higher loss without anything being
    wrong, so its best value starts over. A restarted job starts over too (nothing is checkpointed):
    it needs `window` steps again before it can stop."""

    def __init__(self, cfg, warmup_tokens: float):
        self.enabled = bool(cfg.enabled)
        self.window = int(cfg.window)
        self.margin = float(cfg.margin)
        if self.enabled and (self.window < 1 or not self.margin > 0):
            raise ValueError(f"loss_guard: need window >= 1 and margin > 0, got window={cfg.window}, margin={cfg.margin}")
        self.warmup_tokens = float(warmup_tokens)
        self.reset()

    def reset(self) -> None:
        self.recent: deque = deque(maxlen=max(self.window, 1))
        self.best = math.inf
        self.best_step: int | None = None
        self.smoothed: float | None = None

    def update(self, step: int, tokens: float, loss: float) -> str | None:
        if not self.enabled or tokens <= self.warmup_tokens:
            return None
        if not math.isfinite(loss):
            return f"training loss is {loss} at step {step}"
        self.recent.append(float(loss))
        if len(self.recent) < self.window:
            return None
        self.smoothed = sum(self.recent) / len(self.recent)
        if self.smoothed < self.best:
            self.best, self.best_step = self.smoothed, step
            return None
        if self.smoothed > self.best + self.margin:
            return (f"the training loss (mean of the last {self.window} steps) rose to {self.smoothed:.4f} at step {step}, "
                    f"more than loss_guard.margin={self.margin} above its best {self.best:.4f} (step {self.best_step}) "
                    "after the warmup")
        return None


def phase_at(plan: dict, consumed_samples: int) -> int:
    """Index of the plan's phase that the step starting at `consumed_samples` trains (the guard's best
    starts over when it changes)."""
    for i, p in enumerate(plan["phases"]):
        if consumed_samples < p["end_sample"]:
            return i
    return len(plan["phases"]) - 1
