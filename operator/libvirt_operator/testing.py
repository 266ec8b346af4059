"""The operator in the caller's process, for tests and benchmarks (like ``kopf.testing.KopfRunner``).

It runs on a loop of its own in a daemon thread, as in production: kopf cancels every task it did not
create when it stops, so it must not share the caller's loop. libvirt's ``test:///default`` keeps its
state per process, which is why tests and benchmarks on that driver need the operator in-process.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from libvirt_operator.operator_main import run_operator
from libvirt_operator.runtime import Runtime
from libvirt_operator.settings import Settings

T = TypeVar("T")


class OperatorThread:
    """`run_operator` in a daemon thread; `stop()` ends it as SIGTERM would."""

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

    # --- from any thread -------------------------------------------------------------------------------

    def call(self, fn: Callable[[], Any]) -> None:
        """Schedule ``fn`` on the operator's loop (fire and forget)."""
        assert self.loop is not None
        self.loop.call_soon_threadsafe(fn)

    def on_loop(self, fn: Callable[[Runtime], T], timeout: float = 60.0) -> T:
        """Blocking: ``fn(runtime)`` on the operator's loop (its state is only consistent there)."""
        self._check()
        assert self.loop is not None and self.runtime is not None
        runtime = self.runtime

        async def call() -> T:
            return fn(runtime)
        return asyncio.run_coroutine_threadsafe(call(), self.loop).result(timeout)

    def wait_idle(self, timeout: float = 300.0) -> None:
        """Blocking: until no reconciliation is queued or running."""
        self._check()
        assert self.loop is not None and self.runtime is not None
        asyncio.run_coroutine_threadsafe(self.runtime.queue.wait_idle(), self.loop).result(timeout)

    # --- from another event loop ----------------------------------------------------------------------

    async def run(self, coro_factory: Callable[[], Awaitable[T]]) -> T:
        """The coroutine made by ``coro_factory``, run on the operator's loop, awaited from the caller's."""
        assert self.loop is not None

        async def wrapper() -> T:
            return await coro_factory()
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(wrapper(), self.loop))

    async def idle(self) -> None:
        assert self.loop is not None and self.runtime is not None
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self.runtime.queue.wait_idle(), self.loop))

    # --- observations ----------------------------------------------------------------------------------

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
