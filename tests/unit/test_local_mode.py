"""Local mode's own choices: where each node keeps its state, what --fresh does, and the Warning Event
on VirtualMachines of nodes that no operator serves."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest

from libvirt_operator import cli, local
from libvirt_operator.api.constants import CRD_PATH, GROUP, KIND, PLURAL, VERSION
from libvirt_operator.hypervisor.storage import Storage, StorageError
from libvirt_operator.settings import Settings
from tests.conftest import wait_for
from tests.emulator.conftest import EmulatorThread, make_api_client


@pytest.fixture
def run_dev_calls(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """`libvirt-operator dev` up to the point where it would start the emulator."""
    calls: list[dict[str, Any]] = []

    async def fake_run_dev(settings: Any, **kwargs: Any) -> None:
        calls.append({"settings": settings, **kwargs})

    monkeypatch.setattr(local, "run_dev", fake_run_dev)
    return calls


def test_each_node_name_has_a_local_state_directory_of_its_own() -> None:
    one, two = local.node_state_dir("node-one"), local.node_state_dir("node-two")
    assert one != two and one.parent == two.parent
    assert (one.name, two.name) == ("node-one", "node-two")


@pytest.mark.parametrize("name", ["../etc", "a/b", "", "UPPER", "."])
def test_a_node_name_that_is_no_dns_subdomain_cannot_name_a_state_directory(name: str) -> None:
    with pytest.raises(ValueError, match="DNS-1123"):
        local.node_state_dir(name)


def test_dev_keeps_the_api_state_in_the_node_directory(run_dev_calls: list[dict[str, Any]], tmp_path: Path) -> None:
    assert cli.main(["dev", "--kubeconfig", str(tmp_path / "kc"), "--node-name", "node-x"]) == 0
    assert run_dev_calls[0]["state_file"] == local.node_state_dir("node-x") / "api-state.json"
    assert run_dev_calls[0]["fresh"] is False


def test_dev_puts_images_and_disks_under_the_node_directory_unless_given(
        run_dev_calls: list[dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LIBVIRT_OPERATOR_IMAGE_DIR", raising=False)
    monkeypatch.delenv("LIBVIRT_OPERATOR_STORAGE_DIR", raising=False)
    cli.main(["dev", "--kubeconfig", str(tmp_path / "kc"), "--node-name", "node-x"])
    monkeypatch.setenv("LIBVIRT_OPERATOR_STORAGE_DIR", str(tmp_path / "env-disks"))
    cli.main(["dev", "--kubeconfig", str(tmp_path / "kc"), "--node-name", "node-y", "--image-dir",
              str(tmp_path / "flag-images")])
    first, second = (c["settings"] for c in run_dev_calls)
    node_x = local.node_state_dir("node-x")
    assert (first.image_dir, first.storage_dir) == (node_x / "images", node_x / "disks")
    assert (second.image_dir, second.storage_dir) == (tmp_path / "flag-images", tmp_path / "env-disks")


def test_cluster_identity_names_one_api_and_survives_its_restart(tmp_path: Path) -> None:
    def identity_of(state_file: Path | None) -> str:
        server = EmulatorThread(state_file=state_file)
        try:
            server.call(server.emulator.write_kubeconfig, tmp_path / "kubeconfig")
            return local.cluster_identity(tmp_path / "kubeconfig")
        finally:
            server.close()

    kept = identity_of(tmp_path / "api-state.json")
    assert identity_of(tmp_path / "api-state.json") == kept
    assert identity_of(None) != kept


def test_dev_api_only_keeps_nothing_unless_given_a_state_file(run_dev_calls: list[dict[str, Any]],
                                                              tmp_path: Path) -> None:
    cli.main(["dev", "--api-only", "--kubeconfig", str(tmp_path / "kc")])
    cli.main(["dev", "--api-only", "--kubeconfig", str(tmp_path / "kc"), "--state-file", str(tmp_path / "s.json"),
              "--fresh"])
    assert [(c["state_file"], c["fresh"]) for c in run_dev_calls] == [(None, False), (tmp_path / "s.json", True)]


def test_dev_refuses_a_node_name_that_cannot_name_a_directory(run_dev_calls: list[dict[str, Any]],
                                                              tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="DNS-1123"):
        cli.main(["dev", "--kubeconfig", str(tmp_path / "kc"), "--node-name", "../up"])
    assert run_dev_calls == []


def test_fresh_sets_the_previous_state_aside_instead_of_deleting_it(tmp_path: Path) -> None:
    state = tmp_path / "api-state.json"
    assert local.set_aside(state) is None
    state.write_text("old state")
    previous = local.set_aside(state)
    assert previous == tmp_path / "api-state.json.previous"
    assert previous.read_text() == "old state" and not state.exists()


# --- the NoOperatorForNode hint ------------------------------------------------------------------------


class WatcherThread:
    """local.ForeignNodeWatcher on an event loop of its own, against an emulator on another thread."""

    def __init__(self, kubeconfig: Path, node: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        watcher = local.ForeignNodeWatcher(kubeconfig, node, retry_every=0.2)

        async def start() -> asyncio.Task[None]:
            return asyncio.create_task(watcher.run())

        self.task = asyncio.run_coroutine_threadsafe(start(), self.loop).result(10)

    def stop(self) -> None:
        async def cancel() -> None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

        asyncio.run_coroutine_threadsafe(cancel(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def hint_api(tmp_path: Path) -> Iterator[tuple[EmulatorThread, kubernetes.client.ApiClient, Path]]:
    server = EmulatorThread(crd_paths=[CRD_PATH])
    kubeconfig = tmp_path / "kubeconfig"
    server.call(server.emulator.write_kubeconfig, kubeconfig)
    client = make_api_client(server.url)
    try:
        yield server, client, kubeconfig
    finally:
        client.close()
        server.close()


def vm(name: str, node: str) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "metadata": {"name": name},
            "spec": {"nodeName": node, "memory": "32Mi"}}


def hints_for(client: kubernetes.client.ApiClient, name: str) -> list[dict[str, Any]]:
    listed = kubernetes.client.CoreV1Api(client).list_namespaced_event("default", _preload_content=False).json()
    return [e for e in listed["items"] if e["involvedObject"]["name"] == name and e["reason"] == "NoOperatorForNode"]


def test_a_vm_of_a_node_without_operator_gets_one_warning_event(
        hint_api: tuple[EmulatorThread, kubernetes.client.ApiClient, Path]) -> None:
    _server, client, kubeconfig = hint_api
    custom = kubernetes.client.CustomObjectsApi(client)
    custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, vm("mine", "here"))
    custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, vm("elsewhere", "dev-node"))
    watcher = WatcherThread(kubeconfig, "here")
    try:
        [event] = wait_for(lambda: hints_for(client, "elsewhere"), timeout=20, what="the NoOperatorForNode event")
        assert event["type"] == "Warning"
        assert "spec.nodeName is 'dev-node'" in event["message"] and "node 'here'" in event["message"]
        custom.patch_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "elsewhere",
                                              {"spec": {"memory": "48Mi"}})
        custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, vm("later", "dev-node"))
        wait_for(lambda: hints_for(client, "later"), timeout=20, what="the event of a VM created later")
    finally:
        watcher.stop()
    again = WatcherThread(kubeconfig, "here")  # a restarted local mode does not repeat it either
    try:
        custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, vm("last", "dev-node"))
        wait_for(lambda: hints_for(client, "last"), timeout=20, what="the restarted watcher's event")
    finally:
        again.stop()
    assert len(hints_for(client, "elsewhere")) == 1 and len(hints_for(client, "later")) == 1
    assert hints_for(client, "mine") == []


def test_a_vm_of_a_node_whose_operator_holds_its_lease_gets_no_warning(
        hint_api: tuple[EmulatorThread, kubernetes.client.ApiClient, Path]) -> None:
    _server, client, kubeconfig = hint_api
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    kubernetes.client.CoordinationV1Api(client).create_namespaced_lease("default", {
        "metadata": {"name": "libvirt-operator-other"},
        "spec": {"holderIdentity": "operator-of-other", "leaseDurationSeconds": 3600, "renewTime": now}})
    custom = kubernetes.client.CustomObjectsApi(client)
    custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, vm("served", "other"))
    custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, vm("unserved", "nobody"))
    watcher = WatcherThread(kubeconfig, "here")
    try:
        wait_for(lambda: hints_for(client, "unserved"), timeout=20, what="the event of the unserved VM")
    finally:
        watcher.stop()
    assert hints_for(client, "served") == []


# --- what the README quotes -----------------------------------------------------------------------------

README = Path(__file__).resolve().parents[2] / "README.md"
ROOT_NODE_DIR = Path("/var/lib/libvirt-operator/local/dev-node")


def test_the_readme_quotes_the_directories_local_mode_prints(caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings(image_dir=ROOT_NODE_DIR / "images", storage_dir=ROOT_NODE_DIR / "disks")
    with caplog.at_level(logging.INFO, logger="libvirt_operator.local"):
        local.announce_directories(settings)
    readme = README.read_text()
    printed = [f"{r.levelname:<7} {r.name}: {r.getMessage()}" for r in caplog.records if r.levelname == "INFO"]
    assert len(printed) == 2
    for line in printed:
        assert f"\n{line}\n" in readme, line


def test_the_readme_quotes_the_missing_image_message(tmp_path: Path) -> None:
    storage = Storage(tmp_path / "images", tmp_path / "disks")
    with pytest.raises(StorageError) as info:
        storage.resolve_image("base.qcow2", "spec.disks[0].image")
    quoted = str(info.value).replace(str(storage.image_dir), str(ROOT_NODE_DIR / "images"))
    assert f"`{quoted}`" in README.read_text()
