"""Evaluation task schemas (`conf/eval_tasks/<task>.yaml`) and a validating loader for task files.

A task is a folder ``<task_root>/<task>/`` holding ``test.jsonl`` (scored) and optionally
``dev.jsonl`` / ``train.jsonl`` (few-shot examples). One JSON object per line.

The schema says how a row's columns map onto what the scorers need, so a data release with other
column names maps by editing YAML, not code. Keys:

``name``, ``language`` (``he`` | ``en``), ``type``, ``description``
    ``type`` is one of

    * ``multiple_choice``  pick the choice with the highest log-likelihood after the prompt;
    * ``generative_exact`` greedy generation, exact match after answer extraction;
    * ``span_f1``          greedy generation, SQuAD-style token F1 against the answer span(s);
    * ``translation``      greedy generation, corpus BLEU and chrF against the reference (and COMET
                           when ``evaluate.comet_model`` names a COMET checkpoint folder).
``id_field``
    column with a stable row id (optional; default ``"<file name>:<line>"``). Duplicates are errors.
``question_field``, ``context_field``
    text columns, exposed to the prompt as ``{question}`` and ``{context}``.
``choices_field`` | ``choice_fields`` | ``choices``
    multiple choice only, exactly one of: one column holding a list of strings; several columns,
    one string each; or a fixed list of strings shared by every row (labels such as sentiment).
    Exposed as ``{choices}`` (``{choices[0]}`` indexes it) and ``{choices_lettered}``
    (``"A. first\\nB. second"``, with ``letters``).
``answer_field``, ``answer_type``
    the gold. ``answer_type`` (multiple choice): ``index`` (an integer, or a string of digits,
    counted from ``index_base``, default 0), ``letter`` (one of ``letters``, default ``ABCDEFGHIJ``,
    or of the row's own labels in ``labels_field``, e.g. ARC's ``choices.label``) or ``text`` (equal
    to one of the choices after stripping). Generative tasks: a string or number, or a non-empty
    list of them (any one counts as correct).
``answer_extraction``
    ``none`` (default) or ``gsm8k``: the final number, taken after the last ``####`` when there is
    one, else the last number in the text; commas and ``$`` dropped, ``42.0`` read as ``42``.
    Applied to both the prediction and the gold.
``source_field``, ``target_field``
    translation only; the source is exposed as ``{source}``.
``extra_fields``, ``value_maps``
    ``extra_fields: {name: column}`` exposes more columns as ``{name}``; ``value_maps: {name:
    {value: text}}`` replaces a field's raw value by a text (COPA's ``cause``/``effect`` becomes a
    question in the task's language). A value missing from its map is a data error.
``prompt``
    a Python ``str.format`` template over the names above. Field names are dotted paths into
    nested objects (``choices.text``); a column whose literal name contains a dot wins over a path.
``target_delimiter`` (``" "``), ``fewshot_delimiter`` (``"\\n\\n"``)
    a few-shot example is ``prompt + target_delimiter + answer``; examples and the scored prompt are
    joined by ``fewshot_delimiter`` (lm-evaluation-harness' layout, so both tools see one text).
``score_choices``
    ``text`` (default): the continuations scored are the choice texts; ``letter``: the letters
    (MMLU style, with the choices listed in the prompt through ``{choices_lettered}``).
``num_fewshot``, ``max_new_tokens``, ``stop``
    defaults for few-shot count, generation length and stop strings (generation always also stops
    at the tokenizer's eos and ``<|im_end|>``).
``averages``
    the averages this task belongs to (``hebrew_average``, ``english_average``,
    ``hebrew_reasoning_paper``).
``primary_metric``
    the metric averages use (default by type: ``acc``, ``exact_match``, ``f1``, ``chrf``).

Line numbers are 1-based; every data problem raises ``DataError`` naming file, line and field.
"""

from __future__ import annotations

import dataclasses
import json
import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hebatron_nemo.errors import ConfigError, DataError

__all__ = [
    "AVERAGES",
    "PAPER_AVERAGES",
    "SCHEMA_DIR",
    "TASK_TYPES",
    "Row",
    "TaskSchema",
    "available_tasks",
    "find_split",
    "format_prompt",
    "load_schema",
    "load_task",
    "resolve_task_names",
]

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "conf" / "eval_tasks"
TASK_TYPES = ("multiple_choice", "generative_exact", "span_f1", "translation")
ANSWER_TYPES = ("index", "letter", "text")
EXTRACTIONS = ("none", "gsm8k")
METRICS = {
    "multiple_choice": ("acc", "acc_norm"),
    "generative_exact": ("exact_match",),
    "span_f1": ("f1", "exact_match"),
    "translation": ("chrf", "bleu"),
}
DEFAULT_PRIMARY = {"multiple_choice": "acc", "generative_exact": "exact_match", "span_f1": "f1",
                   "translation": "chrf"}
# What each average means; harness.summarize labels every average with the tasks it actually averaged.
AVERAGES = {
    "hebrew_average": "every Hebrew task evaluated, each on its primary metric (0-100)",
    "english_average": "the English forgetting pack (ARC, HellaSwag, MMLU, GSM8K, Psychometric in English)",
    "hebrew_reasoning_paper": "the Hebatron paper's Hebrew reasoning average: COPA, ARC, HellaSwag, "
                              "MMLU, GSM8K, Psychometric",
}
# Averages that reproduce a published number: comparable only when every member was evaluated in full.
PAPER_AVERAGES = {
    "hebrew_reasoning_paper": ("copa_heb", "arc_heb", "hellaswag_heb", "mmlu_heb", "gsm8k_heb",
                               "psychometric_heb"),
}
SPLITS = ("test", "dev", "train")

@dataclass(frozen=True)
class TaskSchema:
    """One task's schema (see the module docstring for each key). Built by ``load_schema``."""

    name: str
    language: str
    type: str
    prompt: str
    description: str = ""
    id_field: str | None = None
    question_field: str | None = None
    context_field: str | None = None
    choices_field: str | None = None
    choice_fields: tuple[str, ...] | None = None
    choices: tuple[str, ...] | None = None
    answer_field: str | None = None
    answer_type: str = "index"
    index_base: int = 0
    letters: str = "ABCDEFGHIJ"
    labels_field: str | None = None
    answer_extraction: str = "none"
    source_field: str | None = None
    target_field: str | None = None
    extra_fields: dict[str, str] = field(default_factory=dict)
    value_maps: dict[str, dict[str, str]] = field(default_factory=dict)
    target_delimiter: str = " "
    fewshot_delimiter: str = "\n\n"
    score_choices: str = "text"
    num_fewshot: int = 0
    max_new_tokens: int = 64
    stop: tuple[str, ...] = ("\n",)
    averages: tuple[str, ...] = ()
    primary_metric: str | None = None
    path: str | None = None  # the YAML it came from (for messages; not a schema key)

    @property
    def metrics(self) -> tuple[str, ...]:
        """The metrics lm-eval reports for this task (the task YAML's metric list)."""
        return METRICS[self.type]

    @property
    def primary(self) -> str:
        """The metric averages use."""
        return self.primary_metric or DEFAULT_PRIMARY[self.type]

    def prompt_names(self) -> set[str]:
        """The names the prompt template may use for this schema."""
        names = set(self.extra_fields)
        if self.question_field:
            names.add("question")
        if self.context_field:
            names.add("context")
        if self.type == "multiple_choice":
            names |= {"choices", "choices_lettered"}
        if self.type == "translation":
            names.add("source")
        return names


_SCHEMA_KEYS = {f.name for f in dataclasses.fields(TaskSchema)} - {"path"}
_FORMATTER = string.Formatter()


def _err(msg: str, path, key: str | None = None) -> ConfigError:
    return ConfigError(f"{path}: " + (f"key {key!r}: " if key else "") + msg)


def _template_names(template: str, where, key: str = "prompt") -> set[str]:
    """The root names a str.format template refers to (``choices`` for ``{choices[0]}``)."""
    try:
        parsed = list(_FORMATTER.parse(template))
    except ValueError as e:
        raise _err(f"not a valid str.format template: {e}", where, key) from None
    names = set()
    for _, name, _, _ in parsed:
        if name is None:
            continue
        root = re.split(r"[.\[]", name, maxsplit=1)[0]
        if not root or root.isdigit():
            raise _err("positional fields ({} or {0}) are not allowed; name the field", where, key)
        if "." in name.split("[", 1)[0]:
            # attribute access would reach into Python objects, never what a data template means
            raise _err(f"field {name!r}: attribute access is not allowed (use [index])", where, key)
        names.add(root)
    return names


def load_schema(name_or_path: str | Path, schema_dir: str | Path | None = None,
                overrides: dict | None = None) -> TaskSchema:
    """A task's schema, validated: ``name_or_path`` is a task name looked up as
    ``<schema_dir>/<name>.yaml`` (default ``conf/eval_tasks``) or a YAML file. ``overrides`` are keys
    merged over the file's (a quick remap without writing a file). Raises ConfigError naming the
    file and key."""
    p = Path(name_or_path)
    if p.suffix not in (".yaml", ".yml"):
        p = Path(schema_dir or SCHEMA_DIR) / f"{name_or_path}.yaml"
    if not p.is_file():
        known = ", ".join(available_tasks(schema_dir)) if Path(schema_dir or SCHEMA_DIR).is_dir() else "none"
        raise ConfigError(f"no schema for task {str(name_or_path)!r} ({p} does not exist); known tasks: {known}")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise _err("a schema is a mapping of keys", p)
    raw = {**raw, **(overrides or {})}
    return schema_from_dict(raw, where=p)


def schema_from_dict(raw: dict, where: str | Path = "<schema>") -> TaskSchema:
    """Validates a schema mapping (the parsed YAML) and returns it as a TaskSchema."""
    unknown = sorted(set(raw) - _SCHEMA_KEYS)
    if unknown:
        raise _err(f"unknown keys {unknown}; known keys: {sorted(_SCHEMA_KEYS)}", where)
    for key in ("name", "language", "type", "prompt"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise _err("required, a non-empty string", where, key)
    t = raw["type"]
    if t not in TASK_TYPES:
        raise _err(f"{t!r} is not one of {', '.join(TASK_TYPES)}", where, "type")

    def opt_str(key):
        v = raw.get(key)
        if v is not None and (not isinstance(v, str) or not v):
            raise _err("must be a non-empty string", where, key)
        return v

    def str_list(key, min_len=1):
        v = raw.get(key)
        if v is None:
            return None
        if not isinstance(v, list) or len(v) < min_len or not all(isinstance(x, str) and x for x in v):
            raise _err(f"must be a list of at least {min_len} non-empty strings", where, key)
        return tuple(v)

    def str_map(key):
        v = raw.get(key) or {}
        if not isinstance(v, dict) or not all(isinstance(k, str) and isinstance(x, str) for k, x in v.items()):
            raise _err("must map names to strings", where, key)
        return dict(v)

    def integer(key, default, minimum=0):
        v = raw.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise _err(f"must be an integer >= {minimum}", where, key)
        return v

    kw: dict[str, Any] = {k: raw[k] for k in ("name", "language", "type", "prompt")}
    for key in ("id_field", "question_field", "context_field", "choices_field", "answer_field", "labels_field",
                "source_field", "target_field", "primary_metric"):
        kw[key] = opt_str(key)
    kw["description"] = raw.get("description") or ""
    kw["choice_fields"] = str_list("choice_fields", 2)
    kw["choices"] = str_list("choices", 2)
    kw["extra_fields"] = str_map("extra_fields")
    vm = raw.get("value_maps") or {}
    if not isinstance(vm, dict) or not all(isinstance(m, dict) for m in vm.values()):
        raise _err("must map field names to {value: text} mappings", where, "value_maps")
    kw["value_maps"] = {k: {str(a): str(b) for a, b in m.items()} for k, m in vm.items()}
    kw["answer_type"] = raw.get("answer_type", "index")
    if kw["answer_type"] not in ANSWER_TYPES:
        raise _err(f"{kw['answer_type']!r} is not one of {', '.join(ANSWER_TYPES)}", where, "answer_type")
    kw["answer_extraction"] = raw.get("answer_extraction", "none")
    if kw["answer_extraction"] not in EXTRACTIONS:
        raise _err(f"{kw['answer_extraction']!r} is not one of {', '.join(EXTRACTIONS)}", where,
                   "answer_extraction")
    kw["index_base"] = integer("index_base", 0)
    kw["num_fewshot"] = integer("num_fewshot", 0)
    kw["max_new_tokens"] = integer("max_new_tokens", 64, minimum=1)
    letters = raw.get("letters", "ABCDEFGHIJ")
    if not isinstance(letters, str) or len(set(letters)) != len(letters) or len(letters) < 2:
        raise _err("must be a string of at least two distinct characters", where, "letters")
    kw["letters"] = letters
    for key in ("target_delimiter", "fewshot_delimiter"):
        v = raw.get(key, TaskSchema.__dataclass_fields__[key].default)
        if not isinstance(v, str):
            raise _err("must be a string", where, key)
        kw[key] = v
    stop = raw.get("stop", ["\n"])
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise _err("must be a list of non-empty strings", where, "stop")
    kw["stop"] = tuple(stop)
    kw["score_choices"] = raw.get("score_choices", "text")
    if kw["score_choices"] not in ("text", "letter"):
        raise _err("must be 'text' or 'letter'", where, "score_choices")
    averages = str_list("averages") or ()
    bad = sorted(set(averages) - set(AVERAGES))
    if bad:
        raise _err(f"unknown averages {bad}; known: {sorted(AVERAGES)}", where, "averages")
    kw["averages"] = averages
    if kw["primary_metric"] and kw["primary_metric"] not in METRICS[t]:
        raise _err(f"{kw['primary_metric']!r} is not a metric of a {t} task ({', '.join(METRICS[t])})",
                   where, "primary_metric")

    # what each type needs, and what it must not have (a key that would be silently ignored)
    mc_keys = ("choices_field", "choice_fields", "choices", "labels_field")
    if t == "multiple_choice":
        given = [k for k in ("choices_field", "choice_fields", "choices") if kw[k]]
        if len(given) != 1:
            raise _err("a multiple_choice task needs exactly one of choices_field, choice_fields, choices "
                       f"(got {given or 'none'})", where)
        for key in ("question_field", "answer_field"):
            if not kw[key]:
                raise _err("required for a multiple_choice task", where, key)
        if kw["labels_field"] and kw["answer_type"] != "letter":
            raise _err("only meaningful with answer_type: letter", where, "labels_field")
        if kw["answer_extraction"] != "none":
            raise _err("only generative tasks extract answers", where, "answer_extraction")
    else:
        for key in mc_keys:
            if kw[key]:
                raise _err(f"only multiple_choice tasks have choices (this is {t})", where, key)
        if "answer_type" in raw:
            raise _err("only multiple_choice tasks have an answer_type", where, "answer_type")
        if kw["score_choices"] != "text":
            raise _err("only multiple_choice tasks score choices", where, "score_choices")
    if t in ("generative_exact", "span_f1"):
        for key in ("question_field", "answer_field"):
            if not kw[key]:
                raise _err(f"required for a {t} task", where, key)
    if t == "translation":
        for key in ("source_field", "target_field"):
            if not kw[key]:
                raise _err("required for a translation task", where, key)
    elif kw["source_field"] or kw["target_field"]:
        raise _err("source_field/target_field belong to translation tasks", where)
    if t == "span_f1" and kw["answer_extraction"] != "none":
        raise _err("span_f1 compares spans; answer extraction is for generative_exact", where, "answer_extraction")
    clash = set(kw["extra_fields"]) & {"question", "context", "choices", "choices_lettered", "source"}
    if clash:
        raise _err(f"names {sorted(clash)} are taken by the mapped fields", where, "extra_fields")
    for key in kw["extra_fields"]:
        if not key.isidentifier():
            raise _err(f"name {key!r} must be an identifier (it is used as {{{key}}})", where, "extra_fields")
    schema = TaskSchema(**kw, path=str(where))
    bad_maps = sorted(set(schema.value_maps) - schema.prompt_names())
    if bad_maps:
        raise _err(f"maps fields {bad_maps} that the schema does not expose", where, "value_maps")
    unknown_names = sorted(_template_names(schema.prompt, where) - schema.prompt_names())
    if unknown_names:
        raise _err(f"uses {unknown_names}; this task exposes {sorted(schema.prompt_names())}", where, "prompt")
    return schema


def available_tasks(schema_dir: str | Path | None = None) -> list[str]:
    """Names of the task schemas in ``schema_dir`` (default ``conf/eval_tasks``), sorted."""
    return sorted(p.stem for p in Path(schema_dir or SCHEMA_DIR).glob("*.yaml"))


def resolve_task_names(names: list[str], schema_dir: str | Path | None = None) -> list[str]:
    """Task names with groups expanded: ``all`` (every schema), or an average's name (the tasks whose
    schema lists it; for a paper average, its fixed members). Order kept, duplicates dropped."""
    out: list[str] = []
    for name in names:
        if name == "all":
            expanded = available_tasks(schema_dir)
        elif name in PAPER_AVERAGES:
            expanded = list(PAPER_AVERAGES[name])
        elif name in AVERAGES:
            expanded = [t for t in available_tasks(schema_dir) if name in load_schema(t, schema_dir).averages]
        else:
            expanded = [name]
        out += [t for t in expanded if t not in out]
    return out


# --------------------------------------------------------------------------- rows


@dataclass(frozen=True)
class Row:
    """One validated task row.

    ``fields`` are the prompt's names (question, context, choices, choices_lettered, source and the
    extra fields, value maps applied). ``gold`` is the choice index (multiple choice) or the tuple of
    acceptable answers (generative; after extraction for gsm8k; the reference for translation).
    ``target_text`` is what a few-shot example shows after the prompt: the gold choice (or its
    letter), the raw answer (a GSM8K solution keeps its working), the first span, the reference.
    """

    id: str
    line: int
    fields: dict
    gold: int | tuple[str, ...]
    target_text: str
    choices: tuple[str, ...] = ()
    letters: tuple[str, ...] = ()  # the choices' letters (the row's own labels when labels_field is set)
    raw: dict = field(default_factory=dict, repr=False)


_MISSING = object()


def _lookup(obj: dict, path: str):
    """``obj[path]`` if that key exists, else the dotted path walked through nested objects."""
    if path in obj:
        return obj[path]
    cur: Any = obj
    for part in path.split("."):
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        elif isinstance(cur, list) and part.isdigit() and int(part) < len(cur):
            cur = cur[int(part)]
        else:
            return _MISSING
    return cur


def _type_name(v) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
            float: "a number", type(None): "null"}.get(type(v), type(v).__name__)


class _RowReader:
    """Reads one row's mapped fields, raising DataError that names file, line and column."""

    def __init__(self, obj: dict, path: str, line: int):
        self.obj, self.path, self.line = obj, path, line

    def error(self, msg: str, column: str | None) -> DataError:
        return DataError(msg, path=self.path, line=self.line, field=column)

    def get(self, column: str):
        v = _lookup(self.obj, column)
        if v is _MISSING:
            raise self.error("missing field", column)
        if v is None:
            raise self.error("field is null", column)
        return v

    def text(self, column: str, allow_empty: bool = False) -> str:
        v = self.get(column)
        if not isinstance(v, str):
            raise self.error(f"expected a string, got {_type_name(v)}", column)
        if not allow_empty and not v.strip():
            raise self.error("empty string", column)
        return v

    def text_list(self, column: str, min_len: int = 1) -> list[str]:
        v = self.get(column)
        if not isinstance(v, list):
            raise self.error(f"expected a list of strings, got {_type_name(v)}", column)
        if len(v) < min_len:
            raise self.error(f"expected at least {min_len} items, got {len(v)}", column)
        for i, x in enumerate(v):
            if not isinstance(x, str):
                raise self.error(f"item {i}: expected a string, got {_type_name(x)}", column)
        return v

    def answers(self, column: str) -> list[str]:
        """A generative gold: a string or number, or a non-empty list of them, as strings."""
        v = self.get(column)
        items = v if isinstance(v, list) else [v]
        if not items:
            raise self.error("empty list of answers", column)
        out = []
        for x in items:
            if isinstance(x, bool) or not isinstance(x, (str, int, float)):
                raise self.error(f"expected a string or number (or a list of them), got {_type_name(x)}", column)
            s = x if isinstance(x, str) else (str(int(x)) if isinstance(x, float) and x.is_integer() else str(x))
            if not s.strip():
                raise self.error("empty answer", column)
            out.append(s)
        return out


def _letters_span(letters: str) -> str:
    return f"{letters[0]}-{letters[-1]}" if len(letters) > 2 else ", ".join(letters)


def _mc_gold(schema: TaskSchema, r: _RowReader, choices: list[str]) -> tuple[int, list[str] | None]:
    """The gold choice index, and the row's letters when it labels its choices itself."""
    col = schema.answer_field
    v = r.get(col)
    n = len(choices)
    if schema.answer_type == "index":
        if isinstance(v, str) and v.strip().isdigit():
            v = int(v.strip())  # HellaSwag and several Hebrew releases store labels as digit strings
        if isinstance(v, bool) or not isinstance(v, int):
            raise r.error(f"expected an integer index, got {_type_name(v)} {v!r}", col)
        i = v - schema.index_base
        if not 0 <= i < n:
            raise r.error(f"answer index {v} out of range: {n} choices, indices {schema.index_base}-"
                          f"{schema.index_base + n - 1}", col)
        return i, None
    if schema.answer_type == "letter":
        if not isinstance(v, str):
            raise r.error(f"expected a letter, got {_type_name(v)} {v!r}", col)
        if schema.labels_field:
            labels = r.text_list(schema.labels_field)
            if len(labels) != n:
                raise r.error(f"{len(labels)} labels for {n} choices", schema.labels_field)
            labels = [x.strip() for x in labels]
            if v.strip() not in labels:
                raise r.error(f"letter {v!r} not among the choices' labels {labels}", col)
            return labels.index(v.strip()), labels
        allowed = schema.letters[:n]
        # case-insensitive: "b" answers choice B (str.upper leaves Hebrew letters as they are)
        hits = [i for i, a in enumerate(allowed) if a.upper() == v.strip().upper()]
        if not hits:
            raise r.error(f"letter {v!r} not among choices {_letters_span(allowed)}", col)
        return hits[0], None
    # text
    if not isinstance(v, str):
        raise r.error(f"expected the text of a choice, got {_type_name(v)}", col)
    stripped = [c.strip() for c in choices]
    if v.strip() not in stripped:
        raise r.error(f"answer {v!r} is not one of the choices", col)
    return stripped.index(v.strip()), None


def _apply_map(schema: TaskSchema, r: _RowReader, name: str, column: str, value: str) -> str:
    m = schema.value_maps.get(name)
    if m is None:
        return value
    if value not in m:
        raise r.error(f"value {value!r} is not in value_maps.{name} ({', '.join(map(repr, m))})", column)
    return m[value]


def format_prompt(schema: TaskSchema, fields: dict) -> str:
    """The schema's prompt filled with a row's fields."""
    return schema.prompt.format(**fields)


def parse_row(schema: TaskSchema, obj: dict, path: str, line: int) -> Row:
    """One JSON object checked against the schema and mapped onto a Row."""
    r = _RowReader(obj, path, line)
    fields: dict[str, Any] = {}
    for name, col in (("question", schema.question_field), ("context", schema.context_field)):
        if col:
            fields[name] = _apply_map(schema, r, name, col, r.text(col))
    for name, col in schema.extra_fields.items():
        v = r.get(col)
        if isinstance(v, (dict, list)) or isinstance(v, bool):
            raise r.error(f"expected a string or number, got {_type_name(v)}", col)
        fields[name] = _apply_map(schema, r, name, col, v if isinstance(v, str) else str(v))
    rid = Path(path).name + f":{line}"
    if schema.id_field:
        v = r.get(schema.id_field)
        if isinstance(v, bool) or not isinstance(v, (str, int)):
            raise r.error(f"expected a string or integer id, got {_type_name(v)}", schema.id_field)
        rid = str(v)

    choices: list[str] = []
    letters: list[str] = []
    if schema.type == "multiple_choice":
        if schema.choices_field:
            choices = r.text_list(schema.choices_field, min_len=2)
        elif schema.choice_fields:
            choices = [r.text(c, allow_empty=True) for c in schema.choice_fields]
        else:
            choices = list(schema.choices)
        for i, c in enumerate(choices):
            if not c.strip():
                raise r.error(f"choice {i} is empty", schema.choices_field or
                              (schema.choice_fields[i] if schema.choice_fields else "choices"))
        if len(choices) > len(schema.letters) and not schema.labels_field:
            raise r.error(f"{len(choices)} choices but only {len(schema.letters)} letters (schema key 'letters')",
                          schema.choices_field)
        gold, labels = _mc_gold(schema, r, choices)
        letters = labels or list(schema.letters[:len(choices)])
        fields["choices"] = choices
        fields["choices_lettered"] = "\n".join(f"{a}. {c}" for a, c in zip(letters, choices))
        target = letters[gold] if schema.score_choices == "letter" else choices[gold]
        row_gold: int | tuple[str, ...] = gold
    elif schema.type == "translation":
        fields["source"] = r.text(schema.source_field)
        target = r.text(schema.target_field)
        row_gold = (target,)
    else:
        answers = r.answers(schema.answer_field)
        target = answers[0]
        if schema.answer_extraction == "gsm8k":
            from hebatron_nemo.eval.scorers import extract_gsm8k

            extracted = []
            for a in answers:
                x = extract_gsm8k(a)
                if x is None:
                    raise r.error(f"no number in the answer {a!r} (answer_extraction: gsm8k)", schema.answer_field)
                extracted.append(x)
            answers = extracted
        row_gold = tuple(answers)

    try:
        format_prompt(schema, fields)
    except (IndexError, KeyError, ValueError, TypeError) as e:
        raise r.error(f"the prompt template cannot be filled from this row: {type(e).__name__}: {e}",
                      None) from None
    return Row(id=rid, line=line, fields=fields, gold=row_gold, target_text=target,
               choices=tuple(choices), letters=tuple(letters) if choices else (), raw=obj)


def find_split(task_dir: str | Path, split: str) -> Path | None:
    """``<task_dir>/<split>.jsonl`` if it exists."""
    p = Path(task_dir) / f"{split}.jsonl"
    return p if p.is_file() else None


def load_task(task_dir_or_file: str | Path, schema: TaskSchema, split: str = "test") -> list[Row]:
    """Every row of a task file, validated against ``schema``.

    ``task_dir_or_file`` is a JSONL file or a task folder (then ``<folder>/<split>.jsonl``). Blank
    lines are skipped; anything else that is not a JSON object with the mapped fields of the right
    types raises DataError naming the file, the 1-based line and the field. An empty file and
    duplicate ids are errors too.
    """
    p = Path(task_dir_or_file)
    if p.is_dir():
        p = p / f"{split}.jsonl"
    if not p.is_file():
        raise DataError("task file does not exist", path=str(p))
    rows: list[Row] = []
    seen: dict[str, int] = {}
    with open(p, "rb") as f:
        for line_no, raw_line in enumerate(f, start=1):
            try:
                text = raw_line.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"not valid UTF-8 ({e.reason} at byte {e.start})", path=str(p), line=line_no) from None
            if line_no == 1:
                text = text.lstrip("\ufeff")
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                raise DataError(f"malformed JSON: {e.msg} (column {e.colno})", path=str(p), line=line_no) from None
            if not isinstance(obj, dict):
                raise DataError(f"expected a JSON object, got {_type_name(obj)}", path=str(p), line=line_no)
            row = parse_row(schema, obj, str(p), line_no)
            if row.id in seen:
                raise DataError(f"duplicate id {row.id!r} (first on line {seen[row.id]})", path=str(p),
                                line=line_no, field=schema.id_field)
            seen[row.id] = line_no
            rows.append(row)
    if not rows:
        raise DataError("empty task file (no non-blank lines)", path=str(p))
    return rows
