"""`hack/local.sh --real-cluster`: the README's walk-through on the real control plane of hack/cluster.sh."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import uuid
from pathlib import Path

from testbed.control_plane import ControlPlane
from tests.conftest import REPO
from tests.e2e.harness import Cluster, RealApi, free_port, poll, vm_manifest


def test_local_mode_on_the_real_cluster_registers_the_node_and_runs_the_walk_through(
        control_plane: ControlPlane, kubectl_bin: str, tmp_path: Path) -> None:
    node = f"e2e-real-local-{uuid.uuid4().hex[:4]}"
    log = tmp_path / "local.log"
    env = dict(os.environ, LVO_LOCAL_STATE=str(tmp_path / "state"))
    with open(log, "wb") as out:
        proc = subprocess.Popen(["bash", str(REPO / "hack" / "local.sh"), "--real-cluster", "--node-name", node,
                                 "--libvirt-uri", "test:///default", "--shutdown-timeout", "3",
                                 "--health-port", str(free_port()), "--metrics-port", str(free_port())],
                                stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    api = RealApi(tmp_path, control_plane)  # for the admin's client helpers only (its proxy is not used)
    cluster = Cluster(api, kubectl_bin)
    try:
        poll(lambda: json.loads(cluster.kubectl("get", "node", node, "-o", "json", check=False) or "{}"),
             timeout=120, what="the node registered by local mode")
        name = f"walk-{uuid.uuid4().hex[:4]}"
        cluster.apply(vm_manifest(name, node, memory="64Mi"))
        assert cluster.wait_phase(name, "Running", timeout=90)["nodeName"] == node
        cluster.patch_spec(name, {"paused": True})
        cluster.wait_phase(name, "Paused")
        cluster.patch_spec(name, {"paused": False})
        cluster.wait_phase(name, "Running")
        cluster.patch_spec(name, {"runStrategy": "Halted"})
        cluster.wait_phase(name, "Stopped")
        cluster.kubectl("delete", "lvm", name, "--timeout=60s")
        assert cluster.get(name) is None
        assert "local mode on the real control plane" in log.read_text()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            code = proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
        finally:
            # Its Node carries the hypervisor label without a kubelet: left behind, a DaemonSet of the chart
            # installed meanwhile would give it a pod that stays Pending.
            cluster.kubectl("delete", "node", node, "--ignore-not-found", check=False)
            cluster.close()
    assert code == 0, log.read_text()[-3000:]
