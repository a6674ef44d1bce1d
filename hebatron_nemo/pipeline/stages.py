"""The stage graph of a run and the runner that walks it: the one list of stages, for both backends.

local backend (in-process, `make demo`):

    corpora -> prepare -> plan ----------> cpt -> sft -> export -> evaluate -> report
                       \\-> base (stage 0) -/     /
                       \\-> prepare_sft --------/

megatron_bridge backend (as Slurm jobs, `cluster=<profile>`; hebatron_nemo/launch/chain.py renders it):

    prepare (array of shards + merge) -> plan -> parity (HF -> Megatron gate) -> cpt_<segment> (one job per
    segment) -> export_<phase> (each phase-end checkpoint) -> eval_<phase>; the last export -> sft
    -> export_chat -> eval_chat -> report

A stage may carry Hydra overrides (`Stage.overrides`: its segment, its parallelism preset, its own
experiment); its config is the run's overrides with those applied, and its fingerprint is computed
from that config. On a cluster every job is `recipes/pipeline.py <the run's overrides>
pipeline.only=[<stage>]`: it runs that one stage in-process and writes the same marker.

Each stage is the same library call its recipe makes (`recipes/<stage>.py`), fed the one composed
config. Its input fingerprint hashes the config subtrees it reads, the content it reads from outside
the pipeline (package versions, raw files), and the fingerprints of its upstream stages, so a change
upstream reruns everything below it and nothing above. Shared stages (corpora, prepare, base) keep
their markers under `<paths.work>/pipeline/`, per-run stages under `<run_dir>/pipeline/`.
"""

from __future__ import annotations

import contextlib
import functools
import io
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from omegaconf import DictConfig, OmegaConf

from hebatron_nemo.utils.hashing import stable_hash
from hebatron_nemo.utils.io import read_json, write_json_atomic
from hebatron_nemo.errors import ConfigError
from hebatron_nemo.utils.paths import REPO_ROOT, child_env
from hebatron_nemo.demo import corpora as demo_corpora
from hebatron_nemo.pipeline.markers import check_marker, clear_marker, marker_path, write_marker

#: the kinds of job a stage renders as on a cluster (hebatron_nemo/launch/chain.py)
KINDS = ("cpu", "gpu", "train")


class StagePreempted(Exception):
    """A training stage stopped cleanly on the preemption warning (SIGUSR1, backends/local/preemption.py);
    its checkpoint is saved, its marker is not written, and a rerun (the requeued job) resumes it."""


@dataclass(frozen=True)
class Stage:
    """One node of the graph: what it reads (config keys, upstream stages), where its marker lives
    (`shared` under paths.work, `run` under run_dir), and the call that does the work, which returns
    (outputs that must exist for the marker to count, a small summary)."""

    name: str
    description: str
    upstream: tuple[str, ...]
    keys: tuple[str, ...]
    scope: str
    run: Callable[[DictConfig, Callable], tuple[list[Path], dict]]
    applies: Callable[[DictConfig], bool] = lambda cfg: True
    extra: Callable[[DictConfig], dict] = lambda cfg: {}
    kind: str = "cpu"  # its Slurm job: cpu (one process), gpu (one process on a GPU node), train (the preset's nodes)
    overrides: tuple[str, ...] = ()  # Hydra overrides of this stage's config (applied over the run's)
    recipe: str = ""  # the same work as a stand-alone command, for people reading the chain


# ---- the calls ------------------------------------------------------------------------------------

def prepare_config(cfg):
    """The prepare recipe's config, built from the run's data/tokenizer and `pipeline.prepare`."""
    from hebatron_nemo.config import PrepareConfig

    return OmegaConf.merge(OmegaConf.structured(PrepareConfig), {
        "paths": OmegaConf.to_container(cfg.paths, resolve=True),
        "data": OmegaConf.to_container(cfg.data, resolve=True),
        "tokenizer": OmegaConf.to_container(cfg.tokenizer, resolve=True),
        **OmegaConf.to_container(cfg.pipeline.prepare, resolve=True)})


def _prepare(cfg, log):
    from hebatron_nemo.data.prepare import prepare
    from hebatron_nemo.data.summary import print_prepare_summary

    pc = prepare_config(cfg)
    manifests = prepare(pc)
    print_prepare_summary(pc, manifests)
    out = Path(str(cfg.data.output_dir))
    return [out / "prepare_summary.json"], {"sources": len(manifests)}


def _plan(cfg, log):
    from hebatron_nemo.curriculum.runplan import make_plan

    plan = make_plan(cfg, log=log)
    return [Path(str(cfg.run_dir)) / "plan.json"], {"fingerprint": plan["fingerprint"], **plan["totals"]}


def _base(cfg, log):
    from hebatron_nemo.backends.local.cpt import ensure_base

    model_dir = ensure_base(cfg, log=log)
    if model_dir is None:
        raise StagePreempted("base")
    return [model_dir / "COMPLETE"], {"model_dir": str(model_dir)}


def _cpt(cfg, log):
    from hebatron_nemo.backends.local.cpt import run_cpt

    state = run_cpt(cfg, log=log)
    if state.get("preempted"):
        raise StagePreempted("cpt")
    model = Path(str(cfg.run_dir)) / "model"
    if not (model / "COMPLETE").exists():
        raise ConfigError(f"cpt stopped at step {state['step']} before the plan's end (max_steps={cfg.max_steps}): "
                          f"{model} was not written, so the stages after CPT cannot run")
    return [model / "COMPLETE", Path(str(cfg.run_dir)) / "ledger.json"], {
        k: state[k] for k in ("step", "consumed_samples", "tokens")}


def _prepare_sft(cfg, log):
    from hebatron_nemo.sft.prepare import MANIFEST, prepare_sft

    manifest = prepare_sft(cfg, log=log)
    return [Path(str(cfg.sft_data.output_dir)) / MANIFEST], {
        "samples": manifest["samples"], "validation_samples": manifest["validation_samples"],
        "loss_tokens": manifest["loss_tokens"]}


def _sft_source_files(cfg) -> dict:
    """The SFT registry's input files (size, mtime). A registry with a `derive` hook (the demo) makes its
    files from the corpora, an upstream stage: stat'ing them would change the fingerprint once they exist."""
    from hebatron_nemo.sft.sources import source_path

    if cfg.sft_data.derive:
        return {"derive": str(cfg.sft_data.derive), **_eval_task_files(cfg.sft_data.decontamination, "sft_data")}
    rows = {}
    for name in cfg.sft_data.sources:
        p = Path(source_path(cfg.sft_data, name).split("::")[0])
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p] if p.exists() else []
        rows[name] = _stat_files(files[:20000])
    return {"sft_raw": rows, **_eval_task_files(cfg.sft_data.decontamination, "sft_data")}


def _sft(cfg, log):
    from hebatron_nemo.backends.local.sft import run_sft

    result = run_sft(cfg, log=log)
    if (result or {}).get("preempted"):
        raise StagePreempted("sft")
    summary = {k: v for k, v in (result or {}).items() if isinstance(v, (int, float, str))}
    return [Path(str(cfg.sft.run_dir)) / "model" / "COMPLETE"], summary


def _export(cfg, log):
    from hebatron_nemo.export.hf import MANIFEST, run_export

    manifest = run_export(cfg, log=log)
    return [Path(str(cfg.out_dir)) / MANIFEST], {"parameters": manifest["parameters"],
                                                  "parity": [r["transformers"] for r in manifest["parity"]]}


def _evaluate(cfg, log):
    from hebatron_nemo.eval.series import run_evaluate

    series = run_evaluate(cfg, log=log)
    return [Path(str(cfg.run_dir)) / "eval" / "series.json"], {
        m["name"]: m.get("averages", {}) for m in series["models"]}


def _report(cfg, log):
    from hebatron_nemo.eval.report import write_report

    path = write_report(cfg.run_dir)
    return [path], {}


# ---- the megatron_bridge backend's calls (one Slurm job each; GPU work in the NeMo container) ------------

def _rank0() -> bool:
    """Under torch.distributed.run every rank runs the stage; one of them writes what is shared."""
    return int(os.environ.get("RANK", "0")) == 0


def _dry(cfg, stage: str, text: str, log) -> tuple[list[Path], dict]:
    """`megatron_bridge.dry_run=true`: what the stage checked and would do, written as its output (the
    fingerprint includes the flag, so a dry run's marker never counts for a real run)."""
    log(text)
    path = Path(str(cfg.run_dir)) / "pipeline" / "dry_run" / f"{stage}.txt"
    if _rank0():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp-{os.getpid()}")
        tmp.write_text(text + "\n", encoding="utf-8")
        tmp.replace(path)
    return [path], {"dry_run": True}


def _recipe_call(argv: list[str], log) -> None:
    """A stand-alone recipe run as a child process (the same command a person would type)."""
    log("$ " + " ".join(argv))
    proc = subprocess.run([sys.executable, *argv], cwd=str(REPO_ROOT), env=child_env())
    if proc.returncode != 0:
        raise ConfigError(f"{argv[0]} {argv[1] if len(argv) > 1 else ''} failed with exit code {proc.returncode}")


def parity_argv(cfg) -> list[str]:
    return ["recipes/convert.py", "parity", "--hf-dir", str(cfg.megatron_bridge.hf_model_dir),
            "--run-dir", str(cfg.run_dir)]


def _mb_parity(cfg, log):
    from hebatron_nemo.backends.megatron_bridge.convert import PARITY_RECORD

    argv = parity_argv(cfg)
    if cfg.megatron_bridge.dry_run:
        return _dry(cfg, "parity", f"parity gate: would run {' '.join(argv)} on one GPU; segment 0 then requires "
                                   f"{Path(str(cfg.run_dir)) / PARITY_RECORD}", log)
    _recipe_call(argv, log)
    return [Path(str(cfg.run_dir)) / PARITY_RECORD], {}


def _capture(fn, *args) -> str:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        fn(*args)
    return buf.getvalue()


def _mb_cpt(cfg, log, *, name: str, segment: int, end_step: int):
    from hebatron_nemo.backends.megatron_bridge.checks import segment_index
    from hebatron_nemo.backends.megatron_bridge.run import run_cpt_mb

    if segment_index(cfg, schedule_outline(cfg)) != segment:
        raise ConfigError(f"stage cpt of segment {segment} composed segment={cfg.segment}: a stage override of "
                          "pipeline.stage_overrides sets it")
    if cfg.megatron_bridge.dry_run:
        return _dry(cfg, name, _capture(run_cpt_mb, cfg), log)
    run_cpt_mb(cfg)
    last = checkpoint_dir(cfg, end_step)
    if not last.exists():  # MB stopped on the warning signal (checkpointed); the requeued job resumes
        raise StagePreempted(f"cpt segment {segment}")
    return [last], {"segment": segment, "iteration": end_step}


def checkpoint_dir(cfg, iteration: int) -> Path:
    """Where Megatron-Bridge saves iteration `iteration` of this config's job (checkpoint.save = save_dir)."""
    return Path(str(cfg.megatron_bridge.save_dir)) / f"iter_{int(iteration):07d}"


def latest_checkpoint(cfg) -> Path | None:
    f = Path(str(cfg.megatron_bridge.save_dir)) / "latest_checkpointed_iteration.txt"
    text = f.read_text().strip() if f.exists() else ""
    return checkpoint_dir(cfg, int(text)) if text.isdigit() else None


def export_argv(megatron_dir: str, hf_dir: str, out: str) -> list[str]:
    return ["recipes/convert.py", "export", "--megatron-dir", megatron_dir, "--hf-dir", hf_dir, "--out", out]


def _mb_export(cfg, log, *, name: str, iteration: int | None, hf_source: str, out: str):
    """Megatron -> HF of one checkpoint: a phase end (its iteration is the plan's), or the SFT job's last."""
    src = checkpoint_dir(cfg, iteration) if iteration is not None else latest_checkpoint(cfg)
    shown = str(src) if src is not None else f"{cfg.megatron_bridge.save_dir}/iter_<latest>"
    argv = export_argv(shown, hf_source, out)
    if cfg.megatron_bridge.dry_run:
        return _dry(cfg, name, f"{name}: would run {' '.join(argv)}", log)
    if src is None or not src.is_dir():
        raise ConfigError(f"{name}: no Megatron checkpoint {shown} (megatron_bridge.save_dir="
                          f"{cfg.megatron_bridge.save_dir}); the training job before it did not write it")
    _recipe_call(argv, log)
    return [Path(out) / "config.json"], {"source": str(src)}


def _mb_sft(cfg, log):
    from hebatron_nemo.backends.megatron_bridge.run import run_sft_mb

    if cfg.megatron_bridge.dry_run:
        return _dry(cfg, "sft", _capture(run_sft_mb, cfg), log)
    run_sft_mb(cfg)
    last = latest_checkpoint(cfg)
    if last is None:
        raise StagePreempted("sft")
    return [last], {"iteration": int(last.name.split("_")[1])}


def _mb_evaluate(cfg, log, *, name: str):
    from hebatron_nemo.eval.series import run_evaluate

    if cfg.megatron_bridge.dry_run:
        return _dry(cfg, name, f"{name}: would evaluate {cfg.evaluate.model_dir} on {list(cfg.evaluate.tasks)}", log)
    run_evaluate(cfg, log=log)
    out = Path(str(cfg.run_dir)) / "eval" / Path(str(cfg.evaluate.model_dir)).name
    return [Path(str(cfg.run_dir)) / "eval" / "series.json"], {"model": str(out)}


def _mb_report(cfg, log):
    if cfg.megatron_bridge.dry_run:
        return _dry(cfg, "report", f"report: would write {Path(str(cfg.run_dir)) / 'report.md'}", log)
    return _report(cfg, log)


# ---- what each stage reads from outside the config ------------------------------------------------

def _stat_files(paths) -> list:
    """(path, size, mtime) of each file: cheap, and changes when a file is rewritten."""
    rows = []
    for p in paths:
        s = p.stat()
        rows.append([str(p), s.st_size, s.st_mtime_ns])
    return rows


def _source_files(cfg) -> dict:
    """The raw files each registry source reads (file, folder or glob under data.raw_dir)."""
    root = Path(str(cfg.data.raw_dir))
    out = {}
    for name, src in cfg.data.sources.items():
        path = Path(str(src.path)) if Path(str(src.path)).is_absolute() else root / str(src.path)
        if any(c in str(src.path) for c in "*?["):
            files = sorted(root.glob(str(src.path)))
        elif path.is_dir():
            files = sorted(f for f in path.rglob("*") if f.is_file())
        else:
            files = [path] if path.exists() else []
        out[name] = _stat_files(files[:20000])
    return {"raw": out, **_eval_task_files(cfg.data.decontamination, "data")}


def _eval_task_files(dc, group: str) -> dict:
    """The evaluation task files a decontaminator reads (none: nothing, so fingerprints stay as they were):
    adding a task reruns the stage. A missing one is the stage's own error to raise, with the fix."""
    from hebatron_nemo.data.decontam import task_files

    files = [tf.path for tf in task_files(dc, f"{group}.decontamination", strict=False)]
    return {"eval_tasks": _stat_files(files)} if files else {}


def _arms(cfg) -> dict:
    """The report compares this run with its sibling anchor arms: it reruns when one of them changes."""
    from hebatron_nemo.eval.report import sibling_arms

    return {"arms": [[str(d), _stat_files([d / "metrics.jsonl"])] for d in sibling_arms(Path(str(cfg.run_dir)))]}


# ---- the graph ------------------------------------------------------------------------------------

TRAIN_KEYS = ("model", "optim", "router", "seed", "tokenizer")

STAGES: tuple[Stage, ...] = (
    Stage("corpora", "demo corpora from installed packages", (), ("data.raw_dir", "pipeline.use_apt"), "shared",
          demo_corpora.corpora_stage, applies=lambda cfg: cfg.data.name == "demo", extra=demo_corpora.corpora_stage_inputs),
    Stage("prepare", "normalize, filter, dedup, tokenize", ("corpora",), ("data", "tokenizer", "pipeline.prepare"),
          "shared", _prepare, extra=_source_files),
    Stage("plan", "curriculum + anchor plan, index caches", ("prepare",),
          ("curriculum", "anchor", "compute", "cache_dir", "run_dir", "build_caches"), "run", _plan),
    Stage("base", "stage 0: English-heavy base model (CPU demo)", ("prepare",), ("base",) + TRAIN_KEYS, "shared",
          _base),
    Stage("cpt", "continued pretraining, every segment", ("plan", "base"),
          ("curriculum", "anchor", "eval", "checkpoint.save_interval", "max_steps") + TRAIN_KEYS, "run", _cpt),
    # after prepare: the demo's tokenizer is trained there, and the length filter counts its tokens
    Stage("prepare_sft", "SFT registry -> one prepared chat dataset", ("corpora", "prepare"), ("sft_data", "tokenizer"),
          "shared", _prepare_sft, extra=_sft_source_files),
    Stage("sft", "bilingual chat SFT", ("cpt", "prepare_sft"), ("sft", "sft_data") + TRAIN_KEYS, "run", _sft),
    Stage("export", "release-layout HF folder, logit parity", ("sft", "cpt"),
          ("source", "source_dir", "out_dir", "tokenizer_dir", "chat_template", "generation", "dtype",
           "max_shard_bytes", "compat_dir", "tolerance"), "run", _export),
    Stage("evaluate", "Hebrew suite + English pack: base, phase ends, final, SFT", ("base", "cpt", "sft"),
          ("evaluate",), "run", _evaluate),
    Stage("report", "report.md, plots, anchor arms", ("evaluate", "cpt"), (), "run", _report, extra=_arms),
)
STAGE_NAMES = tuple(s.name for s in STAGES)


MB_TRAIN_KEYS = ("curriculum", "anchor", "parallelism", "megatron_bridge") + TRAIN_KEYS
MB_KEYS = ("megatron_bridge.dry_run",)


def schedule_outline(cfg) -> list[dict]:
    """The plan's step arithmetic without the data (what a login node can compute before `prepare`):
    per segment its steps and tokens, per phase the step it ends at. Megatron-Bridge numbers steps
    from the run's start across segments (each `segment=<name>` job continues the count), so a
    phase-end checkpoint is `<megatron_bridge.save_dir>/iter_<end_step>`. Same formulas as
    `curriculum.plan.build_plan` (which checks them against the data)."""
    from hebatron_nemo.curriculum.plan import _anchor_per_batch, realized_order, with_data_parallel

    cfg = with_data_parallel(cfg)
    cur = cfg.curriculum
    names = [seg.name for seg in cur.segments]
    batches = []
    for i, ph in enumerate(cur.phases):
        if ph.segment not in names:
            raise ConfigError(f"curriculum.phases[{i}] ({ph.name}).segment={ph.segment!r} is not a segment {names}")
        seg = cur.segments[names.index(ph.segment)]
        batches.append(math.ceil(float(ph.tokens) / seg.seq_length / (seg.global_batch_size - _anchor_per_batch(cfg, seg))))
    out, step = [], 0
    for k, group in enumerate(realized_order(cur)):
        seg = cur.segments[k]
        phases = [(cur.phases[i].name, batches[i]) for i in group]
        if cur.order == "none" and len(phases) > 1:
            phases = [("+".join(n for n, _ in phases), sum(b for _, b in phases))]
        start, ends = step, []
        for name, b in phases:
            step += b
            ends.append({"name": name, "end_step": step})
        out.append({"index": k, "name": seg.name, "seq_length": int(seg.seq_length),
                    "global_batch": int(seg.global_batch_size), "micro_batch": int(seg.micro_batch_size),
                    "data_parallel_size": int(seg.data_parallel_size), "start_step": start, "end_step": step,
                    "steps": step - start, "tokens": (step - start) * int(seg.global_batch_size) * int(seg.seq_length),
                    "phases": ends})
    return out


def megatron_bridge_stages(cfg) -> tuple[Stage, ...]:
    """The cluster graph: prepare -> plan -> parity -> one CPT job per segment -> an HF export and an
    evaluation of every phase-end checkpoint -> SFT (its own overrides) -> chat export -> eval -> report."""
    extra = {k: tuple(str(o) for o in v) for k, v in (cfg.pipeline.get("stage_overrides") or {}).items()}
    run_dir = Path(str(cfg.run_dir))
    hf_base = str(cfg.megatron_bridge.hf_model_dir)
    by_name = {st.name: st for st in STAGES}
    stages = [Stage(**{**by_name["prepare"].__dict__, "upstream": ()}),
              Stage(**{**by_name["plan"].__dict__, "recipe": "recipes/plan.py build_caches=true"}),
              Stage("parity", "HF -> Megatron conversion, logit parity gate (segment 0 requires its record)", (),
                    ("megatron_bridge.hf_model_dir",) + MB_KEYS, "run", _mb_parity, kind="gpu",
                    overrides=extra.get("parity", ()), recipe=" ".join(parity_argv(cfg)))]
    train_upstream = ("plan", "parity")
    evals: list[str] = []
    last_export = None
    for seg in schedule_outline(cfg):
        name = f"cpt_{seg['name']}"
        over = (f"segment={seg['name']}",) + extra.get(name, ())
        stages.append(Stage(name, f"CPT segment {seg['index']} ({seg['name']}, {seg['seq_length']:,} tokens): steps "
                                  f"{seg['start_step']:,}-{seg['end_step']:,}", train_upstream, MB_TRAIN_KEYS, "run",
                            functools.partial(_mb_cpt, name=name, segment=seg["index"], end_step=seg["end_step"]),
                            kind="train", overrides=over, recipe="recipes/cpt.py " + " ".join(over)))
        train_upstream = (name,)
        for ph in seg["phases"]:
            out = str(run_dir / "hf" / f"base_{ph['name']}")
            exp, ev = f"export_{ph['name']}", f"eval_{ph['name']}"
            mdir = f"{cfg.megatron_bridge.save_dir}/iter_{ph['end_step']:07d}"
            # the export composes its CPT job's config: it reads the save_dir that job wrote
            stages.append(Stage(exp, f"Megatron -> HF of the {ph['name']} phase end (iteration {ph['end_step']:,})",
                                (name,), ("megatron_bridge.save_dir", "megatron_bridge.hf_model_dir") + MB_KEYS, "run",
                                functools.partial(_mb_export, name=exp, iteration=ph["end_step"], hf_source=hf_base,
                                                  out=out),
                                kind="gpu", overrides=over, recipe=" ".join(export_argv(mdir, hf_base, out))))
            # evaluations one after another: each writes the run's eval/ folder
            ev_over = (f"evaluate.model_dir={out}",)
            stages.append(Stage(ev, f"benchmarks of {out}", (exp, *evals[-1:]), ("evaluate",) + MB_KEYS, "run",
                                functools.partial(_mb_evaluate, name=ev), kind="gpu", overrides=ev_over,
                                recipe="recipes/evaluate.py " + " ".join(ev_over)))
            evals.append(ev)
            last_export = (exp, out)
    sft_over = extra.get("sft", ()) + (f"sft.init_from={last_export[1]}",)
    chat = str(run_dir / "hf" / "chat")
    # the SFT registry prepared once, by one CPU job composed like the SFT job (its sft_data), never by
    # the training ranks; it needs no CPT output, so it runs beside the CPT jobs
    prep_over = extra.get("sft", ())
    stages += [
        Stage(**{**by_name["prepare_sft"].__dict__, "upstream": (), "overrides": prep_over,
                 "recipe": " ".join(("recipes/prepare_sft.py",) + prep_over)}),
        Stage("sft", "bilingual chat SFT from the last CPT export", (last_export[0], "prepare_sft"),
              ("sft", "sft_data") + MB_TRAIN_KEYS, "run",
              _mb_sft, kind="train", overrides=sft_over, recipe="recipes/sft.py " + " ".join(sft_over)),
        Stage("export_chat", "Megatron -> HF of the SFT job's last checkpoint", ("sft",),
              ("megatron_bridge.save_dir", "sft.init_from") + MB_KEYS, "run",
              functools.partial(_mb_export, name="export_chat", iteration=None, hf_source=last_export[1], out=chat),
              kind="gpu", overrides=sft_over,
              recipe=" ".join(export_argv("<sft save_dir>/iter_<latest>", last_export[1], chat)))]
    ev_over = (f"evaluate.model_dir={chat}",)
    stages += [Stage("eval_chat", f"benchmarks of {chat}", ("export_chat", *evals[-1:]), ("evaluate",) + MB_KEYS,
                     "run", functools.partial(_mb_evaluate, name="eval_chat"), kind="gpu", overrides=ev_over,
                     recipe="recipes/evaluate.py " + " ".join(ev_over)),
               Stage("report", "report.md", ("eval_chat",), MB_KEYS, "run", _mb_report,
                     recipe=f"recipes/report.py {run_dir}")]
    unknown = sorted(set(extra) - {st.name for st in stages})
    if unknown:
        raise ConfigError(f"pipeline.stage_overrides: {unknown} are not stages of this run; the stages are "
                          f"{[st.name for st in stages]}")
    return tuple(stages)


def graph_stages(cfg) -> tuple[Stage, ...]:
    """The stages of this run's backend, in a topological order."""
    if cfg.get("backend", "local") == "megatron_bridge":
        return megatron_bridge_stages(cfg)
    return STAGES


def _key(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0]


#: overrides that steer the runner or the chain, never a stage's config
RUNNER_KEYS = ("cluster", "pipeline.only", "pipeline.skip", "pipeline.force", "pipeline.dry_run")


def run_overrides(overrides) -> list[str]:
    """The run's own overrides: what every job of its chain repeats (the runner's and cluster's removed)."""
    return [o for o in overrides
            if not any(_key(o) == k or _key(o).startswith(k + ".") for k in RUNNER_KEYS)]


def merge_overrides(base, extra) -> list[str]:
    """`base` with `extra` applied: an override of `extra` replaces the one of `base` with the same key
    (a stage's `experiment=...` replaces the run's)."""
    keys = {_key(o) for o in extra}
    return [o for o in base if _key(o) not in keys] + list(extra)


def compose_pipeline(overrides: list[str]):
    """conf/pipeline.yaml with `overrides` (inside the running Hydra app, or on its own)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from hebatron_nemo.config import register_configs

    register_configs()
    try:
        if GlobalHydra.instance().is_initialized():
            return compose("pipeline", overrides=list(overrides))
        with initialize_config_dir(str(REPO_ROOT / "conf"), version_base="1.3"):
            return compose("pipeline", overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as e:
        from hebatron_nemo.config import renamed_key_errors

        hint = "".join(f"\n{m}" for m in renamed_key_errors(overrides, str(e)))
        raise ConfigError(f"conf/pipeline.yaml with {' '.join(overrides)}: {e}{hint}") from e


class Graph:
    """The stages of one run and the config each stage runs under: the run's config, or, for a stage
    with overrides, conf/pipeline.yaml composed with the run's overrides and the stage's."""

    def __init__(self, cfg, overrides=None):
        self.cfg = cfg
        self.overrides = run_overrides(overrides) if overrides is not None else None
        self.stages = graph_stages(cfg)
        self.names = tuple(st.name for st in self.stages)
        self.by_name = {st.name: st for st in self.stages}
        self._cfgs: dict[tuple, DictConfig] = {}

    def cfg_of(self, st: Stage):
        if not st.overrides:
            return self.cfg
        if self.overrides is None:
            raise ConfigError(f"stage {st.name} has its own overrides {list(st.overrides)}: pass the run's overrides "
                              "(recipes/pipeline.py does) so its config can be composed")
        key = tuple(st.overrides)
        if key not in self._cfgs:
            self._cfgs[key] = compose_pipeline(merge_overrides(self.overrides, st.overrides))
        return self._cfgs[key]

    def overrides_of(self, st: Stage) -> list[str]:
        return merge_overrides(self.overrides or [], st.overrides)


def _graph(cfg) -> Graph:
    return cfg if isinstance(cfg, Graph) else Graph(cfg)


def _select(cfg, key: str):
    value = OmegaConf.select(cfg, key, throw_on_missing=False)
    if isinstance(value, DictConfig) or OmegaConf.is_list(value):
        return OmegaConf.to_container(value, resolve=True)
    return value


def fingerprints(cfg, stages=None) -> dict[str, dict]:
    """{stage: {"fingerprint", "inputs"}} computed top-down from the configs alone (`cfg`: a run's
    config or a Graph)."""
    graph = _graph(cfg)
    out: dict[str, dict] = {}
    for st in stages if stages is not None else graph.stages:
        c = graph.cfg_of(st)
        if not st.applies(c):
            continue
        # an upstream stage that reran (even forced, with the same inputs) made new outputs: its
        # marker's time is part of what this stage reads
        upstream = {u: [out[u]["fingerprint"], (read_json(_marker(graph.cfg, graph.by_name[u])) or {}).get("run_id")]
                    for u in st.upstream if u in out}
        inputs = {"config": {k: _select(c, k) for k in st.keys}, "upstream": upstream, "extra": st.extra(c)}
        out[st.name] = {"fingerprint": stable_hash({"stage": st.name, **inputs}),
                        "inputs": {"config_keys": list(st.keys), "upstream": inputs["upstream"]}}
    return out


def markers_dir(cfg, stage: Stage) -> Path:
    if stage.scope == "shared":
        return Path(str(cfg.paths.work)) / "pipeline"
    return Path(str(cfg.run_dir)) / "pipeline"


def _marker(cfg, st: Stage) -> Path:
    # shared stages of different registries must not share a marker
    suffix = f"-{cfg.data.name}" if st.scope == "shared" else ""
    return marker_path(markers_dir(cfg, st), st.name + suffix)


def _check_names(field: str, names, graph: Graph) -> list[str]:
    names = list(names)
    bad = [n for n in names if n not in graph.names and not (field == "force" and n == "all")]
    if bad:
        raise ConfigError(f"pipeline.{field}: unknown stage(s) {bad}; the stages are {list(graph.names)}")
    return names


def stage_table(cfg) -> list[dict]:
    """What a run would do now: one row per stage with its status (done / run / skip) and why
    (`cfg`: a run's config or a Graph)."""
    graph = _graph(cfg)
    cfg = graph.cfg
    only = _check_names("only", cfg.pipeline.only, graph)
    skip = _check_names("skip", cfg.pipeline.skip, graph)
    force = _check_names("force", cfg.pipeline.force, graph)
    fps = fingerprints(graph)
    rows = []
    for st in graph.stages:
        if st.name not in fps:
            rows.append({"stage": st.name, "status": "n/a", "reason": f"not used with data={cfg.data.name}"})
            continue
        path = _marker(cfg, st)
        check = check_marker(path, fps[st.name]["fingerprint"])
        row = {"stage": st.name, "marker": str(path), "fingerprint": fps[st.name]["fingerprint"],
               "inputs": fps[st.name]["inputs"], "done": check.done, "reason": check.reason,
               "description": st.description}
        if st.name in skip or (only and st.name not in only):
            row["status"] = "skip"
            row["reason"] = ("pipeline.skip" if st.name in skip else "not in pipeline.only") + f"; {check.reason}"
        elif st.name in force or "all" in force:
            row["status"] = "run"
            row["reason"] = "forced"
        else:
            row["status"] = "done" if check.done else "run"
        rows.append(row)
    # a stage that runs needs each upstream stage done now or running before it
    status = {r["stage"]: r for r in rows}
    for st in graph.stages:
        r = status[st.name]
        if r["status"] != "run":
            continue
        for u in st.upstream:
            ur = status.get(u)
            if ur is None or ur["status"] in ("run", "done", "n/a"):
                continue
            if not ur.get("done"):
                raise ConfigError(f"stage {st.name} needs stage {u}, which is not complete for this config "
                                  f"({ur['reason']}); run it first, or leave it out of pipeline.skip/only")
    return rows


def print_table(rows: list[dict], log=print) -> None:
    w = max([9] + [len(r["stage"]) for r in rows])
    log(f"{'stage':<{w}} {'status':<6} reason")
    for r in rows:
        log(f"{r['stage']:<{w}} {r['status']:<6} {r['reason']}")


def run_pipeline(cfg, log=print, overrides=None, arm: bool = False) -> dict:
    """Runs every stage that is not done, in order; writes markers and `<run_dir>/pipeline/summary.json`;
    prints a table of stages with their wall times and the run's headline results.

    With a cluster profile (`cluster=<profile>`) the graph is rendered as Slurm jobs instead
    (hebatron_nemo/launch/chain.py). `overrides`: the run's command-line overrides (stages with
    their own overrides compose their configs from them); `arm`: one arm of a multirun."""
    graph = Graph(cfg, overrides)
    if cfg.get("cluster") is not None:
        from hebatron_nemo.launch.chain import run_chain

        return run_chain(graph, log=log, arm=arm)
    if cfg.get("backend", "local") != "local" and not cfg.pipeline.dry_run and len(cfg.pipeline.only) != 1:
        raise ConfigError(f"backend={cfg.backend}: the pipeline runs the local backend end to end in-process; this "
                          "backend runs the same graph as Slurm jobs: add cluster=<profile> (conf/cluster/), e.g. "
                          "cluster=eos_pyxis pipeline.dry_run=true. Each job runs one stage: pipeline.only=[<stage>]")
    rows = stage_table(graph)
    log("pipeline plan:")
    print_table(rows, log)
    if cfg.pipeline.dry_run:
        return {"stages": rows, "dry_run": True}
    t_all = time.time()
    for row in rows:
        if row["status"] not in ("run", "done"):
            continue
        st = graph.by_name[row["stage"]]
        path = Path(row["marker"])
        # recomputed now: a stage that just ran upstream may have changed what this one reads
        fresh = fingerprints(graph)[st.name]
        row["fingerprint"], row["inputs"] = fresh["fingerprint"], fresh["inputs"]
        if row["status"] == "done":
            check = check_marker(path, row["fingerprint"])
            if check.done:
                continue
            row["status"], row["reason"] = "run", check.reason
        if _rank0():
            clear_marker(path)
        log(f"\n=== stage {st.name}: {st.description}")
        t0 = time.time()
        outputs, summary = st.run(graph.cfg_of(st), log)
        row["wall_s"] = time.time() - t0
        if summary.get("partial"):  # one shard of a job array: the merge job completes the stage
            row["status"], row["reason"] = "ran", f"partial ({summary}) in {row['wall_s']:.1f}s"
            continue
        if _rank0():
            write_marker(path, st.name, row["fingerprint"], row["inputs"], [str(p) for p in outputs], row["wall_s"],
                         summary)
        row["status"], row["reason"] = "ran", f"{row['wall_s']:.1f}s"
        log(f"=== stage {st.name} done in {row['wall_s']:.1f}s")
    result = {"stages": rows, "wall_s": time.time() - t_all, "headline": headline(cfg)}
    run_dir = Path(str(cfg.run_dir))
    if run_dir.exists() and _rank0():
        write_json_atomic(run_dir / "pipeline" / "summary.json", result)
    print_summary(result, cfg, log)
    return result


def headline(cfg) -> dict:
    """The numbers a newcomer looks for: Hebrew and English anchor validation loss of the base and
    after CPT, and the benchmark averages of each evaluated model."""
    from hebatron_nemo.eval.report import eval_change

    run_dir = Path(str(cfg.run_dir))
    out = {"report": str(run_dir / "report.md") if (run_dir / "report.md").exists() else None}
    out.update(eval_change(run_dir))
    series = read_json(run_dir / "eval" / "series.json")
    if series:
        out["benchmarks"] = {m["name"]: m.get("averages", {}) for m in series["models"]}
    return out


def print_summary(result: dict, cfg, log=print) -> None:
    log("\n=== pipeline summary")
    log(f"{'stage':<9} {'status':<6} {'wall':>8}")
    total = 0.0
    for r in result["stages"]:
        wall = r.get("wall_s")
        total += wall or 0.0
        log(f"{r['stage']:<9} {r['status']:<6} {(f'{wall:.1f}s' if wall is not None else '-'):>8}")
    log(f"{'total':<9} {'':<6} {total:>7.1f}s")
    h = result["headline"]
    for key, label in (("he_loss", "Hebrew validation loss"), ("anchor_loss", "English anchor loss")):
        if key in h:
            v = h[key]
            log(f"{label:<24} base {v['start']:.3f} -> after CPT {v['end']:.3f} ({v['end'] - v['start']:+.3f})")
    for arm in h.get("arms", []):
        log(f"  arm anchor={arm['anchor_share']}: English anchor loss {arm['anchor_loss']:.3f} "
            f"({arm['anchor_loss_change']:+.3f} vs its base), Hebrew {arm['he_loss']:.3f}")
    if h.get("report"):
        log(f"report: {h['report']}")
