"""Per-node cost against cluster size: the operator's CPU and memory with many VMs of other nodes.

`libvirt-operator run --libvirt-uri test:///default` as a process of its own (as memory.py runs it), with
``own`` VMs of its node, all Running. Two phases of the same length, each measured the same way (the
process's CPU seconds, utime + stime of /proc/PID/stat over the interval; its VmRSS at the end):

1. without: nothing but the operator's own VMs, idle;
2. with: ``foreign`` VMs on other nodes (100 per node, as in a cluster of such nodes) created by the
   benchmark's admin identity (bounded concurrency, timed), then status churn on them: merge patches of
   an operator-shaped status (phase, powerState, reason, lastEvent, conditions) at ``churn_per_s``, spread
   round-robin over the foreign VMs, paced against an absolute schedule, by the admin identity.

A node-scoped watch (the CRD's selectableFields, spec.nodeName=<node>) receives none of this; client-side
filtering receives and decodes every event. The operator's `libvirt_operator_vm_watch_events_total` tells
which: its "other" series counts the watch events of VMs of other nodes. The foreign VMs are deleted
afterwards (one DELETE each, bounded concurrency: no finalizer holds them, no operator owns them).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from benchmarks.apis import ApiChoice, Endpoint
from benchmarks.common import (
    OPERATOR_FLAGS,
    cpu_seconds,
    create_vms,
    delete_vms,
    metric_value,
    patch_vm_status,
    phase_counts,
    sample_rss_mib,
    scratch_dir,
    settle,
    vm_writes,
    wait_until,
)
from benchmarks.raw_patches import encode
from libvirt_operator.api.status import event_time, set_condition
from testbed import OperatorProcess, vm_manifest

VMS_PER_NODE = 100  # the cluster: 1,000 nodes x 100 VMs
CHURN_CONCURRENCY = 16
WATCH_EVENTS = "libvirt_operator_vm_watch_events_total"


@dataclass
class ForeignResult:
    own_vms: int
    foreign_vms: int
    foreign_nodes: int
    interval_s: float  # the length of phase 1, and of phase 2 unless its last patch came back later
    interval_s_with: float  # phase 2's actual length
    cpu_s_without: float
    cpu_s_with: float
    rss_mib_without: float
    rss_mib_with: float
    churn_patches: int
    churn_per_s: float  # achieved: patches completed over the churn's duration
    create_s: float  # the foreign VMs' creation, first request to last answer
    create_cpu_s: float  # the operator's CPU seconds meanwhile (and until its watch went quiet)
    delete_s: float
    watch_events_other: float  # watch events of other nodes' VMs the operator received in phase 2
    watch_events_total: float  # all its VM watch events in phase 2
    loop_lag_max_s: float

    @property
    def rss_ratio(self) -> float:
        return ratio(self.rss_mib_with, self.rss_mib_without)

    @property
    def cpu_ratio(self) -> float:
        """CPU seconds per second of phase 2 over those of phase 1 (the same as seconds over seconds when both
        phases last the same, which they do unless the churn fell behind its schedule)."""
        return ratio(self.cpu_s_with / self.interval_s_with, self.cpu_s_without / self.interval_s)


def ratio(with_: float, without: float) -> float:
    """with / without; infinite when only the baseline is zero (no CPU tick in the interval: too short an
    interval, which the absolute inputs show), 1 when both are."""
    if without > 0:
        return with_ / without
    return float("inf") if with_ > 0 else 1.0


def churn_schedule(names: Sequence[str], per_s: float, seconds: float) -> list[tuple[float, str, int]]:
    """(offset from the start, VM name, how many times this VM was patched before) of each patch: one every
    1/per_s seconds for ``seconds``, round-robin over ``names`` (so each VM is patched as rarely as can be)."""
    if per_s <= 0 or not names:
        return []
    total = round(per_s * seconds)
    return [(i / per_s, names[i % len(names)], i // len(names)) for i in range(total)]


def foreign_status(node: str, domain: str, uid: str, running: bool) -> dict[str, Any]:
    """The status an operator of ``node`` writes for a lifecycle event (resume: running, suspend: paused)."""
    phase = "Running" if running else "Paused"
    reason = "Unpaused" if running else "User"
    conditions = set_condition([], "Ready", "True" if running else "False", "Running" if running else reason,
                               "the guest is running" if running else "the guest is paused")
    conditions = set_condition(conditions, "HypervisorConnected", "True", "Connected",
                               "libvirt at qemu:///system answers")
    return {"phase": phase, "powerState": phase, "reason": reason, "message": "", "nodeName": node,
            "domainName": domain, "domainUUID": uid,
            "lastEvent": {"type": "Resumed" if running else "Suspended", "detail": reason, "time": event_time()},
            "conditions": conditions}


def node_names(node: str, foreign: int) -> list[str]:
    return [f"{node}-peer{k:03d}" for k in range(max(1, -(-foreign // VMS_PER_NODE)))]


def run(own: int, foreign: int, apis: ApiChoice, *, interval: float, churn_per_s: float,
        timeout: float = 900.0) -> ForeignResult:
    node = f"bench{uuid.uuid4().hex[:6]}"
    peers = node_names(node, foreign)
    with scratch_dir("lvo-bench-foreign-") as base, apis.phase(base, node) as api:
        operator = OperatorProcess(api.api, node, base / "disks", base / "images", *OPERATOR_FLAGS,
                                   libvirt_uri="test:///default")
        foreign_names: list[str] = []
        delete_s = 0.0
        try:
            operator.start()
            assert operator.proc is not None
            pid = operator.proc.pid
            mine = [vm_manifest(f"{node}-{i:04d}", node, memory="32Mi", namespace=api.namespace) for i in range(own)]
            asyncio.run(create_vms(api.admin, mine))
            wait_until(lambda: phase_counts(api.admin, api.namespace)["Running"] == own, timeout=timeout,
                       interval=0.5, what=f"{own} VMs Running in the operator process")
            settle(lambda: vm_writes(api.requests()), quiet=3.0, timeout=120.0)

            # Phase 1: without.
            interval_without, cpu_without, rss_without = _idle(pid, interval)

            # Phase 2: with. Names interleave the nodes, so that consecutive creates and patches hit different ones.
            watch_before = _watch_events(operator.metrics)
            cpu_before_create = cpu_seconds(pid)
            foreign_names = [f"{peers[i % len(peers)]}-{i // len(peers):04d}" for i in range(foreign)]
            began = time.monotonic()
            uids = asyncio.run(create_vms(api.admin, [
                vm_manifest(n, peers[i % len(peers)], memory="32Mi", namespace=api.namespace)
                for i, n in enumerate(foreign_names)]))
            create_s = time.monotonic() - began
            # With client-side filtering the operator decodes every ADDED event: let it finish first.
            # (Polled slowly: each reading of /metrics costs the operator CPU too.)
            settle(lambda: _watch_events(operator.metrics), quiet=3.0, timeout=300.0, interval=0.5)
            create_cpu_s = cpu_seconds(pid) - cpu_before_create
            churned, churn_s, interval_with, cpu_with = asyncio.run(_churn(
                api.admin, api.namespace, foreign_names, uids, peers, churn_per_s, interval, pid))
            rss_with = sample_rss_mib(pid, samples=3, interval=0.2)
            watch_after = _watch_events(operator.metrics)
            lag = metric_value(operator.metrics(), "libvirt_operator_event_loop_lag_max_seconds")
        finally:
            try:
                if foreign_names:
                    began = time.monotonic()
                    asyncio.run(delete_vms(api.admin, api.namespace, foreign_names))
                    delete_s = time.monotonic() - began
            finally:
                operator.stop()
    return ForeignResult(
        own_vms=own, foreign_vms=foreign, foreign_nodes=len(peers), interval_s=interval_without,
        interval_s_with=interval_with, cpu_s_without=cpu_without, cpu_s_with=cpu_with, rss_mib_without=rss_without,
        rss_mib_with=rss_with, churn_patches=churned, churn_per_s=churned / churn_s if churn_s > 0 else 0.0,
        create_s=create_s, create_cpu_s=create_cpu_s, delete_s=delete_s,
        watch_events_other=watch_after[1] - watch_before[1], watch_events_total=watch_after[0] - watch_before[0],
        loop_lag_max_s=lag)


def _idle(pid: int, interval: float) -> tuple[float, float, float]:
    """(the interval's actual length, the process's CPU seconds over it, its RSS at the end): ``interval``
    seconds of nothing on our side."""
    before, start = cpu_seconds(pid), time.monotonic()
    time.sleep(interval)  # the measured interval itself, not a wait for something
    used, elapsed = cpu_seconds(pid) - before, time.monotonic() - start
    return elapsed, used, sample_rss_mib(pid, samples=3, interval=0.2)


def _watch_events(metrics: Callable[[], str]) -> tuple[float, float]:
    """(all VM watch events, those of other nodes' VMs) the operator has counted so far."""
    text = metrics()
    return _metric_or_zero(text, WATCH_EVENTS), _metric_or_zero(text, WATCH_EVENTS, {"node": "other"})


def _metric_or_zero(text: str, name: str, labels: Mapping[str, str] | None = None) -> float:
    try:
        return metric_value(text, name, labels)
    except KeyError:  # a labelled counter shows no series before its first increment
        return 0.0


async def _churn(admin: Endpoint, namespace: str, names: Sequence[str], uids: Sequence[str], peers: Sequence[str],
                 per_s: float, seconds: float, pid: int) -> tuple[int, float, float, float]:
    """Status patches on a schedule for ``seconds``: (patches done, seconds from the start to the last
    answer, the measured interval, the operator's CPU seconds over it).

    A patch that has not been sent by the end of the interval (the API server slower than the schedule)
    is dropped rather than sent late: the interval stays as long as phase 1's, give or take the answers to
    the at most CHURN_CONCURRENCY patches still in flight, and the achieved rate says what was sent."""
    uid_of = dict(zip(names, uids, strict=True))
    node_of = {n: peers[i % len(peers)] for i, n in enumerate(names)}
    schedule = churn_schedule(names, per_s, seconds)
    limit = asyncio.Semaphore(CHURN_CONCURRENCY)
    answered: list[float] = []
    async with admin.session(limit=CHURN_CONCURRENCY) as session:
        async def one(offset: float, name: str, round_: int) -> None:
            await asyncio.sleep(max(0.0, start + offset - time.monotonic()))
            body = encode({"status": foreign_status(node_of[name], f"{namespace}_{name}", uid_of[name],
                                                    running=round_ % 2 == 0)})
            async with limit:
                if time.monotonic() - start >= seconds:
                    return
                await patch_vm_status(session, admin, namespace, name, body)
                answered.append(time.monotonic() - start)

        cpu_before = cpu_seconds(pid)
        start = time.monotonic()
        await asyncio.gather(*(one(*entry) for entry in schedule))
        elapsed = time.monotonic() - start
        if elapsed < seconds:  # the interval is as long as phase 1's even if the last patch came back early
            await asyncio.sleep(seconds - elapsed)
        cpu = cpu_seconds(pid) - cpu_before
        return len(answered), max(answered, default=0.0), time.monotonic() - start, cpu
