"""kopf wiring: which kopf handlers exist and what each one does.

- ``on.login``: the credentials of the given kubeconfig (or in-cluster), read as the operator's own API
  client reads them (``kube/client.py``);
- ``on.startup``: the start-up reconciliation (libvirt, the node's VMs listed, domain scan, resume pass),
  after which the runtime watches VirtualMachines itself (kube/vm_watch.py says why not through kopf) --
  see runtime.py, which kopf's memo carries as ``runtime`` (an ``OperatorRuntime``: this module never
  imports runtime.py);
- ``on.event`` for VirtualMachineMigrations (all of them: few, and the VM's node is known only from the
  VM): handlers/migration.py;
- ``on.cleanup``: lets in-flight operations finish, then closes libvirt.

Why no kopf change-detection handlers (on.create/update/resume): those persist a diff-base and progress
annotations on every object, two extra API writes per VM per change. The level-triggered reconciler
(KubeVirt's virt-handler model) needs neither, which keeps creation to Running at three writes (finalizer,
Provisioning, Running). With none registered, kopf would still build a diff-base for every watch event of
the migrations (a deepcopy of the body): ``NoDiffBase``, kopf's own extension point for what an object's
essence is, says it has none.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable
from typing import Any

import kopf

from libvirt_operator.api.constants import GROUP, MIGRATION_PLURAL, VERSION
from libvirt_operator.context import OperatorRuntime
from libvirt_operator.kube.client import load_configuration
from libvirt_operator.settings import watch_timeouts

logger = logging.getLogger(__name__)


async def connection_info(kubeconfig: str | None) -> kopf.ConnectionInfo:
    configuration = await load_configuration(kubeconfig)
    token = None
    header = (configuration.api_key or {}).get("authorization") or (configuration.api_key or {}).get("BearerToken")
    if header:
        token = header.split(" ", 1)[1] if header.lower().startswith("bearer ") else header
    return kopf.ConnectionInfo(
        server=configuration.host,
        ca_path=configuration.ssl_ca_cert or None,
        insecure=not configuration.verify_ssl,
        scheme="Bearer" if token else None,
        token=token,
        username=configuration.username or None,
        password=configuration.password or None,
        certificate_path=configuration.cert_file or None,
        private_key_path=configuration.key_file or None,
    )


def build_registry(kubeconfig: str | None, *, watch_timeout: float = 300.0,
                   migrations: bool = True) -> kopf.OperatorRegistry:
    """``migrations``: watch VirtualMachineMigrations too. Off when the API refuses to list them (no CRD, or
    the RBAC of an older chart): kopf stops on a watch it may not make, which would take the VMs down too."""
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    async def login(**_: Any) -> kopf.ConnectionInfo:
        return await connection_info(kubeconfig)

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
        settings.posting.enabled = False  # our own Events are explicit; kopf's log echo would add API load
        settings.watching.server_timeout, settings.watching.client_timeout = watch_timeouts(watch_timeout)
        settings.watching.connect_timeout = 10
        settings.watching.reconnect_backoff = 0.5
        settings.networking.request_timeout = 30
        settings.persistence.diffbase_storage = NoDiffBase()
        runtime: OperatorRuntime = memo["runtime"]
        await runtime.start()

    if migrations:
        @kopf.on.event(GROUP, VERSION, MIGRATION_PLURAL, registry=registry)
        async def migration_event(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
            # async on purpose: kopf runs sync handlers in a thread pool; the runtime's state is loop-only.
            runtime: OperatorRuntime = memo["runtime"]
            runtime.observe_migration(type, _plain(body))

    @kopf.on.cleanup(registry=registry)
    async def cleanup(memo: kopf.Memo, **_: Any) -> None:
        runtime: OperatorRuntime = memo["runtime"]
        await runtime.stop()

    return registry


class NoDiffBase(kopf.DiffBaseStorage):
    """The essence of an object for kopf's change detection: none (only ``on.event`` handlers here)."""

    def build(self, *, body: kopf.Body, extra_fields: Iterable[Any] | None = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


def _plain(body: kopf.Body) -> dict[str, Any]:
    return copy.deepcopy(dict(body))
