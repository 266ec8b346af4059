"""The operator's running state for one node, and the start-up sequence in nova's ``init_host`` order.

1. libvirt: event loop thread, connection (with callbacks), host capabilities, version and quality checks;
2. the VirtualMachines of this node, listed once (server-side, with the field selector spec.nodeName=<node>;
   all of them, filtered here, when the API server refuses it: kube/node_scope.py); the host-level domain
   scan (evacuated, orphaned, foreign domains); the VM watch starts from that listing's resourceVersion
   (kube/vm_watch.py);
3. every VM of this node reconciled once (the "resume" pass: interrupted provisioning, stops, starts and
   deletions, guests to resume after a host reboot), with bounded concurrency;
4. then ready. The periodic full sync and the event pipeline run from then on.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import time
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import Any

import libvirt

from libvirt_operator.api.status import event_name, get_condition, power_state
from libvirt_operator.context import HostFacts, HostParts, VMParts
from libvirt_operator.handlers.host import HostReconciler
from libvirt_operator.handlers.migration import MigrationController, MigrationParts
from libvirt_operator.handlers.node import NodeReporter, quality_warnings, read_host_info
from libvirt_operator.handlers.vm import Reconciler
from libvirt_operator.hypervisor import domains, image_import
from libvirt_operator.hypervisor.connection import AgentEvent, Connection, HypervisorError, LifecycleEvent
from libvirt_operator.hypervisor.storage import Storage
from libvirt_operator.kube.client import KubeClient, KubeError
from libvirt_operator.kube.lease import LeaseConfig, NodeLease
from libvirt_operator.kube.node_scope import (
    Deleted,
    deleted_meaning,
    node_selector,
    selector_refused,
    still_exists,
)
from libvirt_operator.kube.vm_watch import VMInformer, WatchSink, vanished
from libvirt_operator.metrics import Metrics
from libvirt_operator.pipeline.records import MAX_PENDING_EVENTS, Key, RecordStore
from libvirt_operator.pipeline.workqueue import WorkQueue
from libvirt_operator.settings import Settings, watch_timeouts

logger = logging.getLogger(__name__)


def kvm_problem(modules: Iterable[str], cpu_flags: Iterable[str]) -> str | None:
    """Pure: why this host's /dev/kvm cannot run a real guest (None: it can, as far as we can tell).

    A nested PVM hypervisor (module kvm_pvm, no vmx/svm flag) runs a guest without an operating system but
    not a Linux kernel: it dies with 'KVM internal error ... emulation failure' and QEMU pauses it."""
    flags = set(cpu_flags)
    if "kvm_pvm" in set(modules) and not flags & {"vmx", "svm"}:
        return ("/dev/kvm is kvm_pvm (a nested PVM hypervisor, no vmx/svm CPU flag), which cannot run a real "
                "guest kernel: guests run under TCG")
    return None


def _host_kvm_problem() -> str | None:
    """Blocking: kvm_problem of this host (/sys/module, /proc/cpuinfo)."""
    try:
        modules = os.listdir("/sys/module")
    except OSError:
        modules = []
    flags: list[str] = []
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    flags = line.split(":", 1)[1].split()
                    break
    except OSError:
        pass
    return kvm_problem(modules, flags)


def choose_domain_type(conn: libvirt.virConnect, wanted: str) -> tuple[str, str | None, str]:
    """Blocking: 'kvm' when libvirt offers KVM for the host arch and it can run a real guest, else 'qemu'
    (TCG); 'test' on test://. The third value says why (published on the Node)."""
    caps = ET.fromstring(conn.getCapabilities())
    host_arch = caps.findtext("./host/cpu/arch") or "x86_64"
    offered: dict[str, str | None] = {}
    for guest in caps.findall("guest"):
        arch = guest.find("arch")
        if arch is None or arch.get("name") != host_arch or guest.findtext("os_type") != "hvm":
            continue
        emulator = arch.findtext("emulator")
        for dom in arch.findall("domain"):
            offered[dom.get("type", "")] = dom.findtext("emulator") or emulator
    if "test" in offered:
        return "test", None, "the test driver"
    if wanted != "auto":
        if wanted not in offered:
            raise HypervisorError(f"--domain-type {wanted} is not offered by libvirt here "
                                  f"(offered: {', '.join(sorted(offered)) or 'none'})")
        return wanted, offered[wanted], f"--domain-type {wanted}"
    problem = _host_kvm_problem() if "kvm" in offered else None
    if "kvm" in offered and os.access("/dev/kvm", os.R_OK | os.W_OK) and problem is None:
        return "kvm", offered["kvm"], "auto: libvirt offers KVM and /dev/kvm is usable"
    if "qemu" in offered:
        if problem is not None:
            return "qemu", offered["qemu"], f"auto: {problem}"
        return "qemu", offered["qemu"], "auto: KVM is not available (libvirt offers none, or /dev/kvm is not usable)"
    raise HypervisorError(f"libvirt offers no hvm guest for {host_arch}")


def _freeze_long_lived_objects() -> None:
    """Keep the cyclic GC's full collections short: they scan every tracked object, and the ~100k that
    exist once start-up is done (modules, kopf, the kubernetes client's models, the VMs' first bodies)
    made each one a 90-120 ms loop stall at 1000 VMs. Frozen objects are still freed by reference counting;
    only cycles among them would never be collected, so the young generations are collected first."""
    gc.collect(1)
    gc.freeze()


class Runtime:
    """Owns the parts (connection, storage, records, queue, metrics) and hands each handler the ones it
    uses (context.py): the handlers never see the runtime itself."""

    def __init__(self, settings: Settings, kube: KubeClient, *, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.kube = kube
        self.metrics = metrics or Metrics()
        kube.on_request = self.metrics.on_api_request
        self.conn = Connection(settings.libvirt_uri, workers=max(settings.workers, 4),
                               max_backoff=settings.reconnect_max_backoff,
                               keepalive_interval=settings.keepalive_interval,
                               keepalive_count=settings.keepalive_count)
        self.conn.on_call = self.metrics.on_libvirt_call
        self.storage = Storage(settings.image_dir, settings.storage_dir)
        self.records = RecordStore()
        self.queue: WorkQueue[Key] = WorkQueue(max_delay=10.0)
        self.restart_required: dict[str, bool] = {}
        self.facts = HostFacts()  # filled in by start()
        self.host = HostReconciler(HostParts(settings=settings, conn=self.conn, storage=self.storage,
                                             records=self.records, post_event=self.post_event,
                                             get_vm=self._get_vm))
        self.migrations = MigrationController(MigrationParts(
            settings=settings, kube=kube, conn=self.conn, storage=self.storage, records=self.records,
            post_event=self.post_event, spawn=self.spawn, requeue_vm=self.queue.add))
        self.reconciler = Reconciler(VMParts(
            settings=settings, kube=kube, conn=self.conn, storage=self.storage, records=self.records,
            metrics=self.metrics, facts=self.facts, host=self.host, restart_required=self.restart_required,
            post_event=self.post_event, spawn=self.spawn, first_pass_done=self.first_pass_done,
            migrations=self.migrations))
        self.node = NodeReporter(settings, kube)
        self._pending_first: set[Key] = set()
        self._first_pass_event = asyncio.Event()
        self._startup_done = False
        self._ready_reason = "start-up reconciliation has not run yet"
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loops: list[asyncio.Task[Any]] = []
        self.startup_seconds: float | None = None
        self.lease: NodeLease | None = None
        self.lease_lost = False
        self.on_fatal: Callable[[], None] | None = None  # asks the process to stop (set by operator_main)
        self._stopped = False
        # The VM watch and listings are filtered by the API server to this node's VMs, unless it refused.
        self.node_scoped = True
        server_timeout, client_timeout = watch_timeouts(settings.watch_timeout)
        sink = WatchSink(event=self.observe, relisted=self._relisted, holds=self._holds)
        self.informer = VMInformer(kube, sink,
                                   namespace=settings.namespace, selector=lambda: self.watch_selector,
                                   server_timeout=server_timeout, client_timeout=client_timeout,
                                   on_relist=lambda why: self.metrics.vm_watch_relists.labels(why).inc())

    # --- readiness -----------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._startup_done and not self._pending_first

    def readiness(self) -> tuple[bool, str]:
        if self.ready:
            return True, "ready"
        if self._startup_done:
            return False, f"{len(self._pending_first)} VMs not reconciled yet"
        return False, self._ready_reason

    def first_pass_done(self, key: Key) -> None:
        self._pending_first.discard(key)
        if not self._pending_first:
            self._first_pass_event.set()

    # --- start-up and shutdown -------------------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        if s.lease:
            await self._acquire_lease()
        started = time.monotonic()
        self.conn.add_state_listener(self._on_connection_state)
        self.conn.add_event_sink(self._on_libvirt_event)
        self.conn.add_agent_sink(self._on_agent_event)
        self.node.start()
        await self.conn.start()
        self._ready_reason = f"waiting for libvirt at {s.libvirt_uri}"
        await self.conn.wait_connected()
        facts = self.facts
        facts.domain_type, facts.emulator, facts.domain_type_reason = await self.conn.call(
            "capabilities", lambda c: choose_domain_type(c, s.domain_type))
        info = await self.conn.call("host info", lambda c: read_host_info(c, facts.domain_type))
        node_info = await self.conn.call("node info", lambda c: c.getInfo())
        facts.capacity = (int(node_info[1]), int(node_info[2]))  # MiB, CPUs
        for warning in quality_warnings(info):
            logger.warning("host quality warning: %s", warning)
        logger.info("libvirt %s on %s (%s, %s): domain type %s (%s)", info.libvirt_version, s.node_name, info.arch,
                    info.cpu_model, facts.domain_type, facts.domain_type_reason)
        await self.node.publish_capabilities(info, domain_type_reason=facts.domain_type_reason)
        await asyncio.to_thread(self.storage.mark_node, s.node_name)

        self._ready_reason = "listing VirtualMachines"
        vms, listed_version = await self._list_vms_until_answered()
        for vm in vms:
            self.records.upsert(vm)
        self._ready_reason = "listing VirtualMachineMigrations"
        await self.migrations.start_up(vms)  # before the first pass: VMs migrating are held
        self._ready_reason = "scanning domains"
        await self.host.startup_scan(vms)

        mine = [rec.key for rec in self.records if rec.node_name == s.node_name]
        self._pending_first = set(mine)
        self.queue.start(self._reconcile, s.workers)
        for key in mine:
            self.queue.add(key)
        self.migrations.start()
        self._startup_done = True
        self._loops.append(asyncio.create_task(self.informer.run(listed_version), name="vm-watch"))
        self._loops.append(asyncio.create_task(self._sync_loop(), name="full-sync"))
        self._loops.append(asyncio.create_task(self.metrics.watch_loop_lag(collect=self._collect),
                                               name="loop-lag"))
        await self._wait_first_pass()
        self.startup_seconds = time.monotonic() - started
        _freeze_long_lived_objects()
        logger.info("start-up reconciliation done: %d VMs on %s in %.2fs; ready", len(mine), s.node_name,
                    self.startup_seconds)

    async def _acquire_lease(self) -> None:
        """One active operator per node: a second process (rolling update overlap, misconfiguration) waits."""
        duration = self.settings.lease_duration
        config = LeaseConfig.for_node(self.settings.node_name, duration=duration, renew_every=duration / 3,
                                      retry_every=min(2.0, duration / 4))
        self.lease = NodeLease(self.kube.api_client, config)
        self._ready_reason = f"waiting for the node lease {config.namespace}/{config.name}"
        await self.lease.acquire()
        logger.info("holding the node lease %s/%s as %s", config.namespace, config.name, config.identity)
        self._loops.append(asyncio.create_task(self.lease.hold(on_lost=self._lease_lost), name="node-lease"))

    def _lease_lost(self) -> None:
        logger.critical("lost the node lease: another operator process may act for node %s; stopping",
                        self.settings.node_name)
        self.lease_lost = True
        self._startup_done = False
        self._ready_reason = "lost the node lease"
        self.spawn(self.queue.stop())  # stop acting at once; the process then exits non-zero
        if self.on_fatal is not None:
            self.on_fatal()

    async def _wait_first_pass(self) -> None:
        if self._pending_first:
            await self._first_pass_event.wait()

    @property
    def watch_selector(self) -> str | None:
        """The field selector of the VM listings and watch, None: unfiltered."""
        return node_selector(self.settings.node_name) if self.node_scoped else None

    async def _list_vms_until_answered(self) -> tuple[list[dict[str, Any]], str]:
        delay = 0.2
        while True:
            try:
                return await self.kube.list_vms_at(self.settings.namespace, field_selector=self.watch_selector)
            except KubeError as exc:
                if self.node_scoped and selector_refused(exc.status, str(exc)):
                    self._fall_back_to_client_side_filtering(str(exc))
                    continue
                logger.warning("cannot list VirtualMachines (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    def _fall_back_to_client_side_filtering(self, answer: str) -> None:
        self.node_scoped = False
        note = ("VirtualMachine watch not node-scoped: the API server refused the field selector "
                f"{node_selector(self.settings.node_name)} (Kubernetes 1.31 or later and the CRD's "
                "selectableFields are needed); every VM of the cluster is listed and watched, filtered here")
        logger.warning("%s: %s", note, answer)
        self.node.set_note(note)

    async def _get_vm(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await self.kube.get_vm(namespace, name)
        except KubeError as exc:
            if exc.not_found:
                return None
            raise

    async def stop(self, grace: float = 30.0) -> None:
        """Idempotent: kopf's cleanup handler calls it, and so does a kopf restart (operator_main)."""
        if self._stopped:
            return
        self._stopped = True
        try:
            async with asyncio.timeout(grace):
                await self.queue.wait_idle()
        except TimeoutError:
            logger.warning("stopping with reconciliations still in progress")
        await self.queue.stop()
        await self.migrations.stop()
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        if self.lease is not None and not self.lease_lost:
            await self.lease.release()  # a successor takes over at once
        await self.node.stop()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.conn.close()

    # --- inputs ----------------------------------------------------------------------------------------

    def observe(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        """A watch event (type None: listed again after the watch expired); ``body`` is the informer's own
        decoded object, which a record keeps as it is."""
        meta = body.get("metadata", {})
        key: Key = (str(meta.get("namespace", "")), str(meta.get("name", "")))
        node = self.settings.node_name
        previous = self.records.get(key)
        was_mine = previous is not None and previous.node_name == node
        vm_node = (body.get("spec") or {}).get("nodeName")
        self.metrics.vm_watch_events.labels(event_type or "LISTED",
                                            "this" if vm_node == node or was_mine else "other").inc()
        logger.debug("VirtualMachine watch event %s for %s/%s (node %s)", event_type or "LISTED", *key, vm_node)
        if event_type == "DELETED":
            self.records.forget(key)
            meaning = deleted_meaning(body, node, node_scoped=self.node_scoped)
            if meaning is Deleted.MOVED_AWAY:
                self._moved_away(dict(body))
                return
            if meaning is Deleted.ASK and previous is not None:
                self.spawn(self._resolve_deleted(key, previous.uid))
                return
            record = self.records.remove(key)
            if record is not None and record.node_name == self.settings.node_name:
                # Deleted without our finalizer (forced): its domain is now an orphan.
                self.spawn(self._cleanup_vanished(record.uid))
            return
        if previous is not None and previous.holds(body):
            return  # the echo of our own write: nothing new
        if self.records.outdated(body):
            logger.debug("%s/%s: watch event older than the version it left this node's cache at: ignored", *key)
            return
        record = self.records.upsert(dict(body))
        if record.node_name == self.settings.node_name or was_mine:
            if self._startup_done:
                self.queue.add(key)

    def _holds(self, uid: str, version: str) -> bool:
        """The informer's question before it decodes a MODIFIED line: is this version of the object held
        already (the echo of our own write)? Then the line is counted as ``observe`` would count it, and
        dropped as ``observe`` would drop it."""
        record = self.records.by_uid(uid)
        if record is None or not record.holds_version(version):
            return False
        self.metrics.vm_watch_events.labels(
            "MODIFIED", "this" if record.node_name == self.settings.node_name else "other").inc()
        return True

    def _relisted(self, listed: list[dict[str, Any]]) -> None:
        """After a relist: the VMs that left the cache unseen (their events expired with the watch's
        version) are asked about as a DELETED event of theirs would have been (moved or deleted)."""
        held = {rec.key: rec.uid for rec in self.records}
        for key in vanished(held, listed):
            record = self.records.get(key)
            if record is not None:
                logger.info("%s/%s is not in the relisted VirtualMachines: moved or deleted while the watch "
                            "was expired", *key)
                self.observe("DELETED", record.body)

    def observe_migration(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        """A VirtualMachineMigration watch event (handlers/migration.py)."""
        self.migrations.observe(event_type, body)

    def _moved_away(self, body: dict[str, Any]) -> None:
        """Still exists, now another node's: the reconciler removes its domain here (and the record)."""
        record = self.records.upsert(body)
        if self._startup_done:
            self.queue.add(record.key)

    async def _resolve_deleted(self, key: Key, uid: str) -> None:
        """A selector watch's DELETED that may be a move: the API says whether the VM still exists."""
        delay = 0.2
        while True:
            try:
                current = await self._get_vm(*key)
                break
            except KubeError as exc:
                logger.warning("%s/%s left this node's watch; cannot tell moved from deleted yet (%s): retrying "
                               "in %.1fs", *key, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
        if current is not None and still_exists(uid, current):
            logger.info("%s/%s left this node's watch: it now belongs to node %s", *key,
                        (current.get("spec") or {}).get("nodeName"))
            self._moved_away(current)
            return
        record = self.records.get(key)
        if record is not None and record.uid == uid:
            self.records.remove(key)
        # Deleted without our finalizer (forced): its domain is now an orphan.
        await self._cleanup_vanished(uid)

    def _on_libvirt_event(self, event: LifecycleEvent) -> None:
        record = self.records.by_uid(event.uuid)
        owned = record is not None and record.node_name == self.settings.node_name
        self.metrics.events.labels(event_name(event.event), "yes" if owned else "no").inc()
        if record is None or not owned:
            logger.debug("libvirt event for domain %s ignored: not a VM of this node", event.uuid)
            return
        logger.debug("libvirt event %s/%s for %s/%s", event_name(event.event), event.detail, *record.key)
        if len(record.events) >= MAX_PENDING_EVENTS:
            del record.events[0]  # coalesce: only the latest states matter
        record.events.append(event)
        if record.event_latency_start is None:
            record.event_latency_start = event.received
        if self._startup_done:
            self.queue.add(record.key)

    def _on_agent_event(self, event: AgentEvent) -> None:
        record = self.records.by_uid(event.uuid)
        if record is None or record.node_name != self.settings.node_name:
            return
        if event.rebooted:
            logger.info("%s/%s: the guest rebooted", *record.key)
            record.rebooted = True
        else:
            logger.info("%s/%s: guest agent %s", *record.key, "connected" if event.connected else "disconnected")
        record.guest_due = True
        if self._startup_done:
            self.queue.add(record.key)

    def _on_connection_state(self, connected: bool, reason: str) -> None:
        self.node.set_connected(connected, reason)
        self.metrics.connected.set(1 if connected else 0)
        if self._startup_done:
            # Disconnected: every VM gets HypervisorConnected=False. Reconnected: a full sync.
            for rec in self.records:
                if rec.node_name == self.settings.node_name:
                    self.queue.add(rec.key)

    async def _cleanup_vanished(self, uid: str) -> None:
        try:
            exists = await self.conn.call("domain state", lambda c: domains.state_of(c, uid))
            if exists is None:
                return
            logger.warning("VirtualMachine with uid %s vanished without clean-up: removing its domain", uid)
            await self.host.destroy_owned(uid, undefine=True)
            if self.settings.delete_orphan_disks:
                await asyncio.to_thread(self.storage.remove_vm_dir, uid)
        except HypervisorError as exc:
            logger.warning("could not clean up the domain of vanished VM %s: %s", uid, exc)

    # --- periodic full sync ------------------------------------------------------------------------------

    async def full_sync(self) -> int:
        """One libvirt listing; queue only the VMs whose recorded state differs. Returns how many."""
        states = await self.conn.call("list domain states", domains.list_states)
        drifted = mine = 0
        for rec in self.records:
            if rec.node_name != self.settings.node_name:
                continue
            mine += 1
            status = rec.status
            dom = states.get(rec.uid)
            if dom is None:
                if status.get("domainName") and status.get("phase") not in ("Failed", "Pending", None):
                    drifted += 1
                    self.queue.add(rec.key)
                continue
            if power_state(dom.state).value != status.get("powerState"):
                drifted += 1
                self.queue.add(rec.key)
            elif _agent_connected(status) or _awaits_lease(rec.body):
                # Addresses change without an event (DHCP, the user): read the guest again. Only where an
                # agent answers, so that a host of guests without one costs no extra call per sync.
                rec.guest_due = True
                self.queue.add(rec.key)
        if drifted:
            logger.info("full sync: %d of %d domains drifted from their recorded state", drifted, len(states))
        logger.debug("full sync: %d VMs of this node, %d domains on the host, %d drifted", mine, len(states),
                     drifted)
        return drifted

    async def _sync_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.sync_interval)
            if not self.conn.connected:
                continue
            try:
                await self.full_sync()
            except HypervisorError as exc:
                logger.warning("full sync failed: %s", exc)
            await self._clean_image_cache()

    async def _clean_image_cache(self) -> None:
        try:
            removed = await asyncio.to_thread(image_import.remove_unused, self.settings.storage_dir,
                                              self.settings.image_cache_ttl)
        except OSError as exc:
            logger.warning("could not clean the image cache: %s", exc)
            return
        for sha256 in removed:
            logger.info("removed the cached image %s: no disk has used it for %.0f s (--image-cache-ttl)", sha256,
                        self.settings.image_cache_ttl)

    # --- reconciliation --------------------------------------------------------------------------------

    async def _reconcile(self, key: Key) -> float | None:
        started = time.monotonic()
        try:
            return await self.reconciler.reconcile(key)
        finally:
            self.metrics.reconcile.labels("vm").observe(time.monotonic() - started)

    # --- helpers ---------------------------------------------------------------------------------------

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def post_event(self, involved: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        try:
            await self.kube.post_event(involved, type_=type_, reason=reason, message=message)
        except KubeError as exc:
            logger.info("could not post event %s: %s", reason, exc)

    def _collect(self) -> None:
        phases: Counter[str] = Counter()
        for rec in self.records:
            if rec.node_name == self.settings.node_name:
                phases[str(rec.status.get("phase", "Pending"))] += 1
        self.metrics.set_phases(phases)


def _agent_connected(status: Mapping[str, Any]) -> bool:
    return (get_condition(status.get("conditions"), "AgentConnected") or {}).get("status") == "True"


def _awaits_lease(body: Mapping[str, Any]) -> bool:
    """A VM on a libvirt network whose status has no address yet: its DHCP lease may have come since."""
    spec = body.get("spec") or {}
    if not any(isinstance(i, dict) and i.get("network") for i in spec.get("interfaces") or []):
        return False
    reported = (body.get("status") or {}).get("interfaces") or []
    return not any(isinstance(i, dict) and i.get("ipAddresses") for i in reported)
