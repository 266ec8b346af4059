"""docs/hardening.md names the test beside each row: every test it names must exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _defined_tests() -> set[str]:
    names: set[str] = set()
    for path in (ROOT / "tests").rglob("test_*.py"):
        names.update(re.findall(r"^\s*(?:async )?def (test_\w+)\(", path.read_text(), flags=re.M))
    return names


def test_every_test_named_in_the_hardening_report_exists() -> None:
    text = (ROOT / "docs" / "hardening.md").read_text()
    named = set(re.findall(r"\b(test_\w+)\b(?!\.py)", text))
    assert len(named) > 40  # the report names its tests; a parsing slip must not pass silently
    missing = sorted(named - _defined_tests())
    assert not missing, f"docs/hardening.md names tests that do not exist: {missing}"


def test_every_differential_test_named_in_the_emulator_doc_exists() -> None:
    """docs/emulator.md lists each known difference from kube-apiserver with the test that asserts it."""
    text = (ROOT / "docs" / "emulator.md").read_text()
    section = text.split("## Differences from kube-apiserver (found by tests/differential)", 1)[1]
    named = set(re.findall(r"(test_\w+)\.py::(test_\w+)", section))
    assert len(named) >= 3
    for module, test in sorted(named):
        source = (ROOT / "tests" / "differential" / f"{module}.py").read_text()
        assert re.search(rf"^def {test}\(", source, flags=re.M), f"docs/emulator.md names {module}.py::{test}"
