"""The state file: objects and the resourceVersion counter outlive a restart of the emulator."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import kubernetes
import pytest
import requests
from kubernetes.client import ApiException

from kube_emulator import persistence
from tests.conftest import wait_for
from tests.emulator.conftest import FIXTURE_CRD, GROUP, PLURAL, VERSION, EmulatorThread, gadget, make_api_client


class Restartable:
    """An emulator on a state file that a test can stop and start again."""

    def __init__(self, state: Path) -> None:
        self.state = state
        self.emu: EmulatorThread | None = None
        self.client: kubernetes.client.ApiClient | None = None

    def start(self) -> kubernetes.client.CustomObjectsApi:
        self.emu = EmulatorThread(crd_paths=[FIXTURE_CRD], bookmark_interval=0.2, state_file=self.state,
                                  state_write_interval=0.05)
        self.client = make_api_client(self.emu.url)
        return kubernetes.client.CustomObjectsApi(self.client)

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
        if self.emu is not None:
            self.emu.close()
            self.emu = None


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Restartable]:
    restartable = Restartable(tmp_path / "state" / "api.json")
    try:
        yield restartable
    finally:
        restartable.stop()


def test_objects_and_custom_resources_are_served_again_after_a_restart(server: Restartable) -> None:
    custom = server.start()
    created = custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, gadget("kept", size=3))
    custom.patch_namespaced_custom_object_status(GROUP, VERSION, "default", PLURAL, "kept",
                                                 {"status": {"phase": "Ready"}})
    assert server.client is not None
    kubernetes.client.CoreV1Api(server.client).create_namespace({"metadata": {"name": "team"}})
    server.stop()

    custom = server.start()
    found = custom.get_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "kept")
    assert found["metadata"]["uid"] == created["metadata"]["uid"]
    assert found["spec"]["size"] == 3 and found["status"] == {"phase": "Ready"}
    assert server.client is not None
    names = [ns.metadata.name for ns in kubernetes.client.CoreV1Api(server.client).list_namespace().items]
    assert "team" in names and "kube-system" in names


def test_resource_versions_continue_after_a_restart_and_older_watches_are_expired(server: Restartable) -> None:
    custom = server.start()
    first = custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, gadget("a"))
    custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, gadget("b"))
    listed_rv = custom.list_namespaced_custom_object(GROUP, VERSION, "default", PLURAL)["metadata"]["resourceVersion"]
    server.stop()

    custom = server.start()
    again = custom.list_namespaced_custom_object(GROUP, VERSION, "default", PLURAL)["metadata"]["resourceVersion"]
    assert int(again) >= int(listed_rv)
    later = custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, gadget("c"))
    assert int(later["metadata"]["resourceVersion"]) > int(listed_rv)

    assert server.emu is not None
    with requests.get(f"{server.emu.url}/apis/{GROUP}/{VERSION}/namespaces/default/{PLURAL}",
                      params={"watch": "1", "resourceVersion": first["metadata"]["resourceVersion"],
                              "timeoutSeconds": "5"}, stream=True, timeout=10) as rsp:
        event = json.loads(next(line for line in rsp.iter_lines() if line))
    assert event["type"] == "ERROR" and event["object"]["code"] == 410


def test_changes_reach_the_file_without_a_stop(server: Restartable, tmp_path: Path) -> None:
    custom = server.start()
    custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, gadget("early"))

    def saved_names() -> list[str]:
        found = persistence.read(server.state)
        return [obj["metadata"]["name"] for _key, obj in found[1]] if found else []

    wait_for(lambda: "early" in saved_names(), timeout=10, what="the gadget in the state file")
    assert os.stat(server.state).st_mode & 0o777 == 0o600
    assert [p.name for p in server.state.parent.iterdir()] == [server.state.name]  # no temporary file left


def test_a_deleted_object_stays_deleted_after_a_restart(server: Restartable) -> None:
    custom = server.start()
    custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, gadget("gone"))
    custom.delete_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "gone")
    server.stop()

    custom = server.start()
    with pytest.raises(ApiException) as caught:
        custom.get_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "gone")
    assert caught.value.status == 404


def test_an_unreadable_state_file_stops_the_start_instead_of_starting_empty(tmp_path: Path) -> None:
    state = tmp_path / "api.json"
    state.write_text('{"kind": "KubeEmulatorState", "version": 1, "resourceVersion": "12", "objects": [')
    done = subprocess.run([sys.executable, "-m", "kube_emulator", "--kubeconfig", str(tmp_path / "kubeconfig"),
                           "--state-file", str(state)], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert f"{state} is not JSON" in done.stderr
    assert not (tmp_path / "kubeconfig").exists()
    assert state.read_text().endswith("[")  # left as it was, for the user to look at


def test_the_process_writes_its_state_when_terminated(tmp_path: Path) -> None:
    state, kubeconfig = tmp_path / "api.json", tmp_path / "kubeconfig"
    args = [sys.executable, "-m", "kube_emulator", "--kubeconfig", str(kubeconfig), "--state-file", str(state),
            "--crd", str(FIXTURE_CRD)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for(kubeconfig.exists, timeout=30, what="the emulator's kubeconfig")
        kube = kubernetes.config.new_client_from_config(str(kubeconfig))
        with kube:
            kubernetes.client.CoreV1Api(kube).create_namespaced_config_map(
                "default", {"metadata": {"name": "settings"}, "data": {"k": "v"}})
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    saved = persistence.read(state)
    assert saved is not None
    config_maps = [obj for key, obj in saved[1] if key == ("", "configmaps")]
    assert [(c["metadata"]["name"], c["data"]) for c in config_maps] == [("settings", {"k": "v"})]
