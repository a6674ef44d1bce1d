"""Scores a model folder through lm-evaluation-harness (``lm_eval.simple_evaluate``) on the task YAMLs
that ``lmeval.write_lmeval_tasks`` writes, and turns lm-eval's result file into the project's summary.

Backends (``evaluate.backend``):

* ``hf`` (CPU, the demo): lm-eval's ``HFLM`` around the model loaded with the export's strict loader.
  Log-likelihood tasks run in batches (``batch_size``): lm-eval pads them on the right, which never
  reaches earlier positions of a causal model, Mamba layers included. Generative tasks run with batch
  size 1: lm-eval pads generation batches on the left, and left padding would flow through the Mamba
  layers' convolution and state (the attention mask does not undo it), changing the generations.
* ``vllm`` (GPU nodes): lm-eval's ``vllm`` model, ``tensor_parallel_size`` from the config
  (``vllm_model_args``). vLLM serves Nemotron-H natively; it is not installed on CPU machines.

Files written under ``out_dir``: ``lmeval_tasks/`` (the YAMLs used), ``results.json`` (lm-eval's
results, configs, versions and sample counts, as ``simple_evaluate`` returned them, minus the
samples), ``<task>.samples.jsonl`` (lm-eval's per-row records) and ``summary.json`` (``summarize_results``
of ``results.json``: per-task metrics, ``score`` on 0-100, and the labelled averages).

What stays ours, because lm-eval does not do it (each marked where it is done): validating every task
file against its schema with file:line errors before a model is loaded; the export's strict loader
(manifest sha256s, exact weight keys); held-out few-shot rows when a task has no dev/train file
(``lmeval``); GSM8K extraction and Hebrew answer normalization (``scorers``); the averages labelled
with their members and the paper-comparable flag; the long-context task's accuracy per length; COMET.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from hebatron_nemo.errors import ConfigError
from hebatron_nemo.eval.lmeval import fewshot_source, write_lmeval_tasks
from hebatron_nemo.eval.tasks import (
    AVERAGES,
    PAPER_AVERAGES,
    TaskSchema,
    find_split,
    load_schema,
    load_task,
    resolve_task_names,
)

__all__ = ["BACKENDS", "evaluate_model", "load_scoring_model", "model_identity", "summarize",
           "summarize_results", "vllm_model_args"]

BACKENDS = ("hf", "vllm")
RESULTS = "results.json"
SUMMARY = "summary.json"
# metrics lm-eval reports on 0-100 already; the others are fractions
_PERCENT_METRICS = ("bleu", "chrf", "comet")


# --------------------------------------------------------------------------- the model


def load_scoring_model(model_dir: str | Path, dtype=None):
    """The model a benchmark scores, loaded with the export's own strict loader
    (`hebatron_nemo.export.hf.load_exported`): release-format config, every weight key exactly the
    model's (a missing tensor is an error, not a silent re-initialization), and each weight file's
    sha256 equal to the export manifest's. Kept here because lm-eval's HF loader would accept any of
    those damages (transformers initializes a missing tensor and logs a line)."""
    from hebatron_nemo.export.hf import MANIFEST, TRAINING_STATE, load_exported

    model_dir = Path(model_dir)
    if (model_dir / TRAINING_STATE).is_file() and not (model_dir / MANIFEST).is_file():
        raise ConfigError(f"{model_dir}: a training folder of the local backend, not a verified export; export it "
                          f"first (python recipes/export.py source_dir={model_dir} out_dir=...), or leave "
                          "evaluate.model_dir unset to evaluate the run's series (exported for you)")
    return load_exported(model_dir, strict=True, dtype=dtype)


def model_identity(model_dir: str | Path) -> dict:
    """What identifies the scored weights: the folder's COMPLETE fingerprint (or its source's) and the
    sha256 of each weight file as the export manifest records it."""
    model_dir = Path(model_dir)
    marker = model_dir / "COMPLETE"
    manifest = {}
    if (model_dir / "hebatron_export.json").is_file():
        manifest = json.loads((model_dir / "hebatron_export.json").read_text(encoding="utf-8"))
    fingerprint = marker.read_text().strip() if marker.is_file() else (manifest.get("source") or {}).get("fingerprint")
    return {"model_fingerprint": fingerprint,
            "weights_sha256": {f: m.get("sha256") for f, m in (manifest.get("weights") or {}).items()} or None}


def vllm_model_args(model_dir: str | Path, tensor_parallel_size: int = 1, chat: bool = False,
                    max_model_len: int | None = None) -> dict:
    """lm-eval's ``model_args`` for its ``vllm`` model: the exported folder, the tensor-parallel size,
    bf16 (the release dtype), and for chat models thinking off (the template's empty think block, as
    the HF path renders it)."""
    if tensor_parallel_size < 1:
        raise ConfigError(f"evaluate.tensor_parallel_size must be >= 1, got {tensor_parallel_size}")
    args = {"pretrained": str(model_dir), "tokenizer": str(model_dir), "tensor_parallel_size": tensor_parallel_size,
            "dtype": "bfloat16", "gpu_memory_utilization": 0.9, "seed": 0}
    if max_model_len is not None:
        args["max_model_len"] = int(max_model_len)
    if chat:
        args["enable_thinking"] = False
    return args


# --------------------------------------------------------------------------- averages


def summarize(results: dict[str, dict], schemas: dict[str, TaskSchema], limit: int | None = None,
              max_new_tokens: int | None = None) -> dict:
    """The averages over the scored tasks: ``{name: {label, value, tasks, missing, paper_comparable}}``.
    (lm-eval's groups average without saying which members were present; ours are labelled.)

    ``results[task]`` holds at least ``score``. An average covers the requested tasks whose schema
    lists it (a paper average: its fixed members, requested or not); with no member scored it is left
    out. ``paper_comparable`` is true only for a paper average with every member scored, no ``limit``
    and no ``max_new_tokens`` cap.
    """
    members: dict[str, list[str]] = {name: [] for name in AVERAGES}
    for name, schema in schemas.items():
        for avg in schema.averages:
            if avg not in PAPER_AVERAGES and name not in members[avg]:
                members[avg].append(name)
    for avg, fixed in PAPER_AVERAGES.items():
        members[avg] = list(fixed)
    averages = {}
    for avg, names in members.items():
        present = [t for t in names if t in results]
        if not present:
            continue
        missing = [t for t in names if t not in results]
        comparable = avg in PAPER_AVERAGES and not missing and limit is None and max_new_tokens is None
        averages[avg] = {
            "label": f"{avg} ({', '.join(present)})",
            "value": sum(results[t]["score"] for t in present) / len(present),
            "tasks": present,
            "missing": missing,
            "paper_comparable": comparable,
            "description": AVERAGES[avg],
        }
    return averages


def _to_score(metric: str, value: float) -> float:
    """A metric on 0-100: fractions are scaled, BLEU, chrF and COMET (x100) already are."""
    return value if metric in _PERCENT_METRICS else 100.0 * value


def summarize_results(results: dict, schemas: dict[str, TaskSchema]) -> dict:
    """The per-task entries and the averages, read from lm-eval's result dict (``results.json``) and
    the run settings stored beside it."""
    settings = results.get("hebatron", {})
    tasks = {}
    for name, res in results["results"].items():
        if name not in schemas:
            continue
        s = schemas[name]
        metrics = {key.split(",")[0]: float(v) for key, v in res.items()
                   if key.endswith(",none") and "_stderr" not in key and isinstance(v, (int, float))}
        extra = settings.get("extra_metrics", {}).get(name, {})
        metrics.update({k: v for k, v in extra.items() if isinstance(v, (int, float))})
        entry = {"type": s.type, "language": s.language, "metrics": metrics, "primary_metric": s.primary,
                 "score": _to_score(s.primary, metrics[s.primary]),
                 "n_scored": int(results["n-samples"][name]["effective"]),
                 "n_test_rows": int(results["n-samples"][name]["original"]),
                 "n_shot": int(results["n-shot"][name]), **settings.get("tasks", {}).get(name, {})}
        for k, v in extra.items():
            if not isinstance(v, (int, float)):
                entry[k] = v
        tasks[name] = entry
    return {"tasks": tasks, "averages": summarize(tasks, schemas, settings.get("limit"),
                                                   settings.get("max_new_tokens"))}


# --------------------------------------------------------------------------- running lm-eval


def _json_default(o):
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
    except ImportError:  # pragma: no cover
        pass
    return str(o)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _validate(names: list[str], schemas: dict[str, TaskSchema], task_root: Path) -> tuple[dict, dict]:
    """Every present task file checked against its schema (DataError with file:line:field), before
    any model is loaded: lm-eval would fail late, inside a Jinja template, without the line."""
    present, skipped = {}, {}
    for n in names:
        test = find_split(task_root / n, "test")
        if test is None:
            skipped[n] = f"no {task_root / n / 'test.jsonl'}"
            continue
        for split in ("test", "dev", "train"):
            if find_split(task_root / n, split) is not None:
                load_task(task_root / n, schemas[n], split)
        present[n] = test
    return present, skipped


def _simple_evaluate(lm, names: list[str], include: Path, limit: int | None, chat: bool, **kw) -> dict:
    import lm_eval
    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_path=str(include), include_defaults=False)
    return lm_eval.simple_evaluate(model=lm, tasks=names, task_manager=tm, limit=limit, bootstrap_iters=0,
                                   log_samples=True, apply_chat_template=chat, fewshot_as_multiturn=False,
                                   random_seed=0, numpy_random_seed=0, torch_random_seed=0,
                                   fewshot_random_seed=0, **kw)


def _merge(outs: list[dict]) -> dict:
    merged: dict = {"results": {}, "configs": {}, "versions": {}, "n-shot": {}, "n-samples": {}, "samples": {},
                    "higher_is_better": {}}
    for out in outs:
        for key in merged:
            merged[key].update(out.get(key) or {})
    if outs:
        merged["config"] = outs[0].get("config")
        merged["lm_eval_version"] = outs[0].get("lm_eval_version")
    return merged


def evaluate_model(model_dir: str | Path, tasks: list[str], task_root: str | Path, n_shot: int | None = None,
                   limit: int | None = None, out_dir: str | Path | None = None, batch_size: int = 8, *,
                   schema_dir: str | Path | None = None, max_new_tokens: int | None = None, chat: bool = False,
                   threads: int | None = None, backend: str = "hf", tensor_parallel_size: int = 1,
                   comet_model: str | None = None, log: Callable = print) -> dict:
    """Scores the model in ``model_dir`` (an exported HF folder) on ``tasks`` under ``task_root`` through
    lm-eval; returns the summary and, with ``out_dir``, writes the files in the module docstring.

    ``tasks`` are schema names, or groups (``all``, an average's name). A task without
    ``<task_root>/<task>/test.jsonl`` is skipped and listed under ``skipped``. ``n_shot`` overrides
    every schema's ``num_fewshot``; ``limit`` scores the first rows only; ``max_new_tokens`` caps
    generation; ``chat`` applies the tokenizer's chat template, thinking off (SFT models);
    ``batch_size`` is the log-likelihood batch of the ``hf`` backend; ``threads`` sets torch's intra-op
    threads while scoring (restored after); ``comet_model`` is a COMET checkpoint folder for the
    translation tasks (optional).
    """
    if backend not in BACKENDS:
        raise ConfigError(f"evaluate.backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    names = resolve_task_names(list(tasks), schema_dir)
    if not names:
        raise ConfigError("no tasks to evaluate")
    schemas = {n: load_schema(n, schema_dir) for n in names}
    task_root = Path(task_root)
    present, skipped = _validate(names, schemas, task_root)
    if skipped:
        log(f"skipping tasks without test.jsonl: {', '.join(skipped)}")
    out = Path(out_dir) if out_dir is not None else None
    if out is None:
        import tempfile

        out = Path(tempfile.mkdtemp(prefix="hebatron-eval-"))
    out.mkdir(parents=True, exist_ok=True)
    include = out / "lmeval_tasks"
    written = write_lmeval_tasks(task_root, include, list(present), schema_dir=schema_dir, n_shot=n_shot,
                                 max_new_tokens=max_new_tokens) if present else []

    t0 = time.perf_counter()
    raw = _merge([])
    if written:
        loglik = [n for n in written if schemas[n].type == "multiple_choice"]
        generative = [n for n in written if n not in loglik]
        if backend == "vllm":
            raw = _merge([_simple_evaluate("vllm", written, include, limit, chat, batch_size="auto",
                                           model_args=vllm_model_args(model_dir, tensor_parallel_size, chat))])
        else:
            raw = _run_hf(model_dir, loglik, generative, include, limit, chat, batch_size, threads)
    seconds = round(time.perf_counter() - t0, 3)

    settings = {"n_shot": n_shot, "limit": limit, "batch_size": batch_size, "chat": chat, "backend": backend,
                "max_new_tokens": max_new_tokens, "schema_dir": str(schema_dir) if schema_dir else None,
                "tasks": list(tasks)}
    per_task = {n: {"fewshot_source": fewshot_source(task_root / n, int(raw["n-shot"].get(n, 0))),
                    "test_file": str(present[n])} for n in written}
    extra = _extra_metrics(raw, schemas, comet_model, log)
    samples = raw.pop("samples")
    for n, rows in samples.items():
        path = out / f"{n}.samples.jsonl"
        _write_atomic(path, "".join(json.dumps(r, ensure_ascii=False, default=_json_default) + "\n" for r in rows))
        per_task.setdefault(n, {})["rows_file"] = str(path)
    raw["hebatron"] = {**settings, "tasks": per_task, "extra_metrics": extra, "seconds": seconds}
    _write_atomic(out / RESULTS, json.dumps(raw, ensure_ascii=False, indent=1, default=_json_default))
    results = json.loads((out / RESULTS).read_text(encoding="utf-8"))
    summary = {"model": str(model_dir), **model_identity(model_dir), "task_root": str(task_root),
               "settings": settings, "results_file": str(out / RESULTS),
               "scale": "metrics: acc/acc_norm/exact_match/f1 are fractions, bleu/chrf/comet are 0-100; "
                        "score and averages are 0-100",
               **summarize_results(results, schemas), "skipped": skipped, "seconds": seconds,
               "versions": _versions()}
    for name, entry in summary["tasks"].items():
        log(f"{name}: " + ", ".join(f"{k}={v:.4g}" for k, v in entry["metrics"].items())
            + f" ({entry['n_scored']} rows)")
    _write_atomic(out / SUMMARY, json.dumps(summary, ensure_ascii=False, indent=2))
    return summary


def _run_hf(model_dir, loglik: list[str], generative: list[str], include: Path, limit, chat: bool,
            batch_size: int, threads: int | None) -> dict:
    import torch
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoTokenizer

    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    saved = torch.get_num_threads()
    if threads is not None:
        from hebatron_nemo.backends.local.threads import thread_count

        torch.set_num_threads(thread_count(threads))  # never more than the cores this process may use
    try:
        model = load_scoring_model(model_dir, dtype=torch.float32).eval()
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        if chat and not tokenizer.chat_template:
            raise ConfigError(f"{model_dir}: scored as a chat model but its tokenizer has no chat template "
                              "(an SFT export carries one)")
        max_length = int(getattr(model.config, "max_position_embeddings", None) or 4096)
        outs = []
        # one loaded model, two lm-eval wrappers: batched log-likelihoods, generation one row at a time
        for names, bs in ((loglik, batch_size), (generative, 1)):
            if not names:
                continue
            lm = HFLM(pretrained=model, tokenizer=tokenizer, backend="causal", batch_size=bs, max_length=max_length,
                      enable_thinking=False if chat else None)
            outs.append(_simple_evaluate(lm, names, include, limit, chat))
        return _merge(outs)
    finally:
        torch.set_num_threads(saved)


def _extra_metrics(raw: dict, schemas: dict[str, TaskSchema], comet_model: str | None, log: Callable) -> dict:
    """Metrics computed from lm-eval's samples where lm-eval has none: COMET for translation tasks
    (when a checkpoint folder is configured) and the long-context task's accuracy per length."""
    from hebatron_nemo.eval.long_context import accuracy_by_length

    extra: dict[str, dict] = {}
    for name, rows in raw.get("samples", {}).items():
        s = schemas.get(name)
        if s is None:
            continue
        if s.type == "translation":
            c = comet_score(rows, s, comet_model, log)
            if c is not None:
                extra.setdefault(name, {})["comet"] = c
        by_length = accuracy_by_length(rows)
        if by_length:
            extra.setdefault(name, {})["by_length"] = by_length
    return extra


def comet_score(rows: list[dict], schema: TaskSchema, comet_model: str | None, log: Callable = print) -> float | None:
    """COMET (x100) of a translation task's generations against its references, with the checkpoint in
    the folder ``comet_model`` (unbabel-comet's layout: ``checkpoints/model.ckpt``); None, with a
    message, when no folder is configured or the ``comet`` package is missing. (lm-eval has no COMET
    metric.)"""
    if not comet_model:
        log(f"{schema.name}: COMET skipped (evaluate.comet_model is not set)")
        return None
    try:
        from comet import load_from_checkpoint
    except ImportError:
        log(f"{schema.name}: COMET skipped (the comet package is not installed: pip install unbabel-comet)")
        return None
    folder = Path(comet_model)
    ckpt = folder / "checkpoints" / "model.ckpt"
    if not ckpt.is_file():
        raise ConfigError(f"evaluate.comet_model: {ckpt} does not exist (a COMET checkpoint folder holds "
                          "checkpoints/model.ckpt)")
    from hebatron_nemo.eval.tasks import _lookup

    data = [{"src": str(_lookup(r["doc"], schema.source_field)), "mt": r["filtered_resps"][0].strip(),
             "ref": str(_lookup(r["doc"], schema.target_field))} for r in rows]
    import torch

    model = load_from_checkpoint(str(ckpt))
    out = model.predict(data, batch_size=8, gpus=1 if torch.cuda.is_available() else 0, progress_bar=False)
    return 100.0 * float(out.system_score)


def _versions() -> dict:
    import lm_eval
    import sacrebleu
    import torch
    import transformers

    return {"lm_eval": lm_eval.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "sacrebleu": sacrebleu.__version__}
