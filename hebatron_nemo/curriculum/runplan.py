"""`recipes/plan.py`: build, print, save and cache a plan."""

from __future__ import annotations

import time
from pathlib import Path

from hebatron_nemo.curriculum.plan import build_plan
from hebatron_nemo.curriculum.report import plot_plan, print_plan
from hebatron_nemo.curriculum.schemas import validate
from hebatron_nemo.utils.io import write_json_atomic
from hebatron_nemo.utils.logs import quiet_megatron


def make_plan(cfg, log=print) -> dict:
    """Validates and computes the plan, prints it, builds the index caches, writes plan.json + plan.png."""
    quiet_megatron()
    plan = build_plan(cfg, log=log)
    print_plan(plan)
    return write_plan(cfg, plan, build_caches=bool(cfg.build_caches), log=log)


def write_plan(cfg, plan: dict, build_caches: bool = True, log=print) -> dict:
    """The one writer of `<run_dir>/plan.json` (the plan stage and the local backend's CPT both call it).

    Refuses a resume whose saved checkpoints trained a different plan before anything is written,
    checks the plan against its JSON Schema (before and after building the index caches when
    `build_caches`), then writes plan.json atomically and plots plan.png next to it."""
    run_dir = Path(str(cfg.run_dir))
    ckpt = cfg.get("checkpoint")  # training configs (the pipeline's plan stage) resume a run in run_dir
    if ckpt is not None and ckpt.get("resume", False):
        from hebatron_nemo.curriculum.ledger import check_saved_run

        # before anything is written: a refused resume keeps the plan its checkpoints trained
        check_saved_run(run_dir, plan, bool(ckpt.get("allow_future_changes", False)), log=lambda *a, **k: None)
    validate(plan, "plan")  # before the caches are built: a malformed plan costs no index building
    run_dir.mkdir(parents=True, exist_ok=True)
    if build_caches:
        from hebatron_nemo.curriculum.mixture import build_caches as build_index_caches

        t0 = time.time()
        plan["caches"] = build_index_caches(plan, str(cfg.cache_dir))
        log(f"index caches: {len(plan['caches'])} streams built in {time.time() - t0:.1f}s -> {cfg.cache_dir}")
    plan["cache_dir"] = str(cfg.cache_dir)
    validate(plan, "plan")  # again with the caches' entries
    write_json_atomic(run_dir / "plan.json", plan)
    plot_plan(plan, run_dir / "plan.png")
    log(f"plan: {run_dir / 'plan.json'} (fingerprint {plan['fingerprint']}), plot: {run_dir / 'plan.png'}")
    return plan
