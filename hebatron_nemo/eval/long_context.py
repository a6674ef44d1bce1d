"""The Hebrew long-context retrieval task (``hebrew_needle``): a key fact planted at chosen depths
inside real Hebrew documents, asked for after them.

A row is one (length, depth) cell: Hebrew documents from the prepared validation split (the
``.bin/.idx`` that ``recipes/prepare_data.py`` wrote; nothing is downloaded) are concatenated and
cut so that the whole prompt (documents, the planted sentence, the question) has at most ``length``
tokens of the evaluated tokenizer; the sentence "the secret number of <name> is <number>" is planted
at the first word boundary past ``depth`` (a fraction of the documents' characters) and the question
asks for that number. Scoring is the schema's (``conf/eval_tasks/hebrew_needle.yaml``): greedy
generation, exact match on the number. The summary adds the accuracy per length (``by_length``).

Which lengths, depths, sources and how many rows per cell: ``conf/eval_tasks/long_context/hebrew_needle.yaml``
(4K to 64K tokens); the demo uses one length, its model's training sequence length.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import yaml

from hebatron_nemo.errors import ConfigError, DataError

__all__ = ["GENERATOR_CONFIG", "TASK", "accuracy_by_length", "load_generator_config", "write_needle_task"]

TASK = "hebrew_needle"
GENERATOR_CONFIG = Path(__file__).resolve().parents[2] / "conf" / "eval_tasks" / "long_context" / f"{TASK}.yaml"
_NAMES = ("אורית", "יונתן", "מיכל", "אבנר", "נועה", "שמואל", "תמר", "אליעזר", "רותם", "גדעון")
_NEEDLE = "המספר הסודי של {name} הוא {number}."
_QUESTION = "מה המספר הסודי של {name}?"
_KEYS = {"lengths", "depths", "sources", "split", "rows_per_cell", "seed"}


def load_generator_config(path: str | Path = GENERATOR_CONFIG, lengths: list[int] | None = None) -> dict:
    """The generator's settings, validated (ConfigError naming the file and key); ``lengths`` replaces
    the file's (the demo's own sequence length)."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot read the long-context generator config: {e}") from None
    if not isinstance(raw, dict) or set(raw) - _KEYS:
        raise ConfigError(f"{path}: a mapping of {sorted(_KEYS)}; unknown keys "
                          f"{sorted(set(raw) - _KEYS) if isinstance(raw, dict) else raw!r}")
    cfg = {**raw}
    if lengths is not None:
        cfg["lengths"] = list(lengths)
    for key in ("lengths", "depths", "sources"):
        if not isinstance(cfg.get(key), list) or not cfg[key]:
            raise ConfigError(f"{path}: key {key!r}: a non-empty list")
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 64 for n in cfg["lengths"]):
        raise ConfigError(f"{path}: key 'lengths': token counts >= 64, got {cfg['lengths']}")
    if not all(isinstance(d, (int, float)) and 0.0 <= d <= 1.0 for d in cfg["depths"]):
        raise ConfigError(f"{path}: key 'depths': fractions in [0, 1], got {cfg['depths']}")
    cfg.setdefault("split", "valid")
    cfg.setdefault("rows_per_cell", 1)
    cfg.setdefault("seed", 0)
    if not isinstance(cfg["rows_per_cell"], int) or cfg["rows_per_cell"] < 1:
        raise ConfigError(f"{path}: key 'rows_per_cell': an integer >= 1")
    return cfg


def _documents(prepared_dir: Path, sources: list[str], split: str, tokenizer) -> list[str]:
    """The prepared documents of ``sources``' ``split``, decoded back to text."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    from hebatron_nemo.utils.logs import quiet_megatron

    quiet_megatron()
    docs = []
    for src in sources:
        prefix = prepared_dir / src / split
        if not Path(str(prefix) + ".idx").is_file():
            raise DataError(f"no prepared {split} split for source {src!r} (run recipes/prepare_data.py first)",
                            path=str(prefix) + ".idx")
        ds = IndexedDataset(str(prefix))
        for i in range(len(ds)):
            text = tokenizer.decode(ds[i].tolist(), skip_special_tokens=True).strip()
            if text:
                docs.append(text)
    if not docs:
        raise DataError(f"the {split} splits of {sources} hold no documents", path=str(prepared_dir))
    return docs


def _plant(haystack: str, depth: float, needle: str) -> str:
    at = int(len(haystack) * depth)
    space = haystack.find(" ", at)
    at = len(haystack) if space < 0 else space
    return (haystack[:at] + " " + needle + " " + haystack[at:].lstrip()).strip()


def _row(docs: list[str], tokenizer, length: int, depth: float, rng: random.Random, schema_prompt: str,
         max_new_tokens: int) -> dict:
    name, number = rng.choice(_NAMES), str(rng.randrange(10_000, 100_000))
    needle, question = _NEEDLE.format(name=name, number=number), _QUESTION.format(name=name)

    def n_tokens(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    fixed = n_tokens(schema_prompt.format(context=needle, question=question))
    budget = length - fixed - max_new_tokens - 8  # the answer's tokens fit in the length too
    if budget < 16:
        raise ConfigError(f"long-context length {length} leaves no room for documents (prompt alone: {fixed} tokens)")
    start = rng.randrange(len(docs))
    ids: list[int] = []
    for k in range(len(docs)):
        ids += tokenizer(docs[(start + k) % len(docs)] + "\n", add_special_tokens=False)["input_ids"]
        if len(ids) >= budget:
            break
    else:
        if len(ids) < budget // 2:
            raise DataError(f"the prepared documents hold {len(ids)} tokens, too few for a {length}-token prompt")
    cut = min(budget, len(ids))
    while True:  # decoding a cut and encoding it again may shift a few tokens: cut until it fits
        context = _plant(tokenizer.decode(ids[:cut], skip_special_tokens=True), depth, needle)
        total = n_tokens(schema_prompt.format(context=context, question=question))
        if total + max_new_tokens <= length or cut <= 16:
            break
        cut -= max(1, total + max_new_tokens - length)
    return {"context": context, "question": question, "answer": number, "needle_length": length,
            "needle_depth": depth, "prompt_tokens": total}


def write_needle_task(out_root: str | Path, prepared_dir: str | Path, tokenizer_dir: str | Path,
                      config: dict | None = None, schema_dir: str | Path | None = None) -> Path:
    """Writes ``<out_root>/hebrew_needle/test.jsonl`` (rows of every length x depth cell, ids
    ``L<length>-d<depth>-<i>``) from the prepared documents; returns its path. Deterministic for the
    config's seed. ``config`` as ``load_generator_config`` returns it (default: the shipped file)."""
    from transformers import AutoTokenizer

    from hebatron_nemo.eval.tasks import load_schema

    cfg = config or load_generator_config()
    schema = load_schema(TASK, schema_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    docs = _documents(Path(prepared_dir), list(cfg["sources"]), cfg["split"], tokenizer)
    rng = random.Random(cfg["seed"])
    rows = []
    for length in cfg["lengths"]:
        for depth in cfg["depths"]:
            for i in range(cfg["rows_per_cell"]):
                row = _row(docs, tokenizer, length, float(depth), rng, schema.prompt, schema.max_new_tokens)
                rows.append({"id": f"L{length}-d{depth}-{i}", **row})
    out = Path(out_root) / TASK / "test.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name("test.jsonl.tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    tmp.replace(out)
    return out


def accuracy_by_length(samples: list[dict]) -> dict[str, float]:
    """Exact match per planted-fact length, from lm-eval's per-row records of the long-context task
    ({} for any other task). lm-eval aggregates a task over all its rows only."""
    groups: dict[int, list[float]] = {}
    for s in samples:
        doc = s.get("doc") or {}
        if "needle_length" not in doc or "exact_match" not in s:
            return {}
        groups.setdefault(int(doc["needle_length"]), []).append(float(s["exact_match"]))
    return {str(n): sum(v) / len(v) for n, v in sorted(groups.items())}
