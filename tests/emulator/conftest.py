"""Fixtures for the API emulator's tests: an emulator on its own thread, real clients pointed at it.

The official `kubernetes` client and kubectl block, so the emulator runs its event loop on a
background thread and tests talk to it over real HTTP, as any other process would.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import kubernetes
import pytest

from kube_emulator import KubeEmulator
from tests.conftest import find_tool

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
FIXTURE_CRD = HERE / "fixture-crd.yaml"
GROUP, VERSION, PLURAL, KIND = "fixture.emulator.test", "v1", "gadgets", "Gadget"
KUBECTL_MINOR = "34"
T = TypeVar("T")


class EmulatorThread:
    """A KubeEmulator serving from its own event loop on a daemon thread."""

    def __init__(self, **kwargs: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="kube-emulator", daemon=True)
        self.thread.start()
        self.emulator: KubeEmulator = self.run(self._start(kwargs))

    async def _start(self, kwargs: dict[str, Any]) -> KubeEmulator:
        emulator = KubeEmulator(**kwargs)
        await emulator.start()
        return emulator

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run a plain function on the emulator's loop (its state is only touched from there)."""
        async def wrapped() -> Any:
            return fn(*args, **kwargs)
        return self.run(wrapped())

    @property
    def url(self) -> str:
        return self.emulator.url

    def close(self) -> None:
        try:
            self.run(self.emulator.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


def make_api_client(url: str) -> kubernetes.client.ApiClient:
    configuration = kubernetes.client.Configuration()
    configuration.host = url
    configuration.api_key = {"authorization": "Bearer emulator-dummy-token"}
    configuration.retries = 0
    return kubernetes.client.ApiClient(configuration)


@pytest.fixture
def emu() -> Iterator[EmulatorThread]:
    server = EmulatorThread(crd_paths=[FIXTURE_CRD], bookmark_interval=0.2)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def api(emu: EmulatorThread) -> Iterator[kubernetes.client.ApiClient]:
    client = make_api_client(emu.url)
    try:
        yield client
    finally:
        client.close()


def gadget(name: str, namespace: str = "default", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND,
            "metadata": {"name": name, "namespace": namespace}, "spec": {"color": "red", **spec}}


def status_of(exc: kubernetes.client.ApiException) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(exc.body)
    return body


# --- kubectl -------------------------------------------------------------------------------------


def _kubectl_binary() -> str | None:
    path = find_tool("kubectl")
    if path is None:
        return None
    try:
        out = subprocess.run([path, "version", "--client", "-o", "json"], capture_output=True, text=True,
                             timeout=30)
        minor = json.loads(out.stdout)["clientVersion"]["minor"]
    except (OSError, ValueError, KeyError, subprocess.SubprocessError):
        return None
    return path if re.sub(r"\D", "", minor) == KUBECTL_MINOR else None


@pytest.fixture(scope="session")
def kubectl_path() -> str:
    path = _kubectl_binary()
    if path is None:
        pytest.skip(f"no kubectl v1.{KUBECTL_MINOR} in .venv/bin or on PATH (hack/setup.sh installs it)")
    return path


class Kubectl:
    """kubectl against one emulator, with its own kubeconfig and discovery cache."""

    def __init__(self, binary: str, emu: EmulatorThread, workdir: Path) -> None:
        self.binary = binary
        self.emu = emu
        self.kubeconfig = workdir / "kubeconfig"
        self.cache = workdir / "cache"
        emu.call(emu.emulator.write_kubeconfig, self.kubeconfig)

    def command(self, *args: str) -> list[str]:
        return [self.binary, "--kubeconfig", str(self.kubeconfig), "--cache-dir", str(self.cache), *args]

    def run(self, *args: str, input: str | None = None, check: bool = True,
            timeout: float = 30) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(self.command(*args), input=input, capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({done.returncode}):\n{done.stderr}{done.stdout}")
        return done

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "-o", "json").stdout)


@pytest.fixture
def kubectl(kubectl_path: str, emu: EmulatorThread, tmp_path: Path) -> Kubectl:
    return Kubectl(kubectl_path, emu, tmp_path)
