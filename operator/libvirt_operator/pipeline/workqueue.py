"""A keyed work queue in the style of client-go's: the heart of the event pipeline.

- A key is queued at most once: a burst of events for one VM becomes one reconciliation (coalescing).
- A key is processed by one worker at a time: order per VM is kept; a key added while it is being
  processed runs again right after.
- A failed key is retried with per-key exponential backoff; success resets the backoff.
- A handler may ask to see its key again after a delay (held STOPPED events, graceful-shutdown polls).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)

Handler = Callable[[K], Awaitable[float | None]]


class WorkQueue(Generic[K]):
    def __init__(self, *, base_delay: float = 0.1, max_delay: float = 30.0) -> None:
        self._queue: asyncio.Queue[K] = asyncio.Queue()
        self._dirty: set[K] = set()
        self._processing: set[K] = set()
        self._failures: dict[K, int] = {}
        self._timers: dict[K, asyncio.TimerHandle] = {}
        self._base = base_delay
        self._max = max_delay
        self._workers: list[asyncio.Task[None]] = []
        self._idle = asyncio.Event()
        self._idle.set()
        self.processed = 0
        self.failed = 0

    def __len__(self) -> int:
        return len(self._dirty)

    def add(self, key: K) -> None:
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        if key in self._dirty:
            return
        self._dirty.add(key)
        self._idle.clear()
        if key not in self._processing:
            self._queue.put_nowait(key)

    def add_after(self, key: K, delay: float) -> None:
        if delay <= 0:
            self.add(key)
            return
        existing = self._timers.get(key)
        loop = asyncio.get_running_loop()
        when = loop.time() + delay
        if existing is not None:
            if existing.when() <= when:
                return  # an earlier wake-up is already planned
            existing.cancel()
        self._timers[key] = loop.call_at(when, self._fire, key)

    def _fire(self, key: K) -> None:
        self._timers.pop(key, None)
        self.add(key)

    def add_rate_limited(self, key: K) -> float:
        failures = self._failures.get(key, 0)
        self._failures[key] = failures + 1
        delay = float(min(self._base * (2 ** failures), self._max))
        self.add_after(key, delay)
        return delay

    def forget(self, key: K) -> None:
        self._failures.pop(key, None)

    def start(self, handler: Handler[K], workers: int) -> None:
        for index in range(workers):
            self._workers.append(asyncio.create_task(self._work(handler), name=f"reconcile-worker-{index}"))

    async def stop(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers.clear()

    async def wait_idle(self) -> None:
        """Until nothing is queued or in progress (delayed keys do not count)."""
        await self._idle.wait()

    async def _work(self, handler: Handler[K]) -> None:
        while True:
            key = await self._queue.get()
            self._dirty.discard(key)
            self._processing.add(key)
            try:
                requeue = await handler(key)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.failed += 1
                delay = self.add_rate_limited(key)
                logger.warning("reconciling %s failed (%s); retrying in %.1fs", key, exc, delay,
                               exc_info=logger.isEnabledFor(logging.DEBUG))
            else:
                self.processed += 1
                self.forget(key)
                if requeue is not None:
                    self.add_after(key, requeue)
            finally:
                self._processing.discard(key)
                if key in self._dirty:
                    self._queue.put_nowait(key)
                if not self._dirty and not self._processing:
                    self._idle.set()
