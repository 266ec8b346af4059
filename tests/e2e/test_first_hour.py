"""The first hour of a new user (issue 17), on real libvirt + QEMU through the API server."""

from __future__ import annotations

import json
import platform
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import libvirt
import pytest

from tests.e2e.harness import Cluster, Host, OperatorProcess, RealApi, poll, unique, vm_manifest

# What a Node without a kubelet carries: local mode registers one with a partial nodeInfo.
PARTIAL_NODE_INFO = {"kubeletVersion": "none", "architecture": platform.machine(), "operatingSystem": "linux"}


def _observe_for(seconds: float, check: Callable[[], None], *, interval: float = 0.5) -> None:
    """Runs ``check`` over a window of ``seconds``: it must hold the whole time (fails at the first miss)."""
    deadline = time.monotonic() + seconds
    while True:
        check()
        if time.monotonic() >= deadline:
            return
        time.sleep(interval)


def _warnings(proc: OperatorProcess) -> list[str]:
    # A host quality warning (logged once at start, never retried) is about the machine, e.g. TCG where
    # /dev/kvm cannot run a real kernel: not what these tests look for.
    text = proc.log.read_text(errors="replace")
    return [line for line in text.splitlines() if (" WARNING " in line or " ERROR " in line
            or " CRITICAL " in line or "Traceback" in line) and "host quality warning" not in line]


def test_an_operator_on_nodes_without_a_kubelet_logs_no_warning_over_three_retry_periods(
        cluster: Cluster, make_operator: Any, node_name: str) -> None:
    # A Node without a kubelet has no or a partial status.nodeInfo: the client's models refuse the answer
    # to each patch of such a Node (the patch lands), which was logged and retried every 10 s.
    nodes = {f"{node_name}-bare": None, f"{node_name}-partial": PARTIAL_NODE_INFO}
    try:
        _watch_nodes_without_a_kubelet(cluster, make_operator, nodes)
    finally:  # the real control plane outlives the test
        cluster.kubectl("delete", "node", *nodes, "--ignore-not-found")


def _watch_nodes_without_a_kubelet(cluster: Cluster, make_operator: Any, nodes: dict[str, Any]) -> None:
    for name, info in nodes.items():
        node: dict[str, Any] = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}}
        if info is not None:
            node["status"] = {"nodeInfo": info}
        cluster.kubectl("create", "-f", "-", input_text=json.dumps(node))
    procs = [make_operator(name) for name in nodes]

    def published(name: str) -> bool:
        node = json.loads(cluster.kubectl("get", "node", name, "-o", "json"))
        labels = node["metadata"].get("labels") or {}
        ready = [c for c in (node.get("status") or {}).get("conditions") or [] if c["type"] == "LibvirtReady"]
        return (labels.get("virt.libvirt-operator.dev/schedulable") == "true"
                and "virt.libvirt-operator.dev/cpu-model" in labels
                and [c["status"] for c in ready] == ["True"])
    for name in nodes:
        poll(lambda: published(name), timeout=30, what=f"node {name} to get its capabilities and LibvirtReady")  # noqa: B023

    def quiet() -> None:
        for proc in procs:
            assert _warnings(proc) == [], f"operator {proc.node} logged:\n" + "\n".join(_warnings(proc))
    _observe_for(35, quiet)  # the refused patch was retried every 10 s
    # Each Node's status was written once (LibvirtReady), not retried.
    assert _node_status_patches(cluster, nodes) == len(nodes)


def _node_status_patches(cluster: Cluster, nodes: Iterable[str]) -> int:
    """Status patches of these Nodes. On the real control plane the operators of tests running meanwhile
    (hack/test.sh's lanes) share the operator's identity: count by the Nodes' own URIs."""
    if not isinstance(cluster.api, RealApi):
        return cluster.api.requests().get(("patch", "nodes/status"), 0)
    paths = {f"/api/v1/nodes/{name}/status" for name in nodes}
    return sum(1 for verb, resource, uri in cluster.api.request_uris()
               if verb == "patch" and resource == "nodes" and uri.split("?")[0] in paths)


def test_a_sigtermed_operator_stops_through_its_own_stop_flag_and_leaves_kopf_no_task_to_wait_out(
        make_operator: Any, node_name: str) -> None:
    # kopf's own SIGTERM handler left its stop-flag task pending, and kopf waited 5 s for it before
    # cancelling it: every pod termination (rolling upgrade, drain) took 5.2 s for 50 ms of work.
    proc = make_operator(node_name)
    proc.stop()
    assert proc.proc is not None and proc.proc.returncode == 0
    text = proc.log.read_text(errors="replace")
    assert "libvirt_operator.operator_main: received SIGTERM: stopping" in text  # ours, not kopf's handler
    assert "released lease" in text


@pytest.fixture
def inactive_network(host: Host) -> Iterator[str]:
    """A libvirt network defined and never started. Without <forward> it could only ever be an isolated
    bridge of its own (a name unique to the test), should anybody start it."""
    name = f"lvo-e2e-{uuid.uuid4().hex[:8]}"
    net = host.conn.networkDefineXML(f"<network><name>{name}</name><bridge name='lvo{uuid.uuid4().hex[:8]}'/>"
                                     "</network>")
    try:
        yield name
    finally:
        net.undefine()


@pytest.fixture
def down_bridge() -> Iterator[str]:
    """A bridge that is down (as `ip link add` leaves it): no address, no ports, carries nothing."""
    name = f"lvo{uuid.uuid4().hex[:8]}"
    made = subprocess.run(["ip", "link", "add", name, "type", "bridge"], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot add a bridge here: {made.stderr.strip()}")
    try:
        yield name
    finally:
        subprocess.run(["ip", "link", "del", name], capture_output=True, check=False)


def _failed_with_event_and_ready_false(cluster: Cluster, name: str, reason: str, message: str) -> dict[str, Any]:
    status = cluster.wait_phase(name, "Failed", message=message)
    assert status["reason"] == reason
    cluster.kubectl("wait", "--for=condition=Ready=False", f"lvm/{name}", "--timeout=30s")
    ready = [c for c in status["conditions"] if c["type"] == "Ready"]
    assert [(c["status"], c["reason"], c["message"]) for c in ready] == [("False", reason, message)]
    events = poll(lambda: [e for e in cluster.events_for(name) if e["reason"] == reason],
                  timeout=30, what=f"the {reason} Event of {name}")
    assert [(e["type"], e["message"]) for e in events] == [("Warning", message)]
    return status


def test_a_vm_on_an_inactive_network_ends_failed_naming_the_field_with_an_event_and_ready_false(
        cluster: Cluster, host: Host, make_operator: Any, node_name: str, inactive_network: str) -> None:
    make_operator(node_name)
    name = unique("nonet")
    cluster.apply(vm_manifest(name, node_name, interfaces=[{"name": "nic0", "network": inactive_network}]))
    message = f"spec.interfaces[0].network: network '{inactive_network}' is not active on node {node_name}"
    _failed_with_event_and_ready_false(cluster, name, "StartFailed", message)
    vm = cluster.get(name)
    assert vm is not None
    assert host.state(vm["metadata"]["uid"]) == libvirt.VIR_DOMAIN_SHUTOFF  # defined, never started
    cluster.kubectl("delete", "lvm", name, "--timeout=60s")
    assert host.domain(vm["metadata"]["uid"]) is None


def test_a_vm_on_a_bridge_that_is_down_ends_failed_naming_the_field(
        cluster: Cluster, host: Host, make_operator: Any, node_name: str, down_bridge: str) -> None:
    make_operator(node_name)
    name = unique("brdown")
    cluster.apply(vm_manifest(name, node_name, interfaces=[{"name": "nic0", "bridge": down_bridge}]))
    message = f"spec.interfaces[0].bridge: bridge '{down_bridge}' is down on node {node_name}"
    status = _failed_with_event_and_ready_false(cluster, name, "ProvisioningFailed", message)
    vm = cluster.get(name)
    assert vm is not None and host.domain(vm["metadata"]["uid"]) is None  # refused before it was defined
    # No domain, so the status names none and `kubectl get -o wide` shows no DOMAIN.
    assert not {"domainName", "domainUUID", "powerState"} & status.keys(), status
    assert f"default_{name}" not in cluster.kubectl("get", "lvm", name, "-o", "wide")


def test_a_host_port_already_taken_is_named_in_the_status_and_the_vm_starts_once_it_is_free(
        cluster: Cluster, host: Host, make_operator: Any, node_name: str) -> None:
    """Two VMs forwarding one host port, or a process listening on it: QEMU cannot bind it. The start is
    retried (the port can free up) and the status names the forward meanwhile; freed, the VM runs."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    try:
        make_operator(node_name)
        name = unique("busyport")
        cluster.apply(vm_manifest(name, node_name, interfaces=[
            {"name": "net0", "user": {"portForwards": [{"port": 22, "hostPort": port}]}}]))
        status = cluster.wait_phase(name, "Starting", timeout=60, reason="StartFailed")
        assert status["message"].startswith(
            f"spec.interfaces[0].user.portForwards[0].hostPort: host port {port}/TCP of 127.0.0.1 is already in "
            f"use on node {node_name}"), status["message"]
    finally:
        listener.close()
    status = cluster.wait_phase(name, "Running", timeout=60)  # the next retry (backoff at most 10 s) binds it
    assert not status.get("restarts")
    cluster.kubectl("delete", "lvm", name, "--timeout=60s")
    assert host.domain(status["domainUUID"]) is None
