"""Node-scoped VirtualMachine watch (issue 15 item 1): the pure decisions, then an in-process operator on the
API emulator, once with the project's CRD (spec.nodeName selectable) and once with a copy without
selectableFields (the API server refuses the field selector: the operator falls back to filtering itself)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import libvirt
import pytest
import yaml

from kube_emulator import KubeEmulator
from libvirt_operator.api.constants import CRD_PATH, GROUP, NODE_CONDITION_TYPE, PLURAL, VERSION
from libvirt_operator.kube.node_scope import (
    Deleted,
    deleted_meaning,
    node_selector,
    selector_refused,
    still_exists,
)
from libvirt_operator.metrics import Metrics
from libvirt_operator.settings import Settings, watch_timeouts
from libvirt_operator.testing import OperatorThread
from testbed.hosts import remove_test_domains
from testbed.polling import until

NODE, OTHER = "scope-node", "scope-other"


# --- pure decisions ----------------------------------------------------------------------------------------

def test_the_selector_names_the_node() -> None:
    assert node_selector("worker-1") == "spec.nodeName=worker-1"


@pytest.mark.parametrize(("status", "message", "refused"), [
    (400, 'virtualmachines.virt.libvirt-operator.dev "" is invalid: field label not supported: spec.nodeName',
     True),
    (400, "unable to parse requirement: invalid label key", False),  # another bad request: not the selector
    (403, "field label not supported", False),
    (500, "etcdserver: request timed out", False),
    (None, "connection refused", False),
])
def test_only_a_400_field_label_not_supported_means_the_selector_is_refused(
        status: int | None, message: str, refused: bool) -> None:
    assert selector_refused(status, message) is refused


def _body(node: str | None, *, deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"namespace": "default", "name": "vm", "uid": "u1"}
    if deleting:
        meta["deletionTimestamp"] = "2025-01-01T00:00:00Z"
    return {"metadata": meta, "spec": {"nodeName": node} if node is not None else {}}


@pytest.mark.parametrize(("body", "node_scoped", "meaning"), [
    (_body(OTHER), True, Deleted.MOVED_AWAY),  # the selector watch's DELETED for a change of node
    (_body(None), True, Deleted.MOVED_AWAY),  # nodeName removed: no longer this node's either
    # kube-apiserver's DELETED of a move carries the object before the change, as a forced deletion does
    (_body(NODE), True, Deleted.ASK),
    (_body(NODE, deleting=True), True, Deleted.DELETED),  # our finalizer released
    (_body(OTHER, deleting=True), True, Deleted.DELETED),  # deleted while on its way elsewhere
    (_body(OTHER), False, Deleted.DELETED),  # unfiltered watch: another node's VM really deleted
    (_body(NODE), False, Deleted.DELETED),
])
def test_a_deleted_event_is_a_move_only_on_a_node_scoped_watch_for_a_body_of_another_node_not_being_deleted(
        body: dict[str, Any], node_scoped: bool, meaning: Deleted) -> None:
    assert deleted_meaning(body, NODE, node_scoped=node_scoped) is meaning


def test_after_an_ambiguous_deleted_only_the_same_uid_in_the_api_means_the_vm_still_exists() -> None:
    assert still_exists("u1", {"metadata": {"uid": "u1"}, "spec": {"nodeName": OTHER}})
    assert not still_exists("u1", None)  # 404: deleted
    assert not still_exists("u1", {"metadata": {"uid": "u2"}})  # recreated under the same name


def test_the_client_waits_a_little_longer_than_the_server_side_watch_timeout() -> None:
    assert watch_timeouts(300) == (300, 330.0)  # the defaults as before
    assert watch_timeouts(10) == (10, 15.0)  # at least 5 s more
    assert Settings().watch_timeout == 300


# --- in-process operator on the emulator -------------------------------------------------------------------

def watch_events(metrics: Metrics, node: str) -> int:
    """libvirt_operator_vm_watch_events_total summed over event types, for "this" or "other" node's VMs."""
    return int(sum(sample.value for family in metrics.registry.collect() for sample in family.samples
                   if sample.name == "libvirt_operator_vm_watch_events_total" and sample.labels["node"] == node))


class Scope:
    def __init__(self, api: KubeEmulator, operator: OperatorThread, conn: libvirt.virConnect) -> None:
        self.api, self.operator, self.libvirt = api, operator, conn

    @property
    def metrics(self) -> Metrics:
        assert self.operator.runtime is not None
        return self.operator.runtime.metrics

    def vm(self, name: str) -> dict[str, Any] | None:
        return self.api.get_object(GROUP, VERSION, PLURAL, "default", name)

    def phase(self, name: str) -> str | None:
        return ((self.vm(name) or {}).get("status") or {}).get("phase")

    def domain_exists(self, uid: str) -> bool:
        try:
            self.libvirt.lookupByUUIDString(uid)
        except libvirt.libvirtError:
            return False
        return True

    async def send(self, method: str, path: str, body: dict[str, Any], content_type: str) -> dict[str, Any]:
        async with aiohttp.ClientSession() as session, session.request(
                method, f"{self.api.url}{path}", json=body, headers={"Content-Type": content_type}) as resp:
            assert resp.status in (200, 201), await resp.text()
            answer: dict[str, Any] = await resp.json()
            return answer

    async def create(self, name: str, node: str) -> str:
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "VirtualMachine",
                "metadata": {"name": name, "namespace": "default"}, "spec": {"nodeName": node, "memory": "64Mi"}}
        created = await self.send("POST", f"/apis/{GROUP}/{VERSION}/namespaces/default/{PLURAL}", body,
                                  "application/json")
        return str(created["metadata"]["uid"])

    async def force_delete(self, name: str) -> None:
        path = f"{self.api.url}/apis/{GROUP}/{VERSION}/namespaces/default/{PLURAL}/{name}"
        await self.send("PATCH", path.removeprefix(self.api.url), {"metadata": {"finalizers": None}},
                        "application/merge-patch+json")
        async with aiohttp.ClientSession() as session, session.delete(path) as resp:
            assert resp.status == 200, await resp.text()

    async def move(self, name: str, node: str) -> None:
        await self.send("PATCH", f"/apis/{GROUP}/{VERSION}/namespaces/default/{PLURAL}/{name}",
                        {"spec": {"nodeName": node}}, "application/merge-patch+json")

    def condition_message(self) -> str:
        node = self.api.get_object("", "v1", "nodes", None, NODE) or {}
        for cond in (node.get("status") or {}).get("conditions") or []:
            if cond.get("type") == NODE_CONDITION_TYPE:
                return str(cond.get("message", ""))
        return ""


async def _scope(tmp_path: Path, crd: Path, *, history_limit: int = 10000,
                 watch_timeout: float = 300.0) -> AsyncIterator[Scope]:
    async with KubeEmulator(crd_paths=[crd], history_limit=history_limit) as api:
        kubeconfig = tmp_path / "kubeconfig"
        api.write_kubeconfig(kubeconfig)
        conn = libvirt.open("test:///default")
        scope = Scope(api, OperatorThread(Settings()), conn)
        await scope.send("POST", "/api/v1/nodes", {"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}},
                         "application/json")
        settings = Settings(node_name=NODE, libvirt_uri="test:///default", kubeconfig=str(kubeconfig),
                            image_dir=tmp_path / "images", storage_dir=tmp_path / "disks", shutdown_timeout=0.5,
                            health_port=0, metrics_port=0, sync_interval=3600, shared_storage="true",
                            watch_timeout=watch_timeout)
        scope.operator = OperatorThread(settings)
        scope.operator.start()
        await until(lambda: scope.operator.ready, what="the operator to be ready")
        try:
            yield scope
        finally:
            await asyncio.to_thread(scope.operator.stop)
            remove_test_domains(conn)
            conn.close()


@pytest.fixture
async def scoped(tmp_path: Path) -> AsyncIterator[Scope]:
    async for scope in _scope(tmp_path, CRD_PATH):
        yield scope


@pytest.fixture
async def short_history(tmp_path: Path) -> AsyncIterator[Scope]:
    """An API server that keeps only the last 10 events (so a watch away for longer expires), and watch
    requests the server ends after 1 s (so that the operator's watch reconnects within the test)."""
    async for scope in _scope(tmp_path, CRD_PATH, history_limit=10, watch_timeout=1.0):
        yield scope


@pytest.fixture
async def unselectable(tmp_path: Path) -> AsyncIterator[Scope]:
    crd = yaml.safe_load(CRD_PATH.read_text())
    for version in crd["spec"]["versions"]:
        version.pop("selectableFields", None)
    path = tmp_path / "crd-without-selectable-fields.yaml"
    path.write_text(yaml.safe_dump(crd))
    async for scope in _scope(tmp_path, path):
        yield scope


async def test_no_watch_event_for_another_nodes_vm_and_a_move_away_removes_the_domain_keeps_the_vm(
        scoped: Scope) -> None:
    assert scoped.operator.runtime is not None and scoped.operator.runtime.node_scoped
    mine = await scoped.create("mine", NODE)
    await until(lambda: scoped.phase("mine") == "Running", what="mine Running")
    await scoped.create("theirs", OTHER)
    await scoped.create("later", NODE)  # events arrive in order: once "later" is seen, "theirs" would have been
    await until(lambda: scoped.phase("later") == "Running", what="later Running")
    assert watch_events(scoped.metrics, "other") == 0
    assert watch_events(scoped.metrics, "this") >= 2
    assert scoped.phase("theirs") is None  # never touched

    await scoped.move("mine", OTHER)
    await until(lambda: not scoped.domain_exists(mine), what="the moved VM's domain removed")
    await scoped.operator.idle()
    vm = scoped.vm("mine")
    assert vm is not None and vm["spec"]["nodeName"] == OTHER and not vm["metadata"].get("deletionTimestamp")
    runtime = scoped.operator.runtime
    assert runtime is not None and runtime.records.get(("default", "mine")) is None
    assert watch_events(scoped.metrics, "other") == 0


async def test_a_forced_deletion_seen_on_the_node_scoped_watch_removes_the_domain(scoped: Scope) -> None:
    uid = await scoped.create("forced", NODE)
    await until(lambda: scoped.phase("forced") == "Running", what="Running")
    await scoped.force_delete("forced")
    await until(lambda: not scoped.domain_exists(uid), what="the vanished VM's domain removed")


async def test_a_refused_field_selector_falls_back_to_client_side_filtering_and_says_so_on_the_node(
        unselectable: Scope) -> None:
    runtime = unselectable.operator.runtime
    assert runtime is not None and not runtime.node_scoped and runtime.watch_selector is None
    await until(lambda: "not node-scoped" in unselectable.condition_message(), what="the Node condition's note")
    await unselectable.create("theirs", OTHER)
    await unselectable.create("mine", NODE)
    await until(lambda: unselectable.phase("mine") == "Running", what="mine Running")
    assert watch_events(unselectable.metrics, "other") >= 1  # every VM of the cluster arrives, filtered here
    assert unselectable.phase("theirs") is None


def relists(metrics: Metrics) -> int:
    return int(sum(sample.value for family in metrics.registry.collect() for sample in family.samples
                   if sample.name == "libvirt_operator_vm_watch_relists_total"))


async def test_a_watch_expired_while_away_relists_and_converges_on_what_it_missed(short_history: Scope) -> None:
    scope = short_history
    gone_uid = await scope.create("gone", NODE)
    await until(lambda: scope.phase("gone") == "Running", what="gone Running")
    # The operator's next watch requests fail (the API server away for it) while a VM of its node is
    # deleted without it (finalizer removed), another is created, and the history moves on past both.
    watches = scope.api.requests[("watch", PLURAL)]
    scope.api.inject_fault(status=503, verb="watch", resource=PLURAL, count=3)
    await until(lambda: scope.api.requests[("watch", PLURAL)] > watches, what="the watch failing", limit=30)
    await scope.force_delete("gone")
    await scope.create("missed", NODE)
    for i in range(12):
        await scope.create(f"filler-{i}", OTHER)
    await until(lambda: relists(scope.metrics) == 1, what="the expired watch relisting", limit=30)
    await until(lambda: scope.phase("missed") == "Running", what="missed Running (from the relist)")
    await until(lambda: not scope.domain_exists(gone_uid), what="the domain of the VM deleted meanwhile removed")
    runtime = scope.operator.runtime
    assert runtime is not None and runtime.records.get(("default", "gone")) is None
    assert watch_events(scope.metrics, "other") == 0  # the relist was node-scoped too
    # and the watch goes on from the relist's version: a VM created now arrives as ever
    await scope.create("after", NODE)
    await until(lambda: scope.phase("after") == "Running", what="after Running")
    assert relists(scope.metrics) == 1
