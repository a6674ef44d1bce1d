"""Evaluating a run: one model folder, or the series base -> CPT phase-end checkpoints -> CPT final ->
SFT, plotted against training tokens next to the loss. Selection is by benchmark, not loss: the
Hebatron team's ~200 failed runs had falling loss and falling Hebrew scores."""

from __future__ import annotations

import json
from pathlib import Path

from hebatron_nemo.utils.io import read_json, write_json_atomic


def _release_copy(source, target: Path, note: dict, tokenizer_dir=None, log=print) -> Path:
    """`source` (a local-backend model folder, or a function returning a model) as a release-format export at
    `target` (verified by logit parity under the running transformers, with its manifest of sha256s),
    so that evaluation loads every model with the export's strict loader. Reused while the manifest
    says it was made from the same source (`note`)."""
    from hebatron_nemo.export.hf import MANIFEST, export_hf

    manifest = read_json(target / MANIFEST)
    if manifest is not None and all((manifest.get("source") or {}).get(k) == v for k, v in note.items()):
        return target
    if not isinstance(source, Path):  # a checkpoint: restore its model only when it has to be exported
        source = source()
    export_hf(source, target, tokenizer_dir, compat_dirs=[], source_note=note, log=lambda *a: None)
    log(f"  exported {target.name} for evaluation -> {target}")
    return target


def checkpoint_models(cfg, run_dir: Path, log=print) -> list[dict]:
    """The run's models in training order, each as {name, tokens, dir}: the base model, the CPT
    checkpoints of phase and segment ends, and the SFT model, each exported once as a release-format
    folder under <run_dir>/eval/models/<name> (see `_release_copy`)."""
    from safetensors.torch import load_file

    from hebatron_nemo.backends.local import checkpoint
    from hebatron_nemo.export.hf import TRAINING_STATE
    from hebatron_nemo.utils.hashing import sha256_file
    from hebatron_nemo.errors import DataError
    from hebatron_nemo.models.nemotron_h import build_model

    plan = read_json(run_dir / "plan.json")
    models = run_dir / "eval" / "models"
    out = []
    base = _base_dir(cfg, plan)
    if base is not None:
        note = {"training_state_sha256": sha256_file(base / TRAINING_STATE)}
        out.append({"name": "base", "tokens": 0, "dir": str(_release_copy(base, models / "base", note, log=log))})
    for ck in sorted((run_dir / "checkpoints").glob("step-*")):
        state = json.loads((ck / "trainer.json").read_text())
        if not state.get("forced"):
            continue  # phase and segment ends only
        problem = checkpoint.verify(ck)
        if problem is not None:
            raise DataError(f"{ck}: {problem}; it cannot be evaluated")

        def restore(ck=ck):
            model = build_model(cfg.model, plan["tokenizer"]["vocab_size"], seed=cfg.seed)
            model.load_state_dict(load_file(str(ck / "model.safetensors")), strict=True)
            return model

        note = {"checkpoint": ck.name, "checkpoint_model_sha256": json.loads((ck / "COMPLETE").read_text())["model.safetensors"]}
        target = _release_copy(restore, models / ck.name, note, plan["tokenizer"]["path"], log=log)
        out.append({"name": ck.name, "tokens": state["tokens"], "dir": str(target)})
    sft = run_dir / "sft" / "model"
    if (sft / "COMPLETE").exists():
        last = out[-1]["tokens"] if out else 0
        note = {"training_state_sha256": sha256_file(sft / TRAINING_STATE)}
        out.append({"name": "sft", "tokens": last, "dir": str(_release_copy(sft, models / "sft", note, log=log)),
                    "chat": True})
    return out


def _base_dir(cfg, plan) -> Path | None:
    if plan is None:
        return None
    from hebatron_nemo.backends.local.cpt import base_config, base_key
    from hebatron_nemo.curriculum.plan import build_plan

    probe = build_plan(base_config(cfg), log=lambda *a: None)
    d = Path(str(cfg.base.dir)) / base_key(cfg, probe) / "model"
    return d if (d / "COMPLETE").exists() else None


def evaluate_series(cfg, run_dir: Path, models: list[dict], log=print) -> dict:
    """Scores every model on the configured tasks through lm-evaluation-harness (`harness.evaluate_model`,
    one model loaded at a time); writes <run_dir>/eval/<model>/results.json (lm-eval's) and summary.json,
    then <run_dir>/eval/series.json and series.png, read from those result files."""
    from hebatron_nemo.eval.harness import SUMMARY, evaluate_model, model_identity

    ev = cfg.evaluate
    results = []
    for m in models:
        out_dir = run_dir / "eval" / m["name"]
        summary = read_json(out_dir / SUMMARY)
        ident = model_identity(m["dir"])
        wanted = {"n_shot": ev.n_shot, "limit": ev.limit, "max_new_tokens": ev.max_new_tokens,
                  "chat": bool(m.get("chat")), "backend": ev.backend, "tasks": list(ev.tasks)}
        if summary is not None and (any(summary.get("settings", {}).get(k, "?") != v for k, v in wanted.items())
                                    or "results_file" not in summary):
            summary = None  # scored with other settings or tasks (a changed evaluate.* reruns the stage)
        if summary is not None and ident["weights_sha256"] and summary.get("weights_sha256") != ident["weights_sha256"]:
            summary = None  # scored on other weights (the model was re-exported since)
        if summary is None:
            log(f"evaluating {m['name']} ({m['tokens']:,} tokens)")
            summary = evaluate_model(m["dir"], list(ev.tasks), ev.task_root, ev.n_shot, ev.limit, out_dir,
                                     chat=bool(m.get("chat")), threads=cfg.threads, max_new_tokens=ev.max_new_tokens,
                                     backend=ev.backend, tensor_parallel_size=ev.tensor_parallel_size,
                                     comet_model=ev.comet_model, log=lambda *a: None)
        results.append({**m, "summary": summary})
    series = {"models": [{k: v for k, v in r.items() if k != "summary"} |
                         {"scores": {t: s["score"] for t, s in r["summary"]["tasks"].items()},
                          "averages": r["summary"].get("averages", {}),
                          "results_file": r["summary"].get("results_file"),
                          **({"long_context": lc} if (lc := _long_context(r["summary"])) else {})}
                         for r in results]}
    write_json_atomic(run_dir / "eval" / "series.json", series)
    plot_series(run_dir, series)
    return series


def _long_context(summary: dict) -> dict | None:
    """The long-context task's accuracy per length (0-100), if it was scored."""
    from hebatron_nemo.eval.long_context import TASK

    entry = summary["tasks"].get(TASK)
    if not entry or not entry.get("by_length"):
        return None
    return {length: 100.0 * acc for length, acc in entry["by_length"].items()}


def plot_series(run_dir: Path, series: dict) -> None:
    """Benchmark scores against training tokens (left) next to the training and eval losses (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = [m for m in series["models"] if m["name"] != "sft"]
    tasks = sorted({t for m in models for t in m["scores"]})
    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 4.5))
    for t in tasks:
        a.plot([m["tokens"] for m in models], [m["scores"].get(t) for m in models], marker="o", label=t)
    a.set_xlabel("training tokens")
    a.set_ylabel("score (0-100)")
    a.set_title("benchmarks over the CPT checkpoint series")
    a.legend(fontsize=7)
    metrics = run_dir / "metrics.jsonl"
    if metrics.exists():
        recs = [json.loads(x) for x in metrics.read_text().splitlines()]
        tr = [r for r in recs if r["kind"] == "train"]
        b.plot([r["tokens"] for r in tr], [r["loss"] for r in tr], alpha=0.5, label="train loss")
        ev = [r for r in recs if r["kind"] == "eval"]
        for key in ("eval/anchor_loss", "eval/he_loss"):
            pts = [(r["tokens"], r["values"][key]) for r in ev if key in r["values"]]
            if pts:
                b.plot(*zip(*pts), marker=".", label=key)
        b.set_xlabel("training tokens")
        b.set_ylabel("loss")
        b.legend(fontsize=8)
    b.set_title("loss")
    fig.tight_layout()
    tmp = run_dir / "eval" / "series.tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(run_dir / "eval" / "series.png")


def check_evaluate_config(ev) -> None:
    """The `evaluate` keys lm-eval is run with, checked before any model is exported or loaded."""
    from hebatron_nemo.errors import ConfigError
    from hebatron_nemo.eval.harness import BACKENDS

    if ev.backend not in BACKENDS:
        raise ConfigError(f"evaluate.backend: {ev.backend!r} is not one of {', '.join(BACKENDS)}")
    if ev.tensor_parallel_size < 1:
        raise ConfigError(f"evaluate.tensor_parallel_size: must be >= 1, got {ev.tensor_parallel_size}")
    if ev.backend == "hf" and ev.tensor_parallel_size != 1:
        raise ConfigError("evaluate.tensor_parallel_size applies to evaluate.backend=vllm; the hf backend "
                          "scores on one device")
    if ev.comet_model and not (Path(str(ev.comet_model)) / "checkpoints" / "model.ckpt").is_file():
        raise ConfigError(f"evaluate.comet_model: {ev.comet_model} holds no checkpoints/model.ckpt "
                          "(a COMET checkpoint folder)")
    if ev.limit is not None and ev.limit < 1:
        raise ConfigError(f"evaluate.limit: must be >= 1, got {ev.limit}")


def write_demo_tasks_if_missing(cfg, log=print) -> None:
    """The demo's task files under `evaluate.task_root`: the demo tasks when the folder has none; the
    English -> Hebrew translation (the held-out pairs of ted_heb, other direction) and the long-context
    task at the demo model's own sequence length (the curriculum's longest segment), from the prepared
    validation documents, when those exist and the folders do not."""
    import shutil

    from hebatron_nemo.eval.long_context import TASK, load_generator_config, write_needle_task

    root = Path(str(cfg.evaluate.task_root))
    if not any(root.glob("*/test.jsonl")):
        from hebatron_nemo.demo.tasks import write_demo_tasks

        write_demo_tasks(root, corpus_dir=cfg.data.raw_dir)
    ted, en_he = root / "ted_heb", root / "ted_en_heb"
    if (ted / "test.jsonl").is_file() and not (en_he / "test.jsonl").is_file():
        # the rows hold both sides ({"id", "he", "en"}); the schema picks the direction
        tmp = root / "ted_en_heb.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(ted, tmp)
        tmp.replace(en_he)
    prepared = Path(str(cfg.data.output_dir))
    config = load_generator_config()
    sources = [s for s in config["sources"] if (prepared / s / f"{config['split']}.idx").is_file()]
    if not (root / TASK / "test.jsonl").is_file() and sources:
        length = max(int(seg.seq_length) for seg in cfg.curriculum.segments)
        config |= {"lengths": [length], "rows_per_cell": 1, "sources": sources}
        write_needle_task(root, prepared, cfg.tokenizer.path, config)
        log(f"wrote the long-context task at {length} tokens -> {root / TASK}")


def run_evaluate(cfg, log=print) -> dict:
    """`recipes/evaluate.py`: one model folder (`evaluate.model_dir`), or the run's series; writes the
    demo task files first (`write_demo_tasks_if_missing`); prints one line per model."""
    check_evaluate_config(cfg.evaluate)
    if cfg.evaluate.write_demo_tasks:
        write_demo_tasks_if_missing(cfg, log=log)
    run_dir = Path(str(cfg.run_dir))
    if cfg.evaluate.model_dir:
        models = [{"name": Path(str(cfg.evaluate.model_dir)).name, "tokens": 0, "dir": str(cfg.evaluate.model_dir)}]
    else:
        models = checkpoint_models(cfg, run_dir, log=log)
    series = evaluate_series(cfg, run_dir, models, log=log)
    for m in series["models"]:
        log(f"{m['name']:>14} {m['tokens']:>10,} tokens  "
            + "  ".join(f"{t} {s:.1f}" for t, s in sorted(m["scores"].items())))
    log(f"series: {run_dir / 'eval' / 'series.json'}, plot: {run_dir / 'eval' / 'series.png'}")
    return series
