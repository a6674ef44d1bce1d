"""What decontamination compares training text against: the data files of the configured evaluation
tasks, plus any explicit ``eval_files``.

A task is a schema in ``conf/eval_tasks/<task>.yaml`` and a folder ``<task_root>/<task>/`` holding
``test.jsonl`` and optionally ``dev.jsonl``, ``train.jsonl`` (few-shot examples) and
``validation.jsonl``: the layout ``recipes/evaluate.py`` reads. Every row of every one of those files
is read with the eval package's own loader (``hebatron_nemo.eval.tasks.load_task``), so
decontamination sees the same columns the evaluation does, and a malformed task row fails here with
its file, line and field. A row's text is every text the schema maps: context, question, the extra
fields, the translation source, the row's own choices and the target (the reference translation, the
generative answer with its working, the answer span), joined in that order, so an n-gram that spans
a question and its choices is caught as well as one inside a field.

``data.decontamination`` (and ``sft_data.decontamination``) choose the tasks with ``eval_tasks``:
schema names or groups (``all``, an average's name; ``hebatron_nemo.eval.tasks.resolve_task_names``),
``[]`` for none. A configured task without its ``test.jsonl`` under ``task_root`` is a ConfigError
raised before any work.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from omegaconf import OmegaConf

from hebatron_nemo.data.filters import Decontaminator, load_eval_texts, resolve_path
from hebatron_nemo.errors import ConfigError
from hebatron_nemo.eval.long_context import TASK as NEEDLE_TASK
from hebatron_nemo.eval.tasks import SPLITS, available_tasks, find_split, load_schema, load_task, resolve_task_names

__all__ = ["GENERATED_TASKS", "TASK_SPLITS", "TaskFile", "build_decontaminator", "check_inputs",
           "eval_file_identity", "row_text", "task_files", "task_names", "task_texts"]

# The splits read per task: the evaluator's (scored test, few-shot dev/train) and a validation file
# when a release ships one: a model could memorize any of them.
TASK_SPLITS = (*SPLITS, "validation")


# Tasks built from this registry's own prepared held-out split after prepare (the long-context needle
# task): they cannot exist when prepare runs, and their documents are held out already. `all` and the
# groups leave them out; naming one is an error.
GENERATED_TASKS = (NEEDLE_TASK,)


@dataclass(frozen=True)
class TaskFile:
    """One data file of an evaluation task: ``<task_root>/<task>/<split>.jsonl``."""

    task: str
    split: str
    path: Path

    @property
    def name(self) -> str:
        """The file relative to the task root (what identities record: the root may be mounted anywhere)."""
        return f"{self.task}/{self.split}.jsonl"


def _opt_out(where: str) -> str:
    return (f"opt out with {where}.eval_tasks=[<the tasks you have>] ([] for none) "
            f"or {where}.enabled=false")


def task_names(dc, where: str = "data.decontamination", schema_dir: str | Path | None = None) -> list[str]:
    """The task names ``dc.eval_tasks`` selects, groups expanded (generated tasks left out of groups)."""
    names = list(dc.eval_tasks or [])
    out: list[str] = []
    known = available_tasks(schema_dir)
    for name in names:
        name = str(name)
        if name in GENERATED_TASKS:
            raise ConfigError(f"{where}.eval_tasks: {name!r} is generated from this registry's prepared "
                              "held-out split after prepare (hebatron_nemo/eval/long_context.py); it cannot be "
                              "decontaminated against: remove it")
        expanded = [t for t in resolve_task_names([name], schema_dir) if t not in GENERATED_TASKS]
        for t in expanded:
            if t not in known:
                raise ConfigError(f"{where}.eval_tasks: no schema for task {t!r} (conf/eval_tasks/{t}.yaml); "
                                  f"known tasks: {', '.join(known)}; groups: all and the averages")
        out += [t for t in expanded if t not in out]
    return out


def task_files(dc, where: str = "data.decontamination", schema_dir: str | Path | None = None,
               strict: bool = True) -> list[TaskFile]:
    """Every data file of the selected tasks (``TASK_SPLITS`` that exist), in task then split order.

    ``strict``: a selected task without ``<task_root>/<task>/test.jsonl`` (or an unset ``task_root``)
    raises ConfigError naming each such task, the expected path and how to opt out; otherwise those
    tasks are skipped (fingerprints of a pipeline stage that has not run yet)."""
    if not dc.enabled:
        return []
    names = task_names(dc, where, schema_dir)
    if not names:
        return []
    if not dc.task_root:
        if not strict:
            return []
        raise ConfigError(f"{where}.task_root is not set, and {where}.eval_tasks selects {len(names)} evaluation "
                          f"task(s) ({', '.join(names)}): set it to the folder holding <task>/test.jsonl, or "
                          + _opt_out(where))
    root = Path(str(dc.task_root)).expanduser()
    out: list[TaskFile] = []
    missing = []
    for name in names:
        if find_split(root / name, "test") is None:
            missing.append(f"{name} (expected {root / name / 'test.jsonl'})")
            continue
        out += [TaskFile(name, split, p) for split in TASK_SPLITS if (p := find_split(root / name, split))]
    if missing and strict:
        raise ConfigError(f"{where}: {len(missing)} evaluation task(s) selected by {where}.eval_tasks have no test "
                          f"file under {where}.task_root={root}: {'; '.join(missing)}. Put the task files there, "
                          f"point {where}.task_root (or $HEBATRON_EVAL_TASKS for data=hebatron) at them, or "
                          + _opt_out(where))
    return out


def check_inputs(dc, raw_dir: str, where: str = "data.decontamination") -> None:
    """Raises ConfigError when decontamination is on and a selected task's test file or an explicit
    eval file is missing (cheap: nothing is read). Called where the registry is validated, before any work."""
    task_files(dc, where, strict=True)
    if not dc.enabled:
        return
    for i, spec in enumerate(dc.eval_files or []):
        if "path" not in spec:
            raise ConfigError(f"{where}.eval_files[{i}] needs 'path'")
        path = resolve_path(str(spec["path"]), raw_dir)
        if not Path(path.split("::")[0]).exists() and not any(c in path for c in "*?["):
            raise ConfigError(f"{where}.eval_files[{i}].path: {path} does not exist (relative paths are under the "
                              f"registry's raw_dir); remove the entry or set {where}.enabled=false")


def row_text(schema, row) -> str:
    """Everything a model could have memorized of one validated row (``hebatron_nemo.eval.tasks.Row``),
    one field per line: context, question, extra fields, source, the row's own choices, the target.
    A field with a value map is left out: its text is the schema's wording (COPA's "what was the
    cause?"), the same in many rows, and would split the n-grams running from a premise into its choices."""
    f = row.fields
    names = ["context", "question", *schema.extra_fields, "source"]
    parts = [f[k] for k in names if k in f and k not in schema.value_maps]
    if schema.type == "multiple_choice":
        # a fixed label set (sentiment, NLI) is the same words in every row: not the row's text
        if not schema.choices:
            parts += list(row.choices)
    else:
        parts.append(row.target_text)
    return "\n".join(str(p) for p in parts)


def task_texts(files: list[TaskFile], schema_dir: str | Path | None = None) -> Iterator[str]:
    """One text per row of each file (``row_text``), each file read and validated by ``load_task``."""
    schemas: dict = {}
    for tf in files:
        schema = schemas.get(tf.task) or schemas.setdefault(tf.task, load_schema(tf.task, schema_dir))
        for row in load_task(tf.path, schema):
            yield row_text(schema, row)


def eval_file_identity(spec: dict, raw_dir: str) -> dict:
    """An explicit eval file as identities record it: its configured path and each file's sha256."""
    from hebatron_nemo.data.readers import resolve_files
    from hebatron_nemo.utils.hashing import sha256_file

    files = []
    for f in resolve_files(resolve_path(str(spec["path"]), raw_dir), spec.get("format", "jsonl")):
        files += sorted(p for p in f.rglob("*") if p.is_file()) if f.is_dir() else [f]
    return {"eval_file": str(spec["path"]), "fields": list(spec["fields"]),
            "sha256": [sha256_file(p) for p in files]}


def build_decontaminator(dc, raw_dir: str, where: str = "data.decontamination",
                         schema_dir: str | Path | None = None) -> Decontaminator | None:
    """The decontaminator of a ``DecontamConfig``: the n-grams of every selected task file and of every
    explicit eval file; None when disabled or when nothing is selected. Its ``identity()`` lists each
    file with its sha256, so adding a task or changing a file re-prepares."""
    from hebatron_nemo.utils.hashing import sha256_file

    if not dc.enabled:
        return None
    tfiles = task_files(dc, where, schema_dir, strict=True)
    specs = [OmegaConf.to_container(f, resolve=True) if not isinstance(f, dict) else dict(f)
             for f in (dc.eval_files or [])]
    for i, spec in enumerate(specs):
        for key in ("path", "fields"):
            if key not in spec:
                raise ConfigError(f"{where}.eval_files[{i}] needs {key!r}")
    if not tfiles and not specs:
        return None
    sources = [{"task": tf.task, "file": tf.name, "sha256": sha256_file(tf.path)} for tf in tfiles]
    sources += [eval_file_identity(spec, raw_dir) for spec in specs]

    def texts() -> Iterator[str]:
        yield from task_texts(tfiles, schema_dir)
        yield from load_eval_texts(specs, raw_dir)

    return Decontaminator(texts(), int(dc.ngram), int(dc.min_overlap), sources=sources)
