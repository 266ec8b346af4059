"""Reconciliation of one VirtualMachine on this node: level-triggered, one key at a time.

Every trigger (a watch event, a libvirt event, the periodic sync, a reconnection) only queues the VM's
key; this module then compares what the VM wants with what libvirt reports and acts. The order of the
checks follows nova's ``_init_instance``: deletion, then interrupted provisioning, then a missing domain,
then power state. Status is written only when it changes, in one merge patch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

import libvirt

from libvirt_operator.api.constants import FINALIZER, MIGRATING_ANNOTATION, RESTART_ANNOTATION, RETRY_ANNOTATION
from libvirt_operator.api.spec import Limits, SpecError, VMSpec, parse_spec
from libvirt_operator.api.status import (
    Phase,
    PowerState,
    detail_name,
    event_name,
    event_time,
    get_condition,
    now_iso,
    power_state,
    remove_condition,
    set_condition,
    state_reason,
)
from libvirt_operator.context import VMParts
from libvirt_operator.hypervisor import domains, guest, hardware, image_import, seed
from libvirt_operator.hypervisor.bridges import bridge_problem, read_bridge
from libvirt_operator.hypervisor.connection import HypervisorError, HypervisorUnavailable, Retry, start_retry
from libvirt_operator.hypervisor.domain_xml import Owner, build_domain_xml, busy_host_port, field_named_by
from libvirt_operator.hypervisor.seed import SeedData, SeedError
from libvirt_operator.hypervisor.storage import StorageError
from libvirt_operator.kube.client import KubeError
from libvirt_operator.pipeline.migration_policy import is_migration_event
from libvirt_operator.pipeline.policy import Action, Decision, Observed, decide, phase_for
from libvirt_operator.pipeline.records import Key, VMRecord

logger = logging.getLogger(__name__)

STOP_POLL = 0.5
# Longest wait for the STOPPED event that follows QEMU's SHUTDOWN notice.
SHUTDOWN_TO_STOPPED = 10.0
# Notable libvirt events that also become Kubernetes Events on the VM: (type, detail) -> (type, reason).
NOTABLE: dict[tuple[str, str], tuple[str, str]] = {
    ("Stopped", "Crashed"): ("Warning", "GuestCrashed"),
    ("Stopped", "Failed"): ("Warning", "GuestFailed"),
    ("Stopped", "Destroyed"): ("Warning", "GuestDestroyed"),
    ("Stopped", "Shutdown"): ("Normal", "GuestShutdown"),
    ("Suspended", "IOError"): ("Warning", "IOErrorPause"),
    ("Suspended", "Watchdog"): ("Warning", "WatchdogPause"),
    ("Suspended", "APIError"): ("Warning", "APIErrorPause"),
    ("Crashed", "Panicked"): ("Warning", "GuestPanicked"),
    ("Crashed", "Crashloaded"): ("Warning", "GuestCrashloaded"),
}


def _start_events(spec: VMSpec) -> tuple[str, ...]:
    # QEMU starts paused and libvirt then reports RESUMED and STARTED; a paused start, SUSPENDED.
    return ("Started", "Suspended" if spec.paused else "Resumed")


IMPORT_PROGRESS_EVERY = 2.0  # seconds between status updates of a download


def _download_message(field: str, url: str, progress: Mapping[str, Any]) -> str:
    """Pure: the status message of a download in progress."""
    done, total = int(progress.get("done") or 0), progress.get("total")
    of = f" of {int(total) / 2**20:.1f} MiB ({100 * done // max(int(total), 1)}%)" if total else ""
    return f"{field}: downloading {url}: {done / 2**20:.1f} MiB{of}"


# Pauses whose libvirt reason does not say why: QEMU's own run state may (internal-error).
UNEXPLAINED_PAUSES = frozenset({"Unknown", "Crashed", "APIError"})
INTERNAL_ERROR_MESSAGE = ("QEMU stopped the guest on an internal error of the hypervisor (with KVM: it cannot run "
                          "this guest, e.g. a nested kvm_pvm host; run the operator with --domain-type auto or "
                          "qemu). It stays paused; stop and start it (runStrategy) to try again")


def agent_condition(data: guest.GuestData | None, active: bool) -> tuple[str, str, str]:
    """Pure: the AgentConnected condition (status, reason, message) for what the guest told."""
    if not active or data is None:
        return "False", "GuestNotRunning", "the guest is not running"
    if data.agent_connected:
        return "True", "AgentAnswers", "the QEMU guest agent answers"
    if data.agent_error:
        return "False", "AgentNotAnswering", f"the agent's channel is up but it did not answer: {data.agent_error}"
    return "False", "AgentNotConnected", "no QEMU guest agent is connected (is qemu-guest-agent running in the guest?)"


def start_failure_message(detail: str, field: str | None, node: str) -> str:
    """Pure: the status message of a start libvirt refused for good, naming the field when one is known."""
    if field is not None:
        return f"{field}: {detail} on node {node}"
    return f"libvirt refused to start the domain on node {node}: {detail}"


def retried_start_message(detail: str, spec: VMSpec, node: str) -> str:
    """Pure: the status message of a start that is retried; a taken host port is named as its field (the
    start succeeds once the port is free: the other VM stopped, or its forward changed)."""
    busy = busy_host_port(detail, spec)
    if busy is None:
        return detail
    return (f"{busy.field}: host port {busy.host_port}/{busy.protocol} of 127.0.0.1 is already in use on node "
            f"{node} (another VM forwards it, or a process listens on it); the start is retried until it is free")


class Reconciler:
    def __init__(self, parts: VMParts) -> None:
        self.parts = parts
        s = parts.settings
        self.limits = Limits(max_vcpus=s.max_vcpus, max_memory_mib=s.max_memory_mib, max_disks=s.max_disks,
                             max_interfaces=s.max_interfaces)

    # --- entry point -----------------------------------------------------------------------------

    async def reconcile(self, key: Key) -> float | None:
        rec = self.parts.records.get(key)
        if rec is None:
            return None
        first_pass = not rec.seen_by_this_process
        try:
            return await self._reconcile(rec, first_pass)
        finally:
            rec.seen_by_this_process = True
            self.parts.first_pass_done(key)

    async def _reconcile(self, rec: VMRecord, first_pass: bool) -> float | None:
        node = self.parts.settings.node_name
        rec.acting_on = None
        if rec.node_name != node:
            if rec.uid:
                await self.parts.host.clean_moved_domain(rec)
            if self.parts.records.get(rec.key) is rec and rec.node_name != node:
                # Another node's now: a node-scoped watch says nothing more about it (should it come back,
                # it arrives as ADDED), so it leaves the cache.
                self.parts.records.remove(rec.key)
            return None

        if self.parts.migrations.holds(rec.uid):
            return None  # a live migration moves its guest: handlers/migration.py requeues it when done

        if not self.parts.conn.connected:
            await self._write_status(rec, self._disconnected_status(rec))
            return None  # the reconnection requeues every VM

        meta = rec.body["metadata"]
        if meta.get("deletionTimestamp"):
            if FINALIZER in (meta.get("finalizers") or []):
                return await self._delete(rec)
            return None

        if FINALIZER not in (meta.get("finalizers") or []):
            rec.body = await self.parts.kube.add_finalizer(rec.body, FINALIZER)
        # One body for the whole pass: a spec change landing while it awaits libvirt or the API is not
        # recorded as observed by this pass; it makes the next pass act (its watch event requeues the key).
        rec.acting_on = rec.body

        held = self._absorb_events(rec)
        if held is not None:
            return held

        status = rec.status
        if status.get("phase") == Phase.FAILED.value and not self._retry_requested(rec):
            return None

        # The domain first: whatever fails below, the status names a domain only while one exists.
        dom = await self.parts.conn.call("domain state", lambda c: domains.state_of(c, rec.uid))
        if dom is not None and not rec.owner_verified:
            owner = await self.parts.conn.call("domain owner", lambda c: domains.owner_of(c, rec.uid))
            if owner is None or owner.uid != rec.uid or owner.node != node:
                await self._fail(rec, "DomainConflict", f"a libvirt domain with UUID {rec.uid} ({dom.name}) exists "
                                 "on this node and is not owned by this operator: it is left alone", None)
                return None
            rec.owner_verified = True

        try:
            spec = self._spec(rec, rec.acting_on)
            self._check_host_capacity(spec)
        except SpecError as exc:
            await self._fail(rec, "InvalidSpec", str(exc), dom)
            return None

        # nova's order: an interrupted provisioning wins over a missing domain.
        # Only a provisioning left by an earlier process is "interrupted"; ours is retried (transient errors).
        if status.get("phase") == Phase.PROVISIONING.value and first_pass and not rec.provisioning_here:
            await self._interrupted_provisioning(rec, dom is not None)
            return None

        first_start = False
        started: dict[str, Any] = {}
        if dom is None:
            if status.get("domainName") and status.get("phase") not in (None, Phase.PENDING.value):
                await self.parts.post_event(rec.body, "Warning", "DomainRedefined",
                                         f"domain {status.get('domainName')} was missing on node {node}; "
                                         "defining it again from the spec")
            try:
                made = await self._provision(rec, spec)
            except (ValueError, StorageError) as exc:  # SpecError is a ValueError
                await self._fail(rec, "ProvisioningFailed", str(exc), None)
                return None
            except HypervisorUnavailable:
                raise  # retried after reconnection
            except HypervisorError as exc:  # libvirt refused the definition: permanent for this spec
                await self._fail(rec, "ProvisioningFailed", f"libvirt refused the domain: {exc}", None)
                return None
            dom = made.state
            rec.owner_verified = True  # defined from our XML, owner metadata included
            if made.start_error is not None:
                await self._start_failed(rec, spec, dom, made.start_error)
                return None  # refused for good: Failed naming the field (a transient refusal raised)
            if made.started:
                started = self._start_fields()
            first_start = True
        elif status.get("phase") == Phase.FAILED.value or self._generation_moved(rec):
            # A retry or a spec change: bring the definition in line with the spec.
            if not await self._redefine_if_changed(rec, spec, dom):
                return None  # refused: Failed naming the field; the running guest is left as it is
            first_start = status.get("phase") == Phase.FAILED.value
        if self._first_start_failed(status):
            first_start = True  # retrying a first start libvirt refused is no restart by policy

        if first_pass and dom.active and get_condition(status.get("conditions"), "RestartRequired") is not None:
            # The condition outlives this process only in the status: check it against libvirt itself.
            if await self._pending_restart(rec):
                self.parts.restart_required[rec.uid] = True

        return await self._converge_power(rec, spec, dom, first_start=first_start, first_pass=first_pass,
                                          started=started)

    async def _pending_restart(self, rec: VMRecord) -> bool:
        def read(c: libvirt.virConnect) -> bool:
            live = domains.xml_of(c, rec.uid)
            persistent = domains.xml_of(c, rec.uid, flags=libvirt.VIR_DOMAIN_XML_INACTIVE)
            return live is not None and persistent is not None and hardware.pending_restart(live, persistent)
        return bool(await self.parts.conn.call("domain XML", read))

    async def _act(self, rec: VMRecord, what: str, fn: Any, *expected: str) -> Any:
        """A libvirt action whose own events are absorbed: expected from before the call (they may arrive
        while it runs) until EXPECT_WINDOW after it returned (a start may take long on a busy host)."""
        rec.expect(*expected)
        result = await self.parts.conn.call(what, fn)
        rec.expect(*expected)
        return result

    # --- power ---------------------------------------------------------------------------------------

    async def _converge_power(self, rec: VMRecord, spec: VMSpec, dom: domains.DomainState, *,
                              first_start: bool, first_pass: bool,
                              started: Mapping[str, Any] | None = None) -> float | None:
        """``started``: the status fields of a start made while provisioning, to be written with it."""
        status = rec.status
        observed = Observed(power_state(dom.state), state_reason(dom.state, dom.reason))
        believed_running = status.get("phase") in (Phase.RUNNING.value, Phase.PAUSED.value,
                                                   Phase.STARTING.value)
        spec_changed = self._generation_moved(rec)

        if rec.stop_deadline is not None:
            return await self._continue_stop(rec, spec, dom)

        stopped = not dom.active
        delay = self.parts.settings.stopped_event_delay
        if stopped and believed_running and not first_pass and not first_start and delay > 0:
            # Seen shut off before its STOPPED event arrived: give the event the same hold as if it had.
            now = time.monotonic()
            if rec.observed_stop_at is None:
                rec.observed_stop_at = now
            if now < rec.observed_stop_at + delay:
                return rec.observed_stop_at + delay - now
        if not stopped:
            rec.observed_stop_at = None

        decision = decide(run_strategy=spec.run_strategy, paused=spec.paused, observed=observed,
                          first_start=first_start, spec_changed=spec_changed, believed_running=believed_running)
        resuming = (first_pass and not first_start and believed_running and stopped
                    and spec.run_strategy != "Halted"
                    # Once: a guest that stopped by itself while the operator was away has had its run.
                    and not (spec.run_strategy == "Once" and observed.reason not in ("Unknown", "Daemon")))
        if resuming:
            # nova's resume_guests_state_on_host_boot: the status says it ran, libvirt says it is off.
            if not self.parts.settings.resume_guests_on_host_boot:
                logger.info("%s/%s: shut off at start-up, resumeGuestsOnHostBoot is off: left stopped", *rec.key)
                note = {"reason": "NotResumedOnHostBoot",
                        "message": "found shut off at operator start-up; resumeGuestsOnHostBoot is off"}
                await self._write_status(rec, self._observed_status(rec, spec, dom, extra=note))
                return None
            logger.info("%s/%s: %s (%s) but status said %s: starting it again (resume on host boot)",
                        *rec.key, observed.power.value, observed.reason, status.get("phase"))
            await self.parts.post_event(rec.body, "Normal", "ResumedOnHostBoot",
                                     "the guest should run but its domain was shut off at operator start-up")
            decision = Decision(Action.START, "resume on host boot")
        elif decision.action == Action.START and not first_start and not spec_changed \
                and status.get("reason") == "NotResumedOnHostBoot":
            decision = Decision(Action.NONE, "left stopped at start-up (resumeGuestsOnHostBoot off)")
        elif decision.action != Action.NONE:
            logger.info("%s/%s: observed %s (%s): %s -> %s", *rec.key, observed.power.value, observed.reason,
                        decision.why, decision.action.value)
        if decision.action == Action.NONE and status.get("reason") == "NotResumedOnHostBoot" and stopped:
            await self._write_status(rec, self._observed_status(rec, spec, dom, extra={
                "reason": "NotResumedOnHostBoot", "message": status.get("message", "")}))
            return None

        extra: dict[str, Any] = dict(started or {})
        restart_delay = await self._restart_request(rec, spec, dom, extra)
        if decision.action == Action.START:
            result = await self._start(rec, spec, dom, restart=decision.restart_by_policy)
            if result is None:
                return None  # refused for good: Failed naming the field
            dom, extra = result
        elif decision.action == Action.STOP:
            return await self._begin_stop(rec, spec, dom, reason="StoppedByPolicy")
        elif decision.action == Action.PAUSE:
            dom = await self._act(rec, "suspend", lambda c: domains.suspend(c, rec.uid), "Suspended")
            extra["lastEvent"] = self._own_event("Suspended", "Paused")
        elif decision.action == Action.RESUME:
            dom = await self._act(rec, "resume", lambda c: domains.resume(c, rec.uid), "Resumed")
            extra["lastEvent"] = self._own_event("Resumed", "Unpaused")

        if dom.active and power_state(dom.state) == PowerState.PAUSED and not spec.paused \
                and state_reason(dom.state, dom.reason) in UNEXPLAINED_PAUSES:
            extra.update(await self._internal_error(rec, dom))
        fields, agent = await self._guest_fields(rec, spec, dom)
        extra.update(fields)
        await self._write_status(rec, self._observed_status(rec, spec, dom, extra=extra, agent=agent))
        return restart_delay

    async def _restart_request(self, rec: VMRecord, spec: VMSpec, dom: domains.DomainState,
                               extra: dict[str, Any]) -> float | None:
        """The restart annotation: a new value reboots a running guest gracefully (guest agent, else ACPI),
        with a reset if libvirt has not seen it reboot within the grace period. Returns a requeue delay."""
        if rec.reboot_deadline is not None:
            if rec.rebooted or not dom.active:
                rec.reboot_deadline = None
            elif time.monotonic() >= rec.reboot_deadline:
                rec.reboot_deadline = None
                logger.info("%s/%s: the guest did not reboot within its grace period: resetting", *rec.key)
                await self.parts.conn.call("reset", lambda c: domains.reset(c, rec.uid))
                self.parts.spawn(self.parts.post_event(rec.body, "Warning", "GuestReset",
                                                       "the guest did not reboot within its grace period: reset"))
            else:
                return rec.reboot_deadline - time.monotonic()
        token = str(((rec.acting_on or rec.body)["metadata"].get("annotations") or {}).get(RESTART_ANNOTATION, ""))
        if not token or token == rec.status.get("observedRestart", ""):
            return None
        extra["observedRestart"] = token
        if not dom.active or power_state(dom.state) != PowerState.RUNNING:
            self.parts.spawn(self.parts.post_event(rec.body, "Normal", "RestartSkipped",
                                                   f"{RESTART_ANNOTATION}={token}: the guest is not running"))
            return None
        agent = (get_condition(rec.status.get("conditions"), "AgentConnected") or {}).get("status") == "True"
        grace = self._grace(rec, spec)
        rec.rebooted = False
        method = await self.parts.conn.call("reboot", lambda c: domains.reboot(c, rec.uid, agent=agent))
        rec.reboot_deadline = time.monotonic() + grace
        how = "the QEMU guest agent" if method == "agent" else "ACPI"
        self.parts.spawn(self.parts.post_event(rec.body, "Normal", "Rebooting",
                                               f"{RESTART_ANNOTATION}={token}: asked the guest to reboot through "
                                               f"{how}; reset if it has not rebooted after {grace:g}s"))
        return grace

    async def _internal_error(self, rec: VMRecord, dom: domains.DomainState) -> dict[str, Any]:
        """A pause nobody asked for: QEMU's own run state tells an internal error (a KVM that cannot run the
        guest) from other pauses, so the status does not look like a user's pause."""
        try:
            state = await self.parts.conn.call("QEMU run state", lambda c: guest.qemu_run_state(c, rec.uid))
        except HypervisorUnavailable:
            raise
        except HypervisorError:
            return {}
        if state != "internal-error":
            return {}
        if rec.status.get("reason") != "InternalError":
            self.parts.spawn(self.parts.post_event(rec.body, "Warning", "GuestInternalError", INTERNAL_ERROR_MESSAGE))
        return {"reason": "InternalError", "message": INTERNAL_ERROR_MESSAGE}

    async def _guest_fields(self, rec: VMRecord, spec: VMSpec,
                            dom: domains.DomainState) -> tuple[dict[str, Any], tuple[str, str, str] | None]:
        """status.interfaces, status.guestOS and the AgentConnected condition, read again only when due (an
        agent event, the periodic sync, a start); cleared once the guest is off."""
        if not dom.active or not rec.guest_due:
            return {}, None  # an off guest's data is cleared by _observed_status
        rec.guest_due = False
        try:
            data = await self.parts.conn.call(
                "guest data", lambda c: guest.read_guest(c, rec.uid, rec.uid, spec.interfaces))
        except HypervisorUnavailable:
            raise
        except HypervisorError as exc:
            logger.info("%s/%s: cannot read the guest's data: %s", *rec.key, exc)
            return {}, None
        if data is None:
            return {}, None
        agent: tuple[str, str, str] | None = agent_condition(data, True)
        if (not rec.seen_by_this_process and not data.agent_connected
                and get_condition(rec.status.get("conditions"), "AgentConnected") is None):
            # A (re)started operator's first read of a guest whose agent never connected: no condition, as
            # the instance before wrote none (a start leaves the first one to the agent's connection event);
            # else every restart would cost one status write per VM of the node.
            agent = None
        return {"interfaces": data.interfaces or None, "guestOS": data.guest_os}, agent

    async def _start(self, rec: VMRecord, spec: VMSpec, dom: domains.DomainState, *,
                     restart: bool) -> tuple[domains.DomainState, dict[str, Any]] | None:
        """Starts the guest; returns its state right after and the status fields the start sets, or None
        when the start was refused for good (the VM is then Failed)."""
        error = self._bridge_error(spec)
        if error is not None:  # libvirt would start it without a link, or fail with an unclear message
            await self._fail(rec, "StartFailed", str(error), dom)
            return None
        try:
            await self._refresh_seed(rec, spec)
        except (SpecError, StorageError) as exc:
            await self._fail(rec, "StartFailed", str(exc), dom)
            return None
        self.parts.restart_required.pop(rec.uid, None)
        # Nothing to read from a guest that is only booting: its agent's connection (an event) asks for it.
        rec.guest_due = False
        try:
            state = await self._act(rec, "start", lambda c: domains.start(c, rec.uid, paused=spec.paused),
                                    *_start_events(spec))
        except HypervisorUnavailable:
            raise
        except HypervisorError as exc:
            await self._start_failed(rec, spec, dom, exc)
            return None
        extra = self._start_fields()
        if restart:
            extra["restarts"] = int(rec.status.get("restarts") or 0) + 1
            await self.parts.post_event(rec.body, "Normal", "RestartedByPolicy",
                                     f"guest restarted by runStrategy {spec.run_strategy}")
            self.parts.metrics.restarts.inc()
        return state, extra

    @staticmethod
    def _first_start_failed(status: Mapping[str, Any]) -> bool:
        return (status.get("phase") == Phase.STARTING.value and status.get("reason") == "StartFailed"
                and not status.get("startedAt"))

    def _start_fields(self) -> dict[str, Any]:
        return {"lastEvent": self._own_event("Started", "Booted"), "startedAt": now_iso()}

    async def _start_failed(self, rec: VMRecord, spec: VMSpec, dom: domains.DomainState,
                            exc: HypervisorError) -> None:
        """A start libvirt refused. For good (start_retry): Failed naming the field, and returns. Otherwise
        the wish is persisted so that the start is retried, also by a restarted operator (nova: POWERING_ON),
        and the error raised: the work queue retries with backoff."""
        if start_retry(exc.code, exc.domain, exc.errno) == Retry.PERMANENT:
            field = field_named_by(exc.detail, spec, self._disk_files(rec, spec))
            await self._fail(rec, "StartFailed", start_failure_message(exc.detail, field,
                                                                         self.parts.settings.node_name), dom)
            return
        await self._write_status(rec, {"phase": Phase.STARTING.value, "reason": "StartFailed",
                                       "message": retried_start_message(str(exc), spec,
                                                                        self.parts.settings.node_name),
                                       **_domain_fields(dom)})
        raise exc

    def _disk_files(self, rec: VMRecord, spec: VMSpec) -> dict[str, list[str]]:
        """Each disk's own file, then its image's: the names libvirt quotes when a disk is the problem."""
        storage = self.parts.storage
        def base(d: Any) -> list[str]:
            if d.image_url is not None and d.sha256 is not None:
                return [str(image_import.cached_path(storage.storage_dir, d.sha256))]
            return [str(storage.image_dir / d.image)] if d.image else []
        return {d.name: [str(storage.disk_path(rec.uid, d.name)), *base(d)] for d in spec.disks}

    def _grace(self, rec: VMRecord, spec: VMSpec | None) -> float:
        if spec is None:  # deletion: the spec as it was, if it still parses
            try:
                spec = self._spec(rec, rec.body)
            except SpecError:
                spec = None
        if spec is not None and spec.termination_grace_seconds is not None:
            return float(spec.termination_grace_seconds)
        return self.parts.settings.shutdown_timeout

    async def _begin_stop(self, rec: VMRecord, spec: VMSpec | None, dom: domains.DomainState,
                          *, reason: str) -> float | None:
        grace = self._grace(rec, spec)
        agent = (get_condition(rec.status.get("conditions"), "AgentConnected") or {}).get("status") == "True"
        rec.stop_started = time.monotonic()
        rec.stop_deadline = rec.stop_started + grace
        rec.stop_grace = grace
        rec.stop_method = await self._act(rec, "shutdown", lambda c: domains.shutdown(c, rec.uid, agent=agent),
                                          "Shutdown", "Stopped")
        how = "the QEMU guest agent" if rec.stop_method == "agent" else "ACPI"
        self.parts.spawn(self.parts.post_event(rec.body, "Normal", "ShuttingDown",
                                               f"asked the guest to shut down through {how} ({reason}); destroyed "
                                               f"if still running after {grace:g}s"))
        if spec is not None:
            user_asked = self._generation_moved(rec)
            # Persisting Stopping lets a restarted operator retry an interrupted stop (nova: POWERING_OFF).
            await self._write_status(rec, self._observed_status(
                rec, spec, dom, extra={"phase": Phase.STOPPING.value, "reason": reason}))
            if not user_asked:
                await self.parts.post_event(rec.body, "Normal", reason,
                                         f"guest stopped again: runStrategy is {spec.run_strategy}")
        return STOP_POLL

    async def _continue_stop(self, rec: VMRecord, spec: VMSpec | None,
                             dom: domains.DomainState | None) -> float | None:
        """Poll a graceful shutdown; destroy once the timeout has passed. Returns a requeue delay."""
        how = "Shutdown"  # libvirt's STOPPED detail for what ended the guest
        if dom is not None and dom.active:
            deadline = rec.stop_deadline or 0.0
            if time.monotonic() < deadline:
                return min(STOP_POLL, max(deadline - time.monotonic(), 0.05))
            logger.info("%s/%s: guest did not shut down within %.0fs: destroying", *rec.key, rec.stop_grace)
            # A destroy is reported as a Shutdown notice (detail host) and then Stopped.
            dom = await self._act(rec, "destroy", lambda c: domains.destroy(c, rec.uid), "Shutdown", "Stopped")
            how = "Destroyed"
            self.parts.spawn(self.parts.post_event(
                rec.body, "Warning", "GuestDestroyed",
                f"the guest did not shut down within its grace period of {rec.stop_grace:g}s: destroyed"))
        elif rec.stop_started is not None:
            took = time.monotonic() - rec.stop_started
            method = "the QEMU guest agent" if rec.stop_method == "agent" else "ACPI"
            self.parts.spawn(self.parts.post_event(rec.body, "Normal", "GuestStopped",
                                                   f"the guest shut down cleanly through {method} in {took:.1f}s"))
        rec.stop_deadline = None
        rec.stop_started = None
        if spec is not None and dom is not None:
            await self._write_status(rec, self._observed_status(
                rec, spec, dom, extra={"lastEvent": self._own_event("Stopped", how), "stoppedAt": now_iso()}))
        return None

    # --- provisioning ----------------------------------------------------------------------------------

    async def _provision(self, rec: VMRecord, spec: VMSpec) -> domains.Created:
        """Defines the domain, and starts it in the same worker call when its first start is due."""
        rec.provisioning_here = True
        try:
            # No domainName yet: the status names a domain only once it exists.
            await self._write_status(rec, {
                "phase": Phase.PROVISIONING.value, "nodeName": self.parts.settings.node_name,
                "reason": "Provisioning", "message": "",
                "observedGeneration": self._acting_generation(rec),
                "disks": [{"name": d.name, "path": str(self.parts.storage.disk_path(rec.uid, d.name))}
                          for d in spec.disks],
            })
            xml, _seed_changed = await self._build_xml(rec, spec)
            if not self._starts_on_creation(rec, spec):
                state: domains.DomainState = await self._act(rec, "define", lambda c: domains.define(c, xml),
                                                             "Defined")
                return domains.Created(state, started=False)
            logger.info("%s/%s: new domain, runStrategy %s: defining and starting it%s", *rec.key,
                        spec.run_strategy, " paused" if spec.paused else "")
            self.parts.restart_required.pop(rec.uid, None)
            rec.guest_due = False  # see _start
            made: domains.Created = await self._act(
                rec, "define and start", lambda c: domains.define_and_start(c, xml, paused=spec.paused),
                "Defined", *_start_events(spec))
            return made
        finally:
            rec.provisioning_here = False

    def _starts_on_creation(self, rec: VMRecord, spec: VMSpec) -> bool:
        """What the power policy decides for the domain about to be defined (shut off, never started)."""
        decision = decide(run_strategy=spec.run_strategy, paused=spec.paused,
                          observed=Observed(PowerState.SHUTOFF, "Unknown"), first_start=True,
                          spec_changed=self._generation_moved(rec), believed_running=False)
        return decision.action == Action.START

    async def _build_xml(self, rec: VMRecord, spec: VMSpec) -> tuple[str, bool]:
        """The domain XML for ``spec`` (disks and the cloud-init seed made first); and whether the seed
        was (re)written."""
        meta = rec.body["metadata"]
        await self._check_networks(spec)
        storage = self.parts.storage
        owner = Owner(namespace=meta["namespace"], name=meta["name"], uid=rec.uid, node=self.parts.settings.node_name)
        await self._import_images(rec, spec)
        files = await self._seed_files(rec, spec)

        def build() -> tuple[str, bool]:  # off the loop: disk and seed creation, path resolution
            paths = storage.prepare_disks(rec.uid, spec)
            seed_path, changed = (None, False) if files is None else self._write_seed(rec.uid, files)
            kernel = initrd = None
            if spec.boot is not None:
                kernel = storage.resolve_boot_file(spec.boot.kernel, "spec.boot.kernel")
                if spec.boot.initrd is not None:
                    initrd = storage.resolve_boot_file(spec.boot.initrd, "spec.boot.initrd")
            xml = build_domain_xml(owner=owner, spec=spec, domain_type=self.parts.facts.domain_type, disk_paths=paths,
                                   allowed_dirs=[storage.image_dir, storage.storage_dir],
                                   emulator=self.parts.facts.emulator, seed=seed_path,
                                   console_log=storage.console_log_path(rec.uid), kernel=kernel, initrd=initrd)
            return xml, changed
        return await asyncio.to_thread(build)

    async def _import_images(self, rec: VMRecord, spec: VMSpec) -> None:
        """URL images downloaded into the node's cache (once, verified), with the progress in status.message."""
        storage_dir = self.parts.storage.storage_dir
        for index, disk in enumerate(spec.disks):
            url, sha256 = disk.image_url, disk.sha256
            if url is None or sha256 is None or image_import.cached_path(storage_dir, sha256).is_file():
                continue
            progress: dict[str, Any] = {"done": 0, "total": None}

            def note(done: int, total: int | None, progress: dict[str, Any] = progress) -> None:
                progress["done"], progress["total"] = done, total  # from the download's thread
            field = f"spec.disks[{index}]"
            logger.info("%s/%s: downloading %s for %s", *rec.key, url, field)
            task = asyncio.ensure_future(asyncio.to_thread(
                image_import.fetch, url, sha256, storage_dir, field=field, max_bytes=self.limits.max_disk_bytes,
                progress=note))
            while not task.done():
                await asyncio.wait([task], timeout=IMPORT_PROGRESS_EVERY)
                if not task.done():
                    await self._write_status(rec, {"message": _download_message(field, url, progress)})
            try:
                task.result()
            except image_import.ImageImportError as exc:
                raise StorageError(exc.field, exc.message) from None
            await self._write_status(rec, {"message": ""})
            await self.parts.post_event(rec.body, "Normal", "ImageImported", f"{field}: {url} downloaded and verified")

    def _write_seed(self, uid: str, files: Mapping[str, bytes]) -> tuple[Any, bool]:
        try:
            return seed.write_seed(self.parts.storage.vm_dir(uid), files)
        except SeedError as exc:
            raise StorageError(None, str(exc)) from exc

    async def _seed_files(self, rec: VMRecord, spec: VMSpec) -> dict[str, bytes] | None:
        """The NoCloud seed's files for ``spec`` (a Secret read when it names one); None: no seed."""
        if not spec.wants_seed:
            return None
        meta = rec.body["metadata"]
        ci = spec.cloud_init
        keys = list(spec.ssh_authorized_keys)
        if spec.ssh_keys_secret is not None:
            field = "spec.sshAuthorizedKeysSecretRef.name"
            data = await self._secret(rec, spec.ssh_keys_secret, field)
            keys += [k for k in seed.secret_ssh_keys(spec.ssh_keys_secret, data, field) if k not in keys]
        if ci is not None and ci.secret_name is not None:
            data = await self._secret(rec, ci.secret_name, "spec.cloudInit.secretRef.name")
            seed_data = seed.secret_seed_data(ci.secret_name, data, keys)
        else:
            seed_data = SeedData(user_data=ci.user_data if ci else None, network_data=ci.network_data if ci else None,
                                 ssh_authorized_keys=tuple(keys))
        return seed.seed_files(uid=rec.uid, name=meta["name"], data=seed_data)

    async def _secret(self, rec: VMRecord, name: str, field: str) -> dict[str, bytes]:
        """A Secret of the VM's namespace; not found or not readable: SpecError naming ``field``."""
        namespace = rec.body["metadata"]["namespace"]
        try:
            return await self.parts.kube.get_secret_data(namespace, name)
        except KubeError as exc:
            if exc.status == 404:
                raise SpecError(field, f"Secret {name!r} not found in namespace {namespace}; create it, then set "
                                f"the annotation {RETRY_ANNOTATION}") from None
            if exc.status == 403:
                raise SpecError(field, f"the operator may not read Secret {name!r} in namespace {namespace}: grant "
                                "it get on Secrets there (the chart's cloudInit.secretNamespaces)") from None
            raise

    async def _refresh_seed(self, rec: VMRecord, spec: VMSpec) -> bool:
        """Before a start: the seed made current (a Secret may have changed). True when it was rewritten."""
        files = await self._seed_files(rec, spec)
        if files is None:
            return False
        _path, changed = await asyncio.to_thread(self._write_seed, rec.uid, files)
        return changed

    async def _check_networks(self, spec: VMSpec) -> None:
        for index, iface in enumerate(spec.interfaces):
            if iface.network is not None:
                name = iface.network
                exists = await self.parts.conn.call("network lookup", _network_probe(name))
                if not exists:
                    raise SpecError(f"spec.interfaces[{index}].network",
                                    f"libvirt network {name!r} does not exist on node {self.parts.settings.node_name}")
        error = self._bridge_error(spec)
        if error is not None:
            raise error

    def _bridge_error(self, spec: VMSpec) -> SpecError | None:
        """The first interface whose bridge cannot carry a guest on this node (sysfs reads, no libvirt)."""
        for index, iface in enumerate(spec.interfaces):
            if iface.bridge is None:
                continue
            problem = bridge_problem(read_bridge(iface.bridge))
            if problem is not None:
                return SpecError(f"spec.interfaces[{index}].bridge",
                                 f"bridge {iface.bridge!r} {problem} on node {self.parts.settings.node_name}")
        return None

    def _check_host_capacity(self, spec: VMSpec) -> None:
        """What only the node can judge: more memory or vCPUs than this host has."""
        memory_mib, cpus = self.parts.facts.capacity
        if memory_mib and spec.memory_bytes > memory_mib * 2**20:
            raise SpecError("spec.memory", f"{spec.memory_bytes // 2**20} MiB is more than node "
                            f"{self.parts.settings.node_name} has ({memory_mib} MiB)")
        if cpus and spec.cores > cpus:
            raise SpecError("spec.cpu.cores", f"{spec.cores} cores is more than node "
                            f"{self.parts.settings.node_name} has ({cpus} CPUs)")

    async def _redefine_if_changed(self, rec: VMRecord, spec: VMSpec, dom: domains.DomainState) -> bool:
        """False when the new spec is refused (the VM is then Failed, its domain untouched)."""
        current = await self.parts.conn.call(
            "domain XML", lambda c: domains.xml_of(c, rec.uid, flags=libvirt.VIR_DOMAIN_XML_INACTIVE))
        if current is None:
            return True
        try:
            xml, seed_changed = await self._build_xml(rec, spec)
        except (ValueError, StorageError) as exc:
            await self._fail(rec, "InvalidSpec", str(exc), dom)
            return False
        if hardware.differs(xml, current):
            logger.info("%s/%s: hardware changed: redefining the domain", *rec.key)
            state = await self._act(rec, "define", lambda c: domains.define(c, xml), "Defined")
            if state.active:
                self.parts.restart_required[rec.uid] = True
        elif seed_changed and dom.active:
            logger.info("%s/%s: cloud-init data changed: the new seed applies at the next boot", *rec.key)
            self.parts.restart_required[rec.uid] = True
        return True

    async def _interrupted_provisioning(self, rec: VMRecord, domain_exists: bool) -> None:
        """nova: an instance caught in BUILDING/SPAWNING goes to ERROR; its half-made parts are removed."""
        logger.warning("%s/%s: provisioning was interrupted (domain %s): cleaning up, phase Failed",
                       *rec.key, "defined" if domain_exists else "not defined")
        if domain_exists:
            await self.parts.host.destroy_owned(rec.uid, undefine=True)
        await asyncio.to_thread(self.parts.storage.remove_vm_dir, rec.uid)
        message = ("provisioning was interrupted (the operator stopped mid-spawn); half-made disks and "
                   f"domain were removed. Set the annotation {RETRY_ANNOTATION} or change the spec to retry")
        await self._fail(rec, "ProvisioningInterrupted", message, None)

    # --- deletion ----------------------------------------------------------------------------------------

    async def _delete(self, rec: VMRecord) -> float | None:
        if rec.status.get("phase") != Phase.TERMINATING.value:
            await self._write_status(rec, {"phase": Phase.TERMINATING.value, "reason": "Deleting",
                                           "message": "the VirtualMachine is being deleted"})
        dom = await self.parts.conn.call("domain state", lambda c: domains.state_of(c, rec.uid))
        if dom is not None:
            owner = await self.parts.conn.call("domain owner", lambda c: domains.owner_of(c, rec.uid))
            if owner is None or owner.uid != rec.uid or owner.node != self.parts.settings.node_name:
                logger.warning("%s/%s: domain %s is not ours: leaving it alone", *rec.key, rec.uid)
            else:
                if dom.active:
                    if rec.stop_deadline is None:
                        return await self._begin_stop(rec, None, dom, reason="Deleting")
                    delay = await self._continue_stop(rec, None, dom)
                    if delay is not None:
                        return delay
                await self._act(rec, "undefine", lambda c: domains.undefine(c, rec.uid), "Undefined", "Stopped")
        await asyncio.to_thread(self.parts.storage.remove_vm_dir, rec.uid)
        rec.stop_deadline = None
        result = await self.parts.kube.remove_finalizer(rec.body, FINALIZER)
        logger.info("%s/%s: deleted: domain undefined, disks removed, finalizer released", *rec.key)
        if result is None:
            self.parts.records.remove(rec.key)
        else:
            self.parts.records.upsert(result)
        return None

    # --- events ------------------------------------------------------------------------------------------

    def _absorb_events(self, rec: VMRecord) -> float | None:
        """Fold the libvirt events queued for this VM into lastEvent and Kubernetes Events.

        Returns a requeue delay while a STOPPED event is being held back (the reboot rule).
        """
        now = time.monotonic()
        events, rec.events = rec.events, []
        for ev in events:
            etype, detail = event_name(ev.event), detail_name(ev.event, ev.detail)
            if etype in ("Defined", "Undefined"):
                continue  # definitions are reconciled from the domain itself, not reported
            if rec.is_expected(etype, ev.received):
                if etype == "Stopped" and rec.held_stop is not None and rec.held_stop.received <= ev.received:
                    rec.held_stop, rec.hold_until = None, 0.0  # the notice that came before our own stop
                continue  # caused by our own action, already reflected in the status we wrote
            if is_migration_event(etype, detail):
                self._note_event(rec, ev, etype, detail)  # never a crash or a stop: nothing held, nothing acted on
                continue
            if etype in ("Shutdown", "Stopped") and self.parts.settings.stopped_event_delay > 0:
                # A stop episode (QEMU's SHUTDOWN notice, then STOPPED) is held back as one: a STARTED
                # within the delay makes it a reboot. The STOPPED, when it comes, is what gets reported.
                delay = self.parts.settings.stopped_event_delay
                if etype == "Stopped":
                    rec.held_stop, rec.hold_until = ev, ev.received + delay
                elif rec.held_stop is None:
                    # QEMU's SHUTDOWN notice comes a moment before its STOPPED: wait for it.
                    rec.held_stop, rec.hold_until = ev, ev.received + max(delay, SHUTDOWN_TO_STOPPED)
                continue
            if etype == "Shutdown" and self._last_type(rec) == "Stopped":
                continue  # a late shutdown notice after the STOPPED it belongs to
            if etype == "Started" and rec.held_stop is not None:
                logger.info("%s/%s: STOPPED then STARTED within %.1fs: treated as a reboot", *rec.key,
                            self.parts.settings.stopped_event_delay)
                rec.held_stop = None
                rec.hold_until = 0.0
            self._note_event(rec, ev, etype, detail)
        if rec.held_stop is not None:
            if now < rec.hold_until:
                return rec.hold_until - now
            ev, rec.held_stop = rec.held_stop, None
            self._note_event(rec, ev, event_name(ev.event), detail_name(ev.event, ev.detail))
        return None

    def _note_event(self, rec: VMRecord, ev: Any, etype: str, detail: str) -> None:
        rec.last_event = {"type": etype, "detail": detail, "time": event_time(ev.wall_time)}
        notable = NOTABLE.get((etype, detail))
        if notable is not None:
            self.parts.spawn(self.parts.post_event(rec.body, notable[0], notable[1],
                                             f"libvirt reported {etype} ({detail}) for domain "
                                             f"{rec.status.get('domainName', rec.uid)}"))

    @staticmethod
    def _last_type(rec: VMRecord) -> str | None:
        if rec.last_event is not None:
            return rec.last_event.get("type")
        last = rec.status.get("lastEvent")
        return last.get("type") if isinstance(last, dict) else None

    @staticmethod
    def _own_event(etype: str, detail: str) -> dict[str, str]:
        return {"type": etype, "detail": detail, "time": event_time()}

    # --- status ------------------------------------------------------------------------------------------

    def _observed_status(self, rec: VMRecord, spec: VMSpec, dom: domains.DomainState, *,
                         extra: Mapping[str, Any] | None = None,
                         agent: tuple[str, str, str] | None = None) -> dict[str, Any]:
        power = power_state(dom.state)
        reason_name = state_reason(dom.state, dom.reason)
        phase = phase_for(power)
        status: dict[str, Any] = {
            "phase": phase.value,
            "powerState": power.value,
            "reason": reason_name or power.value,
            "message": "",
            "nodeName": self.parts.settings.node_name,
            "domainName": dom.name,
            "domainUUID": dom.uuid,
            "observedGeneration": self._acting_generation(rec),
            "consoleLog": str(self.parts.storage.console_log_path(rec.uid)),
        }
        if phase == Phase.PAUSED and reason_name and reason_name not in ("User", "StartingUp"):
            status["message"] = f"paused by libvirt: {reason_name}"
        if not dom.active:
            # Nothing the guest told holds once it is off (every stop path writes through here).
            for key in ("guestOS", "interfaces"):
                if rec.status.get(key) is not None:
                    status[key] = None
            if agent is None and get_condition(rec.status.get("conditions"), "AgentConnected") is not None:
                agent = agent_condition(None, False)
        if extra:
            status.update(extra)
        if rec.last_event is not None and "lastEvent" not in (extra or {}):
            status["lastEvent"] = rec.last_event  # forgotten only once written (_write_status)
        conditions = rec.status.get("conditions") or []
        ready = status["phase"] == Phase.RUNNING.value
        conditions = set_condition(conditions, "Ready", "True" if ready else "False",
                                   "Running" if ready else status["reason"] or status["phase"],
                                   "the guest is running" if ready else f"the guest is {status['phase'].lower()}")
        conditions = set_condition(conditions, "HypervisorConnected", "True", "Connected",
                                   f"libvirt at {self.parts.settings.libvirt_uri} answers")
        if agent is not None:
            conditions = set_condition(conditions, "AgentConnected", *agent)
        restart_required = self.parts.restart_required.get(rec.uid, False) and dom.active
        if restart_required:
            conditions = set_condition(conditions, "RestartRequired", "True", "HardwareChanged",
                                       "the domain or its cloud-init seed changed; changes apply at the next restart")
        else:
            conditions = remove_condition(conditions, "RestartRequired")
        status["conditions"] = conditions
        return status

    def _disconnected_status(self, rec: VMRecord) -> dict[str, Any]:
        conditions = set_condition(rec.status.get("conditions") or [], "HypervisorConnected", "False",
                                   "LibvirtUnreachable",
                                   f"libvirt at {self.parts.settings.libvirt_uri}: {self.parts.conn.last_error}")
        return {"conditions": conditions}

    async def _fail(self, rec: VMRecord, reason: str, message: str, dom: domains.DomainState | None) -> None:
        """Phase Failed; ``dom``: the VM's domain as it is now (None: there is none, and the status names
        none: no domainName in `kubectl get -o wide`, no "missing domain" at the retry)."""
        logger.warning("%s/%s: Failed (%s): %s", *rec.key, reason, message)
        conditions = set_condition(rec.status.get("conditions") or [], "Ready", "False", reason, message)
        status = {"phase": Phase.FAILED.value, "reason": reason, "message": message,
                  "observedGeneration": self._acting_generation(rec),
                  "nodeName": self.parts.settings.node_name, "conditions": conditions,
                  "observedRetry": self._retry_token(rec), **_domain_fields(dom)}
        if rec.status.get("phase") != Phase.FAILED.value or rec.status.get("message") != message:
            await self.parts.post_event(rec.body, "Warning", reason, message)
        await self._write_status(rec, status)

    async def _write_status(self, rec: VMRecord, wanted: Mapping[str, Any]) -> None:
        """One merge patch with only the fields that differ; nothing when nothing changed."""
        current = rec.status
        patch = {k: v for k, v in wanted.items() if current.get(k) != v}
        if "conditions" in patch and _same_conditions(current.get("conditions"), patch["conditions"]):
            del patch["conditions"]
        if not patch:
            rec.event_latency_start = None
            self._event_written(rec, wanted)
            return
        meta = rec.body["metadata"]
        try:
            result = await self.parts.kube.patch_vm_status(meta["namespace"], meta["name"], patch)
        except KubeError as exc:
            if exc.not_found:
                return
            raise  # the event stays in rec.last_event: the retry writes it (the API may have been down)
        self._event_written(rec, wanted)
        self.parts.records.upsert(result)
        if rec.event_latency_start is not None:
            self.parts.metrics.event_lag.observe(time.monotonic() - rec.event_latency_start)
            rec.event_latency_start = None

    @staticmethod
    def _event_written(rec: VMRecord, wanted: Mapping[str, Any]) -> None:
        if rec.last_event is not None and wanted.get("lastEvent") == rec.last_event:
            rec.last_event = None

    # --- helpers -----------------------------------------------------------------------------------------

    def _spec(self, rec: VMRecord, body: Mapping[str, Any]) -> VMSpec:
        """``body``'s spec parsed (SpecError if it does not), reusing the record's last parse while the spec
        is equal to the one parsed then."""
        raw = body.get("spec") or {}
        cached = rec.parsed_spec
        if cached is not None and cached[0] == raw:
            return cached[1]
        spec = parse_spec(raw, self.limits)
        rec.parsed_spec = (raw, spec)
        return spec

    @staticmethod
    def _acting_generation(rec: VMRecord) -> Any:
        return (rec.acting_on if rec.acting_on is not None else rec.body)["metadata"].get("generation")

    @classmethod
    def _generation_moved(cls, rec: VMRecord) -> bool:
        generation = cls._acting_generation(rec)
        observed = rec.status.get("observedGeneration")
        return generation is not None and observed is not None and int(generation) > int(observed)

    @staticmethod
    def _retry_token(rec: VMRecord) -> str:
        body = rec.acting_on if rec.acting_on is not None else rec.body
        return str((body["metadata"].get("annotations") or {}).get(RETRY_ANNOTATION, ""))

    def _retry_requested(self, rec: VMRecord) -> bool:
        """A Failed VM is retried when the spec changed or the retry annotation got a new value."""
        if self._generation_moved(rec):
            return True
        token = self._retry_token(rec)
        return bool(token) and token != rec.status.get("observedRetry", "")

    @staticmethod
    def migrating(body: Mapping[str, Any]) -> bool:
        return MIGRATING_ANNOTATION in (body.get("metadata", {}).get("annotations") or {})


def _domain_fields(dom: domains.DomainState | None) -> dict[str, Any]:
    """The status fields that describe the domain; None removes them (a merge patch) when there is none."""
    if dom is None:
        return {"domainName": None, "domainUUID": None, "powerState": None}
    return {"domainName": dom.name, "domainUUID": dom.uuid, "powerState": power_state(dom.state).value}


def _network_probe(name: str) -> Any:
    return lambda conn: domains.network_exists(conn, name)


def _same_conditions(old: Any, new: Any) -> bool:
    def strip(conds: Any) -> list[tuple[Any, ...]]:
        return sorted((c.get("type"), c.get("status"), c.get("reason"), c.get("message"))
                      for c in (conds or []))
    return strip(old) == strip(new)


__all__ = ["PowerState", "Reconciler", "get_condition"]
