"""The shipped artefacts for real: the operator's image (hack/image.sh) in the chart's DaemonSet pod, run by
the kubelet of hack/cluster.sh's node, managing guests in this host's libvirtd; helm upgrade, a deleted pod
and helm uninstall keep the guests running."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest
import yaml

from testbed.control_plane import ControlPlane
from testbed.net import free_port
from testbed.terminal import on_terminal
from tests.conftest import REPO, find_tool, wait_for
from tests.e2e.harness import Cluster, Host, RealApi, vm_manifest

CHART = REPO / "deploy" / "helm" / "libvirt-operator"
RELEASE = "lvo-node"
NAMESPACE = "lvo-node-system"
HYPERVISOR_LABEL = "virt.libvirt-operator.dev/hypervisor"


def _sh(*args: str, timeout: float = 1800) -> str:
    done = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({done.returncode}):\n"
                             f"{done.stderr[-3000:]}{done.stdout[-2000:]}")
    return done.stdout


@pytest.fixture(scope="module")
def image(control_plane: ControlPlane) -> dict[str, str]:
    """The operator image, built (or found in the cache) by hack/image.sh and loaded into the node's runtime."""
    if not control_plane.node_name:
        pytest.fail("hack/cluster.sh up started no node (LVO_CLUSTER_NODE=0?)")
    archive = _sh("bash", str(REPO / "hack" / "image.sh")).strip().splitlines()[-1]
    ref = control_plane.load_image(Path(archive))
    repository, tag = ref.rsplit(":", 1)
    return {"repository": repository, "tag": tag}


class Release:
    def __init__(self, plane: ControlPlane, helm: str, workdir: Path, values: dict[str, Any]) -> None:
        self.plane = plane
        self.helm = helm
        self.workdir = workdir
        self.values = values

    def _values_file(self) -> Path:
        path = self.workdir / f"values-{uuid.uuid4().hex[:6]}.yaml"
        path.write_text(yaml.safe_dump(self.values))
        return path

    def run(self, verb: str, *extra: str) -> str:
        return _sh(self.helm, verb, RELEASE, *extra, "--namespace", NAMESPACE,
                   "--kubeconfig", str(self.plane.admin_kubeconfig), timeout=300)

    def install(self) -> None:
        self.run("install", str(CHART), "--create-namespace", "--values", str(self._values_file()))

    def upgrade(self) -> None:
        self.run("upgrade", str(CHART), "--values", str(self._values_file()))

    def pods(self) -> list[dict[str, Any]]:
        out = self.plane.kubectl("get", "pods", "-n", NAMESPACE, "-l", f"app.kubernetes.io/instance={RELEASE}",
                                 "-o", "json")
        return list(json.loads(out)["items"])

    def diagnose(self) -> str:
        """What a failed wait on the DaemonSet's pods should print: pods, the namespace's Events, log tails."""
        parts = [self.plane.kubectl("get", "daemonset,pods", "-n", NAMESPACE, "-o", "wide", check=False),
                 self.plane.kubectl("get", "events", "-n", NAMESPACE, "--sort-by=.lastTimestamp", check=False)]
        for pod in self.pods():
            pod_name = pod["metadata"]["name"]
            parts.append(f"--- {pod_name}: {json.dumps(pod.get('status', {}).get('conditions'))}\n"
                         + self.plane.kubectl("logs", "-n", NAMESPACE, pod_name, "--tail=40", check=False))
        return "\n".join(parts)

    def ready_pod(self, not_named: str | None = None) -> dict[str, Any] | None:
        for pod in self.pods():
            if pod["metadata"]["name"] == not_named or pod["metadata"].get("deletionTimestamp"):
                continue
            conditions = {c["type"]: c["status"] for c in (pod.get("status") or {}).get("conditions") or []}
            if pod["status"].get("phase") == "Running" and conditions.get("Ready") == "True":
                return pod
        return None


@pytest.fixture(scope="module")
def release(control_plane: ControlPlane, image: dict[str, str], tmp_path_factory: pytest.TempPathFactory,
            ) -> Iterator[Release]:
    helm = find_tool("helm")
    assert helm is not None, "helm not found (hack/setup.sh installs it)"
    node = control_plane.node_name
    base = tmp_path_factory.mktemp("lvo-node")
    images, disks = Path("/var/lib/libvirt-operator/e2e-node/images"), Path("/var/lib/libvirt-operator/e2e-node/disks")
    for d in (images, disks):
        d.mkdir(parents=True, exist_ok=True)
    values: dict[str, Any] = {
        "image": {**image, "pullPolicy": "Never"},  # loaded into the node's containerd; nothing is pulled
        # The node runs host-network pods only; the pod reaches the API server on loopback, not through the
        # `kubernetes` Service's ClusterIP (nothing routes it here, and tests send nothing off loopback).
        "hostNetwork": True,
        "extraEnv": [{"name": "KUBERNETES_SERVICE_HOST", "value": "127.0.0.1"},
                     {"name": "KUBERNETES_SERVICE_PORT", "value": str(control_plane.port)}],
        "health": {"port": free_port()}, "metrics": {"port": free_port(), "service": {"enabled": False}},
        "operator": {"imageDir": str(images), "storageDir": str(disks), "shutdownTimeout": 5,
                     "stoppedEventDelay": 0.5},
        # The node with the kubelet only: other tests' hypervisor Nodes (no kubelet) would each get a pod that
        # stays Pending, and a Pending pod counts as unavailable: with maxUnavailable 1 it holds the rollout.
        "nodeSelector": {HYPERVISOR_LABEL: "true", "kubernetes.io/hostname": node},
    }
    control_plane.kubectl("label", "node", node, f"{HYPERVISOR_LABEL}=true", "--overwrite")
    rel = Release(control_plane, helm, base, values)
    rel.install()
    try:
        wait_for(rel.ready_pod, timeout=180, interval=1, what="the DaemonSet's pod Running and Ready")
        yield rel
    finally:
        # The node's VMs deleted while the operator pod still runs, so that it removes their guests and
        # disks (what is left after that is purged); then the release.
        listed = json.loads(control_plane.kubectl("get", "lvm", "-A", "-o", "json"))
        for vm in listed.get("items") or []:
            if (vm.get("spec") or {}).get("nodeName") == node:
                control_plane.kubectl("delete", "lvm", "-n", vm["metadata"]["namespace"], vm["metadata"]["name"],
                                      "--timeout=120s", check=False)
        control_plane.purge_vms(node)
        rel.run("uninstall", "--wait", "--timeout", "120s")
        control_plane.kubectl("label", "node", node, f"{HYPERVISOR_LABEL}-")


@pytest.fixture
def user(control_plane: ControlPlane, kubectl_bin: str, tmp_path: Path) -> Iterator[Cluster]:
    api = RealApi(tmp_path, control_plane, proxy=False)  # for the admin's client helpers only
    cluster = Cluster(api, kubectl_bin)
    yield cluster
    cluster.close()


def _console_in_pod(kubectl: str, plane: ControlPlane, pod: str, name: str, timeout: float = 60.0) -> str:
    """`kubectl exec -it POD -- libvirt-operator console default/NAME` on a terminal, as the README gives it:
    what it shows until its banner (or the deadline), then left with the escape character."""
    seen = on_terminal([kubectl, "--kubeconfig", str(plane.admin_kubeconfig), "-n", NAMESPACE, "exec", "-it", pod,
                        "--", "libvirt-operator", "console", f"default/{name}"], b"Connected to the console",
                       timeout=timeout)
    return seen.decode(errors="replace")


def _qemu_pid(host: Host, name: str) -> int:
    return host.qemu_pid(f"default_{name}")


def _lease_holder(plane: ControlPlane) -> str:
    lease = json.loads(plane.kubectl("get", "lease", "-n", NAMESPACE, f"libvirt-operator-{plane.node_name}",
                                     "-o", "json"))
    return str(lease["spec"].get("holderIdentity") or "")


def test_the_daemonset_pod_runs_the_image_with_the_charts_security_settings(
        release: Release, control_plane: ControlPlane) -> None:
    pod = release.ready_pod()
    assert pod is not None
    assert pod["spec"]["nodeName"] == control_plane.node_name
    container = pod["spec"]["containers"][0]
    assert container["image"] == f"{release.values['image']['repository']}:{release.values['image']['tag']}"
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert security.get("privileged") in (False, None)
    # What really ran: the container's process, as the kubelet started it.
    status = pod["status"]["containerStatuses"][0]
    assert status["ready"] is True and status["restartCount"] == 0, status
    logs = control_plane.kubectl("logs", "-n", NAMESPACE, pod["metadata"]["name"])
    assert f"libvirt-operator for node {control_plane.node_name}" in logs, logs[-2000:]
    port = release.values["metrics"]["port"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        assert b"libvirt_operator_" in resp.read()


def test_the_readme_walk_through_runs_through_the_daemonset_pod(
        release: Release, control_plane: ControlPlane, user: Cluster, host: Host) -> None:
    node = control_plane.node_name
    name = f"pod-{uuid.uuid4().hex[:4]}"
    user.apply(vm_manifest(name, node, memory="64Mi"))
    uid = user.wait_phase(name, "Running", timeout=120)["domainUUID"]
    assert host.state(uid) == libvirt.VIR_DOMAIN_RUNNING
    # The console as the README's "Log into your VM" reaches it with the chart: in the node's operator pod.
    pod = user.kubectl("-n", NAMESPACE, "get", "pod", "-l", "app.kubernetes.io/name=libvirt-operator",
                       "--field-selector", f"spec.nodeName={node}", "-o", "name").strip()
    assert pod.startswith("pod/"), pod
    kept = subprocess.run([user.kubectl_bin, "--kubeconfig", str(control_plane.admin_kubeconfig), "-n", NAMESPACE,
                           "exec", pod, "--", "libvirt-operator", "console", "--log", f"default/{name}"],
                          capture_output=True, text=True, timeout=60)
    assert kept.returncode == 0, kept.stderr  # the kept log is readable in the pod (a guest without an OS
    # writes nothing to it: the content is checked on the real guest, tests/e2e/test_cloud_guest.py)
    banner = _console_in_pod(user.kubectl_bin, control_plane, pod, name)
    assert f"Connected to the console of default/{name}" in banner, banner
    user.patch_spec(name, {"paused": True})
    user.wait_phase(name, "Paused")
    assert host.state(uid) == libvirt.VIR_DOMAIN_PAUSED
    user.patch_spec(name, {"paused": False})
    user.wait_phase(name, "Running")
    user.patch_spec(name, {"runStrategy": "Halted"})
    user.wait_phase(name, "Stopped", timeout=60)
    user.patch_spec(name, {"runStrategy": "Always"})
    user.wait_phase(name, "Running", timeout=60)
    user.kubectl("delete", "lvm", name, "--timeout=90s")
    assert host.domain(uid) is None


def test_helm_upgrade_and_a_deleted_pod_keep_every_guest_running_and_hand_the_lease_over(
        release: Release, control_plane: ControlPlane, user: Cluster, host: Host) -> None:
    node = control_plane.node_name
    names = [f"keep-{uuid.uuid4().hex[:4]}" for _ in range(2)]
    for name in names:
        user.apply(vm_manifest(name, node, memory="32Mi"))
    uids = {name: user.wait_phase(name, "Running", timeout=120)["domainUUID"] for name in names}
    pids = {name: _qemu_pid(host, name) for name in names}

    def unchanged() -> None:
        for name in names:
            assert host.state(uids[name]) == libvirt.VIR_DOMAIN_RUNNING, f"{name} is not running"
            assert _qemu_pid(host, name) == pids[name], f"{name}'s guest was restarted"
            assert user.status(name)["phase"] == "Running"

    for change in ("upgrade", "delete"):
        old = release.ready_pod()
        assert old is not None
        holder = _lease_holder(control_plane)
        if change == "upgrade":
            release.values["operator"]["stoppedEventDelay"] = 0.7  # any changed value rolls the pod
            release.upgrade()
        else:
            control_plane.kubectl("delete", "pod", "-n", NAMESPACE, old["metadata"]["name"], "--wait=false")
        old_name = str(old["metadata"]["name"])
        try:
            new = wait_for(lambda n=old_name: release.ready_pod(not_named=n), timeout=180,  # type: ignore[misc]
                           interval=1, what=f"a new Ready pod after {change}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{release.diagnose()}") from None
        wait_for(lambda h=holder: _lease_holder(control_plane) not in ("", h), timeout=60,  # type: ignore[misc]
                 what=f"the new pod to hold the node's Lease after {change}")
        assert new["metadata"]["name"] != old["metadata"]["name"]
        unchanged()
        for name in names:  # the new pod has taken over: it acts on a change
            user.kubectl("annotate", "lvm", name, f"test/after-{change}={int(time.time())}", "--overwrite")
        user.patch_spec(names[0], {"paused": True})
        user.wait_phase(names[0], "Paused")
        user.patch_spec(names[0], {"paused": False})
        user.wait_phase(names[0], "Running")
        unchanged()


def test_helm_uninstall_leaves_the_crd_the_vms_and_their_guests_and_a_reinstall_picks_them_up(
        release: Release, control_plane: ControlPlane, user: Cluster, host: Host) -> None:
    """What docs/helm.md says of `helm uninstall`: the DaemonSet goes, the CRD, every VirtualMachine and every
    running guest stay (unmanaged); installing the chart again takes them over without a restart."""
    node = control_plane.node_name
    name = f"stay-{uuid.uuid4().hex[:4]}"
    user.apply(vm_manifest(name, node, memory="32Mi"))
    uid = user.wait_phase(name, "Running", timeout=120)["domainUUID"]
    pid = _qemu_pid(host, name)
    release.run("uninstall", "--wait", "--timeout", "120s")
    wait_for(lambda: not release.pods(), timeout=120, what="the DaemonSet's pods gone")
    assert control_plane.kubectl("get", "crd", "virtualmachines.virt.libvirt-operator.dev", "-o", "name")
    vm = user.get(name)
    assert vm is not None and "virt.libvirt-operator.dev/cleanup" in vm["metadata"]["finalizers"]
    assert host.state(uid) == libvirt.VIR_DOMAIN_RUNNING and _qemu_pid(host, name) == pid
    release.install()
    wait_for(release.ready_pod, timeout=180, interval=1, what="the reinstalled DaemonSet's pod Ready")
    assert user.wait_phase(name, "Running")["domainUUID"] == uid
    assert _qemu_pid(host, name) == pid, "the reinstall restarted the guest"
