"""Shared test helpers: polling with a deadline (never fixed sleeps), tool discovery."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from testbed.control_plane import ControlPlane
from testbed.polling import wait_for

REPO = Path(__file__).resolve().parent.parent
__all__ = ["API_KIND", "REPO", "find_tool", "report_line", "wait_for"]
# The API under the end-to-end and Helm tests: the real control plane of hack/cluster.sh, or the emulator.
API_KIND = os.environ.get("LVO_API", "real")


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


@pytest.fixture(scope="session")
def control_plane() -> ControlPlane:
    """The real control plane (hack/cluster.sh up: built once per machine), left running for the next run."""
    if API_KIND != "real":
        pytest.skip(f"LVO_API={API_KIND}: this test needs the real control plane")
    return ControlPlane().up()


def report_line(config: pytest.Config, text: str) -> None:
    """A measured number for the run's log even under `-q` and output capture (the terminal reporter's own
    line), e.g. the real guest's boot-to-SSH time in every CI log."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None:
        print(text)
        return
    with capture.global_and_fixture_disabled():  # a test's output is captured, the terminal's is not
        reporter.write_line(text)
