"""The arrows of the architecture map (docs/concepts/architecture.md), checked on the import graph:
no cycles (imports under ``TYPE_CHECKING`` and inside functions counted), no module importing the
package facade, which rooms may import which, and how many modules a folder holds."""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ppokit"
#: The most modules one folder holds (``__init__`` not counted): more, and it needs subfolders by job.
MAX_MODULES_PER_FOLDER = 12


def _name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def _modules() -> dict[str, Path]:
    return {_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


@cache
def _edges(module: str) -> frozenset[tuple[str, bool]]:
    """``(imported module, through the facade)`` for every ppokit import of ``module``, wherever it
    stands (top level, a function, ``if TYPE_CHECKING``). ``from P import x`` imports ``P.x`` when
    that is a module, else ``P``; ``through the facade`` marks ``import ppokit`` and ``from ppokit
    import <a name that is not a module>``."""
    modules = _modules()
    path = modules[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[tuple[str, bool]] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "ppokit" or alias.name.startswith("ppokit."):
                    found.add((alias.name, alias.name == "ppokit"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join([*base, node.module] if node.module else base)
            else:
                source = node.module or ""
            if source != "ppokit" and not source.startswith("ppokit."):
                continue
            for alias in node.names:
                if f"{source}.{alias.name}" in modules:
                    found.add((f"{source}.{alias.name}", False))
                else:
                    found.add((source, source == "ppokit"))
    return frozenset((target, facade) for target, facade in found if target != module)


def _imports(module: str) -> set[str]:
    return {target for target, _ in _edges(module) if target in _modules()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node of ``graph`` (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_the_import_graph_has_no_cycle():
    assert _cycles({module: _imports(module) for module in _modules()}) == []


def test_the_cycle_check_finds_cycles():
    """The check itself can fail: loops of two and of three modules are reported, a chain is not."""
    graph = {"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"e"}, "e": {"c", "f"}, "f": set()}
    assert sorted(_cycles(graph)) == [["a", "b"], ["c", "d", "e"]]


@pytest.mark.parametrize("module", sorted(m for m in _modules() if m != "ppokit"))
def test_no_module_imports_the_package_facade(module):
    """The facade is for users: a module that imports it pulls in every public name's module."""
    assert not [target for target, facade in _edges(module) if facade], module


@pytest.mark.parametrize("module", sorted(m for m in _modules() if m.startswith("ppokit.core")))
def test_core_imports_only_core_and_errors_and_never_mentions_the_fast_path(module):
    assert {n for n in _imports(module) if not n.startswith(("ppokit.core", "ppokit.errors"))} == set()
    text = _modules()[module].read_text(encoding="utf-8")
    # NumPy itself is fine (core uses it for CPU arithmetic); the fast path's names are not.
    assert not re.search(r"(?i:fast.path)|FlatAdam|NumpyPolicy|NumpyMinibatchStep|numpy_update|numpy_policy|control\.fast",
                         text), module


@pytest.mark.parametrize("module", sorted(m for m in _modules() if m.startswith("ppokit.io")))
def test_io_knows_no_front_end(module):
    assert {n for n in _imports(module) if n.startswith(("ppokit.control", "ppokit.rlhf", "ppokit.multiagent"))} == set()


@pytest.mark.parametrize("module", sorted(_modules()))
def test_arrows_point_down(module):
    """The command line and the tools over finished runs (hub, analysis) sit on top: no library module
    imports them; the two front ends do not import each other; the multi-agent front end, built on
    control's parts, is imported by the top alone and imports no RLHF; nothing but the control front
    end reaches its fast path."""
    imported = _imports(module)
    top = ("ppokit.cli", "ppokit.hub", "ppokit.analysis")
    if not module.startswith(top) and module not in ("ppokit", "ppokit.__main__"):
        assert not [n for n in imported if n.startswith(top)], module
    if module.startswith("ppokit.control"):
        assert not [n for n in imported if n.startswith("ppokit.rlhf")], module
    if module.startswith("ppokit.rlhf"):
        assert not [n for n in imported if n.startswith("ppokit.control")], module
    if not module.startswith(("ppokit.multiagent", *top)) and module not in ("ppokit", "ppokit.__main__"):
        assert not [n for n in imported if n.startswith("ppokit.multiagent")], module
    if module.startswith("ppokit.multiagent"):
        assert not [n for n in imported if n.startswith("ppokit.rlhf")], module
    if not module.startswith("ppokit.control"):
        assert not [n for n in imported if n.startswith("ppokit.control.fast")], module


@pytest.mark.parametrize("folder", sorted({p.parent for p in PACKAGE.rglob("*.py")}),
                         ids=lambda p: str(p.relative_to(PACKAGE.parent)))
def test_no_folder_outgrows_a_room(folder):
    modules = [p for p in folder.glob("*.py") if p.name != "__init__.py"]
    assert len(modules) <= MAX_MODULES_PER_FOLDER, f"{folder}: {len(modules)} modules; give them subfolders by job"
