"""Live migration decisions, as pure functions (the I/O is in handlers/migration.py).

- ``role``: whether this node's operator is the migration's source, its target, or not involved;
- ``source_step`` / ``target_step``: what that operator does next for a migration in a given state;
- ``refusal`` / ``target_problem``: why a migration cannot begin (checked before anything is touched);
- ``storage_mode``: shared storage (memory only) or block migration (disks created on the target first);
- ``is_migration_event``: libvirt's lifecycle events of a migration, which are never a crash or a stop;
- ``job_fields``: libvirt's job statistics as the migration's ``status.job``;
- ``job_failure`` / ``prepare_failure``: the message of a migration libvirt's job, or the target's preparation,
  failed, saying what the cause means (a target without disk space is named as such);
- ``lock_ops`` / ``handover_ops`` / ``unlock_ops``: the JSON patches of the one-migration-per-VM lock (the
  VM's ``migrating`` annotation names the migration) and of the hand-over, each guarded by a ``test``.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any

from libvirt_operator.api.constants import MIGRATING_ANNOTATION, MIGRATION_URI_ANNOTATION, NODE_CONDITION_TYPE
from libvirt_operator.api.migration import FINAL, MigrationPhase, StorageMode, phase_of
from libvirt_operator.api.status import Phase

# The VM phases a live migration can start from (a stopped VM has nothing to migrate live).
MIGRATABLE_PHASES = frozenset({Phase.RUNNING.value, Phase.PAUSED.value})
# libvirt's event details that belong to a migration, by event type (status.EVENT_DETAILS' names).
MIGRATION_EVENT_DETAILS: dict[str, frozenset[str]] = {
    "Started": frozenset({"Migrated"}),  # target: the incoming QEMU started (before any data moved)
    "Suspended": frozenset({"Migrated", "Postcopy"}),  # source: paused for the switch-over
    "Resumed": frozenset({"Migrated", "Postcopy"}),  # target: running; source: a failed migration resumed
    "Stopped": frozenset({"Migrated"}),  # source: its QEMU ended once the target took over
}


class Role(StrEnum):
    SOURCE = "source"
    TARGET = "target"
    NONE = "none"


class SourceStep(StrEnum):
    ADMIT = "admit"  # check, take the VM's lock, choose the storage, ask the target to prepare
    WAIT_TARGET = "wait-target"  # the target's operator has not said it is ready yet
    START = "start"  # run libvirt's migration job
    WATCH = "watch"  # the job runs in this process: nothing to do but report progress
    RECOVER = "recover"  # Running, but no job in this process (the operator restarted mid-migration)
    DONE = "done"  # final: release a lock still held


class TargetStep(StrEnum):
    CHECK = "check"  # Pending and no source yet: fail it if the VM does not exist (the source cannot)
    PREPARE = "prepare"  # create the disks of a block migration, then say ready
    CLEAN = "clean"  # failed: remove disks made for it (the guest stays on the source)
    NOTHING = "nothing"


def role(migration: Mapping[str, Any], node: str, vm_node: str | None) -> Role:
    """The source is the VM's node until the hand-over; after it, the node that recorded itself as source."""
    status = migration.get("status") or {}
    target = (migration.get("spec") or {}).get("targetNode")
    source = status.get("sourceNode")
    if source == node or (not source and vm_node == node and target != node):
        return Role.SOURCE
    if target == node:
        return Role.TARGET
    return Role.NONE


def source_step(migration: Mapping[str, Any], *, job_here: bool) -> SourceStep:
    phase = phase_of(migration)
    status = migration.get("status") or {}
    if phase in FINAL:
        return SourceStep.DONE
    if phase == MigrationPhase.RUNNING:
        return SourceStep.WATCH if job_here else SourceStep.RECOVER
    if not status.get("sourceNode"):
        return SourceStep.ADMIT
    if not status.get("targetReady"):
        return SourceStep.WAIT_TARGET
    return SourceStep.WATCH if job_here else SourceStep.START


def target_step(migration: Mapping[str, Any], *, prepared_here: bool) -> TargetStep:
    phase = phase_of(migration)
    status = migration.get("status") or {}
    if phase == MigrationPhase.FAILED:
        return TargetStep.CLEAN if status.get("targetDisks") else TargetStep.NOTHING
    if phase != MigrationPhase.PENDING:
        return TargetStep.NOTHING
    if not status.get("sourceNode"):
        return TargetStep.CHECK
    if status.get("targetReady") or prepared_here:
        return TargetStep.NOTHING
    return TargetStep.PREPARE


def refusal(*, migration_name: str, vm: Mapping[str, Any] | None, node: str, target: str) -> str | None:
    """Why the source cannot begin this migration of ``vm`` (None: it can). Checked by the VM's node."""
    if vm is None:
        return "the VirtualMachine does not exist"
    if target == node:
        return f"the VirtualMachine already runs on node {target}"
    meta = vm.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return "the VirtualMachine is being deleted"
    holder = (meta.get("annotations") or {}).get(MIGRATING_ANNOTATION)
    if holder is not None and holder != migration_name:
        who = f"migration {holder}" if holder else f"the annotation {MIGRATING_ANNOTATION}"
        return f"the VirtualMachine is already being migrated ({who}): one migration at a time"
    phase = (vm.get("status") or {}).get("phase")
    if phase not in MIGRATABLE_PHASES:
        return f"only a running or paused VirtualMachine can be live-migrated (it is {phase or 'Pending'})"
    return None


def target_problem(node_obj: Mapping[str, Any] | None, target: str) -> str | None:
    """Why node ``target`` cannot receive a guest now, from its Node object (None: it can)."""
    if node_obj is None:
        return f"node {target} does not exist"
    annotations = (node_obj.get("metadata") or {}).get("annotations") or {}
    if not annotations.get(MIGRATION_URI_ANNOTATION):
        return (f"node {target} publishes no migration URI (annotation {MIGRATION_URI_ANNOTATION}; its "
                "operator's --migration-uri)")
    for cond in (node_obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == NODE_CONDITION_TYPE:
            if cond.get("status") == "True":
                return None
            return f"node {target}: libvirt is not ready ({cond.get('message') or cond.get('reason')})"
    return f"node {target} has no {NODE_CONDITION_TYPE} condition: its operator is not running"


def storage_mode(*, shared: bool, disk_count: int) -> StorageMode:
    if disk_count == 0:
        return StorageMode.NONE
    return StorageMode.SHARED if shared else StorageMode.BLOCK


def is_migration_event(event_type: str, detail: str) -> bool:
    """A lifecycle event a migration causes: never a crash, a stop or a start to act on."""
    return detail in MIGRATION_EVENT_DETAILS.get(event_type, frozenset())


# libvirt's typed job parameters (VIR_DOMAIN_JOB_*) -> status.job fields.
_JOB_FIELDS = {
    "time_elapsed": "timeElapsedMs",
    "data_total": "dataTotal",
    "data_processed": "dataProcessed",
    "data_remaining": "dataRemaining",
    "memory_processed": "memoryProcessed",
    "disk_processed": "diskProcessed",
    "downtime": "downtimeMs",
}


def job_fields(stats: Mapping[str, Any], *, completed: bool = False) -> dict[str, int]:
    """Pure: virDomainGetJobStats' answer as ``status.job`` (what it does not report is left out). A running
    job's ``downtime`` is libvirt's expectation (the allowed maximum, 300 ms by default), not a measurement:
    only a completed job's counts."""
    job: dict[str, int] = {}
    for key, field in _JOB_FIELDS.items():
        if key == "downtime" and not completed:
            continue
        value = stats.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            job[field] = value
    return job


# How "no space" reads in libvirt's and QEMU's errors (strerror of ENOSPC and EDQUOT, and the errno's name).
NO_SPACE_WORDS = ("no space left on device", "enospc", "disk quota exceeded", "edquot")


def is_no_space(error: str) -> bool:
    """Pure: whether an error's text says a file system (or a quota) had no room left."""
    text = error.lower()
    return any(words in text for words in NO_SPACE_WORDS)


def job_failure(error: str, *, source: str, target: str, storage: StorageMode, aborted: bool = False) -> str:
    """Pure: the message of a migration whose libvirt job failed (``error``: libvirt's words) or was aborted.
    The guest stayed on ``source`` (libvirt resumes it there). A block migration that ran out of room on the
    target says so and names the target: its disks are what the copy writes there."""
    stays = f"the guest stays on node {source}"
    if aborted:
        return f"the live migration to node {target} was aborted (the migration was deleted); {stays}"
    if storage == StorageMode.BLOCK and is_no_space(error):
        return (f"node {target} has no space left for the disks of the block migration (libvirt: {error}); "
                f"{stays}")
    return f"the live migration to node {target} failed, libvirt: {error}; {stays}"


def prepare_failure(error: str, *, target: str) -> str:
    """Pure: the message of a block migration whose target (``target``, this node) could not create the empty
    disks the copy fills."""
    if is_no_space(error):
        return f"node {target} has no space left to create the disks for the block migration: {error}"
    return f"node {target} cannot create the disks for the block migration: {error}"


def _pointer(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


_ANNOTATION_PATH = f"/metadata/annotations/{_pointer(MIGRATING_ANNOTATION)}"


def lock_ops(vm: Mapping[str, Any], migration_name: str) -> list[dict[str, Any]]:
    """Take the VM's migration lock: fails with 422 (a failed ``test``) if the VM changed since it was read,
    so two migrations racing for one VM cannot both get it."""
    meta = vm.get("metadata") or {}
    ops: list[dict[str, Any]] = [{"op": "test", "path": "/metadata/resourceVersion",
                                  "value": meta.get("resourceVersion")}]
    if meta.get("annotations"):
        ops.append({"op": "add", "path": _ANNOTATION_PATH, "value": migration_name})
    else:
        ops.append({"op": "add", "path": "/metadata/annotations", "value": {MIGRATING_ANNOTATION: migration_name}})
    return ops


def unlock_ops(migration_name: str) -> list[dict[str, Any]]:
    return [{"op": "test", "path": _ANNOTATION_PATH, "value": migration_name},
            {"op": "remove", "path": _ANNOTATION_PATH}]


def handover_ops(migration_name: str, target: str) -> list[dict[str, Any]]:
    """One patch: the VM becomes the target's and the lock goes, only if this migration still holds it."""
    return [{"op": "test", "path": _ANNOTATION_PATH, "value": migration_name},
            {"op": "replace", "path": "/spec/nodeName", "value": target},
            {"op": "remove", "path": _ANNOTATION_PATH}]
