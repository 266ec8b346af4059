"""The API as a user sees it: the official kubernetes client and the kubectl binary, with an admin's rights."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import kubernetes
from kubernetes.client.rest import ApiException

from libvirt_operator.api.constants import GROUP, PLURAL, VERSION
from testbed.polling import wait_for as poll


class Api(Protocol):
    """What the tests need of an API server, real or emulated (testbed.control_plane, testbed.emulator_api)."""

    workdir: Path
    kubeconfig: Path  # what operators use (on the real server: the chart's ServiceAccount, via the proxy)
    admin_kubeconfig: Path  # what tests and kubectl use
    port: int  # the port operators connect to (resetting its connections is a network fault)
    kind: str  # "real" or "emulator"

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def requests(self) -> dict[tuple[str, str], int]: ...
    def reset_counts(self) -> None: ...
    def inject_fault(self, *, status: int, verb: str | None = None, resource: str | None = None,
                     count: int = 1) -> None: ...
    def freeze(self) -> None: ...
    def thaw(self) -> None: ...
    def operator_env(self) -> dict[str, str]: ...


class Cluster:
    """The API as a user sees it: the kubernetes client and the kubectl binary."""

    def __init__(self, api: Api, kubectl: str) -> None:
        self.api = api
        self.kubectl_bin = kubectl
        configuration = kubernetes.client.Configuration()
        kubernetes.config.load_kube_config(config_file=str(api.admin_kubeconfig), client_configuration=configuration)
        self.client = kubernetes.client.ApiClient(configuration)
        self.custom = kubernetes.client.CustomObjectsApi(self.client)
        self.core = kubernetes.client.CoreV1Api(self.client)

    def kubectl(self, *args: str, input_text: str | None = None, check: bool = True) -> str:
        out = subprocess.run([self.kubectl_bin, "--kubeconfig", str(self.api.admin_kubeconfig), *args],
                             input=input_text, capture_output=True, text=True, timeout=60)
        if check and out.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({out.returncode}): {out.stderr}{out.stdout}")
        return out.stdout + (out.stderr if not check else "")

    def apply(self, manifest: Mapping[str, Any]) -> str:
        return self.kubectl("apply", "-f", "-", input_text=json.dumps(manifest))

    def get(self, name: str, namespace: str = "default") -> dict[str, Any] | None:
        try:
            return self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)  # type: ignore[no-any-return]
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def status(self, name: str, namespace: str = "default") -> dict[str, Any]:
        vm = self.get(name, namespace)
        return dict((vm or {}).get("status") or {})

    def patch_spec(self, name: str, spec: Mapping[str, Any], namespace: str = "default") -> None:
        self.kubectl("patch", "lvm", name, "-n", namespace, "--type", "merge", "-p", json.dumps({"spec": spec}))

    def patch_status(self, name: str, status: Mapping[str, Any], namespace: str = "default") -> None:
        self.custom.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, name,
                                                         {"status": dict(status)},
                                                         _content_type="application/merge-patch+json")

    def wait_phase(self, name: str, phase: str, *, timeout: float = 60.0, namespace: str = "default",
                   **fields: Any) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            status = self.status(name, namespace)
            if status.get("phase") != phase:
                return None
            if any(status.get(k) != v for k, v in fields.items()):
                return None
            return status
        try:
            found = poll(check, timeout=timeout, what=f"{name} to reach phase {phase} {fields or ''}")
            assert found is not None
            return found
        except AssertionError as exc:
            raise AssertionError(f"{exc}; last status: {self.status(name, namespace)}") from None

    def events_for(self, name: str, namespace: str = "default") -> list[dict[str, Any]]:
        events = self.core.list_namespaced_event(namespace, _preload_content=False)
        items = json.loads(events.data).get("items") or []
        return [e for e in items if (e.get("involvedObject") or {}).get("name") == name]

    def event_reasons(self, name: str, namespace: str = "default") -> list[str]:
        return [str(e.get("reason")) for e in self.events_for(name, namespace)]

    def close(self) -> None:
        self.client.close()


def vm_manifest(name: str, node: str, *, run_strategy: str = "Always", memory: str = "32Mi",
                paused: bool = False, disks: list[dict[str, Any]] | None = None,
                namespace: str = "default", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "VirtualMachine",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"nodeName": node, "runStrategy": run_strategy, "paused": paused, "cpu": {"cores": 1},
                 "memory": memory, **spec},
    }
    if disks is not None:
        body["spec"]["disks"] = disks
    return body


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"
