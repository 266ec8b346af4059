"""Status vocabulary: phases, power states, libvirt event names, and condition bookkeeping."""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Any


class Phase(StrEnum):
    PENDING = "Pending"
    PROVISIONING = "Provisioning"
    STARTING = "Starting"
    RUNNING = "Running"
    PAUSED = "Paused"
    STOPPING = "Stopping"
    STOPPED = "Stopped"
    FAILED = "Failed"
    TERMINATING = "Terminating"
    MIGRATING = "Migrating"  # a live migration to another node runs (VirtualMachineMigration)


class PowerState(StrEnum):
    RUNNING = "Running"
    BLOCKED = "Blocked"
    PAUSED = "Paused"
    SHUTTING_DOWN = "ShuttingDown"
    SHUTOFF = "Shutoff"
    CRASHED = "Crashed"
    PM_SUSPENDED = "PMSuspended"
    NO_STATE = "NoState"


# virDomainState values, in libvirt's order (0..7).
_POWER_BY_LIBVIRT_STATE = (
    PowerState.NO_STATE,
    PowerState.RUNNING,
    PowerState.BLOCKED,
    PowerState.PAUSED,
    PowerState.SHUTTING_DOWN,
    PowerState.SHUTOFF,
    PowerState.CRASHED,
    PowerState.PM_SUSPENDED,
)


def power_state(libvirt_state: int) -> PowerState:
    if 0 <= libvirt_state < len(_POWER_BY_LIBVIRT_STATE):
        return _POWER_BY_LIBVIRT_STATE[libvirt_state]
    return PowerState.NO_STATE


# virDomainEventType names and, per type, the names of their details (libvirt's order).
EVENT_NAMES = (
    "Defined", "Undefined", "Started", "Suspended", "Resumed", "Stopped", "Shutdown", "PMSuspended",
    "Crashed",
)
EVENT_DETAILS: dict[str, tuple[str, ...]] = {
    "Defined": ("Added", "Updated", "Renamed", "FromSnapshot"),
    "Undefined": ("Removed", "Renamed"),
    "Started": ("Booted", "Migrated", "Restored", "FromSnapshot", "Wakeup"),
    "Suspended": ("Paused", "Migrated", "IOError", "Watchdog", "Restored", "FromSnapshot", "APIError",
                  "Postcopy", "PostcopyFailed"),
    "Resumed": ("Unpaused", "Migrated", "FromSnapshot", "Postcopy", "PostcopyFailed"),
    "Stopped": ("Shutdown", "Destroyed", "Crashed", "Migrated", "Saved", "Failed", "FromSnapshot"),
    "Shutdown": ("Finished", "Guest", "Host"),
    "PMSuspended": ("Memory", "Disk"),
    "Crashed": ("Panicked", "Crashloaded"),
}

# Reasons libvirt gives with a state (virDomainGetState), by state.
SHUTOFF_REASONS = ("Unknown", "Shutdown", "Destroyed", "Crashed", "Migrated", "Saved", "Failed",
                   "FromSnapshot", "Daemon")
PAUSED_REASONS = ("Unknown", "User", "Migration", "Save", "Dump", "IOError", "Watchdog", "FromSnapshot",
                  "ShuttingDown", "Snapshot", "Crashed", "StartingUp", "Postcopy", "PostcopyFailed",
                  "APIError")


def event_name(event: int) -> str:
    return EVENT_NAMES[event] if 0 <= event < len(EVENT_NAMES) else f"Event{event}"


def detail_name(event: int, detail: int) -> str:
    names = EVENT_DETAILS.get(event_name(event), ())
    return names[detail] if 0 <= detail < len(names) else f"Detail{detail}"


def state_reason(libvirt_state: int, reason: int) -> str:
    names: Sequence[str] = ()
    if libvirt_state == 5:
        names = SHUTOFF_REASONS
    elif libvirt_state == 3:
        names = PAUSED_REASONS
    return names[reason] if 0 <= reason < len(names) else ""


def now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def event_time(timestamp: float | None = None) -> str:
    """RFC 3339 with microseconds (Kubernetes' MicroTime): two events in one second stay distinct."""
    moment = datetime.datetime.fromtimestamp(timestamp, datetime.UTC) if timestamp is not None else (
        datetime.datetime.now(datetime.UTC))
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def set_condition(
    conditions: Sequence[Mapping[str, Any]],
    type_: str,
    status: str,
    reason: str,
    message: str,
    *,
    now: str | None = None,
) -> list[dict[str, Any]]:
    """Return a new condition list with one condition set; lastTransitionTime moves only on a status change."""
    result: list[dict[str, Any]] = []
    found = False
    for cond in conditions:
        if cond.get("type") != type_:
            result.append(dict(cond))
            continue
        found = True
        transition = cond.get("lastTransitionTime") if cond.get("status") == status else None
        result.append({
            "type": type_, "status": status, "reason": reason, "message": message,
            "lastTransitionTime": transition or now or now_iso(),
        })
    if not found:
        result.append({
            "type": type_, "status": status, "reason": reason, "message": message,
            "lastTransitionTime": now or now_iso(),
        })
    return result


def remove_condition(conditions: Sequence[Mapping[str, Any]], type_: str) -> list[dict[str, Any]]:
    return [dict(c) for c in conditions if c.get("type") != type_]


def get_condition(conditions: Sequence[Mapping[str, Any]] | None, type_: str) -> Mapping[str, Any] | None:
    for cond in conditions or ():
        if cond.get("type") == type_:
            return cond
    return None
