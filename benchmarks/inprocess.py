"""The operator in this process, on libvirt's test:///default driver, against the API emulator process.

test:///default keeps its state per process, so whatever acts on the domains (the event burst, the raw
libvirt listener, a second operator instance) has to live in the operator's process. The operator runs on
its own loop in its own thread, as in production (kopf cancels tasks it did not create when it stops).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import libvirt

from libvirt_operator.hypervisor import event_loop
from libvirt_operator.operator_main import run_operator
from libvirt_operator.runtime import Runtime
from libvirt_operator.settings import Settings

T = TypeVar("T")
TEST_URI = "test:///default"


def test_settings(node: str, kubeconfig: Path, base: Path) -> Settings:
    return Settings(node_name=node, libvirt_uri=TEST_URI, kubeconfig=str(kubeconfig), image_dir=base / "images",
                    storage_dir=base / "disks", health_port=0, metrics_port=0, sync_interval=3600,
                    log_level="WARNING")


class OperatorThread:
    """`run_operator` on a loop of its own in a daemon thread; `stop()` ends it as SIGTERM would."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.runtime: Runtime | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.error: BaseException | None = None
        self.started_at = 0.0
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, name="operator", daemon=True)

    def _main(self) -> None:
        async def run() -> None:
            self.loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            await run_operator(self.settings, stop_flag=self._stop, health_host="127.0.0.1",
                               on_runtime=lambda rt: setattr(self, "runtime", rt))
        try:
            asyncio.run(run())
        except BaseException as exc:  # reported by stop() and the waits
            self.error = exc

    def start(self) -> None:
        self.started_at = time.monotonic()
        self._thread.start()

    def _check(self) -> None:
        if self.error is not None:
            raise RuntimeError(f"the in-process operator failed: {self.error!r}") from self.error
        if not self._thread.is_alive():
            raise RuntimeError("the in-process operator thread ended")

    @property
    def ready(self) -> bool:
        self._check()
        return self.runtime is not None and self.runtime.ready

    def on_loop(self, fn: Callable[[Runtime], T], timeout: float = 60.0) -> T:
        """Run ``fn(runtime)`` on the operator's loop (its state is only consistent there)."""
        self._check()
        assert self.loop is not None and self.runtime is not None
        runtime = self.runtime

        async def call() -> T:
            return fn(runtime)
        return asyncio.run_coroutine_threadsafe(call(), self.loop).result(timeout)

    def wait_idle(self, timeout: float = 300.0) -> None:
        self._check()
        assert self.loop is not None and self.runtime is not None
        asyncio.run_coroutine_threadsafe(self.runtime.queue.wait_idle(), self.loop).result(timeout)

    def phases(self) -> Counter[str]:
        def count(rt: Runtime) -> Counter[str]:
            return Counter(str(rec.status.get("phase", "")) for rec in rt.records
                           if rec.node_name == rt.settings.node_name)
        return self.on_loop(count)

    def loop_lag_max(self) -> float:
        assert self.runtime is not None
        value = self.runtime.metrics.registry.get_sample_value("libvirt_operator_event_loop_lag_max_seconds")
        return float(value or 0.0)

    def stop(self, timeout: float = 60.0) -> None:
        if self.loop is not None and self._stop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise RuntimeError(f"the in-process operator did not stop within {timeout:.0f}s")
        if self.error is not None:
            raise RuntimeError(f"the in-process operator failed: {self.error!r}") from self.error


def open_test_driver() -> libvirt.virConnect:
    """A connection of our own to the shared in-memory driver, with event delivery on libvirt's loop."""
    event_loop.ensure_running()
    return libvirt.open(TEST_URI)


def remove_test_domains(conn: libvirt.virConnect, keep: frozenset[str] = frozenset({"test"})) -> None:
    """Undefine every domain the benchmark made (test:///default's own `test` domain stays)."""
    for dom in conn.listAllDomains(0):
        if dom.name() in keep:
            continue
        if dom.isActive():
            dom.destroy()
        dom.undefine()
