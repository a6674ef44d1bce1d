"""The backend interface: recipes and launchers call `get_backend(cfg)` and never test the backend."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from hebatron_nemo.backends import BACKENDS, LocalBackend, MegatronBridgeBackend, get_backend
from hebatron_nemo.config import BACKENDS as SCHEMA_BACKENDS
from hebatron_nemo.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
BACKEND_NAMES = set(SCHEMA_BACKENDS)


def _mentions_backend(node: ast.AST) -> bool:
    """`backend`, `x.backend`, `x.get("backend")`, or a backend's name as a string constant."""
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name) and sub.id == "backend":
            return True
        if isinstance(sub, ast.Attribute) and sub.attr == "backend":
            return True
        if isinstance(sub, ast.Constant) and isinstance(sub.value, str) and (
                sub.value == "backend" or sub.value in BACKEND_NAMES - {"local"}):
            return True
    return False


def backend_branches(source: str, filename: str) -> list[str]:
    """Every comparison, `if`/`while`/ternary test, `match` subject or boolean operand that involves the
    backend, as 'file:line: code'."""
    tree = ast.parse(source, filename)
    found = []
    for node in ast.walk(tree):
        tests = []
        if isinstance(node, ast.Compare):
            tests = [node]
        elif isinstance(node, (ast.If, ast.While, ast.IfExp, ast.Assert)):
            tests = [node.test]
        elif isinstance(node, ast.Match):
            tests = [node.subject]
        elif isinstance(node, ast.BoolOp):
            tests = node.values
        for t in tests:
            line = f"{filename}:{t.lineno}: {ast.get_source_segment(source, t)}"
            if _mentions_backend(t) and line not in found:
                found.append(line)
    return found


def test_no_recipe_or_launcher_branches_on_the_backend():
    found = []
    for folder in ("recipes", "launchers"):
        for path in sorted((REPO / folder).rglob("*.py")):
            found += backend_branches(path.read_text(), str(path.relative_to(REPO)))
    assert not found, "branch on the backend outside hebatron_nemo/backends (call get_backend(cfg)):\n" + "\n".join(found)


@pytest.mark.parametrize("code", [
    'if cfg.backend == "megatron_bridge":\n    pass\n',
    'x = a if run.backend != "local" else b\n',
    'ok = run is not None and run.backend in ("megatron_bridge",)\n',
    'if cfg.get("backend", "local") == "megatron_bridge":\n    pass\n',
    'match cfg.backend:\n    case "local":\n        pass\n',
])
def test_the_walk_finds_each_kind_of_branch(code):
    assert backend_branches(code, "x.py"), code


def test_the_walk_leaves_plain_calls_alone():
    assert not backend_branches("state = get_backend(cfg).cpt(cfg)\nif state.get('preempted'):\n    exit(3)\n", "x.py")


def test_get_backend_returns_each_implementation_and_refuses_unknown_names():
    class Cfg:
        backend = "megatron_bridge"

    assert set(BACKENDS) == BACKEND_NAMES
    assert isinstance(get_backend(Cfg()), MegatronBridgeBackend)
    assert isinstance(get_backend("local"), LocalBackend)
    Cfg.backend = "nemo2"
    with pytest.raises(ConfigError, match=r"backend='nemo2' is not one of \['local', 'megatron_bridge'\]"):
        get_backend(Cfg())
    for impl in BACKENDS.values():  # every method a recipe or launcher calls
        assert all(callable(getattr(impl, m)) for m in ("cpt", "sft", "export", "slurm_job"))
