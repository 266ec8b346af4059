"""The package's import graph, read from the source with ast: no cycle, and no test or emulator code.

Every import counts: at module level, inside functions, and under ``if TYPE_CHECKING:`` (a cycle hidden
there is still a cycle in the design, and one refactoring away from an ImportError at run time).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = "libvirt_operator"
ROOT = Path(__file__).resolve().parents[2] / "operator"
# Never imported by the operator: the API emulator is a product of its own, the test bed is the tests'.
FORBIDDEN = ("kube_emulator", "tests", "testbed", "benchmarks")


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _imports(module: str, path: Path) -> Iterator[tuple[str, int]]:
    """(imported module, line) for every import statement anywhere in the file."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[:len(base) - node.level + (1 if is_package else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield target, node.lineno
            for alias in node.names:  # `from pkg import submodule`
                yield f"{target}.{alias.name}", node.lineno


def _graph() -> dict[str, dict[str, int]]:
    modules = _modules()
    graph: dict[str, dict[str, int]] = {name: {} for name in modules}
    for name, path in modules.items():
        for target, line in _imports(name, path):
            if target in modules and target != name:
                graph[name].setdefault(target, line)
    return graph


def _cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in graph[node]:
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_the_walk_sees_imports_inside_functions_and_type_checking_blocks(tmp_path: Path) -> None:
    source = tmp_path / "mod.py"
    source.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from a.b import C\n"
                      "def f():\n    import d.e\n    from . import g\n")
    found = {target for target, _ in _imports("pkg.mod", source)}
    assert {"a.b", "d.e", "pkg.g"} <= found


def test_a_cycle_is_found() -> None:
    assert _cycles({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}, "d": {"a": 1}}) == [["a", "b", "c"]]


def test_the_package_import_graph_has_no_cycle() -> None:
    graph = _graph()
    assert len(graph) > 20 and graph[f"{PACKAGE}.runtime"]  # the walk found the package
    problems = []
    for component in _cycles(graph):
        edges = [f"{a} -> {b} (line {graph[a][b]})" for a in component for b in component if b in graph[a]]
        problems.append("cycle: " + "; ".join(edges))
    assert problems == []


@pytest.mark.parametrize("forbidden", FORBIDDEN)
def test_the_operator_never_imports_test_or_emulator_code(forbidden: str) -> None:
    offenders = [f"{path.relative_to(ROOT)}:{line}: {target}"
                 for name, path in _modules().items() for target, line in _imports(name, path)
                 if target == forbidden or target.startswith(forbidden + ".")]
    assert offenders == []
