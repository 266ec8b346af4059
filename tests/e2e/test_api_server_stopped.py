"""The API server's process stopped and started again. A module of its own: it takes the shared API server
away from every test running meanwhile, so hack/test.sh runs it before the lanes that need that server."""

from __future__ import annotations

from typing import Any

from testbed.control_plane import ControlPlane
from tests.e2e.api_outage import suspend_while_the_api_is_away
from tests.e2e.harness import Cluster, Host, unique, vm_manifest


def test_a_state_reached_while_the_api_server_process_is_stopped_lands_when_it_is_started_again(
        cluster: Cluster, host: Host, make_operator: Any, node_name: str, control_plane: ControlPlane) -> None:
    """API offline for real: the kube-apiserver process stopped (connections refused), then started again
    on the same etcd. The operator keeps running and lands what it saw in the meantime. (An outage longer
    than the lease duration makes the operator stop on purpose: it can no longer prove it is the only one.)"""
    operator = make_operator(node_name, "--lease-duration", "90")
    name = unique("apioff")
    cluster.apply(vm_manifest(name, node_name, run_strategy="Manual"))
    uid = cluster.wait_phase(name, "Running")["domainUUID"]
    control_plane.stop_apiserver()
    try:
        suspend_while_the_api_is_away(host, operator, name, uid)
    finally:
        control_plane.start_apiserver()
    status = cluster.wait_phase(name, "Paused", powerState="Paused", timeout=120)
    assert status["lastEvent"]["type"] == "Suspended"
    assert operator.proc is not None and operator.proc.poll() is None, "the operator exited while the API was down"
