"""What the handlers get from the runtime: the parts each one uses, nothing more.

runtime.py builds the handlers (handlers/vm.py, host.py, node.py) and hands each its parts; kopf's
handlers (handlers/registration.py) see the runtime only as ``OperatorRuntime``. No handler imports
runtime.py, and runtime.py imports the handlers at module level: the package's import graph has no cycle
(tests/unit/test_imports.py).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from libvirt_operator.hypervisor.connection import Connection
from libvirt_operator.hypervisor.storage import Storage
from libvirt_operator.kube.client import KubeClient
from libvirt_operator.metrics import Metrics
from libvirt_operator.pipeline.records import Key, RecordStore, VMRecord
from libvirt_operator.settings import Settings


class EventPoster(Protocol):
    """Posts a Kubernetes Event about ``involved``; an API failure is logged, never raised."""

    def __call__(self, involved: Mapping[str, Any], type_: str, reason: str,
                 message: str) -> Coroutine[Any, Any, None]: ...


class VMFetcher(Protocol):
    """GETs one VirtualMachine: its body, or None when it does not exist (other API errors raise KubeError)."""

    def __call__(self, namespace: str, name: str) -> Coroutine[Any, Any, dict[str, Any] | None]: ...


class DomainCleaner(Protocol):
    """What VM reconciliation needs of the host-level reconciler (handlers/host.py)."""

    async def destroy_owned(self, uuid: str, *, undefine: bool) -> bool: ...

    async def clean_moved_domain(self, rec: VMRecord) -> None: ...


class MigrationGate(Protocol):
    """Whether a live migration of the VM with this uid runs (handlers/migration.py): its reconciliation
    waits meanwhile, so that a guest leaving this node is neither redefined nor restarted here."""

    def holds(self, uid: str) -> bool: ...


class _NoMigrations:
    def holds(self, uid: str) -> bool:
        return False


NO_MIGRATIONS: MigrationGate = _NoMigrations()


class OperatorRuntime(Protocol):
    """What kopf's handlers call (handlers/registration.py)."""

    async def start(self) -> None: ...

    async def stop(self, grace: float = 30.0) -> None: ...

    def observe_migration(self, event_type: str | None, body: Mapping[str, Any]) -> None: ...


@dataclass
class HostFacts:
    """What the start-up learns of the host, filled in before any VM is reconciled."""

    domain_type: str = "kvm"
    emulator: str | None = None
    domain_type_reason: str = ""  # why this domain type (published on the Node)
    capacity: tuple[int, int] = (0, 0)  # memory MiB, CPUs (0: unknown)


@dataclass(frozen=True)
class HostParts:
    """The host-level reconciler's parts."""

    settings: Settings
    conn: Connection
    storage: Storage
    records: RecordStore
    post_event: EventPoster
    # The start-up scan asks the API about an owned domain whose VM is not in this node's listing: moved
    # to another node (the VM exists) or orphaned (it does not).
    get_vm: VMFetcher


@dataclass(frozen=True)
class VMParts:
    """The VM reconciler's parts."""

    settings: Settings
    kube: KubeClient
    conn: Connection
    storage: Storage
    records: RecordStore
    metrics: Metrics
    facts: HostFacts
    host: DomainCleaner
    # Hardware changed while running (RestartRequired), by uid; shared with the runtime, which owns it.
    restart_required: dict[str, bool]
    post_event: EventPoster
    spawn: Callable[[Coroutine[Any, Any, Any]], None]  # a task the runtime keeps and cancels at stop
    first_pass_done: Callable[[Key], None]  # readiness: this VM had its start-up pass
    migrations: MigrationGate = NO_MIGRATIONS
