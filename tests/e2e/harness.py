"""End-to-end harness: the API emulator and operators as real processes, real libvirtd, real kubectl.

`libvirt-operator dev --api-only` serves the API; each `libvirt-operator run` is an operator for one node.
Assertions read the API through the official kubernetes client and libvirt through libvirt-python.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import kubernetes
import libvirt
from kubernetes.client.rest import ApiException

from libvirt_operator.api.constants import GROUP, PLURAL, VERSION
from libvirt_operator.hypervisor.domain_xml import parse_owner
from tests.conftest import wait_for as poll

REPO = Path(__file__).resolve().parents[2]
OPERATOR = [sys.executable, "-m", "libvirt_operator"]
QEMU_URI = "qemu:///system"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def libvirtd_answers(uri: str = QEMU_URI) -> bool:
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError:
        return False
    conn.close()
    return True


class ApiServer:
    """`libvirt-operator dev --api-only` in a subprocess."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.kubeconfig = workdir / "kubeconfig"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "api.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([*OPERATOR, "dev", "--api-only", "--kubeconfig", str(self.kubeconfig),
                                          "--port", str(self.port)], stdout=log, stderr=subprocess.STDOUT)
        poll(lambda: self.kubeconfig.exists() and self._get("/version"), timeout=30, what="the API emulator")

    def _get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=5) as resp:
            return json.loads(resp.read())

    def _post(self, path: str, body: Mapping[str, Any]) -> Any:
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=5) as resp:
            return json.loads(resp.read() or b"{}")

    def requests(self) -> dict[tuple[str, str], int]:
        return {(r["verb"], r["resource"]): int(r["count"]) for r in self._get("/_emulator/requests")}

    def reset_counts(self) -> None:
        self._post("/_emulator/reset-counts", {})

    def inject_fault(self, *, status: int, verb: str | None = None, resource: str | None = None,
                     count: int = 1) -> None:
        self._post("/_emulator/faults", {"status": status, "verb": verb, "resource": resource, "count": count})

    def freeze(self) -> None:
        """Unreachable without refusing connections: requests hang until thawed (like a partition)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class OperatorProcess:
    """`libvirt-operator run` for one node in a subprocess."""

    def __init__(self, api: ApiServer, node: str, storage: Path, images: Path, *extra: str,
                 libvirt_uri: str = QEMU_URI) -> None:
        self.api = api
        self.node = node
        self.storage = storage
        self.images = images
        self.extra = list(extra)
        self.libvirt_uri = libvirt_uri
        self.health_port = free_port()
        self.metrics_port = free_port()
        self.log = api.workdir / f"operator-{node}-{uuid.uuid4().hex[:4]}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *, wait_ready: bool = True) -> OperatorProcess:
        self.health_port = free_port()
        self.metrics_port = free_port()
        args = [*OPERATOR, "run", "--kubeconfig", str(self.api.kubeconfig), "--node-name", self.node,
                "--libvirt-uri", self.libvirt_uri, "--storage-dir", str(self.storage),
                "--image-dir", str(self.images), "--health-port", str(self.health_port),
                "--metrics-port", str(self.metrics_port), "--shutdown-timeout", "3",
                "--stopped-event-delay", "0.3", "--sync-interval", "5", "--shared-storage", "false",
                "--reconnect-max-backoff", "2", "--log-level", "DEBUG", *self.extra]
        with open(self.log, "ab") as log:
            log.write(f"\n=== start {' '.join(args)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        if wait_ready:
            self.wait_ready()
        return self

    def readyz(self) -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/readyz", timeout=2) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)

    def wait_ready(self, timeout: float = 60.0) -> None:
        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"operator {self.node} exited with {self.proc.returncode}:\n{self.tail()}")
            return self.readyz() == 200
        try:
            poll(ready, timeout=timeout, interval=0.1, what=f"operator {self.node} to be ready")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.tail()}") from None

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as resp:
            return str(resp.read().decode())

    def tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class Cluster:
    """The API as a user sees it: the kubernetes client and the kubectl binary."""

    def __init__(self, api: ApiServer, kubectl: str) -> None:
        self.api = api
        self.kubectl_bin = kubectl
        configuration = kubernetes.client.Configuration()
        kubernetes.config.load_kube_config(config_file=str(api.kubeconfig), client_configuration=configuration)
        self.client = kubernetes.client.ApiClient(configuration)
        self.custom = kubernetes.client.CustomObjectsApi(self.client)
        self.core = kubernetes.client.CoreV1Api(self.client)

    def kubectl(self, *args: str, input_text: str | None = None, check: bool = True) -> str:
        out = subprocess.run([self.kubectl_bin, "--kubeconfig", str(self.api.kubeconfig), *args], input=input_text,
                             capture_output=True, text=True, timeout=60)
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
            return poll(check, timeout=timeout, what=f"{name} to reach phase {phase} {fields or ''}")  # type: ignore[no-any-return]
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


class Host:
    """libvirt as the test sees it (assertions and out-of-band actions like `virsh destroy`)."""

    def __init__(self, uri: str = QEMU_URI) -> None:
        self.uri = uri
        self.conn = libvirt.open(uri)

    def domain(self, uuid_: str) -> libvirt.virDomain | None:
        try:
            return self.conn.lookupByUUIDString(uuid_)
        except libvirt.libvirtError:
            return None

    def state(self, uuid_: str) -> int | None:
        dom = self.domain(uuid_)
        if dom is None:
            return None
        try:
            return int(dom.state()[0])
        except libvirt.libvirtError:
            return None

    def reconnect(self) -> None:
        try:
            self.conn.close()
        except libvirt.libvirtError:
            pass
        self.conn = libvirt.open(self.uri)

    def virsh(self, *args: str) -> str:
        out = subprocess.run(["virsh", "-c", self.uri, *args], capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise AssertionError(f"virsh {' '.join(args)}: {out.stderr}")
        return out.stdout

    def qemu_pid(self, name: str) -> int:
        pidfile = Path(f"/run/libvirt/qemu/{name}.pid")
        return int(pidfile.read_text().strip())

    def owned_domains(self, node_prefix: str) -> list[tuple[str, str]]:
        result = []
        for dom in self.conn.listAllDomains(0):
            try:
                owner = parse_owner(dom.XMLDesc(0))
            except libvirt.libvirtError:
                continue
            if owner is not None and owner.node.startswith(node_prefix):
                result.append((dom.UUIDString(), dom.name()))
        return result

    def remove(self, uuid_: str) -> None:
        dom = self.domain(uuid_)
        if dom is None:
            return
        try:
            if dom.isActive():
                dom.destroy()
        except libvirt.libvirtError:
            pass
        try:
            dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
        except libvirt.libvirtError:
            pass

    def define_unmanaged(self, name: str, memory_mib: int = 32) -> str:
        """A domain this operator does not own (no metadata), like an admin's own guest."""
        caps = self.conn.getCapabilities()
        dtype = "kvm" if "type='kvm'" in caps and os.access("/dev/kvm", os.R_OK | os.W_OK) else "qemu"
        xml = (f"<domain type='{dtype}'><name>{name}</name><memory unit='MiB'>{memory_mib}</memory>"
               "<vcpu>1</vcpu><os><type arch='x86_64'>hvm</type></os><devices><serial type='pty'/></devices>"
               "</domain>")
        dom = self.conn.defineXML(xml)
        return str(dom.UUIDString())

    def close(self) -> None:
        try:
            self.conn.close()
        except libvirt.libvirtError:
            pass


@contextmanager
def operators(*procs: OperatorProcess) -> Iterator[tuple[OperatorProcess, ...]]:
    try:
        for proc in procs:
            proc.start()
        yield procs
    finally:
        for proc in procs:
            proc.stop()
