"""Scores an HF model folder on task files: multiple choice by log-likelihood, the rest by greedy
generation, with per-row outputs and labelled averages.

Rules that decide the numbers:

* **Prompt.** ``k`` few-shot examples, each ``prompt + target_delimiter + answer``, then the scored
  row's prompt, joined by ``fewshot_delimiter`` (lm-evaluation-harness' layout). With ``chat=True``
  (SFT models) that text becomes one user turn of the chat template, with the generation prompt and
  an empty think block; choices are then scored without the delimiter.
* **Few-shot examples** are the first ``k`` rows of ``dev.jsonl``, else of ``train.jsonl``, else of
  ``test.jsonl``. In the last case those ``k`` test rows are held out: they are shown to every
  scored row and never scored themselves, so no row is ever its own example. ``k`` is ``n_shot``
  when given, else the schema's ``num_fewshot``. (lm-evaluation-harness, given the same files,
  scores every test row and draws examples from the others; see ``lmeval.py``.)
* **limit** keeps the first ``limit`` scored rows (after the held-out examples).
* **Log-likelihood** follows lm-evaluation-harness: trailing whitespace of the context moves to the
  continuation; context and context+continuation are encoded without special tokens and the
  continuation is the whole encoding past the context's token count; an empty context is preceded by
  the tokenizer's bos (else eos) token; inputs longer than the model's length keep their right end.
* **Generation** is greedy, up to the schema's ``max_new_tokens`` (capped by ``max_new_tokens``
  here), one row at a time (no padding to get wrong in Mamba layers), and stops at the tokenizer's
  eos, at ``<|im_end|>`` and at the schema's ``stop`` strings; the text is cut before the first
  stop string.
* **Scores and averages.** Each task reports its metrics (see ``scorers``) and a ``score``: its
  primary metric on 0-100. An average is the mean of its present tasks' scores and is labelled with
  them, e.g. ``"hebrew_average (arc_heb, copa_heb)"``. The paper's Hebrew reasoning average is
  ``paper_comparable`` only when all six of its tasks were scored on full test sets (no ``limit``)
  with the schemas' generation lengths (no ``max_new_tokens`` cap).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hebatron_nemo.errors import ConfigError, DataError
from hebatron_nemo.eval import scorers
from hebatron_nemo.sft.template import IM_END
from hebatron_nemo.eval.tasks import (
    AVERAGES,
    PAPER_AVERAGES,
    Row,
    TaskSchema,
    find_split,
    format_prompt,
    load_schema,
    load_task,
    resolve_task_names,
)

__all__ = ["CausalLM", "PreparedTask", "build_context", "evaluate_model", "prepare_task", "summarize"]

FEWSHOT_SPLITS = ("dev", "train")


@dataclass
class PreparedTask:
    """A task ready to score: the rows scored, the few-shot examples and where they came from."""

    schema: TaskSchema
    test_path: Path
    rows: list[Row]
    shots: list[Row]
    fewshot_source: str
    n_test_rows: int


def prepare_task(schema: TaskSchema, task_dir: str | Path, n_shot: int | None = None,
                 limit: int | None = None) -> PreparedTask | None:
    """Loads and validates a task folder (None when it has no ``test.jsonl``) and picks its few-shot
    examples by the rule in the module docstring."""
    task_dir = Path(task_dir)
    test = find_split(task_dir, "test")
    if test is None:
        return None
    rows = load_task(test, schema)
    k = schema.num_fewshot if n_shot is None else n_shot
    if k < 0:
        raise ConfigError(f"n_shot must be >= 0, got {k}")
    shots: list[Row] = []
    source = "none"
    if k:
        pool_path = next((p for p in (find_split(task_dir, s) for s in FEWSHOT_SPLITS) if p is not None), None)
        if pool_path is not None:
            pool = load_task(pool_path, schema)
            if len(pool) < k:
                raise DataError(f"{k} few-shot examples requested but the file has {len(pool)} rows",
                                path=str(pool_path))
            shots, source = pool[:k], pool_path.name
        else:
            if len(rows) <= k:
                raise DataError(f"{k} few-shot examples come from the test rows (no dev/train file) and "
                                f"leave none of its {len(rows)} rows to score", path=str(test))
            shots, rows = rows[:k], rows[k:]
            source = f"{test.name} (first {k} rows, held out from scoring)"
    n_test = len(rows)
    if limit is not None:
        if limit < 1:
            raise ConfigError(f"limit must be >= 1, got {limit}")
        rows = rows[:limit]
    return PreparedTask(schema, test, rows, shots, source, n_test)


def build_context(schema: TaskSchema, shots: list[Row], row: Row, chat: bool = False) -> str:
    """The text the model reads before the answer (see the module docstring)."""
    parts = [format_prompt(schema, s.fields) + schema.target_delimiter + s.target_text for s in shots]
    text = schema.fewshot_delimiter.join(parts + [format_prompt(schema, row.fields)])
    if chat:
        from hebatron_nemo.sft.template import render

        text = render([{"role": "user", "content": text}], add_generation_prompt=True, enable_thinking=False)
    return text


def continuations(schema: TaskSchema, row: Row, chat: bool = False) -> tuple[list[str], list[str]]:
    """(the strings scored after the context, the choice texts whose lengths acc_norm divides by)."""
    texts = list(row.letters) if schema.score_choices == "letter" else list(row.choices)
    delim = "" if chat else schema.target_delimiter
    return [delim + t for t in texts], texts


# --------------------------------------------------------------------------- the model


def load_scoring_model(model_dir: str | Path, dtype=None):
    """The model a benchmark scores, loaded with the export's own strict loader
    (`hebatron_nemo.export.hf.load_exported`): release-format config, every weight key exactly the
    model's (a missing tensor is an error, not a silent re-initialization), and each weight file's
    sha256 equal to the export manifest's. A problem raises one clear error naming the folder."""
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


class CausalLM:
    """An exported causal LM folder loaded for scoring (`load_scoring_model`): fp32 on CPU, eval mode."""

    def __init__(self, model_dir: str | Path, batch_size: int = 8, device: str = "cpu"):
        import torch
        from transformers import AutoTokenizer

        model_dir = Path(model_dir)
        if not (model_dir / "config.json").is_file():
            raise ConfigError(f"{model_dir}: not an HF model folder (no config.json)")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.torch = torch
        self.device = device
        self.batch_size = batch_size
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        self.model = load_scoring_model(model_dir, dtype=torch.float32).to(device).eval()
        tok = self.tokenizer
        self.prefix_id = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
        stop_ids = {tok.eos_token_id}
        im_end = tok.convert_tokens_to_ids(IM_END) if IM_END in tok.get_vocab() else None
        stop_ids.add(im_end)
        self.stop_ids = sorted(i for i in stop_ids if i is not None)
        self.max_length = int(getattr(self.model.config, "max_position_embeddings", None) or 4096)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Token ids of context and continuation, split the way lm-evaluation-harness splits them."""
        if not context:
            if self.prefix_id is None:
                raise ConfigError("the tokenizer has neither bos nor eos to stand for an empty context")
            return [self.prefix_id], self.encode(continuation)
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:
            # "Answer: A" tokenizes the space with the letter; scoring " A" keeps that boundary
            context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
        whole = self.encode(context + continuation)
        ctx = self.encode(context)
        return ctx, whole[len(ctx):]

    def loglikelihoods(self, requests: list[tuple[str, str]]) -> list[float]:
        """Sum of the continuation's token log-probabilities after the context, per request."""
        torch = self.torch
        encoded = []
        for ctx, cont in requests:
            c, x = self.encode_pair(ctx, cont)
            if not x:
                raise ValueError(f"continuation {cont!r} encodes to no tokens")
            seq = (c + x)[-(self.max_length + 1):]
            encoded.append((seq[:-1], seq[-len(x):]))
        out = [0.0] * len(requests)
        # longest first, so a batch pads little; right padding never reaches earlier positions
        order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i][0]))
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            width = max(len(encoded[i][0]) for i in idx)
            ids = torch.full((len(idx), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for b, i in enumerate(idx):
                inp = encoded[i][0]
                ids[b, :len(inp)] = torch.tensor(inp)
                mask[b, :len(inp)] = 1
            with torch.no_grad():
                logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                    use_cache=False).logits
            for b, i in enumerate(idx):
                inp, target = encoded[i]
                n = len(target)
                lp = logits[b, len(inp) - n:len(inp)].float().log_softmax(-1)
                out[i] = float(lp.gather(-1, torch.tensor(target, device=lp.device)[:, None]).sum())
        return out

    def generate(self, context: str, max_new_tokens: int, stop: tuple[str, ...]) -> str:
        """Greedy continuation of ``context``, cut before the first stop string."""
        torch = self.torch
        from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

        ids = self.encode(context) or [self.prefix_id]
        ids = ids[-self.max_length:]
        start = len(ids)
        tokenizer = self.tokenizer
        stops = tuple(stop) + (IM_END,)

        class _StopStrings(StoppingCriteria):
            # decoding the new tokens each step is slow for long outputs but exact for any tokenizer
            def __call__(self, input_ids, scores, **kwargs):
                text = tokenizer.decode(input_ids[0, start:], skip_special_tokens=False)
                done = any(s in text for s in stops)
                return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)

        config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                  eos_token_id=self.stop_ids or None, pad_token_id=self.pad_id)
        x = torch.tensor([ids], device=self.device)
        with torch.no_grad():
            out = self.model.generate(x, attention_mask=torch.ones_like(x), generation_config=config,
                                      stopping_criteria=StoppingCriteriaList([_StopStrings()]))
        new = out[0, start:].tolist()
        for j, t in enumerate(new):
            if t in self.stop_ids:
                new = new[:j]
                break
        text = tokenizer.decode(new, skip_special_tokens=False)
        cut = min((text.find(s) for s in stops if s in text), default=len(text))
        return text[:cut]


# --------------------------------------------------------------------------- scoring


def _score_multiple_choice(lm: CausalLM, task: PreparedTask, chat: bool) -> tuple[dict, list[dict]]:
    s = task.schema
    requests, spans, contexts = [], [], []
    for row in task.rows:
        ctx = build_context(s, task.shots, row, chat)
        conts, _ = continuations(s, row, chat)
        spans.append((len(requests), len(conts)))
        requests += [(ctx, c) for c in conts]
        contexts.append(ctx)
    lls = lm.loglikelihoods(requests)
    all_ll, golds, texts, out = [], [], [], []
    for row, ctx, (a, n) in zip(task.rows, contexts, spans):
        ll = lls[a:a + n]
        _, scored = continuations(s, row, chat)
        lengths = [len(t) for t in scored]
        pred, pred_norm = scorers.choose(ll), scorers.choose(ll, lengths)
        all_ll.append(ll)
        golds.append(row.gold)
        texts.append(scored)
        out.append({"id": row.id, "line": row.line, "prompt": ctx, "choices": list(row.choices),
                    "scored": scored, "logprobs": ll, "pred": pred, "pred_norm": pred_norm, "gold": row.gold,
                    "correct": pred == row.gold, "correct_norm": pred_norm == row.gold})
    return scorers.mc_accuracy(all_ll, golds, texts), out


def _score_generative(lm: CausalLM, task: PreparedTask, chat: bool, max_new_tokens: int | None,
                      log: Callable) -> tuple[dict, list[dict]]:
    s = task.schema
    budget = s.max_new_tokens if max_new_tokens is None else min(max_new_tokens, s.max_new_tokens)
    out, preds = [], []
    for i, row in enumerate(task.rows):
        ctx = build_context(s, task.shots, row, chat)
        generation = lm.generate(ctx, budget, s.stop)
        pred = generation.strip()
        preds.append(pred)
        rec = {"id": row.id, "line": row.line, "prompt": ctx, "generation": generation, "prediction": pred,
               "gold": list(row.gold)}
        if s.type == "generative_exact":
            rec["extracted"] = (scorers.extract_gsm8k(pred) if s.answer_extraction == "gsm8k"
                                else scorers.normalize_answer(pred))
            rec["correct"] = scorers.exact_match(pred, row.gold, s.answer_extraction) == 1.0
        elif s.type == "span_f1":
            rec["f1"] = scorers.token_f1(pred, row.gold)
            rec["exact_match"] = scorers.exact_match(pred, row.gold)
            rec["correct"] = rec["exact_match"] == 1.0
        else:
            rec["sentence_chrf"] = scorers.sentence_chrf(pred, row.gold[0])
        out.append(rec)
        if (i + 1) % 50 == 0:
            log(f"  {s.name}: {i + 1}/{len(task.rows)} generated")
    if s.type == "generative_exact":
        metrics = {"exact_match": scorers.mean([float(r["correct"]) for r in out])}
    elif s.type == "span_f1":
        metrics = {"f1": scorers.mean([r["f1"] for r in out]),
                   "exact_match": scorers.mean([r["exact_match"] for r in out])}
    else:
        refs = [row.gold[0] for row in task.rows]
        metrics = {"chrf": scorers.corpus_chrf(preds, refs), "bleu": scorers.corpus_bleu(preds, refs)}
    return metrics, out


def score_task(lm: CausalLM, task: PreparedTask, chat: bool = False, max_new_tokens: int | None = None,
               log: Callable = print) -> tuple[dict, list[dict]]:
    """(metrics, per-row records) of one prepared task."""
    if task.schema.type == "multiple_choice":
        return _score_multiple_choice(lm, task, chat)
    return _score_generative(lm, task, chat, max_new_tokens, log)


def _to_score(metric: str, value: float) -> float:
    """A metric on 0-100: fractions are scaled, BLEU and chrF already are."""
    return value if metric in ("bleu", "chrf") else 100.0 * value


def summarize(results: dict[str, dict], schemas: dict[str, TaskSchema], limit: int | None = None,
              max_new_tokens: int | None = None) -> dict:
    """The averages over the scored tasks: ``{name: {label, value, tasks, missing, paper_comparable}}``.

    ``results[task]`` holds at least ``score`` and ``n_scored``. An average covers the requested tasks
    whose schema lists it (a paper average: its fixed members, requested or not); with no member
    scored it is left out. ``paper_comparable`` is true only for a paper average with every member
    scored, no ``limit`` and no ``max_new_tokens`` cap.
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
            "value": scorers.mean([results[t]["score"] for t in present]),
            "tasks": present,
            "missing": missing,
            "paper_comparable": comparable,
            "description": AVERAGES[avg],
        }
    return averages


def _versions() -> dict:
    import sacrebleu
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "sacrebleu": sacrebleu.__version__}


def _write_jsonl_atomic(path: Path, records: list[dict]) -> None:
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def _write_json_atomic(path: Path, obj) -> None:
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, ensure_ascii=False, indent=2), encoding="utf-8")
    os.replace(tmp, path)


def _score_and_write(lm: CausalLM, task: PreparedTask, out: Path | None, chat: bool, max_new_tokens: int | None,
                     log: Callable) -> dict:
    """One task's summary entry; its rows file is written under ``out``."""
    t0 = time.perf_counter()
    metrics, records = score_task(lm, task, chat=chat, max_new_tokens=max_new_tokens, log=log)
    s = task.schema
    entry = {
        "type": s.type, "language": s.language, "metrics": metrics, "primary_metric": s.primary,
        "score": _to_score(s.primary, metrics[s.primary]), "n_scored": len(task.rows),
        "n_test_rows": task.n_test_rows, "n_shot": len(task.shots), "fewshot_source": task.fewshot_source,
        "test_file": str(task.test_path), "seconds": round(time.perf_counter() - t0, 3),
    }
    if out is not None:
        _write_jsonl_atomic(out / f"{s.name}.rows.jsonl", records)
        entry["rows_file"] = str(out / f"{s.name}.rows.jsonl")
    log(f"{s.name}: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()) + f" ({len(task.rows)} rows)")
    return entry


def evaluate_model(model_dir: str | Path, tasks: list[str], task_root: str | Path, n_shot: int | None = None,
                   limit: int | None = None, out_dir: str | Path | None = None, batch_size: int = 8, *,
                   schema_dir: str | Path | None = None, max_new_tokens: int | None = None, chat: bool = False,
                   threads: int | None = None, log: Callable = print) -> dict:
    """Scores the model in ``model_dir`` (an HF folder) on ``tasks`` under ``task_root``.

    ``tasks`` are schema names, or groups (``all``, an average's name). Each task's files are
    ``<task_root>/<task>/test.jsonl`` (+ ``dev.jsonl``/``train.jsonl`` for few-shot examples); a task
    without ``test.jsonl`` is skipped and listed under ``skipped``. Every present file is validated
    before the model is loaded. ``n_shot`` overrides every schema's ``num_fewshot``; ``limit`` scores
    the first rows only; ``max_new_tokens`` caps generation; ``chat`` wraps prompts in the chat
    template (SFT models). ``batch_size`` applies to log-likelihood scoring. ``threads`` sets torch's
    intra-op threads while scoring, restored after (tiny models on a busy machine run far faster on 1).

    Writes, when ``out_dir`` is given, ``<out_dir>/<task>.rows.jsonl`` (one record per scored row:
    prompt, choice log-probabilities or generation, gold, correct) and ``<out_dir>/summary.json``;
    returns the summary: per-task ``metrics`` and ``score`` (primary metric on 0-100), ``skipped``,
    and ``averages`` labelled with their tasks (see ``summarize``).
    """
    names = resolve_task_names(list(tasks), schema_dir)
    if not names:
        raise ConfigError("no tasks to evaluate")
    schemas = {n: load_schema(n, schema_dir) for n in names}
    task_root = Path(task_root)
    prepared: dict[str, PreparedTask] = {}
    skipped: dict[str, str] = {}
    for n in names:
        p = prepare_task(schemas[n], task_root / n, n_shot, limit)
        if p is None:
            skipped[n] = f"no {task_root / n / 'test.jsonl'}"
        else:
            prepared[n] = p
    if skipped:
        log(f"skipping tasks without test.jsonl: {', '.join(skipped)}")
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)

    results: dict[str, dict] = {}
    if prepared:
        import torch

        saved_threads = torch.get_num_threads()
        if threads is not None:
            from hebatron_nemo.backends.local.threads import thread_count

            torch.set_num_threads(thread_count(threads))  # never more than the cores this process may use
        try:
            lm = CausalLM(model_dir, batch_size=batch_size)
            for n, task in prepared.items():
                results[n] = _score_and_write(lm, task, out, chat, max_new_tokens, log)
        finally:
            torch.set_num_threads(saved_threads)
    summary = {
        "model": str(model_dir),
        **model_identity(model_dir),
        "task_root": str(task_root),
        "settings": {"n_shot": n_shot, "limit": limit, "batch_size": batch_size, "chat": chat,
                     "max_new_tokens": max_new_tokens, "schema_dir": str(schema_dir) if schema_dir else None},
        "scale": "metrics: acc/acc_norm/exact_match/f1 are fractions, bleu/chrf are 0-100; "
                 "score and averages are 0-100",
        "tasks": results,
        "skipped": skipped,
        "averages": summarize(results, schemas, limit, max_new_tokens),
        "versions": _versions(),
    }
    if out is not None:
        _write_json_atomic(out / "summary.json", summary)
    return summary
