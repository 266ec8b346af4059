"""The libvirt connection owner on test:///default (real libvirt, in-memory hypervisor)."""

from __future__ import annotations

import asyncio
import threading

import libvirt
import pytest

from libvirt_operator.hypervisor import domains
from libvirt_operator.hypervisor.connection import (
    Connection,
    DomainNotFound,
    HypervisorError,
    HypervisorUnavailable,
    LifecycleEvent,
)


async def _until(predicate, limit: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + limit
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def test_lifecycle_events_cross_from_the_native_thread_to_the_loop_in_order() -> None:
    conn = Connection("test:///default")
    received: list[tuple[int, int, str]] = []

    def sink(event: LifecycleEvent) -> None:
        received.append((event.event, event.detail, threading.current_thread().name))

    conn.add_event_sink(sink)
    await conn.start()
    assert await conn.wait_connected(5)
    uuid = next(iter(await conn.call("list", domains.list_states)))
    await conn.call("suspend", lambda c: domains.suspend(c, uuid))
    await conn.call("resume", lambda c: domains.resume(c, uuid))
    await _until(lambda: len(received) >= 2)
    await conn.close()
    assert [(e, d) for e, d, _ in received[:2]] == [
        (libvirt.VIR_DOMAIN_EVENT_SUSPENDED, libvirt.VIR_DOMAIN_EVENT_SUSPENDED_PAUSED),
        (libvirt.VIR_DOMAIN_EVENT_RESUMED, libvirt.VIR_DOMAIN_EVENT_RESUMED_UNPAUSED),
    ]
    # Delivered on the asyncio loop's thread, never in libvirt's native event thread.
    assert {thread for _, _, thread in received} == {threading.main_thread().name}


async def test_libvirt_errors_become_clear_exceptions() -> None:
    conn = Connection("test:///default")
    await conn.start()
    await conn.wait_connected(5)
    with pytest.raises(DomainNotFound, match="lookup"):
        await conn.call("lookup", lambda c: c.lookupByUUIDString("00000000-0000-0000-0000-000000000001"))
    with pytest.raises(HypervisorError, match="define"):
        await conn.call("define", lambda c: c.defineXML("<domain type='test'><name>x</name></domain>"))
    await conn.close()


async def test_calls_fail_at_once_while_not_connected_and_the_state_listener_hears_of_it() -> None:
    conn = Connection("qemu+unix:///system?socket=/nonexistent/libvirt-sock", max_backoff=0.2)
    states: list[tuple[bool, str]] = []
    conn.add_state_listener(lambda ok, why: states.append((ok, why)))
    await conn.start()
    await _until(lambda: bool(states))
    assert states[0][0] is False and "cannot connect" in states[0][1]
    with pytest.raises(HypervisorUnavailable, match="not connected"):
        await conn.call("list", domains.list_states)
    await conn.close()


async def test_the_periodic_sync_listing_is_one_call_for_all_domains() -> None:
    conn = Connection("test:///default")
    calls: list[str] = []
    conn.on_call = lambda what, ok: calls.append(what)
    await conn.start()
    await conn.wait_connected(5)
    states = await conn.call("list domain states", domains.list_states)
    await conn.close()
    assert calls == ["list domain states"]
    assert all(s.state == libvirt.VIR_DOMAIN_RUNNING for s in states.values())
