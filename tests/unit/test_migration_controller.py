"""The migration controller in one process (API emulator, operator, libvirt's test:///default): what it
decides before libvirt's job (which test:///default cannot run): refusals with a message and Events, one
migration per VM at a time, the VM held while its migration is pending, released when it is deleted."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import libvirt
import pytest

from kube_emulator import KubeEmulator
from libvirt_operator.api.constants import (
    CRD_PATH,
    GROUP,
    MIGRATING_ANNOTATION,
    MIGRATION_CRD_PATH,
    MIGRATION_PLURAL,
    MIGRATION_URI_ANNOTATION,
    VERSION,
)
from libvirt_operator.settings import Settings
from libvirt_operator.testing import OperatorThread
from testbed.hosts import remove_test_domains
from testbed.polling import until
from tests.unit.test_event_pipeline import NODE, Env

OTHER = "other-node"


class MigrationEnv(Env):
    async def request(self, method: str, path: str, body: Any = None, *,
                      content_type: str = "application/json") -> Any:
        async with aiohttp.ClientSession() as session, session.request(
                method, f"{self.api.url}{path}", json=body, headers={"Content-Type": content_type}) as resp:
            assert resp.status < 300, await resp.text()
            return await resp.json()

    async def migrate(self, name: str, vm: str, target: str = OTHER) -> None:
        await self.request("POST", f"/apis/{GROUP}/{VERSION}/namespaces/default/{MIGRATION_PLURAL}", {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "VirtualMachineMigration",
            "metadata": {"name": name, "namespace": "default"}, "spec": {"vmName": vm, "targetNode": target}})

    async def delete_migration(self, name: str) -> None:
        await self.request("DELETE", f"/apis/{GROUP}/{VERSION}/namespaces/default/{MIGRATION_PLURAL}/{name}")

    def migration(self, name: str) -> dict[str, Any]:
        return dict((self.api.get_object(GROUP, VERSION, MIGRATION_PLURAL, "default", name) or {}).get("status")
                    or {})

    async def ready_node(self, name: str) -> None:
        """A Node as a running target's operator leaves it: its migration URI and LibvirtReady=True."""
        await self.request("POST", "/api/v1/nodes", {
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "annotations": {MIGRATION_URI_ANNOTATION: "qemu+tcp://10.99.0.2/system"}}})
        await self.request("PATCH", f"/api/v1/nodes/{name}/status", {"status": {"conditions": [
            {"type": "LibvirtReady", "status": "True", "reason": "LibvirtConnected", "message": "answers"}]}},
            content_type="application/merge-patch+json")


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[MigrationEnv]:
    async with KubeEmulator(crd_paths=[CRD_PATH, MIGRATION_CRD_PATH]) as api:
        kubeconfig = tmp_path / "kubeconfig"
        api.write_kubeconfig(kubeconfig)
        settings = Settings(node_name=NODE, libvirt_uri="test:///default", kubeconfig=str(kubeconfig),
                            image_dir=tmp_path / "images", storage_dir=tmp_path / "disks", stopped_event_delay=0.5,
                            shutdown_timeout=0.5, health_port=0, metrics_port=0, sync_interval=3600)
        operator = OperatorThread(settings)
        operator.start()
        await until(lambda: operator.runtime is not None and operator.runtime.ready, what="the operator to be ready")
        conn = libvirt.open("test:///default")
        try:
            yield MigrationEnv(api, operator, conn)
        finally:
            await asyncio.to_thread(operator.stop)
            remove_test_domains(conn)
            conn.close()


def annotations(env: Env, name: str) -> dict[str, str]:
    return dict(((env.vm(name) or {}).get("metadata") or {}).get("annotations") or {})


async def test_a_stopped_vm_is_not_migrated_and_the_refusal_says_why_on_both_objects(env: MigrationEnv) -> None:
    await env.create("halted", runStrategy="Halted")
    await until(lambda: env.status("halted").get("phase") == "Stopped", what="Stopped")
    await env.ready_node(OTHER)
    await env.migrate("m-halted", "halted")
    status = await until(lambda: env.migration("m-halted").get("phase") == "Failed" and env.migration("m-halted"),
                         what="the migration refused")
    assert "only a running or paused VirtualMachine can be live-migrated (it is Stopped)" in status["message"]
    assert status["sourceNode"] == NODE
    await until(lambda: "MigrationRefused" in env.reasons("m-halted") and "MigrationRefused" in env.reasons("halted"),
                what="Events on both objects")
    assert MIGRATING_ANNOTATION not in annotations(env, "halted")


async def test_a_target_without_a_ready_operator_is_refused(env: MigrationEnv) -> None:
    await env.create("vm1")
    await until(lambda: env.status("vm1").get("phase") == "Running", what="Running")
    await env.migrate("m-nowhere", "vm1", target="no-such-node")
    status = await until(lambda: env.migration("m-nowhere").get("phase") == "Failed" and env.migration("m-nowhere"),
                         what="the migration refused")
    assert status["message"] == "node no-such-node does not exist"
    assert env.status("vm1")["phase"] == "Running" and MIGRATING_ANNOTATION not in annotations(env, "vm1")


async def test_the_target_refuses_a_migration_of_a_vm_that_does_not_exist(env: MigrationEnv) -> None:
    await env.migrate("m-ghost", "ghost", target=NODE)
    status = await until(lambda: env.migration("m-ghost").get("phase") == "Failed" and env.migration("m-ghost"),
                         what="the migration refused by its target")
    assert status["message"] == "the VirtualMachine does not exist"
    await until(lambda: "MigrationRefused" in env.reasons("m-ghost"), what="an Event on the migration")


async def test_one_migration_per_vm_the_vm_is_held_meanwhile_and_released_when_it_is_deleted(
        env: MigrationEnv) -> None:
    uid = await env.create("vm2", runStrategy="Always")
    await until(lambda: env.status("vm2").get("phase") == "Running", what="Running")
    await env.ready_node(OTHER)
    await env.migrate("m-first", "vm2")
    first = await until(lambda: env.migration("m-first").get("sourceNode") and env.migration("m-first"),
                        what="the first migration accepted")
    assert (first["phase"], first["storage"], first["vmUID"]) == ("Pending", "None", uid)
    assert "waiting for node other-node's operator" in first["message"]
    assert annotations(env, "vm2")[MIGRATING_ANNOTATION] == "m-first"

    await env.migrate("m-second", "vm2")
    second = await until(lambda: env.migration("m-second").get("phase") == "Failed" and env.migration("m-second"),
                         what="the second migration refused")
    assert second["message"] == ("the VirtualMachine is already being migrated (migration m-first): one migration "
                                 "at a time")
    assert env.migration("m-first")["phase"] == "Pending"

    # Held: a guest stopped now is not restarted by runStrategy Always while its migration is pending.
    env.libvirt.lookupByUUIDString(uid).destroy()
    await env.operator.idle()
    assert not env.libvirt.lookupByUUIDString(uid).isActive()
    assert "RestartedByPolicy" not in env.reasons("vm2")

    await env.delete_migration("m-first")  # deleted before its job began: the VM is released
    await until(lambda: MIGRATING_ANNOTATION not in annotations(env, "vm2"), what="the lock released")
    await until(lambda: env.status("vm2").get("restarts") == 1, what="the VM reconciled again (restarted)")
    assert env.libvirt.lookupByUUIDString(uid).isActive()
