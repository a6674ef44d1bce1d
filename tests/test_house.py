"""One place per thing: the package is imported as installed (or from PYTHONPATH), never by editing
sys.path; the I/O and hashing helpers live in hebatron_nemo.utils only; a literal constant is defined in
one module of the library, and the others import it."""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SKIP_DIRS = {"work", ".git", "venv", ".venv", "node_modules", "__pycache__"}


def _python_files() -> list[Path]:
    """The repository's own .py files: everything under the root but work/, caches and virtual envs."""
    out = []
    for root, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not (Path(root) / d / "pyvenv.cfg").exists()]
        out += [Path(root) / f for f in files if f.endswith(".py")]
    return out


def test_no_module_edits_sys_path():
    # a call that grows sys.path, or an assignment to it or to a slice of it (sys.path[:0] = [...]),
    # also inside the source strings of child-process drivers
    edit = re.compile(r"sys\.path\.(insert|append|extend)\b|sys\.path(\[[^]]*\])?\s*(\+)?=(?!=)")
    offenders = [f"{p.relative_to(REPO)}:{i}" for p in _python_files()
                 for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
                 if edit.search(line) and p.name != Path(__file__).name]
    assert not offenders, ("these lines edit sys.path; import hebatron_nemo as installed (`make env`) or with "
                           f"PYTHONPATH=<checkout> instead: {offenders}")


def test_helpers_have_one_home():
    """read_json & co. are defined in hebatron_nemo.utils and nowhere else (no re-export shims)."""
    from hebatron_nemo.data import indexed

    helpers = {"read_json", "write_json_atomic", "write_jsonl_atomic", "stable_hash", "sha256_file", "files_sha256",
               "quiet_megatron", "hash64", "unit_hash"}
    assert not helpers & set(vars(indexed)), "data/indexed.py keeps only the indexed-dataset code"
    defined = {}
    for p in (REPO / "hebatron_nemo").rglob("*.py"):
        for node in ast.parse(p.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.FunctionDef) and node.name in helpers:
                defined.setdefault(node.name, []).append(p.relative_to(REPO).as_posix())
    assert all(len(v) == 1 and v[0].startswith("hebatron_nemo/utils/") for v in defined.values()), defined
    assert set(defined) == helpers


def test_each_literal_constant_is_defined_once():
    """Two library modules never both define the same UPPER_CASE name with the same literal value
    (e.g. a file name both the writer and a reader must agree on): one defines it, the other imports it."""
    seen: dict[tuple[str, str], list[str]] = {}
    for p in sorted((REPO / "hebatron_nemo").rglob("*.py")):
        for node in ast.parse(p.read_text(encoding="utf-8")).body:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
            value = getattr(node, "value", None)
            for t in targets:
                if isinstance(t, ast.Name) and t.id.lstrip("_").isupper() and value is not None:
                    try:
                        literal = repr(ast.literal_eval(value))
                    except ValueError:
                        continue
                    seen.setdefault((t.id, literal), []).append(p.relative_to(REPO).as_posix())
    twice = {f"{name} = {lit}": files for (name, lit), files in seen.items() if len(files) > 1}
    assert not twice, f"defined in more than one module (define once, import elsewhere): {twice}"
