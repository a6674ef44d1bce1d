"""Entry points of the Megatron-Bridge backend: one CPT segment job, the SFT job, their dry runs.

Run inside the NeMo container through `python -m torch.distributed.run ... recipes/cpt.py
backend=megatron_bridge experiment=...`. A dry run (`megatron_bridge.dry_run=true`) needs no GPU:
it checks the config, prints the world-size arithmetic, the LR boundaries and the resolved
ConfigContainer as YAML (when Megatron-Bridge is importable; otherwise our overrides)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from hebatron_nemo.backends.megatron_bridge import checks
from hebatron_nemo.backends.megatron_bridge.schedule import boundaries_report
from hebatron_nemo.backends.megatron_bridge.seam import (apply_preset_env, build_cpt_container, build_sft_container,
                                                        container_yaml, cpt_overrides, mixed_precision_recipe,
                                                        optimizer_state_fully_reshardable, sft_layout, sft_overrides)
from hebatron_nemo.errors import ConfigError


def _mb_importable() -> bool:
    try:
        import megatron.bridge  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means "not in the container"
        return False
    return True


def current_plan(cfg, log=print) -> dict:
    """plan.json of the run, checked against a plan recomputed from the config and the prepared data
    (infeasible budgets raise here: the plan must fit the data)."""
    from hebatron_nemo.curriculum.ledger import load_plan
    from hebatron_nemo.curriculum.plan import build_plan

    path = Path(str(cfg.run_dir)) / "plan.json"
    if not path.exists():
        raise ConfigError(f"no plan at {path}. Fix: run `python recipes/plan.py` with the same experiment and "
                          "overrides once (on a CPU node: it writes the plan and the index caches every rank loads)")
    saved = load_plan(path)
    fresh = build_plan(cfg, log=lambda *a, **k: None)
    if fresh["fingerprint"] != saved["fingerprint"]:
        raise ConfigError(f"{path} (plan {saved['fingerprint']}) does not match this config and data (plan "
                          f"{fresh['fingerprint']}). Fix: rerun recipes/plan.py with the same overrides")
    return saved


def dry_run_text(cfg, plan: dict, segment: int, container=None) -> str:
    seg = plan["segments"][segment]
    lines = [f"Megatron-Bridge CPT, segment {segment} ({seg['name']}): samples [{seg['start_sample']:,}, "
             f"{seg['start_sample'] + seg['num_samples']:,}), {seg['batches']:,} steps, "
             f"{seg['tokens']:,} tokens, parallelism={cfg.parallelism.name}"]
    lines += ["  " + x for x in checks.layout_lines(cfg.parallelism, seg, int(cfg.model.n_routed_experts))]
    fmt = ("fully reshardable (a neighbouring segment's layout differs or is unknown)"
           if optimizer_state_fully_reshardable(cfg, plan, segment)
           else "dp_reshardable (the neighbouring segments' TP/PP/EP/ETP and DP x CP are equal)")
    lines += [f"  mixed precision: Megatron-Bridge recipe {mixed_precision_recipe(str(cfg.megatron_bridge.precision))}",
              f"  optimizer state saved {fmt}"]
    lines += boundaries_report(plan, cfg.optim)
    if container is not None:
        lines += ["", "# resolved ConfigContainer", container_yaml(container)]
    else:
        lines += ["", "# Megatron-Bridge is not importable here: our ConfigContainer overrides (the recipe's other "
                  "values apply)", OmegaConf.to_yaml(OmegaConf.create(cpt_overrides(cfg, plan, segment)))]
    return "\n".join(lines)


def run_cpt_mb(cfg, log=print) -> None:
    mb = cfg.megatron_bridge
    plan = current_plan(cfg, log)
    segment = checks.segment_index(cfg, plan["segments"])
    checks.preflight(cfg, plan, segment, check_paths=not mb.dry_run)
    container = build_cpt_container(cfg, plan, segment) if (_mb_importable() or not mb.dry_run) else None
    if mb.dry_run:
        print(dry_run_text(cfg, plan, segment, container))
        return
    from hebatron_nemo.backends.megatron_bridge.callbacks import check_resume_before_pretrain, make_callback
    from hebatron_nemo.backends.megatron_bridge.forward import SourceStats, make_forward_step

    check_resume_before_pretrain(container.checkpoint.load, plan, segment,
                                 bool(cfg.checkpoint.allow_future_changes), log)
    from hebatron_nemo.backends.megatron_bridge.dataset_provider import validation_sets

    sets = [s["name"] for s in validation_sets(plan, segment)]
    stats = SourceStats(len(plan["phases"]), len(plan["source_names"]))
    eval_stats = SourceStats(len(sets), len(plan["source_names"]))
    callback = make_callback(plan, segment, stats, cfg.run_dir, container.checkpoint.save, eval_stats, sets)
    from hebatron_nemo.backends.megatron_bridge.health import make_health_callback
    from hebatron_nemo.backends.megatron_bridge.schedule import plan_schedule

    health = make_health_callback(plan, segment, cfg.run_dir, cfg.router, cfg.loss_guard,
                                  plan_schedule(plan, cfg.optim).warmup, log)
    from megatron.bridge.training.pretrain import pretrain

    apply_preset_env(cfg, container, log)
    fail_on_guard_stop(lambda: pretrain(container, make_forward_step(stats, eval_stats=eval_stats),
                                        callbacks=[callback, health]), health, cfg.run_dir)


def fail_on_guard_stop(run, health, run_dir) -> None:
    """Runs `run()` (MB's pretrain); when the early-rise guard of `health` stopped it, MB's exit
    (`sys.exit(0)` after the checkpoint) becomes a failed exit with the guard's message, so a chain
    does not go on to the next segment."""
    from hebatron_nemo.backends.megatron_bridge.health import STOP_FILE

    try:
        run()
    except SystemExit:
        if health.stop_reason is None:
            raise
        raise SystemExit(f"stopped by the early-rise guard (loss_guard) at step {health.stop_step}: "
                         f"{health.stop_reason}. The checkpoint of step {health.stop_step} is saved; see "
                         f"{Path(str(run_dir)) / STOP_FILE}") from None


def sft_steps_line(cfg, manifest: dict | None) -> str:
    """How many SFT steps the data gives: MB sets train_iters = ceil(epochs x ceil(packed rows / global
    batch)) after packing; before packing, the prepared tokens bound the packed rows from below."""
    import math

    s, mb = cfg.sft, cfg.megatron_bridge
    if mb.sft_train_iters is not None:
        return f"steps: {int(mb.sft_train_iters):,} (megatron_bridge.sft_train_iters)"
    if manifest is None:
        return f"steps: {s.epochs} epoch(s) over the packed data (no prepared data yet to estimate from)"
    seq = sft_layout(cfg)["seq_length"]
    rows = max(1, math.ceil(manifest["tokens"] / seq))
    return (f"steps: {s.epochs} epoch(s) x ceil(packed rows / {s.global_batch_size}); "
            f"{manifest['samples']:,} conversations, "
            f"{manifest['tokens']:,} tokens -> at least {rows:,} rows of {seq:,} -> at least "
            f"{math.ceil(s.epochs * math.ceil(rows / int(s.global_batch_size))):,} steps (MB counts the packed rows)")


def run_sft_mb(cfg, log=print) -> None:
    from hebatron_nemo.backends.megatron_bridge.sft_data import link_prepared_sft, planned_dataset_root

    mb = cfg.megatron_bridge
    problems = checks.config_problems(cfg)
    problems += checks.parallelism_problems(cfg.parallelism, int(cfg.model.n_routed_experts), [])
    lay = checks.layout(cfg.parallelism)
    gb, mbs = int(cfg.sft.global_batch_size), int(cfg.sft.micro_batch_size)
    if lay["dp"] and gb % (lay["dp"] * mbs):
        problems.append(f"sft.global_batch_size={gb} is not divisible by DP x micro_batch_size = {lay['dp']} x "
                        f"{mbs}. Fix: a multiple of {lay['dp'] * mbs}")
    if not mb.dry_run:
        problems += checks.path_problems(cfg, 0, sft=True)
    checks.raise_if(problems, "megatron_bridge SFT")
    if mb.dry_run:  # no prepared data needed; nothing written
        data_dir, manifest = planned_dataset_root(cfg)
    else:  # every rank: checks the prepared dataset (written once by recipes/prepare_sft.py) and links it
        data_dir, manifest = link_prepared_sft(cfg, log)
    text = [f"Megatron-Bridge SFT: parallelism={cfg.parallelism.name}, packed length {sft_layout(cfg)['seq_length']}, "
            f"data {data_dir}"] + ["  " + x for x in checks.layout_lines(cfg.parallelism)]
    text.append("  " + sft_steps_line(cfg, manifest))
    if mb.dry_run:
        if _mb_importable() and (Path(str(cfg.sft.init_from)) / "config.json").exists():
            text += ["", "# resolved ConfigContainer", container_yaml(build_sft_container(cfg, data_dir))]
        else:
            text += ["", "# our ConfigContainer overrides (Megatron-Bridge or the HF folder is not available here)",
                     OmegaConf.to_yaml(OmegaConf.create(sft_overrides(cfg, data_dir)))]
        print("\n".join(text))
        return
    log("\n".join(text))
    container = build_sft_container(cfg, data_dir)
    from megatron.bridge.training.finetune import finetune
    from megatron.bridge.training.gpt_step import forward_step

    apply_preset_env(cfg, container, log)
    finetune(container, forward_step)
