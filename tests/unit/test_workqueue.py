"""The keyed work queue: coalescing, per-key order, retries with backoff, delayed keys."""

from __future__ import annotations

import asyncio

from libvirt_operator.pipeline.workqueue import WorkQueue


async def _until(predicate, limit: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + limit
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def test_a_burst_for_one_key_is_processed_once() -> None:
    queue: WorkQueue[str] = WorkQueue()
    seen: list[str] = []
    gate = asyncio.Event()

    async def handler(key: str) -> None:
        await gate.wait()
        seen.append(key)

    for _ in range(100):
        queue.add("vm-a")
    queue.add("vm-b")
    queue.start(handler, 4)
    gate.set()
    await queue.wait_idle()
    await queue.stop()
    assert sorted(seen) == ["vm-a", "vm-b"]


async def test_one_key_is_never_processed_twice_at_once_and_reruns_after_a_change() -> None:
    queue: WorkQueue[str] = WorkQueue()
    running = 0
    worst = 0
    calls = 0
    release = asyncio.Event()

    async def handler(key: str) -> None:
        nonlocal running, worst, calls
        running += 1
        worst = max(worst, running)
        calls += 1
        if calls == 1:
            queue.add(key)  # an event arrives while the key is being processed
            await release.wait()
        running -= 1

    queue.start(handler, 4)
    queue.add("vm")
    await _until(lambda: calls == 1)
    release.set()
    await _until(lambda: calls == 2)
    await queue.wait_idle()
    await queue.stop()
    assert worst == 1
    assert calls == 2


async def test_a_failing_key_is_retried_with_backoff_until_it_succeeds() -> None:
    queue: WorkQueue[str] = WorkQueue(base_delay=0.01, max_delay=0.05)
    attempts = 0

    async def handler(key: str) -> None:
        nonlocal attempts
        attempts += 1
        if attempts < 4:
            raise RuntimeError("API server unavailable")

    queue.start(handler, 1)
    queue.add("vm")
    await _until(lambda: attempts == 4)
    await queue.stop()
    assert queue.failed == 3
    assert queue.processed == 1


async def test_a_handler_can_ask_to_see_its_key_again_later() -> None:
    queue: WorkQueue[str] = WorkQueue()
    calls = 0

    async def handler(key: str) -> float | None:
        nonlocal calls
        calls += 1
        return 0.02 if calls == 1 else None

    queue.start(handler, 1)
    queue.add("vm")
    await _until(lambda: calls == 2)
    await queue.stop()
    assert calls == 2
