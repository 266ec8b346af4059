"""`libvirt-operator dev`: emulator, CRD, Node and operator in one process, stopped cleanly by SIGTERM;
two of them on one machine keep apart."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

from libvirt_operator.hypervisor.storage import Storage
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
        cluster.apply(vm_manifest("stray", "dev-node", memory="64Mi"))  # the examples' node: not this one
        poll(lambda: "NoOperatorForNode" in cluster.event_reasons("stray"), timeout=30,
             what="the NoOperatorForNode event on a VM of another node")
        assert "NoOperatorForNode" not in cluster.event_reasons("local")
        cluster.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert code == 0, log.read_text()[-3000:]


def test_two_local_modes_on_one_storage_directory_never_take_each_other_for_shared_storage(
        tmp_path: Path) -> None:
    shared = tmp_path / "disks"
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for node in ("node-one", "node-two"):
            work = tmp_path / node
            work.mkdir()
            args = [*OPERATOR, "dev", "--kubeconfig", str(work / "kubeconfig"), "--libvirt-uri", "test:///default",
                    "--node-name", node, "--health-port", str(free_port()), "--metrics-port", str(free_port()),
                    "--storage-dir", str(shared), "--image-dir", str(work / "images"),
                    "--state-file", str(work / "api-state.json")]
            with open(work / "dev.log", "wb") as out:
                procs[node] = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        markers = {node: shared / ".nodes" / node for node in procs}
        poll(lambda: all(m.exists() for m in markers.values()), timeout=60, what="both nodes' markers")
        one, two = (markers[n].read_text().splitlines() for n in ("node-one", "node-two"))
        assert one[0] == "node-one" and two[0] == "node-two"
        assert len(one) == len(two) == 2 and one[1] != two[1]  # each names its own API
        for node, identity in (("node-one", one[1]), ("node-two", two[1])):
            assert Storage(tmp_path / node / "images", shared, cluster=identity).is_shared(node, "auto") is False
    finally:
        for proc in procs.values():
            proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
