"""`benchmarks/run` works in a virtualenv without the test extras: nothing under benchmarks/ imports the test
suite, pytest or its plugins (the shared harness is `testbed`, which needs neither)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO

FORBIDDEN = ("tests", "pytest", "_pytest", "hypothesis")  # and pytest_* (plugins): all of them test extras
SOURCES = sorted((REPO / "benchmarks").glob("*.py"))


def forbidden_imports(source: str, filename: str = "<source>") -> list[str]:
    """``module (line N)`` for each import of a forbidden top-level package, at any depth of the file
    (imports inside functions or ``if TYPE_CHECKING`` blocks count too: they run, or mislead mypy)."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += [f"{name} (line {node.lineno})" for name in names if _forbidden(name.split(".")[0])]
    return found


def _forbidden(package: str) -> bool:
    return package in FORBIDDEN or package.startswith("pytest_")


def test_the_benchmarks_are_found() -> None:
    assert {"suite.py", "common.py", "apis.py"} <= {path.name for path in SOURCES}


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_a_benchmark_module_imports_neither_the_tests_nor_pytest(path: Path) -> None:
    assert forbidden_imports(path.read_text(), str(path)) == []


@pytest.mark.parametrize("source", [
    "import pytest", "import tests.conftest", "from tests.e2e.harness import Host", "import os, _pytest.fixtures",
    "def f():\n    from pytest import fixture\n", "import pytest_timeout",
])
def test_the_check_catches_every_form_of_import(source: str) -> None:
    assert forbidden_imports(source) != []


@pytest.mark.parametrize("source", ["import testbed", "from testbed import Host", "from . import tests",
                                    "import testsuite_of_another_project"])
def test_the_check_leaves_other_imports_alone(source: str) -> None:
    assert forbidden_imports(source) == []
