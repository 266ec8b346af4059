"""`libvirt-operator dev`: emulator, CRD, Node and operator in one process, stopped cleanly by SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

from tests.e2e.harness import OPERATOR, ApiServer, Cluster, free_port, poll, vm_manifest


def test_local_mode_registers_a_node_and_runs_a_vm_then_stops_cleanly(tmp_path: Path, kubectl_bin: str) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    state = tmp_path / "state"
    log = tmp_path / "dev.log"
    args = [*OPERATOR, "dev", "--kubeconfig", str(kubeconfig), "--libvirt-uri", "test:///default",
            "--node-name", "local-node", "--health-port", str(free_port()), "--metrics-port", str(free_port()),
            "--storage-dir", str(state / "disks"), "--image-dir", str(state / "images"),
            "--state-file", str(state / "api-state.json")]
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    try:
        poll(kubeconfig.exists, timeout=30, what="the kubeconfig")
        api = ApiServer(tmp_path)  # only to reuse the client helpers on the written kubeconfig
        cluster = Cluster(api, kubectl_bin)
        node = json.loads(cluster.kubectl("get", "node", "local-node", "-o", "json"))
        assert node["metadata"]["labels"]["virt.libvirt-operator.dev/hypervisor"] == "true"
        crds = cluster.kubectl("get", "crd")
        assert "virtualmachines.virt.libvirt-operator.dev" in crds
        cluster.apply(vm_manifest("local", "local-node", memory="64Mi"))
        status = cluster.wait_phase("local", "Running")
        assert status["nodeName"] == "local-node"
        labels = json.loads(cluster.kubectl("get", "node", "local-node", "-o", "json"))["metadata"]["labels"]
        assert labels.get("virt.libvirt-operator.dev/schedulable") == "true"
        cluster.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert code == 0, log.read_text()[-3000:]
