"""Fixtures of the end-to-end tests: real libvirtd + QEMU guests, the API emulator process, kubectl."""

from __future__ import annotations

import concurrent.futures
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed.hosts import remove_owned, remove_owned_now
from tests.conftest import API_KIND
from tests.e2e.harness import Api, Cluster, EmulatorApi, Host, OperatorProcess, RealApi, libvirtd_answers

# Every operator a test session starts gets a node name with this prefix, so that clean-up can find
# (and only find) the domains this session created.
NODE_PREFIX = f"e2e{uuid.uuid4().hex[:6]}"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/e2e" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def host() -> Iterator[Host]:
    if not libvirtd_answers():
        if os.environ.get("CI"):
            pytest.fail("libvirtd does not answer at qemu:///system; hack/setup.sh starts it")
        pytest.skip("libvirtd does not answer at qemu:///system (run hack/setup.sh)")
    h = Host()
    if os.environ.get("CI") and not os.environ.get("LVO_TEST_LANES"):
        # A CI machine may hold domains of an earlier, interrupted test session: start clean. (hack/test.sh's
        # lanes run sessions side by side: it cleans once before them, as this would remove the others'.)
        remove_owned(h, "e2e")
    yield h
    _REAPER.shutdown(wait=True)
    h.reconnect()
    remove_owned(h, NODE_PREFIX)
    h.close()


# Removes a finished test's domains in the background: left running until the session ends, dozens of idle
# guests cost about 1 % of a core each, and a destroy waits 1.6 s for QEMU to exit. Its own connection (tests
# reconnect the shared one); whatever it misses (libvirtd down just then) the session's end removes.
_REAPER = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="lvo-e2e-reaper")


@pytest.fixture
def node_name() -> str:
    return f"{NODE_PREFIX}-{uuid.uuid4().hex[:4]}"


@pytest.fixture
def api(tmp_path: Path, host: Host, request: pytest.FixtureRequest) -> Iterator[Api]:
    server: Api
    if API_KIND == "real":
        server = RealApi(tmp_path, request.getfixturevalue("control_plane"), node_prefix=NODE_PREFIX)
    else:
        server = EmulatorApi(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def cluster(api: Api, kubectl_bin: str) -> Iterator[Cluster]:
    c = Cluster(api, kubectl_bin)
    yield c
    c.close()


@pytest.fixture
def dirs() -> Iterator[tuple[Path, Path]]:
    # QEMU runs as libvirt-qemu: disk directories must be traversable by it (pytest's tmp_path is not).
    base = Path(tempfile.mkdtemp(prefix="lvo-e2e-", dir="/var/tmp"))
    base.chmod(0o755)
    storage, images = base / "disks", base / "images"
    storage.mkdir()
    images.mkdir()
    yield storage, images
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def make_operator(api: Api, dirs: tuple[Path, Path], host: Host,
                  request: pytest.FixtureRequest) -> Iterator[object]:
    started: list[OperatorProcess] = []

    def factory(node: str, *extra: str, start: bool = True) -> OperatorProcess:
        proc = OperatorProcess(api, node, dirs[0], dirs[1], *extra)
        started.append(proc)
        if start:
            proc.start()
        return proc

    yield factory
    failed = getattr(request.node, "rep_call", None)
    for proc in started:
        proc.stop()
        if failed is not None and failed.failed:
            print(f"--- operator {proc.node} log ---\n{proc.tail(150)}")
    for node in {proc.node for proc in started}:
        _REAPER.submit(remove_owned_now, node)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    report = yield
    if report.when == "call":  # type: ignore[attr-defined]
        item.rep_call = report  # type: ignore[attr-defined]
    return report
