"""Live migration of a VirtualMachine to another node (VirtualMachineMigration), as each node's operator
takes part in it. The decisions are pipeline/migration_policy.py's; this module does the I/O.

Source (the VM's node) and target (spec.targetNode) meet through the migration's status:

1. the source checks (VM running, no other migration, target Node ready with a migration URI), takes the
   VM's lock (its ``migrating`` annotation names the migration: one at a time, and the VM reconciler and
   the evacuation clean-up keep their hands off), chooses the storage (shared, block, none), and writes
   ``sourceNode``, ``storage`` and, for a block migration, the disks' sizes;
2. the target's operator creates those disks (empty, same virtual size) and says ``targetReady``: it runs,
   and it will take the guest (its start-up scan leaves a domain of a VM marked as migrating alone);
3. the source runs libvirt's peer-to-peer live migration, the target's live and persistent definitions
   owned by the target node (hypervisor/migration.py), reporting libvirt's job statistics while it runs;
4. done: the source hands the VM over (spec.nodeName, the lock released, in one patch), removes its disks
   unless shared, and writes Succeeded; the target's operator then reconciles the VM as its own, finding
   its domain running (no restart). Failed: the guest stays on the source, the lock goes, the target
   removes the disks it made.

Deleting a running migration aborts libvirt's job. An operator restarted mid-migration finds the job
ended and converges: domain gone from the source (libvirt completed it): hand-over; still here: Failed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

from libvirt_operator.api.constants import MIGRATING_ANNOTATION, MIGRATION_URI_ANNOTATION
from libvirt_operator.api.migration import (
    MigrationPhase,
    MigrationSpec,
    MigrationSpecError,
    StorageMode,
    parse_migration_spec,
    phase_of,
)
from libvirt_operator.api.status import Phase, now_iso, set_condition, state_reason
from libvirt_operator.context import EventPoster
from libvirt_operator.hypervisor import domains
from libvirt_operator.hypervisor import migration as hv
from libvirt_operator.hypervisor.connection import Connection, HypervisorError, HypervisorUnavailable
from libvirt_operator.hypervisor.storage import Storage, StorageError
from libvirt_operator.kube.client import KubeClient, KubeError
from libvirt_operator.pipeline.migration_policy import (
    Role,
    SourceStep,
    TargetStep,
    handover_ops,
    job_failure,
    job_fields,
    lock_ops,
    prepare_failure,
    refusal,
    role,
    source_step,
    storage_mode,
    target_problem,
    target_step,
    unlock_ops,
)
from libvirt_operator.pipeline.records import Key, RecordStore
from libvirt_operator.pipeline.workqueue import WorkQueue
from libvirt_operator.settings import Settings

logger = logging.getLogger(__name__)

CONDITION = "Migrating"  # the VM's condition while a migration of it runs
TARGET_TIMEOUT = 60.0  # how long the source waits for the target's operator to say it is ready
MIGRATION_TIMEOUT = 3600.0  # libvirt's job, at most (it reports progress meanwhile)
PROGRESS_EVERY = 1.0  # seconds between job statistics written to the status


@dataclass(frozen=True)
class MigrationParts:
    settings: Settings
    kube: KubeClient
    conn: Connection
    storage: Storage
    records: RecordStore
    post_event: EventPoster
    spawn: Callable[[Coroutine[Any, Any, Any]], None]
    requeue_vm: Callable[[Key], None]  # the VM reconciler looks again (once the lock is gone)


@dataclass
class _Job:
    key: Key
    task: asyncio.Task[None] | None = None
    aborted: bool = False
    last: dict[str, int] = field(default_factory=dict)


class MigrationController:
    def __init__(self, parts: MigrationParts) -> None:
        self.parts = parts
        self.node = parts.settings.node_name
        self.migrations: dict[Key, dict[str, Any]] = {}
        self.queue: WorkQueue[Key] = WorkQueue(max_delay=10.0)
        self._held: set[str] = set()  # VM uids whose reconciliation waits for the migration (vm.py)
        self._jobs: dict[str, _Job] = {}  # libvirt jobs this process runs, by VM uid
        self._admitted_at: dict[Key, float] = {}
        self._prepared: set[Key] = set()
        self._checked: set[Key] = set()
        self._reported: set[Key] = set()
        self._served = True  # False: the API does not know the CRD (local mode's emulator, say)

    # --- what the VM reconciler asks ------------------------------------------------------------------

    def holds(self, uid: str) -> bool:
        """While True, the VM reconciler leaves the VM alone: its guest is being migrated."""
        return uid in self._held

    # --- inputs -------------------------------------------------------------------------------------

    async def start_up(self, vms: list[dict[str, Any]]) -> None:
        """Before the VMs' first pass: the migrations there are, and a hold on each VM of this node whose lock
        names one still in progress (a stale lock, of a migration gone or ended, is released)."""
        try:
            listed = await self.parts.kube.list_migrations(self.parts.settings.namespace)
        except KubeError as exc:
            if exc.status not in (403, 404):
                raise
            self._served = False
            logger.warning("cannot list VirtualMachineMigrations (%s): no CRD, or RBAC without them (an older "
                           "chart); live migration is off for this process", exc)
            listed = []
        for body in listed:
            self.migrations[_key(body)] = body
        for vm in vms:
            meta = vm.get("metadata") or {}
            holder = (meta.get("annotations") or {}).get(MIGRATING_ANNOTATION)
            if not holder or (vm.get("spec") or {}).get("nodeName") != self.node:
                continue
            held = self.migrations.get((str(meta.get("namespace")), str(holder)))
            if held is not None and phase_of(held) not in (MigrationPhase.SUCCEEDED, MigrationPhase.FAILED):
                self._held.add(str(meta.get("uid")))
                logger.info("VM %s/%s: migration %s was in progress when the operator stopped", meta.get("namespace"),
                            meta.get("name"), holder)
            else:
                await self._unlock_vm(str(meta.get("namespace")), str(meta.get("name")), str(holder))

    def start(self, workers: int = 4) -> None:
        self.queue.start(self._process, workers)
        for key in list(self.migrations):
            self.queue.add(key)

    async def stop(self) -> None:
        """libvirtd runs a job on without the operator: the next process finds it (``_recover``)."""
        await self.queue.stop()
        tasks = [job.task for job in self._jobs.values() if job.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def observe(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        key = _key(body)
        if event_type == "DELETED":
            self.migrations.pop(key, None)
            for uid, job in self._jobs.items():
                if job.key == key and not job.aborted:
                    job.aborted = True
                    logger.info("migration %s/%s deleted while running: aborting libvirt's job", *key)
                    self.parts.spawn(self._abort(uid))
            self.queue.add(key)
            return
        self.migrations[key] = dict(body)
        self.queue.add(key)

    async def _abort(self, uid: str) -> None:
        try:
            await self.parts.conn.call("abort migration", lambda c: hv.abort(c, uid))
        except HypervisorError as exc:
            logger.warning("could not abort the migration of %s: %s", uid, exc)

    # --- the work ------------------------------------------------------------------------------------

    async def _process(self, key: Key) -> float | None:
        body = self.migrations.get(key)
        if body is None:
            await self._forget(key)
            return None
        try:
            spec = parse_migration_spec(body.get("spec"))
        except MigrationSpecError as exc:
            logger.warning("migration %s/%s: %s", *key, exc)
            return None
        rec = self.parts.records.get((key[0], spec.vm_name))
        vm_node = rec.node_name if rec is not None else None
        mine = role(body, self.node, vm_node)
        if mine == Role.SOURCE:
            return await self._source(key, body, spec)
        if mine == Role.TARGET:
            return await self._target(key, body, spec)
        return None

    async def _forget(self, key: Key) -> None:
        """A migration deleted before its job began (a running one is aborted, see observe): its lock goes."""
        for rec in self.parts.records:
            if rec.key[0] == key[0] and rec.node_name == self.node and _holder(rec.body) == key[1] \
                    and rec.uid not in self._jobs:
                logger.info("migration %s/%s deleted before it ran: releasing VM %s/%s", *key, *rec.key)
                await self._unlock_vm(rec.key[0], rec.key[1], key[1])
                self._release(rec.uid, rec.key)
        self._admitted_at.pop(key, None)

    # --- source ----------------------------------------------------------------------------------------

    async def _source(self, key: Key, body: dict[str, Any], spec: MigrationSpec) -> float | None:
        status = body.get("status") or {}
        rec = self.parts.records.get((key[0], spec.vm_name))
        uid = str(status.get("vmUID") or (rec.uid if rec is not None else ""))
        step = source_step(body, job_here=uid in self._jobs)
        logger.debug("migration %s/%s (source): %s", *key, step.value)
        if step == SourceStep.DONE:
            if rec is not None and rec.node_name == self.node and _holder(rec.body) == key[1]:
                await self._unlock_vm(key[0], spec.vm_name, key[1])
            self._release(uid, (key[0], spec.vm_name))
            return None
        if step == SourceStep.WATCH:
            return None
        if step == SourceStep.ADMIT:
            return await self._admit(key, body, spec)
        if step == SourceStep.WAIT_TARGET:
            waited = time.monotonic() - self._admitted_at.setdefault(key, time.monotonic())
            if waited > TARGET_TIMEOUT:
                await self._fail(key, body, spec, uid, f"node {spec.target_node}'s operator did not get ready for "
                                 f"the migration within {TARGET_TIMEOUT:.0f}s")
                return None
            return 2.0
        if step == SourceStep.START:
            await self._start(key, body, spec, uid)
            return None
        return await self._recover(key, body, spec, uid)

    async def _admit(self, key: Key, body: dict[str, Any], spec: MigrationSpec) -> float | None:
        rec = self.parts.records.get((key[0], spec.vm_name))
        assert rec is not None  # the VM's node is the source
        problem = refusal(migration_name=key[1], vm=rec.body, node=self.node, target=spec.target_node)
        if problem is None:
            problem = target_problem(await self._node(spec.target_node), spec.target_node)
        if problem is not None:
            await self._fail(key, body, spec, rec.uid, problem, refused=True)
            return None
        uid = rec.uid
        shared = await asyncio.to_thread(self.parts.storage.is_shared, self.node, self.parts.settings.shared_storage)
        sizes = await self.parts.conn.call("disk sizes", lambda c: hv.disk_sizes(c, uid))
        mode = storage_mode(shared=shared, disk_count=len(sizes))
        self._held.add(uid)
        if _holder(rec.body) != key[1]:
            try:
                self.parts.records.upsert(await self.parts.kube.json_patch_vm(key[0], spec.vm_name,
                                                                              lock_ops(rec.body, key[1])))
            except KubeError as exc:
                self._held.discard(uid)
                if exc.status in (409, 422):  # the VM changed meanwhile: look again with its new version
                    return 0.5
                raise
        self._admitted_at[key] = time.monotonic()
        wanted: dict[str, Any] = {"phase": MigrationPhase.PENDING.value, "sourceNode": self.node, "vmUID": uid,
                                  "storage": mode.value,
                                  "message": f"waiting for node {spec.target_node}'s operator to get ready"}
        if mode == StorageMode.BLOCK:
            wanted["disks"] = [{"name": name, "virtualSize": size} for name, size in sorted(sizes.items())]
        await self._patch(key, wanted)
        logger.info("migration %s/%s: %s/%s from %s to %s (storage %s): waiting for the target", *key, key[0],
                    spec.vm_name, self.node, spec.target_node, mode.value)
        await self.parts.post_event(body, "Normal", "MigrationAccepted",
                                    f"VM {spec.vm_name} on node {self.node}, storage {mode.value}: waiting for node "
                                    f"{spec.target_node}")
        return 2.0

    async def _start(self, key: Key, body: dict[str, Any], spec: MigrationSpec, uid: str) -> None:
        status = body.get("status") or {}
        rec = self.parts.records.get((key[0], spec.vm_name))
        node_obj = await self._node(spec.target_node)
        problem = target_problem(node_obj, spec.target_node)
        if problem is None and (rec is None or rec.uid != uid or _holder(rec.body) != key[1]):
            problem = "the VirtualMachine changed since the migration was accepted (deleted, recreated or unlocked)"
        if problem is not None:
            await self._fail(key, body, spec, uid, problem)
            return
        assert rec is not None and node_obj is not None
        dest_uri = str(node_obj["metadata"]["annotations"][MIGRATION_URI_ANNOTATION])
        mode = StorageMode(status.get("storage") or StorageMode.NONE.value)
        files = {str(d["name"]): str(d["path"]) for d in status.get("targetDisks") or []} or None
        try:
            definitions = await self.parts.conn.call(
                "migration definitions", lambda c: hv.target_definitions(c, uid, spec.target_node, files))
        except (HypervisorError, hv.MigrationXMLError) as exc:
            await self._fail(key, body, spec, uid, f"cannot prepare the target's definition: {exc}")
            return
        job = _Job(key)
        self._jobs[uid] = job  # from here on a pass of this migration only watches
        try:
            await self._patch(key, {"phase": MigrationPhase.RUNNING.value, "startTime": now_iso(),
                                    "message": f"libvirt's live migration to node {spec.target_node} runs"})
        except BaseException:
            self._jobs.pop(uid, None)  # not begun: the retry starts it
            raise
        conditions = set_condition(rec.status.get("conditions") or [], CONDITION, "True", "MigrationRunning",
                                   f"live migration {key[1]} to node {spec.target_node}")
        try:  # what the VM shows: worth a try, never a reason to hold the migration back
            await self._vm_status(rec.key, {"phase": Phase.MIGRATING.value, "conditions": conditions})
        except KubeError as exc:
            # 422: a CRD older than the operator (no phase Migrating): the condition alone says it.
            logger.info("VM %s/%s: phase Migrating not written (%s)", *rec.key, exc)
            await self._vm_status(rec.key, {"conditions": conditions}, must=False)
        await self.parts.post_event(rec.body, "Normal", "MigrationStarted",
                                    f"live migration {key[1]} to node {spec.target_node} ({mode.value} storage)")
        logger.info("migration %s/%s: migrating domain %s to %s (%s)", *key, uid, dest_uri, mode.value)
        job.task = asyncio.create_task(self._run(job, spec, uid, dest_uri, definitions, mode),
                                       name=f"migration-{key[0]}-{key[1]}")

    async def _run(self, job: _Job, spec: MigrationSpec, uid: str, dest_uri: str, definitions: hv.Definitions,
                   mode: StorageMode) -> None:
        key = job.key
        began = time.monotonic()
        flags = hv.migration_flags(mode)
        bandwidth = self.parts.settings.migration_bandwidth
        migrate = asyncio.ensure_future(self.parts.conn.call(
            "migrate", lambda c: hv.migrate(c, uid, dest_uri, definitions, flags, bandwidth_mib=bandwidth),
            limit=MIGRATION_TIMEOUT))
        try:
            while not migrate.done():
                await asyncio.wait({migrate}, timeout=PROGRESS_EVERY)
                if migrate.done():
                    break
                try:
                    stats = job_fields(await self.parts.conn.call("job stats", lambda c: hv.job_stats(c, uid)))
                except HypervisorError:
                    continue
                if stats and stats != job.last:
                    job.last = stats
                    await self._patch(key, {"job": stats}, quiet=True)
            try:
                finished = job_fields(migrate.result(), completed=True)
            except HypervisorUnavailable as exc:
                # The link to libvirtd broke, not necessarily the job: once reconnected, _recover looks.
                logger.warning("migration %s/%s: lost libvirt while migrating (%s); will look again", *key, exc)
                return
            except HypervisorError as exc:
                await self._failed_job(key, spec, uid, job_failure(str(exc), source=self.node,
                                                                   target=spec.target_node, storage=mode,
                                                                   aborted=job.aborted), aborted=job.aborted)
                return
            completed = finished or await self._completed_stats(uid)
            await self._hand_over(key, spec, uid, mode, {**job.last, **completed}, time.monotonic() - began)
        except asyncio.CancelledError:
            migrate.cancel()
            raise
        except Exception:  # an API write failed: the next pass finds the job ended (_recover) and finishes
            logger.exception("migration %s/%s: finishing failed; retrying", *key)
        finally:
            self._jobs.pop(uid, None)
            self.queue.add_after(key, 1.0)

    async def _completed_stats(self, uid: str) -> dict[str, int]:
        try:
            return job_fields(await self.parts.conn.call("completed job stats",
                                                         lambda c: hv.job_stats(c, uid, completed=True)),
                              completed=True)
        except HypervisorError:
            return {}

    async def _hand_over(self, key: Key, spec: MigrationSpec, uid: str, mode: StorageMode, job: Mapping[str, int],
                         seconds: float | None) -> None:
        """libvirt's job completed: the guest runs on the target. The VM must become the target's whatever the
        API answers meanwhile (retried until it lands), else nobody would own a running guest."""
        vm_key = (key[0], spec.vm_name)
        rec = self.parts.records.get(vm_key)
        if rec is not None:
            await self._vm_status(vm_key, {"conditions": set_condition(
                rec.status.get("conditions") or [], CONDITION, "False", "Migrated",
                f"live-migrated to node {spec.target_node} by {key[1]}")}, must=False)
        delay = 0.2
        while True:
            try:
                handed = await self.parts.kube.json_patch_vm(key[0], spec.vm_name,
                                                             handover_ops(key[1], spec.target_node))
                break
            except KubeError as exc:
                if exc.status == 422:  # the lock is gone (removed by hand): the guest still moved
                    handed = await self.parts.kube.json_patch_vm(key[0], spec.vm_name, [
                        {"op": "replace", "path": "/spec/nodeName", "value": spec.target_node}])
                    break
                if exc.not_found:
                    handed = None
                    break
                logger.warning("migration %s/%s: cannot hand the VM over yet (%s); retrying in %.1fs", *key, exc,
                               delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
        if handed is not None:
            self.parts.records.upsert(handed)
        self._release(uid, vm_key)
        if mode == StorageMode.BLOCK:
            try:
                await asyncio.to_thread(self.parts.storage.remove_vm_dir, uid)
            except StorageError as exc:
                logger.warning("migration %s/%s: could not remove the disks left here: %s", *key, exc)
        downtime = job.get("downtimeMs")
        how = (f"live-migrated in {seconds:.2f}s" if seconds is not None
               else "libvirt completed the live migration while this node's operator was not running")
        summary = (f"the guest runs on node {spec.target_node}: {how}"
                   + (f", downtime {downtime} ms" if downtime is not None else ""))
        await self._patch(key, {"phase": MigrationPhase.SUCCEEDED.value, "endTime": now_iso(), "job": dict(job),
                                "message": summary})
        logger.info("migration %s/%s succeeded: %s", *key, summary)
        body = self.migrations.get(key)
        if body is not None:
            await self.parts.post_event(body, "Normal", "MigrationSucceeded", summary)
        if handed is not None:
            await self.parts.post_event(handed, "Normal", "Migrated", f"from node {self.node}: {summary}")

    async def _failed_job(self, key: Key, spec: MigrationSpec, uid: str, message: str, *, aborted: bool) -> None:
        vm_key = (key[0], spec.vm_name)
        rec = self.parts.records.get(vm_key)
        if rec is not None:
            await self._vm_status(vm_key, {"conditions": set_condition(
                rec.status.get("conditions") or [], CONDITION, "False",
                "MigrationAborted" if aborted else "MigrationFailed", message)}, must=False)
            await self.parts.post_event(rec.body, "Warning", "MigrationAborted" if aborted else "MigrationFailed",
                                        message)
            if _holder(rec.body) == key[1]:
                await self._unlock_vm(key[0], spec.vm_name, key[1])
        self._release(uid, vm_key)
        logger.warning("migration %s/%s: %s", *key, message)
        body = self.migrations.get(key)
        if body is not None:
            await self._patch(key, {"phase": MigrationPhase.FAILED.value, "endTime": now_iso(), "message": message})
            await self.parts.post_event(body, "Warning", "MigrationFailed", message)

    async def _recover(self, key: Key, body: dict[str, Any], spec: MigrationSpec, uid: str) -> float | None:
        """Running, but no job of this process: it stopped mid-migration. libvirtd ran the job on."""
        self._held.add(uid)
        dom = await self.parts.conn.call("domain state", lambda c: domains.state_of(c, uid))
        if dom is not None and await self.parts.conn.call("job", lambda c: hv.job_active(c, uid)):
            return 1.0  # still migrating: look again
        status = body.get("status") or {}
        mode = StorageMode(status.get("storage") or StorageMode.NONE.value)
        migrated_away = dom is not None and not dom.active and state_reason(dom.state, dom.reason) == "Migrated"
        if dom is None or migrated_away:
            logger.warning("migration %s/%s: Running, no job of this process, and the domain is %s here: libvirt "
                           "completed it; handing the VM over", *key, "shut off (migrated)" if dom else "gone")
            if migrated_away:  # the source definition outlived the migration (UNDEFINE_SOURCE not done)
                owner = await self.parts.conn.call("domain owner", lambda c: domains.owner_of(c, uid))
                if owner is not None and owner.uid == uid and owner.node == self.node:
                    await self.parts.conn.call("undefine", lambda c: domains.undefine(c, uid))
            await self._hand_over(key, spec, uid, mode, dict(status.get("job") or {}), None)
            return None
        await self._failed_job(key, spec, uid, "the operator stopped mid-migration and libvirt's job ended without "
                               f"completing; the guest stays on node {self.node}", aborted=False)
        return None

    async def _fail(self, key: Key, body: dict[str, Any], spec: MigrationSpec, uid: str, message: str, *,
                    refused: bool = False) -> None:
        """Before libvirt's job began: Failed, the lock (if taken) released, nothing moved."""
        rec = self.parts.records.get((key[0], spec.vm_name))
        if rec is not None and rec.node_name == self.node and _holder(rec.body) == key[1]:
            await self._unlock_vm(key[0], spec.vm_name, key[1])
        self._release(uid, (key[0], spec.vm_name))
        logger.warning("migration %s/%s %s: %s", *key, "refused" if refused else "failed", message)
        await self._patch(key, {"phase": MigrationPhase.FAILED.value, "endTime": now_iso(), "message": message,
                                **({} if (body.get("status") or {}).get("sourceNode") else {"sourceNode": self.node})})
        await self.parts.post_event(body, "Warning", "MigrationRefused" if refused else "MigrationFailed", message)
        if rec is not None and refused:
            await self.parts.post_event(rec.body, "Warning", "MigrationRefused", f"{key[1]}: {message}")

    # --- target ----------------------------------------------------------------------------------------

    async def _target(self, key: Key, body: dict[str, Any], spec: MigrationSpec) -> float | None:
        status = body.get("status") or {}
        step = target_step(body, prepared_here=key in self._prepared)
        logger.debug("migration %s/%s (target): %s", *key, step.value)
        if step == TargetStep.CHECK:
            if key in self._checked:
                return None
            self._checked.add(key)
            try:
                vm = await self.parts.kube.get_vm(key[0], spec.vm_name)
            except KubeError as exc:
                if not exc.not_found:
                    raise
                vm = None
            problem = None
            if vm is None:
                problem = "the VirtualMachine does not exist"
            elif (vm.get("spec") or {}).get("nodeName") == self.node:
                problem = f"the VirtualMachine already runs on node {self.node}"
            if problem is not None:
                await self._patch(key, {"phase": MigrationPhase.FAILED.value, "endTime": now_iso(),
                                        "message": problem})
                await self.parts.post_event(body, "Warning", "MigrationRefused", problem)
            return None
        if step == TargetStep.PREPARE:
            uid = str(status.get("vmUID") or "")
            files: dict[str, str] = {}
            if status.get("storage") == StorageMode.BLOCK.value:
                sizes = {str(d["name"]): int(d["virtualSize"]) for d in status.get("disks") or []}
                try:
                    files = await asyncio.to_thread(hv.create_target_disks, self.parts.storage, uid, sizes)
                except (StorageError, OSError) as exc:
                    message = prepare_failure(str(exc), target=self.node)
                    await self._patch(key, {"phase": MigrationPhase.FAILED.value, "endTime": now_iso(),
                                            "message": message})
                    await self.parts.post_event(body, "Warning", "MigrationFailed", message)
                    return None
            self._prepared.add(key)
            ready: dict[str, Any] = {"targetReady": True}
            if files:
                ready["targetDisks"] = [{"name": n, "path": p} for n, p in sorted(files.items())]
            await self._patch(key, ready)
            logger.info("migration %s/%s: node %s ready to receive %s (%d disks created)", *key, self.node,
                        spec.vm_name, len(files))
            return None
        if step == TargetStep.NOTHING and phase_of(body) == MigrationPhase.SUCCEEDED and key not in self._reported:
            self._reported.add(key)
            job = dict(status.get("job") or {})
            if "downtimeMs" not in job:
                # The source's domain is gone with its job's final statistics (undefined with the migration);
                # the arrived domain keeps the incoming job's, downtime included.
                uid = str(status.get("vmUID") or "")
                completed = job_fields(await self.parts.conn.call(
                    "completed job stats", lambda c: hv.job_stats(c, uid, completed=True)), completed=True)
                if "downtimeMs" in completed:
                    await self._patch(key, {"job": {"downtimeMs": completed["downtimeMs"]}}, quiet=True)
            return None
        if step == TargetStep.CLEAN:
            uid = str(status.get("vmUID") or "")
            rec = self.parts.records.by_uid(uid)
            here = await self.parts.conn.call("domain state", lambda c: domains.state_of(c, uid))
            if uid and (rec is None or rec.node_name != self.node) and here is None:
                removed = await asyncio.to_thread(self.parts.storage.remove_vm_dir, uid)
                if removed:
                    logger.info("migration %s/%s failed: removed the disks made for it on %s", *key, self.node)
            return None
        return None

    # --- helpers ---------------------------------------------------------------------------------------

    def _release(self, uid: str, vm_key: Key) -> None:
        if uid in self._held:
            self._held.discard(uid)
            self.parts.requeue_vm(vm_key)

    async def _node(self, name: str) -> dict[str, Any] | None:
        try:
            return await self.parts.kube.get_node(name)
        except KubeError as exc:
            if exc.not_found:
                return None
            raise

    async def _unlock_vm(self, namespace: str, name: str, holder: str) -> None:
        try:
            self.parts.records.upsert(await self.parts.kube.json_patch_vm(namespace, name, unlock_ops(holder)))
        except KubeError as exc:
            if exc.status not in (404, 422):  # gone, or not (any more) this migration's lock
                raise

    async def _patch(self, key: Key, status: Mapping[str, Any], *, quiet: bool = False) -> None:
        try:
            result = await self.parts.kube.patch_migration_status(key[0], key[1], status)
        except KubeError as exc:
            if exc.not_found:
                return  # deleted meanwhile
            if quiet:
                logger.info("migration %s/%s: progress not written: %s", *key, exc)
                return
            raise
        current = self.migrations.get(key)
        if current is None or _version(result) >= _version(current):
            self.migrations[key] = result

    async def _vm_status(self, vm_key: Key, status: Mapping[str, Any], *, must: bool = True) -> None:
        try:
            self.parts.records.upsert(await self.parts.kube.patch_vm_status(vm_key[0], vm_key[1], status))
        except KubeError as exc:
            if must and not exc.not_found:
                raise
            logger.info("VM %s/%s: status not written: %s", *vm_key, exc)


def _key(body: Mapping[str, Any]) -> Key:
    meta = body.get("metadata") or {}
    return str(meta.get("namespace", "")), str(meta.get("name", ""))


def _holder(vm: Mapping[str, Any]) -> str | None:
    value = ((vm.get("metadata") or {}).get("annotations") or {}).get(MIGRATING_ANNOTATION)
    return None if value is None else str(value)


def _version(body: Mapping[str, Any]) -> int:
    try:
        return int((body.get("metadata") or {}).get("resourceVersion") or 0)
    except (TypeError, ValueError):
        return 0
