"""Per-VM in-memory records: the informer-like cache the reconciler works from.

kopf's watch feeds the latest body of every VirtualMachine; libvirt events are attached to the record
of the VM whose uid is the domain's UUID. Nothing here is persisted: after a restart, everything is
derived again from the API (status) and libvirt (domain state), as KubeVirt's virt-handler does.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from libvirt_operator.api.spec import VMSpec
from libvirt_operator.hypervisor.connection import LifecycleEvent

Key = tuple[str, str]  # (namespace, name)

# Events the operator's own actions cause are absorbed if they arrive within this long after the action
# returned (a start can itself take many seconds on a busy host; the window must not run out during it).
EXPECT_WINDOW = 15.0
MAX_PENDING_EVENTS = 32
# Records that left the cache are remembered (uid, resourceVersion) this many at most: enough for every VM
# a node hands over or deletes within a watch's lag.
MAX_TOMBSTONES = 4096


@dataclass
class VMRecord:
    key: Key
    body: dict[str, Any]
    seen_by_this_process: bool = False  # False until the first reconciliation (the start-up "resume" pass)
    provisioning_here: bool = False  # this process is provisioning it right now
    owner_verified: bool = False  # the domain with this uid was proven ours (its <metadata>)
    events: list[LifecycleEvent] = field(default_factory=list)
    held_stop: LifecycleEvent | None = None  # a STOPPED event held back (reboot rule)
    hold_until: float = 0.0  # time.monotonic()
    expected: dict[str, float] = field(default_factory=dict)  # event type name -> expiry (monotonic)
    observed_stop_at: float | None = None  # when a stop was first seen in libvirt's state (not by event)
    stop_deadline: float | None = None  # graceful shutdown in progress until then, then destroy
    last_event: dict[str, str] | None = None
    event_latency_start: float | None = None  # monotonic receive time of the oldest unreflected event
    # The body a reconciliation pass acts on, taken at its start: its generation and retry token are the
    # ones the pass records as observed, even if the watch delivers a newer body meanwhile.
    acting_on: dict[str, Any] | None = None
    # The guest's data (agent, addresses) is read again on the next pass: set by agent lifecycle events,
    # the periodic sync, a start; True at first so that the start-up pass reads it once.
    guest_due: bool = True
    stop_started: float | None = None  # monotonic, when the graceful shutdown was asked for
    stop_method: str = ""  # agent | acpi
    stop_grace: float = 0.0
    # A reboot asked for by the restart annotation: reset if the guest has not rebooted by then.
    reboot_deadline: float | None = None
    rebooted: bool = False  # libvirt's REBOOT event came since the request
    # The last spec parsed and what it parsed to: every lifecycle event's pass reads the spec, which rarely
    # changes (parsing it was about 4 % of the operator's CPU in an event burst, profiled).
    parsed_spec: tuple[dict[str, Any], VMSpec] | None = None

    @property
    def uid(self) -> str:
        return str(self.body.get("metadata", {}).get("uid", ""))

    @property
    def node_name(self) -> str | None:
        node = (self.body.get("spec") or {}).get("nodeName")
        return str(node) if node is not None else None

    @property
    def status(self) -> dict[str, Any]:
        status = self.body.get("status")
        return status if isinstance(status, dict) else {}

    def holds(self, body: Mapping[str, Any]) -> bool:
        """This very version is already held: the watch's echo of our own write, whose answer the record
        got from the write itself."""
        return self.holds_version(body.get("metadata", {}).get("resourceVersion"))

    def holds_version(self, version: str | None) -> bool:
        """``holds`` for a version read off a watch line without decoding it."""
        held = self.body.get("metadata", {}).get("resourceVersion")
        return held is not None and held == version

    def expect(self, *event_types: str) -> None:
        """Called before an action (its events may arrive while it runs) and again once it returned."""
        until = time.monotonic() + EXPECT_WINDOW
        for name in event_types:
            self.expected[name] = until

    def is_expected(self, event_type: str, received: float) -> bool:
        """Whether an event that arrived at ``received`` (monotonic) was caused by our own action."""
        until = self.expected.get(event_type)
        if until is None:
            return False
        del self.expected[event_type]  # one action, one event: consumed on first match
        return until >= received


class RecordStore:
    """Records by key and by uid (the domain UUID), and tombstones of the records that left.

    A record leaves when its VM moved to another node (a hand-over after a live migration, an admin's
    move) or was deleted, often on the answer of this operator's own write, before the watch delivered the
    events that came before that write. Such a late event carries the VM as it was (this node's name, the
    migration lock): taken as news it would bring the record back and have the reconciler define and
    start a guest that now runs on another node. The tombstone (uid, resourceVersion) tells it apart.
    """

    def __init__(self) -> None:
        self._by_key: dict[Key, VMRecord] = {}
        self._by_uid: dict[str, Key] = {}
        self._tombstones: dict[Key, tuple[str, int]] = {}

    def __len__(self) -> int:
        return len(self._by_key)

    def __iter__(self) -> Iterator[VMRecord]:
        return iter(list(self._by_key.values()))

    def get(self, key: Key) -> VMRecord | None:
        return self._by_key.get(key)

    def by_uid(self, uid: str) -> VMRecord | None:
        key = self._by_uid.get(uid)
        return self._by_key.get(key) if key is not None else None

    def upsert(self, body: dict[str, Any]) -> VMRecord:
        meta = body.get("metadata", {})
        key: Key = (str(meta.get("namespace", "")), str(meta.get("name", "")))
        record = self._by_key.get(key)
        if record is None:
            record = VMRecord(key=key, body=body)
            self._by_key[key] = record
            self._tombstones.pop(key, None)
        else:
            if record.uid and record.uid != meta.get("uid"):
                self._by_uid.pop(record.uid, None)  # same name, new object
                record = VMRecord(key=key, body=body)
                self._by_key[key] = record
            elif _newer_or_equal(body, record.body):
                record.body = body
        if meta.get("uid"):
            self._by_uid[str(meta["uid"])] = key
        return record

    def remove(self, key: Key) -> VMRecord | None:
        record = self._by_key.pop(key, None)
        if record is not None:
            self._by_uid.pop(record.uid, None)
            version = _version(record.body)
            if record.uid and version is not None:
                self._tombstones.pop(key, None)
                self._tombstones[key] = (record.uid, version)
                if len(self._tombstones) > MAX_TOMBSTONES:
                    del self._tombstones[next(iter(self._tombstones))]  # the oldest
        return record

    def outdated(self, body: Mapping[str, Any]) -> bool:
        """A watch event of a VM whose record left at this or a later version: what it says is older."""
        meta = body.get("metadata") or {}
        key: Key = (str(meta.get("namespace", "")), str(meta.get("name", "")))
        tombstone = self._tombstones.get(key)
        if tombstone is None or key in self._by_key:
            return False
        version = _version(body)
        return tombstone[0] == meta.get("uid") and version is not None and version <= tombstone[1]

    def forget(self, key: Key) -> None:
        """The watch delivered the VM's DELETED: nothing older can follow on that stream."""
        self._tombstones.pop(key, None)


def _version(body: Mapping[str, Any]) -> int | None:
    try:
        return int(body["metadata"]["resourceVersion"])
    except (KeyError, TypeError, ValueError):
        return None


def _newer_or_equal(new: dict[str, Any], old: dict[str, Any]) -> bool:
    """Never let a stale watch event overwrite a body our own patch already returned."""
    new_version, old_version = _version(new), _version(old)
    return new_version is None or old_version is None or new_version >= old_version
