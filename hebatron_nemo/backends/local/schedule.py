"""The learning rate as a function of training tokens: linear warmup, a stable plateau, a linear decay
to min_lr over the last `decay_fraction` of the tokens (warmup-stable-decay). Measured in tokens so
the schedule is one curve over every phase and segment, whatever their batch sizes in samples."""

from __future__ import annotations

from hebatron_nemo.errors import ConfigError


class WSDSchedule:
    def __init__(self, lr: float, min_lr: float, total_tokens: int, warmup_fraction: float, decay_fraction: float,
                 segment_starts: list[int] | None = None, rewarm_each_segment: bool = False):
        if not (0 <= warmup_fraction < 1 and 0 <= decay_fraction <= 1 and warmup_fraction + decay_fraction <= 1):
            raise ConfigError("optim: need 0 <= warmup_fraction, decay_fraction and warmup + decay <= 1")
        if not 0 <= min_lr <= lr:
            raise ConfigError(f"optim: need 0 <= min_lr <= lr, got min_lr={min_lr}, lr={lr}")
        self.lr, self.min_lr, self.total = lr, min_lr, max(1, int(total_tokens))
        self.warmup = warmup_fraction * self.total
        self.decay_start = (1 - decay_fraction) * self.total
        self.segment_starts = sorted(segment_starts or [0])
        self.rewarm = rewarm_each_segment

    def __call__(self, tokens: int) -> float:
        t = float(tokens)
        if t >= self.decay_start and self.decay_start < self.total:
            frac = min(1.0, (t - self.decay_start) / (self.total - self.decay_start))
            return self.lr + (self.min_lr - self.lr) * frac
        start = 0
        if self.rewarm:
            start = max(s for s in self.segment_starts if s <= t)
        if self.warmup > 0 and t - start < self.warmup:
            return self.lr * (t - start + 1) / self.warmup if t - start + 1 < self.warmup else self.lr
        return self.lr

    def state(self) -> dict:
        return {"lr": self.lr, "min_lr": self.min_lr, "total_tokens": self.total, "warmup_tokens": self.warmup,
                "decay_start_tokens": self.decay_start, "rewarm_each_segment": self.rewarm,
                "segment_starts": self.segment_starts}
