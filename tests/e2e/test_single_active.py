"""Two operator processes for the same node: a per-node Lease keeps one active, the other waiting."""

from __future__ import annotations

from typing import Any

import libvirt

from tests.e2e.harness import Cluster, Host, poll, unique, vm_manifest


def test_a_second_operator_for_the_same_node_waits_then_takes_over(cluster: Cluster, host: Host,
                                                                   make_operator: Any, node_name: str) -> None:
    first = make_operator(node_name, "--lease-duration", "3")
    second = make_operator(node_name, "--lease-duration", "3", start=False)
    second.start(wait_ready=False)
    poll(lambda: "waiting for lease" in second.tail(200), what="the second operator to wait for the lease")
    assert second.readyz() == 503

    name = unique("lease")
    cluster.apply(vm_manifest(name, node_name))
    uid = cluster.wait_phase(name, "Running")["domainUUID"]
    assert f"default/{name}" not in second.tail(400)  # only the holder acted

    first.kill()  # SIGKILL: no release, the lease must expire
    second.wait_ready(timeout=60)
    cluster.patch_spec(name, {"paused": True})
    cluster.wait_phase(name, "Paused")
    assert host.state(uid) == libvirt.VIR_DOMAIN_PAUSED
    assert f"default/{name}" in second.tail(400)
    leases = cluster.kubectl("get", "leases", "-A")
    assert f"libvirt-operator-{node_name}" in leases
