"""Shared test helpers: polling with a deadline (never fixed sleeps), tool discovery."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

REPO = Path(__file__).resolve().parent.parent
T = TypeVar("T")


def wait_for(predicate: Callable[[], T], *, timeout: float = 30.0, interval: float = 0.1,
             what: str = "condition") -> T:
    """Poll ``predicate`` until it returns a truthy value; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # keep polling through transient errors, report the last one
            last_error = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}"
                                 + (f" (last error: {last_error!r})" if last_error else ""))
        time.sleep(interval)


def find_tool(name: str) -> str | None:
    """The project's pinned binaries (.venv/bin, installed by hack/setup.sh) before anything on PATH."""
    local = REPO / ".venv" / "bin" / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found and name == "kubectl":
        out = subprocess.run([found, "version", "--client"], capture_output=True, text=True, timeout=20)
        if "dispatcher" in out.stdout:  # a cloud SDK wrapper, not a real kubectl
            return None
    return found


@pytest.fixture(scope="session")
def kubectl_bin() -> str:
    path = find_tool("kubectl")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("kubectl not found: hack/setup.sh installs it into .venv/bin")
        pytest.skip("kubectl not found (run hack/setup.sh)")
    return path
