"""The plan's one learning-rate curve over tokens, as Megatron-Bridge scheduler fields per segment.

The curve is the local backend's `WSDSchedule` (backends/local/schedule.py): linear warmup, a stable
plateau, a linear decay to min_lr over the last `decay_fraction` of all CPT tokens. Megatron-Bridge
(MB) counts its scheduler in samples (`train.train_samples` set), and megatron-core's
`OptimizerParamScheduler` keeps `num_steps` = consumed samples across a checkpoint load. Inside one
segment tokens are an affine function of samples, t(n) = T_k + (n - S_k) x L_k, so each piece of the
token curve is a line in n; the fields below place those lines, per segment, so the scheduler's LR at
every consumed-sample count equals the plan's LR at the matching token count.

- warmup: `WSDSchedule` gives lr x (t + 1) / W for t + 1 < W. With init_lr = lr / W and
  warmup_samples = (W - 1) / L_0, mcore's init + (max - init) x n / warmup is the same line, and both
  reach lr at the same sample. The warmup must end inside the first segment (a checked error).
- decay: mcore's WSD anneal starts at `lr_decay_samples - lr_wsd_decay_samples` and ends at
  `lr_decay_samples`, linear. Segment k puts them where t(n) = D (decay start) and t(n) = T (the
  total): anneal_start = S_k + (D - T_k) / L_k, end = S_k + (T - T_k) / L_k. Both may lie outside the
  segment (a line extended); only the segment's own samples are ever trained.

Sample counts here may be fractional: mcore does the arithmetic in floats, and rounding them would
move the curve off the plan.
"""

from __future__ import annotations

from hebatron_nemo.backends.local.schedule import WSDSchedule
from hebatron_nemo.errors import ConfigError


def plan_schedule(plan: dict, optim) -> WSDSchedule:
    """The plan's LR curve over tokens, exactly as the local trainer builds it."""
    starts = [sum(s["tokens"] for s in plan["segments"][:k]) for k in range(len(plan["segments"]))]
    return WSDSchedule(float(optim.lr), float(optim.min_lr), plan["totals"]["tokens"], float(optim.warmup_fraction),
                       float(optim.decay_fraction), starts, bool(optim.rewarm_each_segment))


def segment_token_start(plan: dict, k: int) -> int:
    return sum(s["tokens"] for s in plan["segments"][:k])


def scheduler_fields(plan: dict, optim, segment: int) -> dict:
    """{"optimizer": {...}, "scheduler": {...}} overrides of MB's ConfigContainer for one segment."""
    if optim.rewarm_each_segment:
        raise ConfigError("optim.rewarm_each_segment=true cannot run on Megatron-Bridge: megatron-core's warmup "
                          "counts from sample 0 of the run, not from a segment start. Fix: set "
                          "optim.rewarm_each_segment=false")
    sched = plan_schedule(plan, optim)
    seg = plan["segments"][segment]
    L, S = seg["seq_length"], seg["start_sample"]
    T_k = segment_token_start(plan, segment)
    total, D, W = float(sched.total), float(sched.decay_start), float(sched.warmup)
    first = plan["segments"][0]
    if W > 0 and W - 1 > first["tokens"]:
        raise ConfigError(f"optim.warmup_fraction={optim.warmup_fraction} makes the warmup ({W:,.0f} tokens) longer "
                          f"than the first segment {first['name']!r} ({first['tokens']:,} tokens). Fix: lower "
                          "optim.warmup_fraction so the warmup ends inside the first segment")
    if W > 0 and D < W:
        raise ConfigError("optim: the decay starts before the warmup ends. Fix: lower optim.warmup_fraction + "
                          "optim.decay_fraction below 1")
    scheduler = {"lr_warmup_iters": 0, "lr_decay_iters": None, "lr_wsd_decay_iters": None,
                 "lr_warmup_fraction": None, "lr_wsd_decay_style": "linear",
                 "override_opt_param_scheduler": True, "use_checkpoint_opt_param_scheduler": False,
                 "start_weight_decay": float(optim.weight_decay), "end_weight_decay": float(optim.weight_decay),
                 "weight_decay_incr_style": "constant"}
    if W > 0 and segment == 0:
        scheduler["lr_warmup_samples"] = (W - 1) / L
        scheduler["lr_warmup_init"] = float(optim.lr) / W
    else:  # the warmup ended in segment 0; from there on the scheduler never enters its warmup branch
        scheduler["lr_warmup_samples"] = 0
        scheduler["lr_warmup_init"] = 0.0
    end = S + (total - T_k) / L
    if D < total:
        scheduler["lr_decay_style"] = "WSD"
        scheduler["lr_decay_samples"] = end
        scheduler["lr_wsd_decay_samples"] = (total - D) / L
    else:  # decay_fraction = 0: the plateau runs to the end
        scheduler["lr_decay_style"] = "constant"
        scheduler["lr_decay_samples"] = end
        scheduler["lr_wsd_decay_samples"] = None
    # the LR endpoints the scheduler runs between (the seam sets them from its knob table: optim.lr, optim.min_lr)
    return {"optimizer": {"lr": float(optim.lr), "min_lr": float(optim.min_lr)}, "scheduler": scheduler}


def boundaries_report(plan: dict, optim) -> list[str]:
    """Where the warmup, segment boundaries and decay fall, in tokens: for the dry run."""
    sched = plan_schedule(plan, optim)
    lines = [f"LR over tokens: warmup to {sched.warmup:,.0f}, decay from {sched.decay_start:,.0f} to {sched.total:,} "
             f"(lr {optim.lr:g} -> {optim.min_lr:g})"]
    for k, s in enumerate(plan["segments"]):
        t0 = segment_token_start(plan, k)
        where = "in the decay" if t0 >= sched.decay_start else "on the plateau" if t0 >= sched.warmup else "in the warmup"
        lines.append(f"  segment {k} {s['name']!r} starts at {t0:,} tokens ({where}), sample {s['start_sample']:,}")
    return lines
