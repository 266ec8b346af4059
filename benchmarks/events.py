"""A burst of lifecycle events over many VMs: libvirt's raw delivery time and the operator's time to status.

Both are measured in the same run, in the same process, on the same events:

- raw: from just before ``virDomainSuspend``/``virDomainResume`` is called to the moment a plain
  libvirt-python lifecycle callback (registered on a connection of our own) receives the event;
- operator: from the moment the operator's own libvirt callback received the event to the moment the
  status patch reflecting it came back from the API server (the ``event_lag`` histogram's raw samples).
  When several events of one VM are folded into one patch, the sample is the oldest event's.

So operator / raw compares what the operator adds after delivery with what delivery itself costs.

The drain (``drained``/``drain_s``): one status patch per VM per phase, timed from the phase's first libvirt
call to the last of them. On the real API that end is the API server's completion of the patch (its audit
log); on the emulator, which logs no times, the moment the driver saw the count reached (polled, 50 ms).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import libvirt

from benchmarks.apis import PhaseApi
from benchmarks.common import vm_writes, wait_until
from benchmarks.inprocess import OperatorThread

SUSPENDED, RESUMED = libvirt.VIR_DOMAIN_EVENT_SUSPENDED, libvirt.VIR_DOMAIN_EVENT_RESUMED


@dataclass
class EventResult:
    operator_s: list[float] = field(default_factory=list)
    raw_s: list[float] = field(default_factory=list)
    events: int = 0
    writes: int = 0
    vms: int = 0
    seconds: float = 0.0  # first libvirt call to the last status patch, both phases (seen by polling)
    drained: int = 0  # status patches the drain counts: one per VM per phase
    drain_s: float = 0.0  # their time, both phases (audit log timestamps on the real API: see above)
    server_s: list[float] = field(default_factory=list)  # real API: its own time per status patch (audit log)


class RawListener:
    """A plain libvirt-python lifecycle callback: when each (domain UUID, event type) was first delivered."""

    def __init__(self, conn: libvirt.virConnect) -> None:
        self.conn = conn
        self.delivered: dict[tuple[str, int], float] = {}
        self._id = conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._callback, None)

    def _callback(self, _conn: libvirt.virConnect, dom: libvirt.virDomain, event: int, _detail: int,
                  _opaque: Any) -> None:
        now = time.monotonic()
        self.delivered.setdefault((dom.UUIDString(), event), now)

    def forget(self) -> None:
        self.delivered.clear()

    def close(self) -> None:
        self.conn.domainEventDeregisterAny(self._id)


def burst(operator: OperatorThread, api: PhaseApi, conn: libvirt.virConnect, uids: Sequence[str], *,
          interval: float = 0.0, timeout: float = 600.0) -> EventResult:
    """Suspend every VM, wait until all show Paused, then resume every VM and wait for Running.

    ``interval`` 0 is a burst (calls back to back); otherwise the calls are paced that far apart.
    """
    doms = [conn.lookupByUUIDString(uid) for uid in uids]
    listener = RawListener(conn)
    result = EventResult(vms=len(uids))
    since = api.audit_offset()
    try:
        for action, event, phase in (("suspend", SUSPENDED, "Paused"), ("resume", RESUMED, "Running")):
            operator.wait_idle()
            operator.on_loop(lambda rt: rt.metrics.event_lag.samples.clear())
            api.reset_counts()
            listener.forget()
            called: dict[str, float] = {}
            phase_offset = api.audit_offset()
            started_wall = time.time()
            started = time.monotonic()
            for dom, uid in zip(doms, uids, strict=True):
                called[uid] = time.monotonic()
                getattr(dom, action)()
                if interval:
                    time.sleep(interval)
            wait_until(lambda: len(listener.delivered) >= len(uids), timeout=timeout,
                       what=f"libvirt to deliver {len(uids)} {action} events")
            # Cheap checks first (the API's own counts, or the audit log read on); the operator's
            # records are only walked once every VM has had its status patched at least once.
            wait_until(lambda: vm_writes(api.requests()) >= len(uids), timeout=timeout,
                       what=f"{len(uids)} status patches after {action}")
            polled_s = time.monotonic() - started
            result.seconds += polled_s
            wait_until(lambda: operator.phases()[phase] == len(uids), timeout=timeout,  # noqa: B023
                       what=f"{len(uids)} VMs to show {phase}", interval=0.2)
            operator.wait_idle()
            result.operator_s += operator.on_loop(lambda rt: list(rt.metrics.event_lag.samples))
            missing = [uid for uid in uids if (uid, event) not in listener.delivered]
            if missing:
                raise RuntimeError(f"the raw listener missed {len(missing)} {action} events: {missing[:3]}")
            result.raw_s += [listener.delivered[(uid, event)] - called[uid] for uid in uids]
            result.events += sum(1 for uid_event in listener.delivered if uid_event[0] in called)
            result.writes += vm_writes(api.requests())
            result.drained += len(uids)
            result.drain_s += drain_seconds(api.server_spans(phase_offset, "patch", "virtualmachines/status"),
                                            started_wall, len(uids), polled_s)
    finally:
        listener.close()
    result.server_s = api.server_seconds(since, "patch", "virtualmachines/status")
    return result


def drain_seconds(spans: Sequence[tuple[float, float]], started: float, patches: int, fallback: float) -> float:
    """From ``started`` (wall clock) to the completion of the ``patches``-th status patch the API server
    logged (``spans``: (received, completed) wall-clock times); ``fallback`` when it logged fewer (the
    emulator logs none)."""
    completed = sorted(done for _received, done in spans)
    if patches <= 0 or len(completed) < patches:
        return fallback
    return completed[patches - 1] - started
