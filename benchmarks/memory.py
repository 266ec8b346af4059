"""Resident memory of the operator process with many VMs, idle.

`libvirt-operator run --libvirt-uri test:///default` as a process of its own (its test:///default holds
the domains it defines itself), against the API of the run (apis.py: the real control plane or the
emulator). VmRSS is read from /proc once the operator has stopped writing to the API, i.e. every VM is
Running and nothing is left to do.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass

from benchmarks.apis import ApiChoice
from benchmarks.common import (
    OPERATOR_FLAGS,
    create_vms,
    metric_value,
    phase_counts,
    proc_status_kib,
    sample_rss_mib,
    scratch_dir,
    settle,
    vm_writes,
    wait_until,
)
from testbed import OperatorProcess, vm_manifest


@dataclass
class MemoryResult:
    vms: int
    rss_mib: float  # idle, with `vms` VMs Running
    peak_rss_mib: float  # VmHWM: the most it ever held
    empty_rss_mib: float  # ready, before any VM existed
    create_to_all_running_s: float
    writes_per_create: float
    loop_lag_max_s: float


def run(count: int, apis: ApiChoice, *, timeout: float = 900.0) -> MemoryResult:
    node = f"bench{uuid.uuid4().hex[:6]}"
    with scratch_dir("lvo-bench-rss-") as base, apis.phase(base, node) as api:
        operator = OperatorProcess(api.api, node, base / "disks", base / "images", *OPERATOR_FLAGS,
                                   libvirt_uri="test:///default")
        try:
            operator.start()
            assert operator.proc is not None
            pid = operator.proc.pid
            empty = proc_status_kib(pid, "VmRSS") / 1024
            api.reset_counts()
            started = time.monotonic()
            manifests = [vm_manifest(f"{node}-{i:04d}", node, memory="32Mi", namespace=api.namespace)
                         for i in range(count)]
            asyncio.run(create_vms(api.admin, manifests))
            wait_until(lambda: phase_counts(api.admin, api.namespace)["Running"] == count, timeout=timeout,
                       interval=0.5, what=f"{count} VMs Running in the operator process")
            create_s = time.monotonic() - started
            writes = settle(lambda: vm_writes(api.requests()), quiet=3.0, timeout=120.0)
            rss = sample_rss_mib(pid)
            return MemoryResult(count, rss, proc_status_kib(pid, "VmHWM") / 1024, empty, create_s, writes / count,
                                metric_value(operator.metrics(), "libvirt_operator_event_loop_lag_max_seconds"))
        finally:
            operator.stop()

