"""The arrows of ARCHITECTURE.md, checked: which rooms may import which, and the size of a room."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ppokit"


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return {n for n in names if n == "ppokit" or n.startswith("ppokit.")}


def _modules(room: str) -> list[Path]:
    return sorted((PACKAGE / room).rglob("*.py"))


@pytest.mark.parametrize("path", _modules("core"), ids=lambda p: p.name)
def test_core_imports_only_core_and_errors_and_never_mentions_the_fast_path(path):
    assert {n for n in _imports(path) if not n.startswith(("ppokit.core", "ppokit.errors"))} == set()
    text = path.read_text(encoding="utf-8")
    # NumPy itself is fine (core uses it for CPU arithmetic); the fast path's names are not.
    assert not re.search(r"(?i:fast.path)|FlatAdam|NumpyPolicy|NumpyMinibatchStep|numpy_update|numpy_policy|control\.fast",
                         text), path


@pytest.mark.parametrize("path", _modules("io"), ids=lambda p: p.name)
def test_io_knows_no_front_end(path):
    assert {n for n in _imports(path) if n.startswith(("ppokit.control", "ppokit.rlhf"))} == set()


def test_only_the_control_front_end_reaches_the_fast_path():
    for path in PACKAGE.rglob("*.py"):
        if "control" not in path.parts:
            assert not any(n.startswith("ppokit.control.fast") for n in _imports(path)), path


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_outgrows_a_room(path):
    assert len(path.read_text(encoding="utf-8").splitlines()) <= 400
