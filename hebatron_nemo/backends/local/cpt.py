"""Stage 0 (the CPU demo's base model) and continued pretraining with the local backend."""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path

from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file

from hebatron_nemo.backends.local import distributed
from hebatron_nemo.backends.local.trainer import train
from hebatron_nemo.curriculum.plan import build_plan
from hebatron_nemo.export.hf import TRAINING_STATE
from hebatron_nemo.utils.hashing import stable_hash
from hebatron_nemo.utils.io import read_json
from hebatron_nemo.utils.logs import quiet_megatron
from hebatron_nemo.models.nemotron_h import build_model, count_parameters


def _plan_and_caches(cfg, log) -> dict:
    """Rank 0 builds the plan and its index caches and writes plan.json (validated, plotted: the
    plan stage's writer); the others read it."""
    from hebatron_nemo.curriculum.runplan import write_plan

    rank = distributed.init()[0]
    run_dir = Path(str(cfg.run_dir))
    if rank == 0:
        write_plan(cfg, build_plan(cfg, log=log), build_caches=True, log=lambda *a, **k: None)
    distributed.barrier()
    return read_json(run_dir / "plan.json")


def base_config(cfg):
    """The stage-0 run: one phase on the base mixture (mostly English), no anchor, its own run folder."""
    b = cfg.base
    bc = OmegaConf.merge(cfg, {
        "curriculum": {"name": "base", "order": "easy_to_hard", "transition_batches": 0, "segment_doc_shares": {},
                       "segments": [{"name": "base", "seq_length": b.seq_length,
                                     "global_batch_size": b.global_batch_size,
                                     "micro_batch_size": b.micro_batch_size, "data_parallel_size": 1}],
                       "phases": [{"name": "base", "segment": "base", "tokens": b.tokens,
                                   "sources": OmegaConf.to_container(b.sources), "select": {}}]},
        "anchor": {"share": 0.0, "sources": {}},
        "eval": {"early_stop": {"enabled": False}},
        "loss_guard": {"enabled": False},  # a from-scratch loss is not the CPT's to judge
        "segment": None,  # a CPT segment name; stage 0 has its own single segment
    })
    return bc


def base_key(cfg, plan: dict) -> str:
    return stable_hash({"model": OmegaConf.to_container(cfg.model, resolve=True),
                        "base": {k: v for k, v in OmegaConf.to_container(cfg.base, resolve=True).items() if k != "dir"},
                        "tokenizer": plan["tokenizer"]["tokenizer_json_sha256"],
                        "sources": {n: s["fingerprint"] for n, s in plan["sources"].items()},
                        "seed": cfg.seed, "optim": OmegaConf.to_container(cfg.optim, resolve=True)})


def ensure_base(cfg, log=print) -> Path | None:
    """The cached stage-0 model folder (`<base.dir>/<config hash>/model`), trained first when missing;
    None when training stopped on the warning signal (see preemption.py) before it was done.

    Runs that share the cache (the arms of a sweep, started at once on a cluster) take turns: the
    first trains stage 0 under a file lock, the others wait for it and reuse the model."""
    quiet_megatron()
    bc = base_config(cfg)
    rank = distributed.init()[0]
    probe = build_plan(bc, log=lambda *a: None)
    root = Path(str(cfg.base.dir)) / base_key(cfg, probe)
    model_dir = root / "model"
    if (model_dir / "COMPLETE").exists():
        return model_dir
    lock = None
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        lock = open(root / ".lock", "w")
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes (or the process dies)
    distributed.barrier()
    try:
        if (model_dir / "COMPLETE").exists():  # another run trained it while we waited
            return model_dir
        bc.run_dir = str(root / "run")
        log(f"stage 0: pretraining the base model on {dict(cfg.base.sources)} -> {model_dir}")
        plan = _plan_and_caches(bc, log)
        model = build_model(cfg.model, plan["tokenizer"]["vocab_size"], seed=cfg.seed)
        log(f"  model: {count_parameters(model)}")
        state = train(bc, plan, model, Path(bc.run_dir), log=log, lr=cfg.base.lr, min_lr=cfg.base.min_lr)
        if state.get("preempted"):
            return None  # stopped on the warning signal: the next run resumes stage 0
        if rank == 0:
            export_model(model, plan, model_dir)
        distributed.barrier()
        return model_dir
    finally:
        if lock is not None:
            lock.close()


def export_model(model, plan: dict, out: Path, finalize=None) -> None:
    """The trained weights as an HF folder (config + safetensors + tokenizer), written atomically;
    `COMPLETE` marks it usable. `finalize(folder)` adds files (e.g. the chat template) before the
    folder is marked and renamed. (The release export with parity checks is recipes/export.py.)"""
    for stale in out.parent.glob(out.name + ".tmp-*"):  # left by a killed write (one writer per folder)
        shutil.rmtree(stale, ignore_errors=True)
    tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
    model.save_pretrained(str(tmp))
    # transformers writes the released layout (backbone.*, one tensor per expert); training code
    # reloads its own module names from this file instead
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(tmp / TRAINING_STATE))
    tok_dir = Path(plan["tokenizer"]["path"])
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (tok_dir / f).exists():
            shutil.copy(tok_dir / f, tmp / f)
    if finalize is not None:
        finalize(tmp)
    (tmp / "COMPLETE").write_text(plan["fingerprint"])
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)


def load_weights(model, model_dir: Path) -> None:
    """Loads our own saved weights into a freshly built model; any missing or unexpected key is an error."""
    model.load_state_dict(load_file(str(Path(model_dir) / TRAINING_STATE)), strict=True)


def run_cpt(cfg, log=print) -> dict:
    """Stage 0 if needed, then the plan's CPT from the base model; exports `<run_dir>/model`."""
    quiet_megatron()
    rank, world = distributed.init()
    base_dir = ensure_base(cfg, log)
    if base_dir is None:
        return {"preempted": True, "stop_reason": "stopped on the warning signal during stage 0"}
    plan = _plan_and_caches(cfg, log)
    if rank == 0:
        from hebatron_nemo.curriculum.report import print_plan

        print_plan(plan)
    model = build_model(cfg.model, plan["tokenizer"]["vocab_size"], seed=cfg.seed)
    load_weights(model, base_dir)
    run_dir = Path(str(cfg.run_dir))
    state = train(cfg, plan, model, run_dir, log=log)
    if rank == 0 and state["consumed_samples"] >= plan["totals"]["samples"]:
        export_model(model, plan, run_dir / "model")
        log(f"CPT done: {state['step']} steps, {state['tokens']:,} tokens -> {run_dir / 'model'}")
    elif rank == 0 and (state.get("stop_reason") or "").startswith("segment="):
        out = run_dir / "segments" / str(cfg.segment) / "model"
        export_model(model, plan, out)  # what a per-segment export (e.g. base_8k) reads
        log(f"segment {cfg.segment} done: {state['step']} steps, {state['tokens']:,} tokens -> {out}")
    distributed.barrier()
    state["base_dir"] = str(base_dir)
    return state
