"""Creation to Running with real QEMU guests: KubeVirt's density-test shape (VMs created 100 ms apart).

The operator runs as a process (testbed.OperatorProcess) against the API of the run (apis.py: the real
control plane or the emulator process); libvirt is qemu:///system.
Latency per VM: from just before its create request is sent to the first watch event showing it Running.

The physical limit is measured the same way right after: the same domain XML (taken from a domain the
operator defined), defined and started directly through libvirt-python with the same pacing and the
same concurrency as the operator's libvirt calls. Latency per domain: from just before ``defineXML`` to
``create`` returning (the domain runs).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime
import shutil
import tempfile
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import libvirt

from benchmarks.apis import ApiChoice, Endpoint
from benchmarks.common import (
    OPERATOR_FLAGS,
    PhaseWatcher,
    ensure_libvirtd,
    metric_value,
    post_vm,
    proc_status_kib,
    scratch_dir,
    settle,
    vm_writes,
)
from testbed import Host, OperatorProcess, vm_manifest

LIBVIRT_WORKERS = 16  # the operator's default --workers, which also sizes its libvirt call pool


@dataclass
class CreationResult:
    latencies_s: list[float]
    raw_latencies_s: list[float]
    writes_per_vm: float
    loop_lag_max_s: float
    domain_type: str
    operator_rss_mib: float
    # From the guest running (libvirt's start returned: status.lastEvent Started) to Running seen in the watch.
    started_to_seen_s: list[float]


def run(count: int, apis: ApiChoice, *, interval: float = 0.1, timeout: float = 1800.0) -> CreationResult:
    ensure_libvirtd()
    node = f"bench{uuid.uuid4().hex[:6]}"
    host = Host()
    try:
        with scratch_dir("lvo-bench-create-") as base, apis.phase(base, node) as api:
            operator = OperatorProcess(api.api, node, base / "disks", base / "images", *OPERATOR_FLAGS)
            try:
                operator.start()
                api.reset_counts()
                manifests = [vm_manifest(f"{node}-{i:03d}", node, memory="32Mi", namespace=api.namespace)
                             for i in range(count)]
                latencies, started_to_seen = asyncio.run(
                    _create_paced(api.admin, api.namespace, manifests, interval, timeout))
                # Writes counted at the API server once the operator has stopped writing.
                writes = settle(lambda: vm_writes(api.requests()), quiet=2.0, timeout=60.0)
                lag = metric_value(operator.metrics(), "libvirt_operator_event_loop_lag_max_seconds")
                assert operator.proc is not None
                rss = proc_status_kib(operator.proc.pid, "VmRSS") / 1024
                owned = host.owned_domains(node)
                template = host.conn.lookupByUUIDString(owned[0][0]).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
            finally:
                operator.stop()
                _remove_owned(host, node)
        raw = _raw_baseline(host, template, node, count, interval)
    finally:
        host.close()
    domain_type = ET.fromstring(template).get("type", "?")
    return CreationResult(latencies, raw, writes / count, lag, domain_type, rss, started_to_seen)


def _remove_owned(host: Host, node: str) -> None:
    host.reconnect()
    for uuid_, _name in host.owned_domains(node):
        host.remove(uuid_)


def _raw_baseline(host: Host, template: str, node: str, count: int, interval: float) -> list[float]:
    """The same domains through libvirt alone: define + start, paced like the creates, then removed."""
    logs = Path(tempfile.mkdtemp(prefix="lvo-bench-raw-logs-", dir="/var/tmp"))
    logs.chmod(0o755)

    def xml_for(i: int) -> str:
        root = ET.fromstring(template)
        for tag in ("uuid", "metadata"):  # a fresh UUID from libvirt; no owner: the operator never sees it
            for el in root.findall(tag):
                root.remove(el)
        name = root.find("name")
        assert name is not None
        name.text = f"default_{node}-raw-{i:03d}"
        for log in root.iterfind("devices/serial/log"):
            # The template's console log is in its VM's directory, gone with that VM: a file of its own
            # (libvirt refuses to start a guest whose log it cannot open).
            log.set("file", str(logs / f"raw-{i:03d}.console.log"))
        return ET.tostring(root, encoding="unicode")

    documents = [xml_for(i) for i in range(count)]
    uuids: list[str] = []
    start = time.monotonic() + 0.1

    def one(i: int) -> float:
        # Timed from the moment it was due, as each operator create is timed from its request: a
        # domain waiting for one of the 16 threads is waiting, as a VM waiting for a worker is.
        began = start + i * interval
        time.sleep(max(0.0, began - time.monotonic()))
        dom = host.conn.defineXML(documents[i])
        uuids.append(dom.UUIDString())
        dom.create()
        return time.monotonic() - began

    try:
        with concurrent.futures.ThreadPoolExecutor(LIBVIRT_WORKERS) as pool:
            return list(pool.map(one, range(count)))
    finally:
        for uuid_ in uuids:
            host.remove(uuid_)
        shutil.rmtree(logs, ignore_errors=True)


async def _create_paced(admin: Endpoint, namespace: str, manifests: Sequence[Mapping[str, Any]], interval: float,
                        limit: float) -> tuple[list[float], list[float]]:
    names = [str(m["metadata"]["name"]) for m in manifests]
    created: dict[str, float] = {}
    async with admin.session() as session:
        watcher = PhaseWatcher(admin, namespace, "Running")
        watch = asyncio.create_task(watcher.run(session))
        await asyncio.wait_for(watcher.started(), 30)
        start = time.monotonic()

        async def create(i: int, body: Mapping[str, Any]) -> None:
            await asyncio.sleep(max(0.0, start + i * interval - time.monotonic()))
            created[names[i]] = time.monotonic()
            await post_vm(session, admin, body)

        await asyncio.gather(*(create(i, m) for i, m in enumerate(manifests)))
        deadline = time.monotonic() + limit
        report_at = time.monotonic() + 30.0
        while len(watcher.seen.keys() & set(names)) < len(names):
            if time.monotonic() > report_at:  # a long wait on a busy machine: show that it moves
                print(f"      {len(watcher.seen.keys() & set(names))}/{len(names)} Running", flush=True)
                report_at += 30.0
            if watch.done():
                watch.result()  # raises what ended the watch
                raise RuntimeError("the watch ended early")
            failed = {n: m for n, m in watcher.failed.items() if n in created}
            if failed:
                raise RuntimeError(f"VMs went Failed instead of Running: {failed}")
            if time.monotonic() > deadline:
                missing = sorted(set(names) - watcher.seen.keys())
                raise TimeoutError(f"{len(missing)} VMs not Running after {limit:.0f}s: {missing[:5]}...")
            await asyncio.sleep(0.05)
        watch.cancel()
    started_to_seen = []
    for n in names:
        last = (watcher.objects[n].get("status") or {}).get("lastEvent") or {}
        if last.get("type") == "Started" and last.get("time"):
            started = datetime.datetime.fromisoformat(str(last["time"]).replace("Z", "+00:00")).timestamp()
            started_to_seen.append(watcher.seen_wall[n] - started)
    return [watcher.seen[n] - created[n] for n in names], started_to_seen
