"""libvirtd going away and coming back; the API server unreachable for a while (its process stopped:
test_api_server_stopped.py)."""

from __future__ import annotations

import json
import os
import signal
from typing import Any

import libvirt

from libvirt_operator.api.constants import NODE_CONDITION_TYPE, NODE_SCHEDULABLE_LABEL
from libvirt_operator.local import node_manifest
from testbed.hosts import ensure_libvirtd, live_libvirtd_pids
from tests.e2e.api_outage import suspend_while_the_api_is_away
from tests.e2e.harness import Cluster, Host, poll, unique, vm_manifest


def _node(cluster: Cluster, name: str) -> dict[str, Any]:
    return dict(json.loads(cluster.kubectl("get", "node", name, "-o", "json")))


def _condition(node: dict[str, Any]) -> str | None:
    for cond in (node.get("status") or {}).get("conditions") or []:
        if cond.get("type") == NODE_CONDITION_TYPE:
            return str(cond.get("status"))
    return None


def _label(node: dict[str, Any]) -> str | None:
    return (node["metadata"].get("labels") or {}).get(NODE_SCHEDULABLE_LABEL)


def _vm_connected(cluster: Cluster, name: str) -> str | None:
    for cond in cluster.status(name).get("conditions") or []:
        if cond["type"] == "HypervisorConnected":
            return str(cond["status"])
    return None


def _libvirtd_pid() -> int:
    return live_libvirtd_pids()[0]


def _restart_libvirtd_after(action: Any) -> None:
    try:
        action()
    finally:
        ensure_libvirtd()


def test_libvirtd_restart_marks_the_node_then_resyncs_without_losing_a_vm(cluster: Cluster, host: Host,
                                                                         make_operator: Any,
                                                                         node_name: str) -> None:
    cluster.apply(node_manifest(node_name))
    make_operator(node_name)
    name = unique("conn")
    cluster.apply(vm_manifest(name, node_name))
    uid = cluster.wait_phase(name, "Running")["domainUUID"]
    poll(lambda: _condition(_node(cluster, node_name)) == "True", what="LibvirtReady=True")
    assert _label(_node(cluster, node_name)) == "true"

    def outage() -> None:
        os.kill(_libvirtd_pid(), signal.SIGTERM)
        poll(lambda: _condition(_node(cluster, node_name)) == "False", timeout=60, what="LibvirtReady=False")
        node = _node(cluster, node_name)
        assert _label(node) == "false"
        poll(lambda: _vm_connected(cluster, name) == "False", timeout=30, what="HypervisorConnected=False")
        assert cluster.status(name)["phase"] != "Failed"
        # While libvirtd is down the guest changes: it is paused (libvirtd reconnects to QEMU when back).
        ensure_libvirtd()

    _restart_libvirtd_after(outage)
    poll(lambda: _condition(_node(cluster, node_name)) == "True", timeout=90, what="LibvirtReady=True again")
    assert _label(_node(cluster, node_name)) == "true"
    poll(lambda: _vm_connected(cluster, name) == "True", timeout=60, what="HypervisorConnected=True again")
    host.reconnect()
    assert host.state(uid) == libvirt.VIR_DOMAIN_RUNNING
    same_name = [d for d in host.conn.listAllDomains(0) if d.name() == f"default_{name}"]
    assert len(same_name) == 1 and same_name[0].UUIDString() == uid  # no second domain
    assert cluster.status(name)["phase"] == "Running"


def test_an_administrators_own_unschedulable_label_is_never_overridden(cluster: Cluster, host: Host,
                                                                       make_operator: Any, node_name: str) -> None:
    manifest = node_manifest(node_name)
    manifest["metadata"]["labels"][NODE_SCHEDULABLE_LABEL] = "false"  # the admin's decision
    cluster.apply(manifest)
    make_operator(node_name)
    poll(lambda: _condition(_node(cluster, node_name)) == "True", what="LibvirtReady=True")

    def outage() -> None:
        os.kill(_libvirtd_pid(), signal.SIGTERM)
        poll(lambda: _condition(_node(cluster, node_name)) == "False", timeout=60, what="LibvirtReady=False")
        ensure_libvirtd()

    _restart_libvirtd_after(outage)
    poll(lambda: _condition(_node(cluster, node_name)) == "True", timeout=90, what="LibvirtReady=True again")
    assert _label(_node(cluster, node_name)) == "false"
    host.reconnect()


def test_a_state_reached_while_the_api_server_is_unreachable_lands_when_it_returns(
        cluster: Cluster, host: Host, make_operator: Any, node_name: str) -> None:
    operator = make_operator(node_name)
    name = unique("apidown")
    cluster.apply(vm_manifest(name, node_name, run_strategy="Manual"))
    uid = cluster.wait_phase(name, "Running")["domainUUID"]

    cluster.api.freeze()  # the real API: the fault proxy holds every request; the emulator: SIGSTOP
    try:
        suspend_while_the_api_is_away(host, operator, name, uid)
    finally:
        cluster.api.thaw()
    status = cluster.wait_phase(name, "Paused", powerState="Paused", timeout=90)
    assert status["lastEvent"]["type"] == "Suspended"
