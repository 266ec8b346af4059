"""VirtualMachineMigration: its phases, the moves between them, and its spec as the operator reads it.

The phase table (``TRANSITIONS``) is the whole state machine: a migration moves forward only, and the two
ends are final. Who writes which move:

| from    | to        | written by                                                                   |
|---------|-----------|------------------------------------------------------------------------------|
| Pending | Running   | the source node's operator, once the target's operator reported ready        |
| Pending | Failed    | the source (refused: VM not running, another migration, target not ready);  |
|         |           | the target (the VM does not exist, or already runs there)                     |
| Running | Succeeded | the source, after libvirt's job completed and the VM was handed over          |
| Running | Failed    | the source (libvirt's job failed or was aborted: the guest stays on the source) |
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from libvirt_operator.api.spec import DNS1123_SUBDOMAIN


class MigrationPhase(StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


class StorageMode(StrEnum):
    SHARED = "Shared"  # both nodes see the disks: only memory moves
    BLOCK = "Block"  # the disks are created on the target first and copied with the memory
    NONE = "None"  # no disks


TRANSITIONS: dict[MigrationPhase, frozenset[MigrationPhase]] = {
    MigrationPhase.PENDING: frozenset({MigrationPhase.RUNNING, MigrationPhase.FAILED}),
    MigrationPhase.RUNNING: frozenset({MigrationPhase.SUCCEEDED, MigrationPhase.FAILED}),
    MigrationPhase.SUCCEEDED: frozenset(),
    MigrationPhase.FAILED: frozenset(),
}
FINAL = frozenset(phase for phase, moves in TRANSITIONS.items() if not moves)

_NAME = re.compile(DNS1123_SUBDOMAIN)


def phase_of(body: Mapping[str, Any]) -> MigrationPhase:
    """The migration's phase; a migration nobody wrote a status for yet is Pending."""
    raw = (body.get("status") or {}).get("phase")
    try:
        return MigrationPhase(raw) if raw else MigrationPhase.PENDING
    except ValueError:
        return MigrationPhase.PENDING


def may_move(current: MigrationPhase, wanted: MigrationPhase) -> bool:
    """Pure: whether ``current`` may become ``wanted`` (staying where it is is always allowed)."""
    return wanted == current or wanted in TRANSITIONS[current]


@dataclass(frozen=True)
class MigrationSpec:
    vm_name: str
    target_node: str


class MigrationSpecError(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def parse_migration_spec(spec: Mapping[str, Any] | None) -> MigrationSpec:
    """The spec, re-checked as the CRD's schema does (an API server without it must not get further)."""
    if not isinstance(spec, Mapping):
        raise MigrationSpecError("spec", "is required")
    values = []
    for field, key in (("spec.vmName", "vmName"), ("spec.targetNode", "targetNode")):
        value = spec.get(key)
        if not isinstance(value, str) or not value:
            raise MigrationSpecError(field, "is required")
        if len(value) > 253 or not _NAME.fullmatch(value):
            raise MigrationSpecError(field, f"{value!r} is not a DNS-1123 subdomain")
        values.append(value)
    return MigrationSpec(vm_name=values[0], target_node=values[1])
