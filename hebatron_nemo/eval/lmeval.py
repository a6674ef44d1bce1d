"""The task schemas as lm-evaluation-harness task YAMLs, for ``lm_eval --include_path <out_dir>``
(``recipes/evaluate.py`` scores through exactly these files).

Each task folder with a ``test.jsonl`` becomes ``<out_dir>/<task>.yaml``:

* ``dataset_path: json`` with ``data_files`` pointing at the absolute task files;
* **few-shot examples** are the first ``k`` rows of ``dev.jsonl``, else of ``train.jsonl`` (``first_n``
  sampler). A task with neither holds its first ``k`` test rows out: they are written to
  ``<out_dir>/data/<task>/fewshot.jsonl`` and the remaining rows to ``.../test.jsonl``, so those ``k``
  rows are shown to every scored row and never scored themselves (no row is its own example). ``k``
  is ``n_shot`` when given, else the schema's ``num_fewshot``;
* ``doc_to_text`` is the schema's ``str.format`` prompt rewritten as Jinja over the raw columns
  (dotted paths become subscripts, value maps become dict lookups), ``doc_to_choice`` and
  ``doc_to_target`` are Jinja too, and the delimiters are the schema's (a few-shot example is
  ``prompt + target_delimiter + answer``, joined by ``fewshot_delimiter``);
* ``multiple_choice`` tasks report lm-eval's ``acc`` and ``acc_norm`` (``acc_norm`` divides each
  choice's log-likelihood by its length in characters); translation reports lm-eval's corpus ``bleu``
  and ``chrf`` (sacrebleu's defaults); ``generative_exact`` and ``span_f1`` score through
  ``process_results`` functions that call this package's scorers (lm-eval has no GSM8K extraction
  plus Hebrew normalization of its own), in ``<out_dir>/hebatron_lmeval_utils.py``, which needs
  ``hebatron_nemo`` importable (it falls back to this checkout's path);
* generation is greedy, ``max_gen_toks`` the schema's ``max_new_tokens`` (capped by
  ``max_new_tokens`` when given), and stops at the schema's ``stop`` strings and ``<|im_end|>``.

Every task is also tagged ``hebatron`` and ``hebatron_<language>``, so ``--tasks hebatron_he`` runs
the Hebrew ones. lm-eval prepends no chat template unless asked (``apply_chat_template``).
"""

from __future__ import annotations

import _string  # the str.format field-name parser that string.Formatter uses
import dataclasses
import json
import pprint
import string
from pathlib import Path

import yaml

from hebatron_nemo.errors import ConfigError, DataError
from hebatron_nemo.sft.template import IM_END
from hebatron_nemo.eval.tasks import (
    TaskSchema,
    available_tasks,
    find_split,
    load_schema,
    parse_row,
    resolve_task_names,
    schema_from_dict,
)

__all__ = ["UTILS_MODULE", "fewshot_source", "make_process_results", "task_config", "write_lmeval_tasks"]

UTILS_MODULE = "hebatron_lmeval_utils"
_HEADER = "# written by hebatron_nemo.eval.lmeval"
# names Jinja would read as syntax rather than a column
_JINJA_RESERVED = frozenset({"and", "or", "not", "in", "is", "if", "else", "elif", "for", "true", "false", "none",
                             "True", "False", "None", "loop"})


class _Function(str):
    """A ``!function module.name`` reference in a task YAML."""


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(_Function, lambda d, v: d.represent_scalar("!function", str(v)))


def _lit(value) -> str:
    """A Jinja literal (JSON's string/list syntax is valid Jinja)."""
    return json.dumps(value)


def _column(schema: TaskSchema, path: str) -> str:
    """The Jinja expression reading a (dotted) column."""
    first, *rest = path.split(".")
    if not first.isidentifier() or first in _JINJA_RESERVED:
        raise ConfigError(f"{schema.path}: column {path!r} cannot be named in an lm-eval Jinja template "
                          "(the top-level name must be an identifier); rename the column")
    return first + "".join(f"[{int(p)}]" if p.isdigit() else f"[{_lit(p)}]" for p in rest)


def _choices_expr(schema: TaskSchema) -> str:
    if schema.choices_field:
        return _column(schema, schema.choices_field)
    if schema.choice_fields:
        return "[" + ", ".join(_column(schema, c) for c in schema.choice_fields) + "]"
    return _lit(list(schema.choices))


def _letters_expr(schema: TaskSchema) -> str:
    if schema.labels_field:
        return f"({_column(schema, schema.labels_field)} | map('trim') | list)"
    return f"{_lit(list(schema.letters))}[:({_choices_expr(schema)}) | length]"


def _name_expr(schema: TaskSchema, name: str) -> str:
    """The Jinja expression (no braces) for a prompt name."""
    columns = {"question": schema.question_field, "context": schema.context_field,
               "source": schema.source_field, **schema.extra_fields}
    if name == "choices":
        return f"({_choices_expr(schema)})"
    if name in columns:
        expr = _column(schema, columns[name])
        if name in schema.value_maps:
            expr = f"{_lit(schema.value_maps[name])}[{expr} | string]"
        return expr
    raise ConfigError(f"{schema.path}: prompt name {name!r} has no lm-eval translation")


def _lettered_block(schema: TaskSchema) -> str:
    return ("{% for c in " + _choices_expr(schema) + " %}{{ (" + _letters_expr(schema) + ")[loop.index0] }}. "
            "{{ c }}{% if not loop.last %}\n{% endif %}{% endfor %}")


def _literal(text: str) -> str:
    # a literal that contains Jinja delimiter characters is emitted raw so it stays literal
    if any(ch in text for ch in "{}%#"):
        return "{% raw %}" + text + "{% endraw %}"
    return text


def prompt_to_jinja(schema: TaskSchema) -> str:
    """The schema's ``str.format`` prompt as a Jinja template over the raw columns."""
    out = []
    for literal, name, spec, conversion in string.Formatter().parse(schema.prompt):
        if literal:
            out.append(_literal(literal))
        if name is None:
            continue
        if spec or conversion:
            raise ConfigError(f"{schema.path}: prompt field {{{name}}}: format specs and conversions have "
                              "no lm-eval translation")
        root, keys = _string.formatter_field_name_split(name)
        if root == "choices_lettered":
            if list(keys):
                raise ConfigError(f"{schema.path}: {{{name}}}: choices_lettered is a string, not indexable")
            out.append(_lettered_block(schema))
            continue
        expr = _name_expr(schema, root)
        for is_attr, key in keys:
            if is_attr:
                raise ConfigError(f"{schema.path}: {{{name}}}: attribute access is not allowed")
            expr += f"[{key}]" if isinstance(key, int) else f"[{_lit(key)}]"
        out.append("{{ " + expr + " }}")
    return "".join(out)


def _target_index(schema: TaskSchema) -> str:
    x = _column(schema, schema.answer_field)
    if schema.answer_type == "index":
        return "{{ (" + x + " | int) - " + str(schema.index_base) + " }}"
    if schema.answer_type == "letter":
        if schema.labels_field:
            return "{{ " + _letters_expr(schema) + ".index(" + x + " | trim) }}"
        # case-insensitive, as the loader compares letters
        return "{{ " + _lit([a.upper() for a in schema.letters]) + ".index(" + x + " | trim | upper) }}"
    return "{{ (" + _choices_expr(schema) + " | map('trim') | list).index(" + x + " | trim) }}"


def schema_to_dict(schema: TaskSchema) -> dict:
    """The schema as the mapping ``schema_from_dict`` reads (no ``path``)."""
    out = {}
    for f in dataclasses.fields(schema):
        v = getattr(schema, f.name)
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        # defaults are left out: some keys (answer_type, ...) are only accepted on the types they apply to
        if f.name == "path" or (f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING) \
                and v == default:
            continue
        out[f.name] = list(v) if isinstance(v, tuple) else v
    return out


def _held_out_files(test: Path, k: int, data_dir: Path) -> tuple[Path, Path]:
    """The first ``k`` non-blank lines of ``test`` as ``fewshot.jsonl``, the rest as ``test.jsonl``,
    under ``data_dir`` (written to temporary names, then renamed)."""
    lines = [x for x in test.read_text(encoding="utf-8").lstrip("\ufeff").splitlines() if x.strip()]
    if len(lines) <= k:
        raise DataError(f"{k} few-shot examples come from the test rows (no dev/train file) and leave none of "
                        f"its {len(lines)} rows to score", path=str(test))
    data_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for name, part in (("fewshot.jsonl", lines[:k]), ("test.jsonl", lines[k:])):
        target = data_dir / name
        tmp = target.with_name(name + ".tmp")
        tmp.write_text("\n".join(part) + "\n", encoding="utf-8")
        tmp.replace(target)
        out.append(target.resolve())
    return out[0], out[1]


def fewshot_source(task_dir: str | Path, k: int) -> str:
    """Where a task's ``k`` few-shot examples come from (the rule in the module docstring)."""
    if not k:
        return "none"
    for split in ("dev", "train"):
        if find_split(task_dir, split) is not None:
            return f"{split}.jsonl"
    return f"test.jsonl (first {k} rows, held out from scoring)"


def task_config(schema: TaskSchema, task_dir: str | Path, tag: str = "hebatron", *, n_shot: int | None = None,
                max_new_tokens: int | None = None, data_dir: str | Path | None = None) -> dict:
    """One lm-eval task config (the YAML's content) for a task folder holding ``test.jsonl``.

    ``n_shot`` overrides the schema's ``num_fewshot``; ``max_new_tokens`` caps its generation length;
    ``data_dir`` is where held-out few-shot rows are written when the task has no dev/train file
    (required then)."""
    task_dir = Path(task_dir).resolve()
    test = find_split(task_dir, "test")
    if test is None:
        raise ConfigError(f"{task_dir}: no test.jsonl")
    k = schema.num_fewshot if n_shot is None else n_shot
    if k < 0:
        raise ConfigError(f"n_shot must be >= 0, got {k}")
    data_files = {"test": str(test)}
    fewshot_split = "test"
    for split in ("dev", "train"):
        p = find_split(task_dir, split)
        if p is not None:
            data_files[split] = str(p)
            fewshot_split = split
            break
    else:
        if k:
            if data_dir is None:
                raise ConfigError(f"{task_dir}: {k}-shot without a dev/train file needs a data_dir for the "
                                  "held-out rows")
            shots, rest = _held_out_files(test, k, Path(data_dir))
            data_files = {"test": str(rest), "fewshot": str(shots)}
            fewshot_split = "fewshot"
    cfg: dict = {
        "task": schema.name,
        "tag": [tag, f"{tag}_{schema.language}"],
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": data_files},
        "test_split": "test",
        "fewshot_split": fewshot_split,
        "fewshot_config": {"sampler": "first_n"},
        "num_fewshot": k,
        "doc_to_text": prompt_to_jinja(schema),
        "target_delimiter": schema.target_delimiter,
        "fewshot_delimiter": schema.fewshot_delimiter,
    }
    if schema.type == "multiple_choice":
        if schema.score_choices == "letter":
            choice = "{{ " + _letters_expr(schema) + " }}"
        elif schema.choices:
            choice = list(schema.choices)
        else:
            choice = "{{ " + _choices_expr(schema) + " }}"
        cfg.update({
            "output_type": "multiple_choice",
            "doc_to_choice": choice,
            "doc_to_target": _target_index(schema),
            "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": True}
                            for m in ("acc", "acc_norm")],
        })
    else:
        if schema.type == "translation":
            target = "{{ " + _column(schema, schema.target_field) + " }}"
        else:
            x = _column(schema, schema.answer_field)
            target = "{{ " + x + " if " + x + " is string or " + x + " is number else " + x + "[0] }}"
        cfg.update({
            "output_type": "generate_until",
            "doc_to_target": target,
            "generation_kwargs": {"until": list(dict.fromkeys([*schema.stop, IM_END])), "do_sample": False,
                                  "max_gen_toks": schema.max_new_tokens if max_new_tokens is None
                                  else min(max_new_tokens, schema.max_new_tokens)},
        })
        if schema.type == "translation":
            cfg["metric_list"] = [{"metric": m, "aggregation": m, "higher_is_better": True} for m in ("bleu", "chrf")]
        else:
            cfg["process_results"] = _Function(f"{UTILS_MODULE}.process_{schema.name}")
            metrics = ("exact_match",) if schema.type == "generative_exact" else ("f1", "exact_match")
            cfg["metric_list"] = [{"metric": m, "aggregation": "mean", "higher_is_better": True} for m in metrics]
    cfg["metadata"] = {"version": 1.0, "schema": schema.path}
    return cfg


def make_process_results(schema_dict: dict):
    """lm-eval's ``process_results(doc, results)`` for a generative task: the doc is mapped through
    the schema (GSM8K golds extracted) and the generation scored by ``scorers``."""
    from hebatron_nemo.eval import scorers

    schema = schema_from_dict(schema_dict, where=f"<lm-eval schema {schema_dict.get('name')}>")

    def process_results(doc: dict, results: list) -> dict:
        row = parse_row(schema, doc, f"<lm-eval doc of {schema.name}>", 0)
        pred = results[0].strip()
        if schema.type == "span_f1":
            return {"f1": scorers.token_f1(pred, row.gold), "exact_match": scorers.exact_match(pred, row.gold)}
        return {"exact_match": scorers.exact_match(pred, row.gold, schema.answer_extraction)}

    return process_results


_UTILS_HEAD = '''"""Written by hebatron_nemo.eval.lmeval.write_lmeval_tasks: lm-eval process_results functions that
score with hebatron_nemo's scorers (installed, or the checkout on PYTHONPATH). Regenerate rather than edit."""

from hebatron_nemo.eval.lmeval import make_process_results

'''


def write_lmeval_tasks(task_root: str | Path, out_dir: str | Path, tasks: list[str] | None = None, *,
                       schema_dir: str | Path | None = None, tag: str = "hebatron", n_shot: int | None = None,
                       max_new_tokens: int | None = None) -> list[str]:
    """Writes ``<out_dir>/<task>.yaml`` for each task (default: every schema) whose
    ``<task_root>/<task>/test.jsonl`` exists, plus the ``process_results`` module (and held-out few-shot
    rows under ``<out_dir>/data/``); returns the task names written. ``n_shot`` and ``max_new_tokens``
    as in ``task_config``. Use with ``lm_eval --include_path <out_dir> --tasks <names>`` or
    ``TaskManager(include_path=<out_dir>)``."""
    names = resolve_task_names(tasks or available_tasks(schema_dir), schema_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.yaml"):
        # a task written earlier whose files are gone would otherwise still be found by lm-eval
        with open(old, encoding="utf-8") as f:
            if f.readline().startswith(_HEADER):
                old.unlink()
    written, funcs = [], []
    for name in names:
        schema = load_schema(name, schema_dir)
        task_dir = Path(task_root) / name
        if find_split(task_dir, "test") is None:
            continue
        cfg = task_config(schema, task_dir, tag=tag, n_shot=n_shot, max_new_tokens=max_new_tokens,
                          data_dir=out / "data" / name)
        text = yaml.dump(cfg, Dumper=_Dumper, allow_unicode=True, sort_keys=False, width=1 << 30)
        (out / f"{name}.yaml").write_text(f"{_HEADER} from {schema.path}; regenerate, do not edit\n" + text,
                                          encoding="utf-8")
        if "process_results" in cfg:
            mapping = pprint.pformat(schema_to_dict(schema), indent=4)
            funcs.append(f"process_{name} = make_process_results(\n{mapping})\n")
        written.append(name)
    repo = str(Path(__file__).resolve().parents[2])
    (out / f"{UTILS_MODULE}.py").write_text(_UTILS_HEAD.format(repo=repo) + "\n".join(funcs), encoding="utf-8")
    return written
